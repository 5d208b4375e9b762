"""`kdkit report` groups runs by identity (recipe and seed: a resumed copy in another folder is the same
run, not another seed) and labels recipes by the keys in which they differ, not by defaults that only
some configs write out. The runs are written here in the real file formats (config.yaml, metrics.jsonl)."""

import json
import shutil
import statistics

import yaml

from kdkit.cli import main as cli
from kdkit.report import collect, group_rows, groups


def _run(root, name, seed, top1, transforms=None, epochs=2, finished=True, extra=None):
    d = root / name
    d.mkdir(parents=True)
    model = {"name": "cnn_tiny", **({"transforms": transforms} if transforms else {})}
    cfg = {"model": model, "method": [{"name": "kd", "temperature": 4.0}], "data": {"name": "digits"},
           "train": {"epochs": epochs, "seed": seed, "run_name": name, "out_dir": str(root)}, **(extra or {})}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = [{"epoch": e, "val/top1": top1 - 1 + e / epochs, "train/loss": 1.0 / e} for e in range(1, epochs + 1)]
    if finished:
        rows.append({"final": True, "test/top1": top1, "deployed": "student"})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_a_resumed_copy_is_the_same_run_not_another_seed(tmp_path, capsys):
    _run(tmp_path, "kd-s0", 0, 80.0)
    _run(tmp_path, "kd-s1", 1, 84.0)
    shutil.copytree(tmp_path / "kd-s1", tmp_path / "kd-s1-resumed")  # the folder a resume elsewhere leaves
    _run(tmp_path, "kd-s2-partial", 2, 70.0, finished=False)
    _run(tmp_path, "kd-s2", 2, 82.0)  # seed 2 finished here; the partial folder is its earlier copy
    (row,) = group_rows(collect([tmp_path]))
    assert sorted(row["runs"]) == ["kd-s0", "kd-s1", "kd-s2"]
    assert sorted(row["copies"]) == ["kd-s1-resumed", "kd-s2-partial"]
    tops = [80.0, 84.0, 82.0]
    assert row["test_top1"] == (statistics.mean(tops), statistics.stdev(tops), 3)
    assert cli(["compare", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{statistics.mean(tops):.2f} ± {statistics.stdev(tops):.2f} (3)" in out
    assert "3 (+2 copies)" in out and "copy of kd-s2 (same recipe and seed" in out
    # another seed is another run, and a run without a seed is never anyone's copy
    _run(tmp_path, "kd-s3", 3, 84.0)
    (row,) = group_rows(collect([tmp_path]))
    assert len(row["runs"]) == 4 and len(row["copies"]) == 2


def test_recipes_are_labelled_by_what_differs_not_by_defaults(tmp_path):
    _run(tmp_path, "plain", 0, 80.0)
    for ratio in (0.3, 0.5):  # a newer version writes the transform's defaults out: they do not label
        _run(tmp_path, f"prune{ratio}", 0, 78.0, transforms=[{"name": "prune", "ratio": ratio, "importance": "l1"}])
    labels = sorted(label for label, _ in groups(collect([tmp_path]).runs))
    assert labels == ["cnn_tiny kd",
                      "cnn_tiny kd (model.transforms.0.name=prune, model.transforms.0.ratio=0.3)",
                      "cnn_tiny kd (model.transforms.0.name=prune, model.transforms.0.ratio=0.5)"]


def test_labels_stay_distinct_when_many_keys_differ(tmp_path):
    values = [(0, 0, 0, 0), (0, 0, 0, 1), (1, 1, 1, 1)]  # the first two differ only in the fourth key
    for k, (a, b, c, d) in enumerate(values):
        _run(tmp_path, f"r{k}", 0, 80.0, extra={"optim": {"lr": 0.1, "a": a, "b": b, "c": c, "d": d}})
    labels = [label for label, _ in groups(collect([tmp_path]).runs)]
    assert labels == ["cnn_tiny kd (optim.a=0, optim.b=0, optim.c=0, ...)",
                      "cnn_tiny kd (optim.a=0, optim.b=0, optim.c=0, ...) #2",
                      "cnn_tiny kd (optim.a=1, optim.b=1, optim.c=1, ...)"]
