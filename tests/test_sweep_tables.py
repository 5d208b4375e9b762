"""benchmarks/sweep_tables.py, the command that rebuilds the results tables as sweeps, end to end at a
tiny size (digits, one epoch, one trial per method): regime curves, teacher, each method's search and final
runs, the Markdown table with its budget and cost, the tuned-weights section of a methods page; then
--write-only rebuilds the same table from the runs without training."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_sweep_table_command_end_to_end(tmp_path):
    doc = tmp_path / "methods.md"
    doc.write_text("# Methods\n\n<!-- tuned:offline:start -->\nold\n<!-- tuned:offline:end -->\n\ntail\n")
    args = [sys.executable, str(ROOT / "benchmarks" / "sweep_tables.py"), "--table", "offline", "--dataset", "digits",
            "--teacher", "cnn_small", "--student", "cnn_tiny", "--epochs", "1", "--limit-train", "400",
            "--teacher-epochs", "1", "--trials", "1", "--seeds", "0,1", "--methods", "kd", "--threads", "1",
            "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"), "--methods-doc", str(doc)]
    subprocess.run(args, check=True, capture_output=True, cwd=tmp_path)
    md = (tmp_path / "docs" / "digits_sweep.md").read_text()
    assert "Budget: 1 trials per method" in md and "Cost: " in md and "## Regime" in md
    assert "CPU time " in md and " over the 2 of 2 methods whose every epoch recorded it" in md
    assert "- 1 epochs: " in md and "- 2 epochs: " in md  # vanilla's curve at the regime and twice it
    rows = json.loads((tmp_path / "docs" / "digits_sweep.json").read_text())["rows"]
    assert [r["method"] for r in rows] != [] and {r["method"] for r in rows} == {"vanilla", "kd"}
    assert all(r["seeds"] == [0, 1] for r in rows)
    kd = next(r for r in rows if r["method"] == "kd")
    # the students' views are replayed and KD's teacher outputs cached (digits has no augmentation: one view);
    # vanilla, with no teacher, has no cache
    import yaml

    trial = lambda m: yaml.safe_load(next((tmp_path / "runs" / "offline" / m).rglob("config.yaml")).read_text())  # noqa
    shared = tmp_path / "runs" / "teacher_cache"  # one disk cache for every run: a folder per seed's views
    assert trial("kd")["train"]["teacher_cache"] == {"store": "disk", "path": str(shared), "dtype": "float32",
                                                     "topk": None} and trial("kd")["data"]["replay_views"] == 4
    assert len([d for d in shared.iterdir() if (d / "meta.json").is_file()]) == 2  # seeds 0 and 1
    # the teacher's outputs on the evaluation splits, computed once: each seed carves its own validation split,
    # the test set is the same for every run
    assert len(list((shared / "eval").iterdir())) == 3
    assert trial("vanilla")["train"]["teacher_cache"] is None and "4 fixed views of each image replayed" in md
    teacher = yaml.safe_load((tmp_path / "runs" / "teacher" / "config.yaml").read_text())
    assert teacher["data"]["replay_views"] == 0 and teacher["train"]["teacher_cache"] is None
    assert "| kd |" in md and "+0.83 |" in md  # the paper's CIFAR-100 gain beside it
    section = doc.read_text()
    assert "old" not in section and "| `kd` | temperature | 4.0 |" in section and section.endswith("\n\ntail\n")
    before = md
    (tmp_path / "docs" / "digits_sweep.md").unlink()
    subprocess.run([*args, "--write-only"], check=True, capture_output=True, cwd=tmp_path)
    again = (tmp_path / "docs" / "digits_sweep.md").read_text()
    strip = lambda t: [x for x in t.splitlines() if not x.startswith("Cost:")]  # noqa: E731
    assert strip(again) == strip(before) and kd["test_mean"] is not None
    # another machine: the runs are gone, the table and its kept result files are there. The teacher is trained
    # again (the same weights), each finished method is read from its files, nothing is searched again
    ledger = tmp_path / "docs" / "digits_sweep"
    assert sorted(p.relative_to(ledger).as_posix() for p in ledger.rglob("*.json")) == [
        "kd/final.json", "kd/sweep.json", "vanilla/final.json", "vanilla/sweep.json"]
    moved = [*args[:args.index("--out") + 1], str(tmp_path / "runs2"), *args[args.index("--out") + 2:]]
    subprocess.run(moved, check=True, capture_output=True, cwd=tmp_path)
    assert not list((tmp_path / "runs2" / "offline").rglob("checkpoint.pt"))
    assert strip((tmp_path / "docs" / "digits_sweep.md").read_text()) == [
        x.replace(str(tmp_path / "runs"), str(tmp_path / "runs2")) for x in strip(before)]
    # a row of the committed table without its files (measured before they were kept) is carried over when
    # vanilla measured here gives the committed vanilla row exactly, and measured again when it does not
    import shutil

    shutil.rmtree(ledger / "kd")
    moved3 = [*args[:args.index("--out") + 1], str(tmp_path / "runs3"), *args[args.index("--out") + 2:]]
    table = tmp_path / "docs" / "digits_sweep.json"
    carry = subprocess.run(moved3, capture_output=True, cwd=tmp_path, text=True)
    assert carry.returncode == 0, carry.stderr
    assert "carried over kd" in carry.stderr and "Carried over from an earlier session: kd" in (
        tmp_path / "docs" / "digits_sweep.md").read_text()
    assert next(r for r in json.loads(table.read_text())["rows"] if r["method"] == "kd")["carried"] is True
    assert not (tmp_path / "runs3" / "offline" / "kd").exists()
    data = json.loads(table.read_text())
    next(r for r in data["rows"] if r["method"] == "vanilla")["test_mean"] += 0.01
    table.write_text(json.dumps(data))
    again = subprocess.run(moved3, capture_output=True, cwd=tmp_path, text=True)
    assert again.returncode == 0 and "measured again" in again.stderr
    assert list((tmp_path / "runs3" / "offline" / "kd").rglob("checkpoint.pt"))
    assert "Carried over" not in (tmp_path / "docs" / "digits_sweep.md").read_text()


def test_the_knowledge_table_adds_robust_accuracy_and_shares_the_offline_searches(tmp_path):
    args = [sys.executable, str(ROOT / "benchmarks" / "sweep_tables.py"), "--dataset", "digits",
            "--teacher", "cnn_small", "--student", "cnn_tiny", "--epochs", "1", "--limit-train", "400",
            "--teacher-epochs", "1", "--trials", "1", "--seeds", "0,1", "--threads", "1",
            "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"), "--methods-doc", str(tmp_path / "m.md")]
    subprocess.run([*args, "--table", "offline", "--methods", "kd"], check=True, capture_output=True, cwd=tmp_path)
    done = subprocess.run([*args, "--table", "knowledge", "--methods", "kd,ard"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "== offline-vanilla: finished already" in done.stderr and "== offline-kd: finished already" in done.stderr
    md = (tmp_path / "docs" / "digits_knowledge.md").read_text()
    assert "## Clean and robust test accuracy" in md and "Below KD on test" in md
    robust = json.loads((tmp_path / "runs" / "offline" / "ard" / "robust.json").read_text())
    assert [r["seed"] for r in robust] == [0, 1] and all(r["robust_top1"] <= r["top1"] for r in robust)
    assert (tmp_path / "docs" / "digits_knowledge" / "ard" / "robust.json").is_file()  # kept with the table
    assert not (tmp_path / "docs" / "digits_knowledge" / "dkd").exists()
    best = (tmp_path / "runs" / "offline" / "ard" / "best.yaml").read_text()
    assert "steps: 3" in best  # ARD's training attack, shortened for the table
