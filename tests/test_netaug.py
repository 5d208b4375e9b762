"""NetAug: the augmented network shares the student's weights (one step changes both), the student is
the augmented network with zero extra weights, models that do not widen as a prefix are refused, and a
NetAug + KD run resumes bit-identically and deploys the student alone."""

import pytest
import torch
import yaml
from conftest import killed_and_resumed

from kdkit.cli import main as cli
from kdkit.errors import ConfigError
from kdkit.methods import create_method
from kdkit.methods.distiller import Distiller
from kdkit.models import create_model


def _distiller(name="cnn_tiny", shape=(1, 28, 28), **cfg):
    student = create_model(name, num_classes=10, in_channels=shape[0])
    method = create_method("netaug", **cfg)
    return student, method, Distiller(student, [method], input_shape=shape)


@pytest.mark.parametrize("name,shape", [("cnn_tiny", (1, 28, 28)), ("mlp", (1, 8, 8)),
                                        ("resnet20", (3, 32, 32)), ("mobilenetv2", (3, 32, 32))])
def test_the_student_is_the_augmented_network_with_zero_extra_weights(name, shape):
    student, method, _ = _distiller(name, shape)
    x = torch.randn(64, *shape)
    student.train()
    for m in student.modules():  # batch statistics on both sides (the augmented network keeps none)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    with torch.no_grad():
        want = student(x)
        for k in range(len(method.mults)):
            torch.testing.assert_close(method.augmented(student, x, k, zero_extra=True), want, rtol=1e-4, atol=1e-4)
            # and with its extra weights it is a different, wider network
            assert (method.augmented(student, x, k) - want).abs().max() > 1e-3


def test_widths_are_rounded_as_make_divisible_rounds():
    from kdkit.methods.netaug import make_divisible

    # MobileNet's / the NetAug authors' rounding: nearest multiple of 8, at least 8, never 10% below
    assert [make_divisible(v) for v in (4, 12, 20, 24, 36, 3.9, 100)] == [8, 16, 24, 24, 40, 8, 104]
    assert make_divisible(27, 8) == 32 and make_divisible(26.9, 8) == 24 + 8  # 24 < 0.9 * 26.9 -> up
    student, method, _ = _distiller(width_mults=[1.5, 2.5])
    got = [dict(w.named_modules())["stage1.0"].out_channels for w in method._wides]
    assert got == [16, 24]  # 8 channels x1.5 = 12 -> 16, x2.5 = 20 -> 24 (plain rounding: 12 and 20)
    _, plain, _ = _distiller(width_mults=[1.5, 2.5], divisor=1)
    assert [dict(w.named_modules())["stage1.0"].out_channels for w in plain._wides] == [12, 20]


def test_augmented_widths_follow_the_multipliers():
    student, method, _ = _distiller(width_mults=[2.0, 3.0])
    convs = [(n, m) for n, m in student.named_modules() if isinstance(m, torch.nn.Conv2d)]
    for k, mult in enumerate(method.mults):
        wide = dict(method._wides[k].named_modules())
        for n, m in convs:
            assert wide[n].out_channels == round(mult * m.out_channels)
        assert wide["fc"].out_features == 10 and wide["fc"].in_features == round(mult * student.fc.in_features)
        assert wide["stage1.0"].in_channels == 1  # the input keeps its channels


def test_one_step_changes_the_student_and_the_augmented_network_through_the_shared_weights():
    torch.manual_seed(0)
    student, method, distiller = _distiller()
    x, y = torch.randn(64, 1, 28, 28), torch.randint(10, (64,))
    terms = distiller(x, y)
    assert set(terms) == {"ce", "netaug"}
    student.zero_grad()
    terms["netaug"].backward()  # the augmented loss alone reaches the student's weights
    assert student.stage1[0].weight.grad.abs().sum() > 0 and student.fc.weight.grad.abs().sum() > 0
    extra = method.extra["stage1__0__weight"]
    assert extra.grad.abs().sum() > 0
    # the student's own block of the extra tensor is not used (the student's weights stand there)
    assert extra.grad[:student.stage1[0].out_channels].abs().sum() == 0
    before_student = student.stage1[0].weight.detach().clone()
    with torch.no_grad():
        before_aug = method.params(student, 0)["stage1.0.weight"].clone()
    torch.optim.SGD(distiller.parameters(), lr=0.1).step()
    with torch.no_grad():
        after_aug = method.params(student, 0)["stage1.0.weight"]
    n = student.stage1[0].out_channels
    assert not torch.equal(before_student, student.stage1[0].weight)
    torch.testing.assert_close(after_aug[:n], student.stage1[0].weight.detach(), rtol=0, atol=0)  # shared block
    assert not torch.equal(before_aug[n:], after_aug[n:])  # and the extra channels moved too


def test_the_students_running_statistics_see_only_the_student():
    torch.manual_seed(0)
    student, method, _ = _distiller()
    bn = student.stage1[1]
    x = torch.randn(64, 1, 28, 28)
    before = bn.running_mean.clone()
    method.augmented(student, x, len(method.mults) - 1)
    assert torch.equal(before, bn.running_mean)


def test_models_that_do_not_widen_as_a_prefix_are_refused():
    with pytest.raises(ConfigError, match="not the leading block"):
        _distiller("shufflenetv2", (3, 32, 32))


@pytest.mark.parametrize("mults", [[], [1.0], [0.5, 2.0], [9.0]])
def test_bad_multipliers_exit_2(tmp_path, capsys, mults):
    cfg = {"model": "cnn_tiny", "method": {"name": "netaug", "width_mults": mults}, "data": {"name": "digits"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 2
    assert "width_mults" in capsys.readouterr().err


def test_netaug_with_kd_resumes_and_deploys_the_student_alone(tmp_path, teacher_ckpt, capsys):
    cfg = {"model": "cnn_tiny", "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt},
           "method": [{"name": "kd"}, {"name": "netaug", "width_mults": [2.0, 3.0]}], "data": {"name": "digits"},
           "optim": {"lr": 0.05}, "train": {"epochs": 2, "progress": False, "seed": 0}}
    result = killed_and_resumed(cfg, tmp_path)
    assert result["deployed"] == "student" and result["test/top1"] > 60
    ckpt = tmp_path / "full" / "checkpoint.pt"
    out = tmp_path / "s.safetensors"
    assert cli(["export", str(ckpt), "--out", str(out)]) == 0
    from safetensors.torch import load_file

    weights = load_file(str(out))
    plain = create_model("cnn_tiny", num_classes=10, in_channels=1).state_dict()
    assert weights.keys() == plain.keys() and all(weights[k].shape == plain[k].shape for k in plain)
