"""Lifelong distillation (`kdkit lifelong`, Learning without Forgetting, Li & Hoiem 2016) on Split-digits
(5 tasks of 2 classes): the distillation term against its definition at a realistic size, LwF forgets far
less than fine-tuning in the task-incremental setting, joint training is the upper bound, the accuracy
matrix and forgetting are computed as defined, and bad task sequences get one-line errors."""

import json

import pytest
import torch
import torch.nn.functional as F

from kdkit.cli import main as cli
from kdkit.errors import ConfigError
from kdkit.lifelong import lifelong, lwf_loss, parse_tasks, summary


def test_the_distillation_term_is_the_papers():
    torch.manual_seed(0)
    new, old = torch.randn(256, 10), torch.randn(256, 10) * 3
    by_hand = -(F.softmax(old / 2, 1) * F.log_softmax(new / 2, 1)).sum(1).mean()  # no T^2
    torch.testing.assert_close(lwf_loss(new, old, 2.0), by_hand)


def test_summary_and_task_parsing():
    matrix = [[90.0, None, None], [70.0, 95.0, None], [60.0, 80.0, 99.0]]
    s = summary(matrix)
    assert s["average"] == pytest.approx((60 + 80 + 99) / 3) and s["forgetting"] == pytest.approx((30 + 15) / 2)
    classes = ["a", "b", "c", "d"]
    assert parse_tasks(None, classes) == [[0, 1], [2, 3]] and parse_tasks("a,b/3,2", classes) == [[0, 1], [3, 2]]
    for spec, message in (("a,b/e,c", "names class 'e'"), ("a,b/b,c", "'b' is in two tasks"), ("a,b", "two tasks")):
        with pytest.raises(ConfigError, match=message):
            parse_tasks(spec, classes)


def test_lwf_forgets_less_than_finetuning_and_joint_is_the_upper_bound(tmp_path, capsys):
    runs = {m: lifelong("digits", method=m, epochs=3) for m in ("lwf", "finetune")}
    lwf, ft = (runs[m]["task_incremental"] for m in ("lwf", "finetune"))
    assert len(lwf["matrix"]) == 5 and lwf["matrix"][0][1] is None and lwf["matrix"][-1][-1] is not None
    assert lwf["forgetting"] < ft["forgetting"] - 5 and lwf["average"] > ft["average"] + 5
    # class-incremental beside it: the tasks must be told apart too, so every method is far lower there
    assert runs["lwf"]["class_incremental"]["average"] < lwf["average"]
    assert cli(["lifelong", "--data", "digits", "--method", "joint", "--epochs", "3", "--out",
                str(tmp_path / "j.json")]) == 0
    joint = json.loads((tmp_path / "j.json").read_text())
    assert len(joint["task_incremental"]["matrix"]) == 1 and joint["task_incremental"]["average"] > lwf["average"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == joint


@pytest.mark.parametrize("args, message", [
    (["--tasks", "0,1/2,11"], "names class '11'"),
    (["--tasks", "0,1"], "at least two tasks"),
    (["--epochs", "0"], "epochs >= 1"),
])
def test_bad_lifelong_inputs(capsys, args, message):
    assert cli(["lifelong", "--data", "digits", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
