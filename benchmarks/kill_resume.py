"""Kill a training run at random moments and check that resuming always ends where an uninterrupted run ends.

Each attempt runs ``kdkit train`` (or ``--resume``) in a child process that SIGKILLs itself at a randomly
chosen event: inside a training step, inside an evaluation batch (validation or the final test), inside
a checkpoint write (half the bytes written; just before the atomic rename; just after it, before
``best.pt`` and the metrics line), or halfway through writing a metrics line. A SIGKILL sent by the process
to itself at that moment is what a kill from outside at that moment would do; the hooks only choose the
moment. After every kill the run is resumed (or started again when no checkpoint was written yet), until
it finishes; then its final checkpoint, ``best.pt`` and ``metrics.jsonl`` (without timings) are compared
with an uninterrupted run's, bit for bit.

    python benchmarks/kill_resume.py --kills 30          # writes docs/results/kill_resume.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("step", "eval", "save-write", "save-before-rename", "save-after-rename", "metrics-line")


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def child(argv: list[str], phase: str | None, at: int) -> None:
    """Run the CLI with a kill planted at the ``at``-th event of ``phase`` (``None``: no kill)."""
    import torch

    torch.set_num_threads(1)
    from kdkit.cli import main
    from kdkit.engine import checkpoint, trainer
    from kdkit.tasks import Classification

    count = [0]

    def event(name: str) -> bool:
        if name != phase:
            return False
        count[0] += 1
        return count[0] == at

    step, counts = trainer.Trainer.train_step, Classification.eval_counts

    def train_step(self, *a, **k):
        out = step(self, *a, **k)
        if event("step"):
            _die()
        return out

    def eval_counts(self, *a, **k):
        if event("eval"):
            _die()
        return counts(self, *a, **k)

    save, replace = torch.save, os.replace

    def save_partial(obj, f, *a, **k):
        if event("save-write"):
            import io

            buf = io.BytesIO()
            save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            _die()
        return save(obj, f, *a, **k)

    def rename(src, dst, *a, **k):
        if event("save-before-rename"):
            _die()
        replace(src, dst, *a, **k)
        if str(dst).endswith(".pt") and event("save-after-rename"):
            _die()

    write_metrics = trainer.Trainer._write_metrics

    def metrics_line(self, metrics):
        if self.write_files and event("metrics-line"):
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                line = json.dumps(metrics) + "\n"
                f.write(line[: len(line) // 2])
            _die()
        return write_metrics(self, metrics)

    trainer.Trainer.train_step, Classification.eval_counts = train_step, eval_counts
    checkpoint.torch.save, checkpoint.os.replace = save_partial, rename
    trainer.Trainer._write_metrics = metrics_line
    sys.exit(main(argv))


def _run(argv: list[str], phase: str | None = None, at: int = 0) -> int:
    cmd = [sys.executable, __file__, "--child", json.dumps({"argv": argv, "phase": phase, "at": at})]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True).returncode


def _lines(run: Path) -> list:
    """metrics.jsonl's lines, parsed (a line that is not JSON stays as its text, and compares unequal)."""
    path = run / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append(line)
    return out


def _finished(run: Path) -> bool:
    return any(isinstance(row, dict) and row.get("final") for row in _lines(run))


def _summary(run: Path) -> dict:
    import torch

    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    best = torch.load(run / "best.pt", weights_only=True)
    lines = [{k: v for k, v in row.items() if not k.startswith("time/")} if isinstance(row, dict) else row
             for row in _lines(run)]
    return {"distiller": ckpt["distiller"], "optimizer": ckpt["optimizer"]["state"], "best": best["distiller"],
            "best_epoch": best["epoch"], "metrics": lines, "temps": sorted(p.name for p in run.glob(".*.tmp"))}


def _same(a: dict, b: dict) -> list[str]:
    import torch

    diffs = []
    for key in ("distiller", "best"):
        if a[key].keys() != b[key].keys() or not all(torch.equal(a[key][k], b[key][k]) for k in a[key]):
            diffs.append(key)
    for i, (sa, sb) in enumerate(zip(a["optimizer"].values(), b["optimizer"].values())):
        if not all(torch.equal(sa[k], sb[k]) for k in sa if isinstance(sa[k], torch.Tensor)):
            diffs.append(f"optimizer state {i}")
            break
    diffs += [k for k in ("best_epoch", "metrics") if a[k] != b[k]]
    if b["temps"]:
        diffs.append(f"temporary files left: {b['temps']}")
    return diffs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=30, help="kills in total (at least)")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default="runs/kill_resume", help="scratch folder (emptied first)")
    p.add_argument("--out", default="docs/results/kill_resume.json", help="JSON report ('' for none)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        spec = json.loads(args.child)
        child(spec["argv"], spec["phase"], spec["at"])
        return 0
    import shutil

    rng = random.Random(args.seed)
    work = (ROOT / args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.time()
    teacher = {"model": "cnn_small", "data": {"name": "digits"}, "train": {"epochs": 2, "progress": False}}
    (work / "teacher.yaml").write_text(yaml.safe_dump(teacher))
    assert _run(["train", str(work / "teacher.yaml"), "--out", str(work / "teacher")]) == 0
    student = {"model": "cnn_tiny", "method": "kd", "teacher": {"name": "cnn_small",
                                                                 "checkpoint": str(work / "teacher/checkpoint.pt")},
               "data": {"name": "digits", "limit_train": 512, "eval_batch_size": 16},
               "train": {"epochs": args.epochs, "progress": False, "log_every": 3}}
    cfg = work / "student.yaml"
    cfg.write_text(yaml.safe_dump(student))
    assert _run(["distill", str(cfg), "--out", str(work / "reference")]) == 0
    reference = _summary(work / "reference")
    # events of each kind in one uninterrupted run (upper bounds for drawing a kill moment)
    events = {"step": args.epochs * 8, "eval": args.epochs * 4 + 23, "save-write": 2 * args.epochs,
              "save-before-rename": 2 * args.epochs, "save-after-rename": 2 * args.epochs,
              "metrics-line": args.epochs + 1}
    kills: dict[str, int] = dict.fromkeys(PHASES, 0)
    runs, failures = 0, []
    while sum(kills.values()) < args.kills:
        runs += 1
        run = work / f"run{runs}"
        while not _finished(run):
            phase = PHASES[sum(kills.values()) % len(PHASES)]  # every kind in turn, at a random moment
            at = rng.randint(1, events[phase])
            argv = (["train", "--resume", str(run)] if (run / "checkpoint.pt").is_file()
                    else ["distill", str(cfg), "--out", str(run)])
            code = _run(argv, phase, at)
            if code == -signal.SIGKILL:
                kills[phase] += 1
            elif code != 0:
                failures.append(f"{run.name}: {' '.join(argv[:2])} exited {code}")
                break
        if run.exists() and _finished(run):
            diffs = _same(reference, _summary(run))
            if diffs:
                failures.append(f"{run.name}: differs from the uninterrupted run in {', '.join(diffs)}")
    report = {"kills": sum(kills.values()), "kills_by_moment": kills, "interrupted_runs": runs,
              "identical_to_uninterrupted": not failures, "failures": failures,
              "epochs": args.epochs, "seconds": round(time.time() - t0, 1),
              "command": f"python benchmarks/kill_resume.py --kills {args.kills} --epochs {args.epochs}"}
    print(json.dumps(report, indent=1))
    if args.out:
        (ROOT / args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
