"""`kdkit sweep --methods`: one search per method over a teacher/student pair with the same trial count,
vanilla searched over the learning rate and weight decay, ranked on validation, then each best over the
final seeds on test with its difference to vanilla paired by seed; a second call trains nothing again."""

import json
import statistics
from pathlib import Path

import pytest
import yaml

from kdkit import from_config, load_config
from kdkit.cli import main as cli
from kdkit.errors import ConfigError
from kdkit.sweep import load_sweep, parse_sweep
from kdkit.sweep.methods import family_members, method_recipe, method_space, resolve_methods


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    cfg = load_config(base={"model": "cnn_small", "data": {"name": "digits", "val_fraction": 0.2},
                            "train": {"epochs": 2, "seed": 0, "progress": False, "out_dir": str(out),
                                      "run_name": "t"}})
    from_config(cfg, log=lambda m: None).fit()
    return str(out / "t" / "checkpoint.pt")


def _base(teacher):
    return {"model": "cnn_tiny", "teacher": {"name": "cnn_small", "checkpoint": teacher},
            "data": {"name": "digits", "val_fraction": 0.2}, "optim": {"lr": 0.05}, "train": {"epochs": 1, "seed": 0}}


def test_methods_are_searched_ranked_and_run_over_seeds(tmp_path, teacher, capsys):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"base": _base(teacher), "space": {"optim.lr": {"log": [0.01, 0.1]}},
                                    "trials": 2, "pruner": "none", "out": str(tmp_path / "cmp")}))
    assert cli(["sweep", str(path), "--methods", "kd,fitnets", "--seeds", "0,1"]) == 0
    assert "| rank | method |" in capsys.readouterr().err
    ranking = json.loads((tmp_path / "cmp" / "methods.json").read_text())
    rows = {r["method"]: r for r in ranking["rows"]}
    assert set(rows) == {"vanilla", "kd", "fitnets"} and ranking["pending"] == []
    assert [r["val"] for r in ranking["rows"]] == sorted((r["val"] for r in ranking["rows"]), reverse=True)
    finals = {}
    for method, keys in (("vanilla", {"optim.lr", "optim.weight_decay"}),
                         ("kd", {"method.kd.temperature", "method.kd.alpha"}), ("fitnets", {"method.fitnets.beta"})):
        summary = json.loads((tmp_path / "cmp" / method / "sweep.json").read_text())
        assert len(summary["trials"]) == 2 and all(set(t["params"]) == keys for t in summary["trials"])
        final = json.loads((tmp_path / "cmp" / method / "final.json").read_text())
        assert [r["seed"] for r in final["runs"]] == [0, 1]
        assert final["runs"][0]["run"].endswith(f"trial-{summary['best']['number']:04d}")  # seed 0: the best trial
        finals[method] = {r["seed"]: r["test/top1"] for r in final["runs"]}
        assert rows[method]["test_mean"] == pytest.approx(statistics.mean(finals[method].values()))
    diffs = [finals["kd"][s] - finals["vanilla"][s] for s in (0, 1)]
    assert rows["kd"]["delta_mean"] == pytest.approx(statistics.mean(diffs))
    assert rows["kd"]["delta_std"] == pytest.approx(statistics.stdev(diffs))
    cfg = yaml.safe_load((tmp_path / "cmp" / "kd" / "best.yaml").read_text())
    assert cfg["method"][0]["name"] == "kd" and cfg["teacher"]
    assert not yaml.safe_load((tmp_path / "cmp" / "vanilla" / "best.yaml").read_text())["teacher"]
    assert cli(["report", str(tmp_path / "cmp"), "--out", str(tmp_path / "rep")]) == 0  # the sweep's view
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Methods compared: cmp (ranked by validation)" in md and "| 1 | " in md
    for method in ("vanilla", "kd", "fitnets"):
        assert f"## Sweep cmp-{method}: best trial" in md and f"## Sweep cmp-{method}: trials" in md
    assert "## Sweep cmp-kd: parameter importances (Optuna, fANOVA)" in md and "| method.kd.alpha |" in md
    assert (tmp_path / "rep" / "sweep_history.png").stat().st_size > 1000
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "cmp").rglob("checkpoint.pt")}
    assert cli(["sweep", str(path), "--methods", "kd,fitnets", "--seeds", "0,1"]) == 0  # finished: kept
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cmp").rglob("checkpoint.pt")} == stamps


def test_families_and_their_recipes():
    offline, online = family_members("offline"), family_members("online")
    assert offline[0] == "vanilla" and {"kd", "dkd", "crd", "reviewkd", "ab"} <= set(offline)
    assert not {"dml", "one", "netaug"} & set(offline) and online == ["vanilla", "cl", "dcm", "dml", "kdcl",
                                                                      "okddip", "one"]
    base = {"model": "cnn_tiny", "teacher": {"name": "cnn_small"}, "train": {"epochs": 24}}
    dkd = method_recipe(base, "dkd")
    assert dkd["method"] == [{"name": "dkd", "warmup_epochs": 2}] and dkd["teacher"]  # 20 of 240 -> 2 of 24
    one = method_recipe(base, "one")
    assert "teacher" not in one and one["model"]["transforms"][0] == {"name": "branch", "n": 3, "gate": True}
    assert method_recipe(base, "kdcl")["data"] == {"views": 2}
    cached = {**base, "train": {"epochs": 24, "teacher_cache": {"store": "memory"}}}  # a teacher's option
    assert method_recipe(cached, "kd")["train"]["teacher_cache"] == {"store": "memory"}
    assert "teacher_cache" not in method_recipe(cached, "vanilla")["train"] and cached["train"]["teacher_cache"]
    assert method_space(base, "ab")["method.ab.stage1_epochs"] == {"int": [1, 6]}
    assert method_space({"optim": {"lr": 0.2}}, "vanilla")["optim.lr"] == {"log": [0.05, 0.8]}
    assert resolve_methods("kd, dkd,kd") == ["vanilla", "kd", "dkd"]


@pytest.mark.parametrize("over, message", [
    ({"methods": "kd,nope"}, "unknown method 'nope'"),
    ({"methods": "kd", "space": {"optim.lr": {"log": [0.01, 0.1]}}}, "either space"),
    ({"methods": "kd", "method_settings": {"dkd": {"beta": 2.0}}}, "not compared"),
    ({"methods": "kd", "base": "missing-teacher"}, "does not exist"),
    ({"methods": "kd", "seeds": [0, 0]}, "distinct integers"),
])
def test_bad_method_comparisons_are_refused_before_any_trial(tmp_path, teacher, over, message):
    base = _base(teacher)
    if over.get("base") == "missing-teacher":
        over = {**over, "base": {**base, "teacher": {"name": "cnn_small", "checkpoint": str(tmp_path / "no.pt")}}}
    data = {"base": base, "trials": 2, "out": str(tmp_path / "x"), **over}
    with pytest.raises(ConfigError, match=message):
        cfg = parse_sweep(json.loads(json.dumps(data)))
        from kdkit.sweep.compare import method_configs

        method_configs(cfg)
    assert not (tmp_path / "x").exists()


def test_a_method_that_needs_a_teacher_without_one_is_refused(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"base": {"model": "cnn_tiny", "data": {"name": "digits"}}, "trials": 1,
                                    "out": str(tmp_path / "x")}))
    cfg = load_sweep(path, methods="kd")
    from kdkit.sweep.compare import method_configs

    with pytest.raises(ConfigError, match="learns from a teacher"):
        method_configs(cfg)
    assert not Path(tmp_path / "x").exists()


def test_a_finished_method_carried_as_its_result_files_is_not_searched_again(tmp_path, teacher):
    """final.json holds a digest of the method's sweep and of the teacher's weights: its small result files
    copied to another folder (no journal, no runs), beside a copy of the teacher, are the finished method;
    other teacher weights or another seed list make it a new search."""
    import shutil

    import torch

    from kdkit.sweep.compare import read_methods, run_methods

    def cfg(out, ckpt, seeds=(0,)):
        return parse_sweep({"base": {**_base(ckpt), "teacher": {"name": "cnn_small", "checkpoint": str(ckpt)}},
                            "methods": ["kd"], "trials": 1, "pruner": "none", "seeds": list(seeds),
                            "out": str(out), "name": "cmp"}, "test")

    first = run_methods(cfg(tmp_path / "a", teacher), log=lambda m: None)
    moved = tmp_path / "elsewhere"
    for path in (tmp_path / "a").rglob("*"):
        if path.name in ("final.json", "sweep.json", "best.yaml"):
            (moved / path.relative_to(tmp_path / "a")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, moved / path.relative_to(tmp_path / "a"))
    shutil.copy(teacher, tmp_path / "teacher.pt")
    said = []
    again = run_methods(cfg(moved, tmp_path / "teacher.pt"), log=said.append)
    assert not list(moved.rglob("checkpoint.pt")) and not list(moved.rglob("journal.log"))
    assert [r["method"] for r in again] == [r["method"] for r in first] == ["vanilla", "kd"]
    for a, b in zip(first, again):
        assert (a["val"], a["params"], a["test_mean"], a["delta_mean"], a["train_s"], a["train_cpu_s"]) == (
            b["val"], b["params"], b["test_mean"], b["delta_mean"], b["train_s"], b["train_cpu_s"])
        assert a["train_s"] > 0 and a["train_cpu_s"] > 0  # every epoch records its process's CPU time too
    assert sum("finished already" in m for m in said) == 2
    assert read_methods(cfg(moved, tmp_path / "teacher.pt"))[0] == again
    ckpt = torch.load(teacher, weights_only=True)  # other teacher weights: kd is searched again, vanilla is not
    name = next(iter(ckpt["student"]))
    ckpt["student"][name] = ckpt["student"][name] + 1.0
    torch.save(ckpt, tmp_path / "teacher.pt")
    said.clear()
    run_methods(cfg(moved, tmp_path / "teacher.pt"), log=said.append)
    assert [m for m in said if "finished already" in m] == [m for m in said if "cmp-vanilla" in m and "finished" in m]
    assert any(m.startswith("== kd: 1 trials") for m in said) and list((moved / "kd").rglob("checkpoint.pt"))
    said.clear()
    run_methods(cfg(moved, tmp_path / "teacher.pt", seeds=(0, 1)), log=said.append)  # another seed list
    assert not any("finished already" in m for m in said)



def test_the_fingerprint_of_a_teacher_given_as_plain_weights_is_its_files(tmp_path):
    """A teacher checkpoint that is a plain state dict (not a kdkit checkpoint) is fingerprinted by its bytes."""
    import torch

    from kdkit import create_model
    from kdkit.sweep.compare import fingerprint

    torch.manual_seed(0)
    weights = create_model("cnn_small", num_classes=10, in_channels=1).state_dict()
    path = tmp_path / "t.pt"
    torch.save(weights, path)
    sweep = parse_sweep({"base": _base(str(path)), "space": {"optim.lr": {"log": [0.01, 0.1]}}, "trials": 1,
                         "out": str(tmp_path / "s")}, "test")
    first = fingerprint(sweep)
    assert first == fingerprint(sweep) and len(first) == 64
    torch.save({k: v + 1 for k, v in weights.items()}, path)
    assert fingerprint(sweep) != first


def test_the_fingerprint_ignores_where_the_teacher_cache_is_kept(tmp_path):
    """A teacher cache in memory or on disk (any folder) gives the same digest: the same numbers either way
    (tests/test_speed.py); its other options (dtype, top-k) change the numbers and the digest."""
    from kdkit.sweep.compare import fingerprint

    def digest(cache):
        base = _base(str(tmp_path / "t.pt"))
        base["train"] = {**base.get("train", {}), "teacher_cache": cache}
        return fingerprint(parse_sweep({"base": base, "space": {"optim.lr": {"log": [0.01, 0.1]}}, "trials": 1,
                                        "out": str(tmp_path / "s")}, "test"))

    memory = digest({"store": "memory"})
    assert memory == digest({"store": "disk", "path": str(tmp_path / "a")}) == digest({"store": "disk", "path": "b"})
    assert memory != digest({"store": "memory", "dtype": "bfloat16"})


def test_cpu_time_is_summed_only_where_every_epoch_recorded_it(tmp_path):
    """A method's CPU seconds come from its runs' ``time/train_cpu_s``; a run trained before kdkit recorded it
    makes the total unknown (None), never a partial sum."""
    from kdkit.sweep.compare import _trial_seconds

    run = tmp_path / "m" / "trials" / "trial-0000"
    run.mkdir(parents=True)
    lines = [{"epoch": 1, "time/train_s": 10.0, "time/train_cpu_s": 4.0},
             {"epoch": 2, "time/train_s": 12.0, "time/train_cpu_s": 5.5}, {"final": True, "test/top1": 50.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert _trial_seconds(tmp_path / "m") == {"train_s": 22.0, "train_cpu_s": 9.5}
    old = tmp_path / "m" / "final" / "trial-0000-seed1"
    old.mkdir(parents=True)
    (old / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "time/train_s": 3.0}) + "\n")
    assert _trial_seconds(tmp_path / "m") == {"train_s": 25.0, "train_cpu_s": None}
