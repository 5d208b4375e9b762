"""Adversarial and robust distillation (issue 31): the PGD attack, robust accuracy as an evaluation option
of the classification task, ARD, and the adversarial distillation of logits (Xu et al. / MEAL)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdkit import create_method, create_model
from kdkit.cli import main as cli
from kdkit.engine.evaluate import evaluate
from kdkit.errors import ConfigError
from kdkit.losses.robust import PGD
from kdkit.methods import Distiller
from kdkit.tasks import create_task

MEAN, STD = torch.tensor([0.3, 0.5, 0.2]).view(1, 3, 1, 1), torch.tensor([0.25, 0.5, 0.2]).view(1, 3, 1, 1)


def _images(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, 32, 32, generator=g)
    return (pixels - MEAN) / STD, torch.randint(0, 10, (n,), generator=g)


def test_pgd_stays_in_the_pixel_ball_and_the_image_range_and_raises_the_loss():
    torch.manual_seed(0)
    model = create_model("cnn_small", num_classes=10, in_channels=3).eval()
    x, y = _images()
    attack = PGD(epsilon=8 / 255, step_size=2 / 255, steps=5)
    adv = attack.perturb(model, x, y, MEAN, STD, torch.Generator().manual_seed(1))
    pixels, adv_pixels = x * STD + MEAN, adv * STD + MEAN
    assert (adv_pixels - pixels).abs().max() <= 8 / 255 + 1e-5 and (adv_pixels - pixels).abs().max() > 7 / 255
    assert adv_pixels.min() >= -1e-6 and adv_pixels.max() <= 1 + 1e-6
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    again = attack.perturb(model, x, y, MEAN, STD, torch.Generator().manual_seed(1))
    assert torch.equal(adv, again)  # the same start, the same examples
    assert torch.equal(PGD(epsilon=0.0).perturb(model, x, y, MEAN, STD), x)


def test_one_pgd_step_is_the_signed_input_gradient_of_the_cross_entropy():
    """A linear model's cross-entropy gradient with respect to its input is ``W^T (softmax(Wx) - onehot)``:
    one step from the image moves every input by ``step / std`` in its sign, then clips to the ball."""
    torch.manual_seed(0)
    linear = nn.Linear(3 * 32 * 32, 10)
    model = nn.Sequential(nn.Flatten(), linear)
    x, y = _images()
    adv = PGD(epsilon=1 / 255, step_size=0.5 / 255, steps=1, random_start=False).perturb(model, x, y, MEAN, STD)
    with torch.no_grad():
        p = (x.flatten(1) @ linear.weight.T + linear.bias).softmax(1)
        grad = ((p - F.one_hot(y, 10)) @ linear.weight).view_as(x)
    expected = x + (0.5 / 255) / STD * grad.sign()
    lower, upper = (0 - MEAN) / STD, (1 - MEAN) / STD
    expected = torch.minimum(torch.maximum(expected, lower), upper)
    assert torch.allclose(adv, expected, atol=1e-6)


def test_pgd_and_robust_options_refuse_bad_settings_in_one_line():
    with pytest.raises(ValueError, match="epsilon must be >= 0"):
        PGD(epsilon=-0.1)
    for robust, message in (({"epsilon": -0.01}, "task.robust: PGD epsilon must be >= 0"),
                            ({"steps": 0}, "steps must be an integer >= 1"),
                            ({"eps": 0.1}, "task.robust takes epsilon, step_size, steps and random_start; got eps"),
                            (0.03, "task.robust: a mapping")):
        with pytest.raises(ConfigError, match=message) as e:
            create_task({"name": "classification", "robust": robust})
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="epsilon must be >= 0"):
        create_method("ard", epsilon=-1 / 255)
    with pytest.raises(ConfigError, match="unknown option"):
        create_task({"name": "text_classification", "robust": {"epsilon": 0.1}})


def test_robust_accuracy_is_reported_beside_clean_accuracy_and_is_reproducible():
    torch.manual_seed(0)
    model = create_model("cnn_small", num_classes=10, in_channels=3)
    x, y = _images(128)

    class Loader(list):
        mean, std = MEAN, STD

    loader = Loader([(x[:64], y[:64]), (x[64:], y[64:])])
    robust = create_task({"name": "classification", "robust": {"epsilon": 8 / 255, "steps": 3}})
    a, b = evaluate(model, loader, task=robust), evaluate(model, loader, task=robust)
    clean = evaluate(model, loader)
    assert a == b and "robust_top1" not in clean and a["top1"] == clean["top1"]
    assert a["robust_top1"] <= a["top1"]
    zero = evaluate(model, loader, task=create_task({"name": "classification", "robust": {"epsilon": 0.0}}))
    assert zero["robust_top1"] == zero["top1"]


def _pair(method, **kw):
    torch.manual_seed(0)
    student, teacher = create_model("cnn_tiny", num_classes=10, in_channels=3), create_model(
        "cnn_small", num_classes=10, in_channels=3)
    m = create_method(method, **kw)
    d = Distiller(student, [m], [teacher], input_shape=(3, 32, 32))
    m.input_norm = (MEAN, STD)
    return d, m


def test_ard_is_the_soft_loss_of_the_student_on_pgd_examples_against_the_teacher_on_clean_images():
    d, m = _pair("ard", alpha=0.7, temperature=4.0, random_start=False, steps=2)
    x, y = _images()
    terms = d(x, y, epoch=0)
    assert set(terms) == {"ce", "ard"}
    with torch.no_grad():
        adv = x.clone()
        for _ in range(2):  # the attack written out: signed gradient of the student's CE, projected
            with torch.enable_grad():
                v = adv.clone().requires_grad_(True)
                grad, = torch.autograd.grad(F.cross_entropy(d.student(v), y, reduction="sum"), v)
            adv = torch.minimum(torch.maximum(adv + (2 / 255) / STD * grad.sign(), x - (8 / 255) / STD),
                                x + (8 / 255) / STD)
            adv = torch.minimum(torch.maximum(adv, (0 - MEAN) / STD), (1 - MEAN) / STD)
        s_adv, t = d.student(adv), d.teachers[0](x)
        kl = (F.softmax(t / 4, 1) * (F.log_softmax(t / 4, 1) - F.log_softmax(s_adv / 4, 1))).sum(1).mean()
        # the authors' nn.KLDivLoss() mean reduction averages over classes too: theirs is ours / K
        reference = (F.softmax(t / 4, 1) * (F.log_softmax(t / 4, 1) - F.log_softmax(s_adv / 4, 1))).mean()
    terms = {k: v.detach() for k, v in terms.items()}
    assert float(terms["ard"]) == pytest.approx(0.7 * 16 * float(kl), rel=1e-5)
    assert float(kl) == pytest.approx(10 * float(reference), rel=1e-5)
    assert float(terms["ce"]) == pytest.approx(0.3 * float(F.cross_entropy(d.student(x), y)), rel=1e-5)


def test_ard_trains_the_student_and_needs_a_teacher():
    d, m = _pair("ard", steps=2, temperature=4.0)
    opt = torch.optim.SGD(d.student.parameters(), lr=0.05, momentum=0.9)
    x, y = _images()
    first = None
    for _ in range(6):
        loss = sum(d(x, y, epoch=0).values())
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first
    with pytest.raises(ConfigError, match="ard need a teacher"):
        Distiller(create_model("cnn_tiny", num_classes=10, in_channels=3), [create_method("ard")], [],
                  input_shape=(3, 32, 32))


def test_the_adversarial_kd_discriminator_learns_to_tell_the_teacher_and_the_student_apart():
    for conditional in (False, True):
        d, m = _pair("adversarial_kd", conditional=conditional, lr=1e-2)
        x, y = _images()
        before = [p.clone() for p in m.discriminator.parameters()]
        for _ in range(30):  # the student is not stepped: its logits stay apart from the teacher's
            terms = d(x, y, epoch=0)
            d.after_step()
        assert set(terms) == {"ce", "adversarial", "similarity"}
        assert any(not torch.equal(a, b) for a, b in zip(before, m.discriminator.parameters()))
        with torch.no_grad():
            s, t = m._fed(d.student(x), y), m._fed(d.teachers[0](x), y)
            assert (torch.sigmoid(m.discriminator(t)) > 0.5).float().mean() > 0.9
            assert (torch.sigmoid(m.discriminator(s)) < 0.5).float().mean() > 0.9
        # the student's adversarial term is the cross-entropy of being called the teacher
        terms = d(x, y, epoch=0)
        with torch.no_grad():
            logit = m.discriminator(s)
            expected = F.binary_cross_entropy_with_logits(logit, torch.ones_like(logit))
            assert float(terms["adversarial"].detach()) == pytest.approx(float(expected), rel=1e-5)
            assert float(terms["similarity"].detach()) == pytest.approx(float(
                (d.student(x) - d.teachers[0](x)).abs().mean()), rel=1e-5)
        assert math.isfinite(float(m.last_discriminator_loss))
    with pytest.raises(ConfigError, match="similarity"):
        create_method("adversarial_kd", similarity="l2")


def test_train_with_ard_and_robust_accuracy_from_the_command_line(tmp_path):
    cfg = tmp_path / "ard.yaml"
    teacher_cfg = tmp_path / "t.yaml"
    teacher_cfg.write_text(json.dumps({"model": "cnn_small", "data": {"name": "digits", "val_fraction": 0.2},
                                       "train": {"epochs": 1, "out_dir": str(tmp_path), "run_name": "t",
                                                 "progress": False}}))
    assert cli(["train", str(teacher_cfg)]) == 0
    cfg.write_text(json.dumps({
        "model": "cnn_tiny", "task": {"name": "classification", "robust": {"epsilon": 0.03, "steps": 2}},
        "teacher": {"name": "cnn_small", "checkpoint": str(tmp_path / "t" / "checkpoint.pt")},
        "method": [{"name": "ard", "steps": 2, "temperature": 4.0, "alpha": 0.5}],
        "data": {"name": "digits", "val_fraction": 0.2},
        "train": {"epochs": 1, "out_dir": str(tmp_path), "run_name": "s", "progress": False}}))
    assert cli(["distill", str(cfg)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "s" / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]
    assert final["test/robust_top1"] < final["test/top1"] and rows[0]["val/robust_top1"] < rows[0]["val/top1"]
    assert final["test/top1"] > 20
    # kdkit eval: the robust figure of any checkpoint, under an attack named on the command line
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["eval", str(tmp_path / "s" / "checkpoint.pt"), "--json", "--pgd-epsilon", "0.03",
                    "--pgd-steps", "2"]) == 0
    metrics = json.loads(out.getvalue())
    assert metrics["top1"] == pytest.approx(final["test/top1"]) and metrics["robust_top1"] < metrics["top1"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli(["eval", str(tmp_path / "s" / "checkpoint.pt"), "--pgd-epsilon", "-0.01"]) == 2
    assert "PGD epsilon must be >= 0" in err.getvalue() and err.getvalue().count("\n") == 1
