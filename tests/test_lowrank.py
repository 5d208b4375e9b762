"""Low-rank factorization: at full rank it reproduces each layer (linear, 1x1 and strided k x k
convolutions), ranks follow ratio/energy, a factorized run reloads from its recorded ranks and resumes
bit-identically, and bad input is refused clearly."""

import pytest
import torch
import yaml
from conftest import killed_and_resumed
from torch import nn

from kdkit.cli import main as cli
from kdkit.engine.checkpoint import load_checkpoint
from kdkit.lowrank import LowRank, choose_rank, factorize, tucker2


@pytest.mark.parametrize("layer,shape,full", [
    (nn.Linear(20, 30), (64, 20), [20]),
    (nn.Conv2d(8, 16, 1), (64, 8, 9, 9), [8]),
    (nn.Conv2d(8, 16, 3, padding=1, stride=2), (64, 8, 9, 9), [16, 8]),
    (nn.Conv2d(16, 12, 3, padding=2, dilation=2, bias=False), (64, 16, 10, 10), [12, 16]),
])
def test_full_rank_reproduces_the_layer(layer, shape, full):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    new, ranks = factorize(layer, ranks=full)
    assert ranks == full
    with torch.no_grad():
        torch.testing.assert_close(new(x), layer(x), rtol=1e-4, atol=1e-5)


def test_lower_ranks_approximate_and_hooi_improves_on_hosvd():
    torch.manual_seed(0)
    w = torch.randn(32, 24, 3, 3)
    errs = []
    for sweeps in (0, 3):
        u_out, core, u_in = tucker2(w, 8, 6, sweeps)
        approx = torch.einsum("rshw,or,is->oihw", core, u_out, u_in)
        errs.append(float((approx - w.double()).norm()))
    assert errs[1] <= errs[0] + 1e-9  # HOOI sweeps never make the fit worse
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # squared: 16, 4, 1, 1 of 22
    assert choose_rank(s, None, 0.7) == 1 and choose_rank(s, None, 0.9) == 2 and choose_rank(s, None, 1.0) == 4
    assert choose_rank(s, 0.5, None) == 2 and choose_rank(s, 0.01, None) == 1


def test_the_transform_factorizes_what_gets_smaller():
    from kdkit.models import create_model

    torch.manual_seed(0)
    m = create_model("cnn_medium", num_classes=10)
    t = LowRank(ratio=0.25)
    before = sum(p.numel() for p in m.parameters())
    t.apply(m)
    assert sum(p.numel() for p in m.parameters()) < 0.5 * before
    assert "stage1.0" not in t.ranks  # the first convolution is left whole (skip_first)
    assert all(isinstance(dict(m.named_modules())[p], nn.Sequential) for p in t.ranks)
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def _cfg(ckpt, **lowrank):
    return {"model": {"name": "cnn_small", "checkpoint": ckpt, "transforms": [{"name": "lowrank", **lowrank}]},
            "teacher": {"name": "cnn_small", "checkpoint": ckpt}, "method": "kd", "data": {"name": "digits"},
            "train": {"epochs": 2, "progress": False, "seed": 0}}


def test_a_factorized_run_reloads_and_resumes(tmp_path, teacher_ckpt, capsys):
    result = killed_and_resumed(_cfg(teacher_ckpt, energy=0.8), tmp_path)
    record = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]["transforms"][0]
    assert record["structure"]["ranks"] and all(len(r) in (1, 2) for r in record["structure"]["ranks"].values())
    capsys.readouterr()
    assert cli(["eval", str(tmp_path / "full" / "checkpoint.pt"), "--json"]) == 0
    assert float(yaml.safe_load(capsys.readouterr().out.splitlines()[-1])["top1"]) == pytest.approx(result["test/top1"])


@pytest.mark.parametrize("lowrank,message", [
    ({}, "give one of ratio"),
    ({"ratio": 0.5, "energy": 0.9}, "give one of ratio"),
    ({"energy": 1.5}, "energy must be in (0, 1]"),
    ({"ratio": 0.5, "ignore": ["stage9"]}, "no module 'stage9' to leave whole"),
])
def test_bad_factorization_requests_are_refused(lowrank, message, tmp_path, teacher_ckpt, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_cfg(teacher_ckpt, **lowrank)))
    assert cli(["distill", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
