"""Record the weights that short kd and fitnets runs produce, as a regression baseline for refactors
(issue 11: the redesign must leave them bit-identical on CPU).

    python scripts/make_baselines.py            # writes tests/data/baseline_weights.pt
    python scripts/make_baselines.py --check    # exit 1 if today's code gives other weights

The runs: a cnn_small teacher (2 epochs) and cnn_tiny students (2 epochs each) with ``kd`` and with
``fitnets`` (stage2 hint, one hint pre-training epoch) on the embedded digits, seed 0, CPU, 2 threads.
The file also records the machine (torch version, CPU capability, threads), because CPU kernels may
round differently on another instruction set: ``tests/test_baselines.py`` demands bit-identical weights
on a matching machine and closeness elsewhere.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import sys
import tempfile
from pathlib import Path

import torch

from kdkit import from_config, load_config

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "baseline_weights.pt"
RUNS = {
    "kd": {"name": "kd", "temperature": 4.0, "alpha": 0.9},
    "fitnets": {"name": "fitnets", "student_layer": "stage2", "teacher_layer": "stage2", "stage1_epochs": 1},
}


def machine() -> dict[str, str]:
    return {"torch": str(torch.__version__), "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": str(torch.get_num_threads()), "arch": platform.machine()}


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_all(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The weights of the teacher and of each student run, trained in ``out``."""
    base = {"data": {"name": "digits"}, "train": {"epochs": 2, "seed": 0, "progress": False, "out_dir": str(out),
                                                 "device": "cpu"}}
    teacher = from_config(load_config(base={**base, "model": "cnn_small", "train": {**base["train"], "run_name": "t"}}),
                      log=lambda m: None)
    teacher.fit()
    weights = {"teacher": {k: v.clone() for k, v in teacher.distiller.state_dict().items()}}
    for name, method in RUNS.items():
        cfg = load_config(base={**base, "model": "cnn_tiny", "method": method,
                                "teacher": {"name": "cnn_small", "checkpoint": str(out / "t" / "checkpoint.pt")},
                                "train": {**base["train"], "run_name": name}})
        trainer = from_config(cfg, log=lambda m: None)
        trainer.fit()
        weights[name] = {k: v.clone() for k, v in trainer.distiller.state_dict().items()}
    return weights


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        weights = train_all(Path(tmp))
    digests = {k: digest(v) for k, v in weights.items()}
    if args.check:
        saved = torch.load(OUT, weights_only=True)
        same = digests == saved["digests"]
        print("identical" if same else f"differ: {digests} vs {saved['digests']} (machine {saved['machine']})")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    students = {k: v for k, v in weights.items() if k != "teacher"}  # the teacher by its digest only
    torch.save({"weights": students, "digests": digests, "machine": machine()}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB): {digests}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
