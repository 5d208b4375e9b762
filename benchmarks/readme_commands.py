"""Run every shell command of the README literally, in order, in a fresh clone of this repository.

    python benchmarks/readme_commands.py [--workdir /tmp/kdkit-readme] [--out docs/results/readme_commands.md]

The clone gets its own virtual environment through the README's first command (`make demo`), and the
later commands run with that environment's `bin/` first on PATH (as for a user who activated it). Each
command's exit code, wall time and last output line go into a Markdown table. The heavy commands (a
Fashion-MNIST teacher, a KD student, a data-parallel run, the benchmark) take about half an hour on the
2-core development machine; `tests/test_readme.py` runs the quick ones in `make test` and checks that
the others parse and that each run directory they name is written by an earlier command.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_readme import _readme_commands  # noqa: E402  (one extraction of the README's commands)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="/tmp/kdkit-readme")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "readme_commands.md"))
    args = ap.parse_args()
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=work, capture_output=True,
                          text=True).stdout.strip()
    env = dict(os.environ, PATH=f"{work / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("VIRTUAL_ENV", None)
    rows, failed = [], 0
    for line in _readme_commands():
        t0 = time.perf_counter()
        p = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        out = [s for s in (p.stdout + p.stderr).splitlines() if s.strip()]
        last = out[-1].strip() if out else ""
        failed += p.returncode != 0
        print(f"[{p.returncode}] {dt:7.1f} s  {line}\n        {last}", flush=True)
        if p.returncode != 0:
            print(p.stderr[-3000:], flush=True)
        rows.append((line, p.returncode, dt, last.replace("|", "\\|")[:160]))
    md = [f"# Every README command, run as written ({len(rows)} commands, {failed} failed)", "",
          f"`python benchmarks/readme_commands.py`: a fresh clone of commit {head}, commands in the README's order, "
          f"on {platform.machine()} with {os.cpu_count()} CPU(s). Times are wall times of one run on a shared "
          "machine (indicative only).", "",
          "| command | exit | time (s) | last line of output |", "|---|---:|---:|---|"]
    md += [f"| `{c}` | {rc} | {dt:.1f} | {last} |" for c, rc, dt, last in rows]
    Path(args.out).write_text("\n".join(md) + "\n")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
