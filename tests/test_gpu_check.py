"""benchmarks/gpu_check.sh, the first script to run on a lent GPU, runs end to end on CPU with tiny settings."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import HANG_S

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_runs_on_cpu_with_tiny_settings(tmp_path):
    env = {**os.environ, "GPU_CHECK_TINY": "1", "GPU_CHECK_COMPILE": "none", "PYTHON": sys.executable,
           "GPU_CHECK_DOCS": str(tmp_path / "docs"), "GPU_CHECK_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for b in (64, 512):
        bench = json.loads((tmp_path / "docs" / f"gpu_check-bench-b{b}-eager.json").read_text())
        assert bench["teacher"] == "cnn_small" and bench["method"] == "kd"
        assert bench["results"]["kdkit"]["images_per_s"] > 0 and bench["results"]["reference"]["images_per_s"] > 0
    acc = json.loads((tmp_path / "docs" / "gpu_check-fashion_mnist.json").read_text())
    assert [r["name"] for r in acc["rows"]] == ["memory", "dataloader"]
    assert all(0 < r["mean"] <= 100 for r in acc["rows"])
    assert "gpu_check: done" in proc.stdout
