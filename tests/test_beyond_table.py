"""benchmarks/beyond_table.py, issue 32's results table, end to end at a tiny size on digits: every section's
jobs run and land in the Markdown table with their cost; --write-only rebuilds the same table; a fresh --out
restores the finished jobs kept beside the table instead of running them again; an --out holding other sizes
is refused. And the verdict's rule (a difference counts only past the seeds' spread)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SIZES = ["--dataset", "digits", "--teacher-epochs", "1", "--limit-train", "400", "--epochs", "1",
         "--lifelong-epochs", "1", "--di-images", "20", "--di-iterations", "2", "--condense-iterations", "2",
         "--batch-real", "8", "--small-steps", "4", "--binary-epochs", "1", "--share-bits", "2",
         "--share-epochs", "1", "--seeds", "0,1"]


def table(tmp_path, out: str, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, str(ROOT / "benchmarks" / "beyond_table.py"), *SIZES, "--out", str(tmp_path / out),
            "--teacher-dir", str(tmp_path / "teacher"), "--docs", str(tmp_path / "docs"), *extra]
    return subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)


def test_the_beyond_table_end_to_end(tmp_path):
    (tmp_path / "docs").mkdir()
    first = table(tmp_path, "runs")
    assert first.returncode == 0, first.stderr[-3000:]
    md = (tmp_path / "docs" / "digits_beyond.md").read_text()
    for header in ("## Lifelong distillation", "## Distillation without the training data", "## Dataset distillation",
                   "## Binarization", "## Parameter sharing"):
        assert header in md
    assert "Cost: " in md and "Not run yet" not in md
    kept = json.loads((tmp_path / "docs" / "digits_beyond.json").read_text())
    jobs = kept["jobs"]
    for seed in (0, 1):
        for name in ("lifelong-lwf", "lifelong-finetune", "lifelong-joint", "datafree-kd-real", "datafree-synthesize",
                     "datafree-kd-synthetic20", "datafree-kd-random20", "condense-train-dm-ipc10",
                     "condense-train-random-ipc1", "binarize-kd", "binarize-scratch", "binarize-fp", "share2-kd"):
            assert f"{name}-s{seed}" in jobs, name
    assert "share2-cluster" in jobs and all(j["seconds"] > 0 and j["cpu_seconds"] > 0 for j in jobs.values())
    cpu_h = sum(j["cpu_seconds"] for j in jobs.values()) / 3600
    assert f"CPU time {cpu_h:.2f} h over the {len(jobs)} of {len(jobs)} jobs that recorded it" in md
    assert jobs["binarize-kd-s0"]["costs"]["ops"] < jobs["binarize-fp-s0"]["costs"]["ops"]
    assert jobs["share2-cluster"]["size_bits"] < jobs["share2-cluster"]["size_bits_fp32"]
    assert md.count("| lwf (2 seeds) |") == 1 and "| 4 shared values (2 bits), palettes fine-tuned by KD | 2 |" in md

    again = table(tmp_path, "runs", "--write-only")
    assert again.returncode == 0 and (tmp_path / "docs" / "digits_beyond.md").read_text() == md

    fresh = table(tmp_path, "elsewhere")  # another machine's --out: the committed jobs are restored, none rerun
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert f"{len(jobs)} finished jobs restored" in fresh.stderr and " ...\n" not in fresh.stderr

    refused = table(tmp_path, "runs", "--binary-epochs", "2")
    assert refused.returncode != 0 and "binary_epochs 1 -> 2" in refused.stderr


@pytest.fixture
def beyond(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import beyond_table

    return beyond_table


def test_a_verdict_counts_a_difference_only_past_the_spread(beyond):
    assert "better than" in beyond.verdict("a", "b", [80.0, 81.0, 82.0], [70.0, 71.0, 72.0])
    assert "no clear difference" in beyond.verdict("a", "b", [80.0, 85.0, 90.0], [79.0, 80.0, 81.0])
    assert "worse than" in beyond.verdict("forgetting", "b", [20.0, 21.0], [5.0, 6.0], higher_better=False)
    assert "not measured yet" in beyond.verdict("a", "b", [], [1.0])
    assert beyond.dependents("binarize-step1-s2", 250) == ["binarize-kd-s2"]
    assert beyond.dependents("condense-dm-ipc10-s1", 250) == ["condense-train-dm-ipc10-s1"]
    assert beyond.dependents("lifelong-lwf-s0", 250) == []
