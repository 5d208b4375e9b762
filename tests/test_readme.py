"""The README's Python example runs as written (in a fresh interpreter, in a temporary folder)."""

import re
import subprocess
import sys
from pathlib import Path

from conftest import HANG_S

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def test_readme_python_example(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has a Python example"
    p = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-2000:]
    top1 = float(re.search(r"student test top-1: ([\d.]+)%", p.stdout).group(1))
    assert top1 > 90, p.stdout  # the README says "about 96%"
    assert "'stage2': (1, 32, 4, 4)" in p.stdout
    assert (tmp_path / "runs" / "readme-student" / "checkpoint.pt").is_file()


def test_readme_recipe_block_validates():
    import yaml

    from kdkit.config import parse_config
    from kdkit.methods import method_name

    block = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)[0]
    cfg = parse_config(yaml.safe_load(block))
    assert [method_name(m) for m in cfg.method] == ["kd", "at"]


def _readme_commands() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        lines += [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    return lines


def test_every_readme_command_parses_and_its_files_fit_together():
    """Every command of the README's shell blocks parses with kdkit's own parser; the recipes it names
    validate; a run directory it names is the one an earlier command's recipe writes, and no command
    writes a run directory an earlier one wrote (so the commands work in the order given, literally). The
    quick ones are run for real in the next test."""
    import shlex

    from kdkit.cli import build_parser
    from kdkit.config import load_config

    commands = _readme_commands()
    assert "make demo" in commands and "make test" in commands
    written = set()
    parser = build_parser()
    for line in commands:
        argv = shlex.split(line)
        if argv[0] == "make":
            assert argv[1] in ("demo", "test")
            if argv[1] == "demo":
                written.add("runs/demo")  # kdkit demo's default folder
            continue
        if argv[0] == "torchrun":  # torchrun ... -m kdkit ARGS
            argv = argv[argv.index("kdkit"):]
        assert argv[0] == "kdkit", line
        args = parser.parse_args(argv[1:])
        out = getattr(args, "out", None) if args.command in ("train", "distill") else None
        if out:
            written.add(out)
        for a in argv[1:]:
            if a.endswith(".yaml") and a.startswith("configs/") and "pipelines" not in a:
                cfg = load_config(ROOT / a)
                if not out:
                    assert f"{cfg.train.out_dir}/{cfg.train.run_name}" not in written, f"{line}: the run exists"
                    written.add(f"{cfg.train.out_dir}/{cfg.train.run_name}")
            elif a == out:
                continue
            elif a.startswith("runs/"):
                run = "/".join(a.split("/")[:2])
                assert run in written, f"{line}: {run} is written by no earlier README command"
        assert args.command


def test_the_quick_readme_commands_run_as_written(tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for line in _readme_commands():
        if line.startswith(("kdkit list", "kdkit inspect", "kdkit pipeline configs/pipelines/digits.yaml")):
            p = subprocess.run([sys.executable, "-m", "kdkit", *__import__("shlex").split(line)[1:]], cwd=tmp_path,
                               capture_output=True, text=True, timeout=HANG_S)
            assert p.returncode == 0, f"{line}: {p.stderr[-1500:]}"
