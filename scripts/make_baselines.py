"""Record the weights that short kd and fitnets runs produce, as a regression baseline for refactors
(issue 11: the redesign must leave them bit-identical on CPU).

    python scripts/make_baselines.py            # writes tests/data/baseline_weights.pt
    python scripts/make_baselines.py --check    # exit 1 if today's code gives other weights
    python scripts/make_baselines.py --add-machine  # record this processor's digests (within rounding)
    python scripts/make_baselines.py --record-short # (re)record the short runs' weights (see below)

The runs: a cnn_small teacher (2 epochs) and cnn_tiny students (2 epochs each) with ``kd`` and with
``fitnets`` (stage2 hint, one hint pre-training epoch) on the embedded digits, seed 0, CPU, 2 threads.
The file also records the machine (torch version, CPU capability and model name, threads), because CPU kernels may
round differently on another instruction set: ``tests/test_baselines.py`` demands bit-identical weights
on a matching machine. Elsewhere two epochs amplify rounding too much to compare (fitnets' weights moved
by 49% on an AVX2-only processor), so the file also holds ``short``: the weights of the same runs on the
first 192 training images (3 steps an epoch, 6 in all), where rounding stays near float32's own and a
tight bound still catches a changed loss, initialisation or data order.
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


def cpu_model() -> str:
    """The processor's model name (two CPUs with the same instruction set, an Intel and an AMD with
    AVX-512, were seen to round differently: fitnets' weights differed by 1e-2 after 3 epochs)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, str]:
    return {"torch": str(torch.__version__), "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": str(torch.get_num_threads()), "arch": platform.machine(), "model": cpu_model()}


def digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def relative_difference(weights: dict[str, dict[str, torch.Tensor]], saved: dict[str, dict[str, torch.Tensor]]
                        ) -> dict[str, float]:
    """Per run: ``||w - w_saved|| / ||w_saved||`` over all floating-point tensors (inf if an integer
    tensor, such as a batch counter, differs)."""
    out = {}
    for name, state in saved.items():
        floats = [k for k, v in state.items() if v.is_floating_point()]
        if not all(torch.equal(weights[name][k], v) for k, v in state.items() if k not in floats):
            out[name] = float("inf")
            continue
        diff = sum(float((weights[name][k].double() - state[k].double()).norm()) ** 2 for k in floats) ** 0.5
        out[name] = diff / sum(float(state[k].double().norm()) ** 2 for k in floats) ** 0.5
    return out


def records(saved: dict) -> list[dict]:
    """Every machine with recorded digests: the one that wrote the weights, then those added since."""
    return [{"machine": saved["machine"], "digests": saved["digests"]}, *saved.get("machines", [])]


SHORT_IMAGES = 192  # the short runs: 3 steps of 64 images an epoch


def train_all(out: Path, short: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """The weights of the teacher and of each student run, trained in ``out`` (``short``: on the first
    ``SHORT_IMAGES`` training images)."""
    data = {"name": "digits", **({"limit_train": SHORT_IMAGES} if short else {})}
    base = {"data": data, "train": {"epochs": 2, "seed": 0, "progress": False, "out_dir": str(out),
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
    ap.add_argument("--record-short", action="store_true", help="record the short runs' weights in the file")
    ap.add_argument("--add-machine", action="store_true",
                    help="record this processor's digests beside the others, if its weights are within rounding "
                         "(1e-2 of their norm) of the recorded ones")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.record_short:
        saved = torch.load(OUT, weights_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            saved["short"] = train_all(Path(tmp), short=True)
        torch.save(saved, OUT)
        print(f"recorded the short runs in {OUT} on {machine()}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        weights = train_all(Path(tmp))
    digests = {k: digest(v) for k, v in weights.items()}
    if args.check or args.add_machine:
        saved = torch.load(OUT, weights_only=True)
        here = next((r for r in records(saved) if r["machine"] == machine()), None)
        rel = relative_difference(weights, saved["weights"])
        print(f"relative difference to the recorded weights: {rel}")
        if args.check:
            if here is None:
                print(f"no digests recorded for this machine {machine()}; compared up to rounding")
                return 0 if max(rel.values()) < 1e-2 else 1
            same = digests == here["digests"]
            print("identical" if same else f"differ: {digests} vs {here['digests']}")
            return 0 if same else 1
        if here is not None:
            print(f"this machine is recorded already: {here['machine']}", file=sys.stderr)
            return 1
        if max(rel.values()) >= 1e-2:
            print("the weights differ by more than rounding: not recorded", file=sys.stderr)
            return 1
        saved["machines"] = [*saved.get("machines", []), {"machine": machine(), "digests": digests}]
        torch.save(saved, OUT)  # keeps the short runs
        print(f"added {machine()}: {digests}")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    students = {k: v for k, v in weights.items() if k != "teacher"}  # the teacher by its digest only
    with tempfile.TemporaryDirectory() as tmp:
        short = train_all(Path(tmp), short=True)
    torch.save({"weights": students, "digests": digests, "machine": machine(), "short": short}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB): {digests}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
