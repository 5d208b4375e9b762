"""Balance hints: each loss term's share of the gradient on the student over the first steps of a run,
logged once, written into the first epoch's metrics, shown in the report, with a warning when one term
outweighs the others by more than ``train.balance_factor``. The shares are checked against gradients
computed here, and the probe must not change the training."""

import json
import math
import warnings

import pytest
import torch

from kdkit import from_config, load_config
from kdkit.cli import main as cli
from kdkit.engine.balance import BalanceProbe


def _cfg(tmp_path, teacher_ckpt, name, methods, **train):
    return load_config(base={"model": "cnn_tiny", "data": {"name": "digits"}, "optim": {"lr": 0.05},
                             "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt}, "method": methods,
                             "train": {"epochs": 1, "progress": False, "out_dir": str(tmp_path), "run_name": name,
                                       **train}})


def _first_epoch(run_dir):
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_probe_norms_are_each_terms_own_gradient_norm():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    x, y = torch.randn(128, 20), torch.randint(0, 10, (128,))
    out = net(x)
    terms = {"ce": torch.nn.functional.cross_entropy(out, y), "l2": 50.0 * out.pow(2).mean(),
             "const": torch.tensor(1.0)}
    probe = BalanceProbe(list(net.parameters()), steps=1, factor=10.0)
    probe.measure(terms)
    for name in ("ce", "l2"):
        grads = torch.autograd.grad(terms[name], list(net.parameters()), retain_graph=True)
        expected = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        assert probe.norms[name] == pytest.approx(expected, rel=1e-5)
    assert probe.norms["const"] == 0.0 and not probe.active
    s = probe.summary()
    assert sum(v for k, v in s.items() if k != "grad_share/dominance") == pytest.approx(1.0)
    assert s["grad_share/dominance"] == pytest.approx(probe.norms["l2"] / probe.norms["ce"])
    assert all(p.grad is None for p in net.parameters())  # measuring leaves the step's own gradients alone


def test_a_dominating_hint_warns_and_is_in_metrics_and_report(tmp_path, teacher_ckpt, capsys):
    cfg = _cfg(tmp_path, teacher_ckpt, "heavy", ["kd", {"name": "fitnets", "beta": 2000.0}])
    lines = []
    with pytest.warns(UserWarning, match=r"loss term 'hint' gives [\d.]+x the gradient on the student"):
        from_config(cfg, log=lines.append).fit()
    assert any(line.startswith("gradient share on the student over the first 10 steps: hint") for line in lines)
    row = _first_epoch(tmp_path / "heavy")
    shares = {k: v for k, v in row.items() if k.startswith("grad_share/") and k != "grad_share/dominance"}
    assert set(shares) == {"grad_share/ce", "grad_share/kd", "grad_share/hint"}
    assert sum(shares.values()) == pytest.approx(1.0) and row["grad_share/dominance"] > 10
    assert cli(["compare", str(tmp_path / "heavy")]) == 0
    out = capsys.readouterr().out
    assert "Balance" in out and "hint dominates" in out


def test_a_balanced_run_does_not_warn_and_the_probe_does_not_change_training(tmp_path, teacher_ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no balance warning (nor any other)
        a = from_config(_cfg(tmp_path, teacher_ckpt, "on", "kd", epochs=2), log=lambda m: None).fit()
    b = from_config(_cfg(tmp_path, teacher_ckpt, "off", "kd", epochs=2, balance_steps=0), log=lambda m: None).fit()
    second = json.loads((tmp_path / "on" / "metrics.jsonl").read_text().splitlines()[1])
    assert second["epoch"] == 2 and not any(k.startswith("grad_share/") for k in second)  # measured once
    assert a["test/top1"] == b["test/top1"] and a["train/loss"] == b["train/loss"]
    assert "grad_share/kd" in _first_epoch(tmp_path / "on") and "grad_share/kd" not in _first_epoch(tmp_path / "off")
    wa = torch.load(tmp_path / "on" / "checkpoint.pt", weights_only=True)["student"]
    wb = torch.load(tmp_path / "off" / "checkpoint.pt", weights_only=True)["student"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_balance_settings_are_refused(tmp_path, teacher_ckpt):
    with pytest.raises(Exception, match="balance_factor > 1"):
        _cfg(tmp_path, teacher_ckpt, "x", "kd", balance_factor=0.5)
