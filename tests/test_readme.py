"""The README's Python example runs as written (in a fresh interpreter, in a temporary folder)."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has a Python example"
    p = subprocess.run([sys.executable, "-c", blocks[0]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "student test top-1:" in p.stdout and "'stage2': (1, 32, 4, 4)" in p.stdout
    assert (tmp_path / "runs" / "readme-student" / "checkpoint.pt").is_file()


def test_readme_recipe_block_validates():
    import yaml

    from kdkit.config import parse_config
    from kdkit.methods import method_name

    block = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)[0]
    cfg = parse_config(yaml.safe_load(block))
    assert [method_name(m) for m in cfg.method] == ["kd", "at"]
