"""A user's own modules as they are: forwards that return a tuple or a dict give their logits (by
default or by model.output), features by the user's module names, the worked example in examples/ runs,
and a wrong output choice is a clear error."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import HANG_S
from torch import nn

from kdkit.errors import ConfigError
from kdkit.features import logits_output

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_modules.py"


class Multi(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind, self.fc = kind, nn.Linear(4, 3)

    def forward(self, x):
        z = self.fc(x)
        return {"tuple": (z, x), "list": [x.sum(), z], "dict": {"logits": z, "h": x}, "one": {"scores": z},
                "tensor": z}[self.kind]


@pytest.mark.parametrize("kind,output", [("tuple", None), ("tuple", 0), ("list", 1), ("dict", None),
                                         ("dict", "logits"), ("one", None), ("tensor", None)])
def test_the_logits_of_any_output(kind, output):
    m = logits_output(Multi(kind), output)
    x = torch.randn(5, 4)
    torch.testing.assert_close(m(x), m.fc(x))
    assert set(m.state_dict()) == {"fc.weight", "fc.bias"}  # nothing added to the weights


@pytest.mark.parametrize("kind,output,message", [
    ("dict", None, "no key 'logits'"), ("tuple", 5, "index 5"), ("dict", "nope", "no key 'nope'"),
    ("tensor", "logits", "set model.output")])
def test_a_wrong_output_choice_is_a_clear_error(kind, output, message):
    m = Multi(kind)
    if kind == "dict" and output is None:
        m.kind = "dict"
        m.forward = lambda x: {"a": m.fc(x), "b": x}  # two tensors, neither named logits
    with pytest.raises(ConfigError, match=message):
        logits_output(m, output)(torch.randn(2, 4))


def test_the_worked_example_runs_as_written(tmp_path):
    p = subprocess.run([sys.executable, str(EXAMPLE)], cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S)
    assert p.returncode == 0, p.stderr[-2000:]
    student = float(p.stdout.split("student test top-1: ")[1].split()[0])
    assert student > 70, p.stdout
    from kdkit.cli import main as cli

    ckpt = tmp_path / "runs" / "own-student" / "checkpoint.pt"
    assert cli(["--plugin", str(EXAMPLE), "export", str(ckpt), "--out", str(tmp_path / "s.onnx")]) == 0
