"""Ghost batch norm (train.ghost_batch_size): the same as batch norm run on each group separately."""

import copy
import json

import pytest
import torch
from torch import nn

from kdkit import from_config
from kdkit.config import ModelSpec
from kdkit.engine.checkpoint import load_checkpoint
from kdkit.engine.rebuild import build_model
from kdkit.errors import ConfigError
from kdkit.models import create_model
from kdkit.models.ghost_bn import GhostBatchNorm1d, GhostBatchNorm2d, convert_ghost_batch_norm


def _bn(cls=nn.BatchNorm2d, c=4, **kw):
    torch.manual_seed(0)
    bn = cls(c, **kw)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn


def _per_group(bn, x, w, g):
    """Reference: a separate copy of the plain layer on each group; outputs, input grads, running stats."""
    x = x.clone().requires_grad_()
    copies = [copy.deepcopy(bn) for _ in range(-(-len(x) // g))]
    y = torch.cat([m(c) for m, c in zip(copies, x.split(g), strict=True)])
    (y * w).sum().backward()
    mean = torch.stack([m.running_mean for m in copies]).mean(0)
    var = torch.stack([m.running_var for m in copies]).mean(0)
    return y.detach(), x.grad, mean, var


@pytest.mark.parametrize("cls,shape,g", [(nn.BatchNorm2d, (24, 4, 5, 5), 8),   # 3 full groups
                                         (nn.BatchNorm2d, (26, 4, 3, 3), 8),   # and a last group of 2
                                         (nn.BatchNorm1d, (30, 4), 10),
                                         (nn.BatchNorm1d, (12, 4, 7), 4)])
def test_ghost_bn_equals_batch_norm_per_group(cls, shape, g):
    bn = _bn(cls)
    x = torch.randn(*shape) * 3 + 1
    w = torch.randn(*shape)
    ref_y, ref_grad, ref_mean, ref_var = _per_group(bn, x, w, g)
    ghost = convert_ghost_batch_norm(copy.deepcopy(bn), g)
    assert isinstance(ghost, GhostBatchNorm2d if cls is nn.BatchNorm2d else GhostBatchNorm1d)
    xg = x.clone().requires_grad_()
    y = ghost(xg)
    (y * w).sum().backward()
    torch.testing.assert_close(y, ref_y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xg.grad, ref_grad, atol=1e-5, rtol=1e-5)
    # running statistics: one update per step with the groups' average (= the copies' average)
    torch.testing.assert_close(ghost.running_mean, ref_mean)
    torch.testing.assert_close(ghost.running_var, ref_var)
    assert int(ghost.num_batches_tracked) == 1
    # the parameters' gradients match too
    ref = copy.deepcopy(bn)
    copies_w = [copy.deepcopy(ref) for _ in range(-(-len(x) // g))]
    for m in copies_w:
        m.weight, m.bias = ref.weight, ref.bias  # share, so the grads accumulate in one place
    (torch.cat([m(c) for m, c in zip(copies_w, x.split(g), strict=True)]) * w).sum().backward()
    torch.testing.assert_close(ghost.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ghost.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-5)


def test_ghost_bn_small_batch_and_eval_are_plain_batch_norm():
    bn = _bn()
    ghost = convert_ghost_batch_norm(copy.deepcopy(bn), 64)
    x = torch.randn(16, 4, 3, 3)
    assert torch.equal(ghost(x), bn(x))  # batch <= group: exactly the plain layer
    assert torch.equal(ghost.running_var, bn.running_var)
    ghost.eval(), bn.eval()
    x = torch.randn(256, 4, 3, 3)
    assert torch.equal(ghost(x), bn(x))  # evaluation uses the running statistics, whatever the batch


def test_ghost_bn_channels_last_and_bf16():
    ghost = convert_ghost_batch_norm(_bn(), 4)
    x = torch.randn(16, 4, 5, 5)
    y = ghost(x)
    y_cl = copy.deepcopy(ghost)(x.to(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = copy.deepcopy(ghost)(x.bfloat16())
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y, atol=0.05, rtol=0.02)


def test_ghost_bn_momentum_none_is_a_cumulative_average():
    bn = _bn(momentum=None)
    ghost = convert_ghost_batch_norm(copy.deepcopy(bn), 4)
    xs = [torch.randn(8, 4, 2, 2) + i for i in range(3)]
    for x in xs:
        ghost(x)
    groups = [g for x in xs for g in x.split(4)]
    means = torch.stack([g.mean((0, 2, 3)) for g in groups])
    torch.testing.assert_close(ghost.running_mean, means.mean(0))


def test_convert_shares_parameters_and_keeps_checkpoint_keys():
    model = create_model("resnet8", num_classes=10, in_channels=3)
    plain_keys = list(model.state_dict())
    params = {id(p) for p in model.parameters()}
    out = convert_ghost_batch_norm(model, 32)
    assert out is model
    assert not any(type(m) in (nn.BatchNorm1d, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, GhostBatchNorm2d) for m in model.modules()) > 3
    assert list(model.state_dict()) == plain_keys
    assert {id(p) for p in model.parameters()} == params
    fresh = create_model("resnet8", num_classes=10, in_channels=3)
    fresh.load_state_dict(model.state_dict())  # loads into the plain model
    convert_ghost_batch_norm(model, 16)  # already ghost: the size changes
    assert all(m.group_size == 16 for m in model.modules() if isinstance(m, GhostBatchNorm2d))
    with pytest.raises(ValueError, match="group size"):
        convert_ghost_batch_norm(model, 0)


def test_ghost_batch_size_in_a_run(tmp_path, digits_cfg, teacher_ckpt):
    """train.ghost_batch_size converts the student (feature taps still work) and the methods' modules;
    the checkpoint evaluates with the plain model."""
    cfg = digits_cfg(tmp_path, model="cnn_tiny", teacher={"name": "cnn_small", "checkpoint": teacher_ckpt},
                     method=[{"name": "kd"}, {"name": "fitnets", "student_layer": "stage2.1",
                                              "teacher_layer": "stage2.1"}],
                     data={"name": "digits", "batch_size": 64},
                     train={"epochs": 1, "progress": False, "out_dir": str(tmp_path), "run_name": "ghost",
                            "ghost_batch_size": 16})
    trainer = from_config(cfg, log=lambda m: None)
    student = trainer.distiller.student
    assert isinstance(student.stage2[1], GhostBatchNorm2d)  # the tapped layer is the converted one
    helpers = list(trainer.distiller.methods.modules())
    assert any(isinstance(m, GhostBatchNorm2d) for m in helpers)  # the fitnets regressor's batch norm
    assert not any(type(m) is nn.BatchNorm2d for m in helpers)
    calls = []
    student.stage2[1].register_forward_hook(lambda *a: calls.append(1))
    result = trainer.fit()
    assert calls and result["test/top1"] > 10
    ckpt = load_checkpoint(tmp_path / "ghost" / "checkpoint.pt")
    assert ckpt["model"]["transforms"] == [{"name": "ghost_bn", "group_size": 16, "structure": {}}]  # recorded
    # not structural: loads into the plain model
    plain = build_model(ModelSpec("cnn_tiny", checkpoint=str(tmp_path / "ghost" / "checkpoint.pt")), 10, 1)
    assert all(type(m) is not GhostBatchNorm2d for m in plain.modules())


def test_ghost_batch_size_validation(tmp_path, digits_cfg):
    with pytest.raises(ConfigError, match="ghost_batch_size"):
        digits_cfg(tmp_path, train={"ghost_batch_size": 1})


def test_bench_ghost_batch_size(tmp_path, monkeypatch):
    """`kdkit bench --ghost-batch-size` runs the kdkit loop with ghost batch norm and names the JSON so."""
    from kdkit.bench import default_out
    from kdkit.cli import main
    from kdkit.models import ghost_bn

    groups = []
    normalise = ghost_bn._GhostMixin._normalise
    monkeypatch.setattr(ghost_bn._GhostMixin, "_normalise",
                        lambda self, xg: groups.append(xg.shape[:2]) or normalise(self, xg))
    out = tmp_path / "b.json"
    assert main(["bench", "--teacher", "cnn_small", "--student", "cnn_tiny", "--dataset", "digits", "--steps", "1",
                 "--warmup", "1", "--repeats", "1", "--batch-size", "32", "--ghost-batch-size", "8",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["ghost_batch_size"] == 8 and default_out(r).name.endswith("-b32-cpu-ghost8.json")
    assert groups and set(groups) == {(4, 8)}  # 32 samples in 4 groups of 8, in every batch-norm layer
