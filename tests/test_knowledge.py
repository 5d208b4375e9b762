"""The rest of the notes' methods (issue 31): heterogeneous KD by information-flow modelling, graph KD by
multi-head attention (MHGD). Adversarial and robust distillation: tests/test_robust.py."""

import pytest
import torch

from kdkit import create_method, create_model
from kdkit.errors import ConfigError
from kdkit.methods import Distiller


def _distiller(name, **kw):
    """cnn_medium -> cnn_tiny on 1x28x28 inputs with method ``name``: the Distiller and the method."""
    torch.manual_seed(0)
    student, teacher = create_model("cnn_tiny", num_classes=10, in_channels=1), create_model(
        "cnn_medium", num_classes=10, in_channels=1)
    method = create_method(name, **kw)
    return Distiller(student, [method], [teacher], input_shape=(1, 28, 28)), method


def _hkd(**kw):
    return _distiller("hkd", **kw)


def test_hkd_pairs_every_stage_then_the_penultimate_features():
    _, m = _hkd()
    assert m.student_specs == ["stage1", "stage2", "stage3", "fc:input"] == m.teacher_specs
    assert m.weights(0) == [100.0, 100.0, 100.0, 1.0]
    assert m.weights(2) == pytest.approx([49.0, 49.0, 49.0, 1.0])  # 100 * 0.7^2
    _, m = _hkd(student_layers=["stage3"], teacher_layers=["stage3"])
    assert m.student_specs == ["stage3"] and m.weights(5) == [1.0]  # given pairs: the last weighs final_weight
    _, m = _hkd(with_embedding=False)
    assert m.student_specs[-1] == "stage3"


def test_hkd_trains_the_student_on_a_batch_of_64():
    d, m = _hkd()
    opt = torch.optim.SGD(d.student.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    losses = []
    for _ in range(8):
        terms = d(x, y, epoch=3)
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(terms["hkd"].detach()))
    assert losses[-1] < losses[0] and set(terms) == {"ce", "hkd"}


def test_hkd_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="decay must be in"):
        create_method("hkd", decay=0.0)
    with pytest.raises(ConfigError, match="init_weight"):
        create_method("hkd", init_weight=-1.0)


def _mhgd(**kw):
    return _distiller("mhgd", **kw)


def test_mhgd_trains_its_attention_on_the_teacher_first_then_distils_the_graphs_with_it_frozen():
    d, m = _mhgd(stage1_epochs=1)
    assert m.student_specs == ["stage1", "stage2", "stage3"] and m.hw == 7  # pooled to the smallest stage
    assert len(m.attention) == len(m.estimator) == 2  # consecutive pairs
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(128, 1, 28, 28, generator=g), torch.randint(0, 10, (128,), generator=g)
    opt = torch.optim.SGD([p for p in d.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    student0 = [p.detach().clone() for p in d.student.parameters()]
    first = None
    for _ in range(12):  # stage 1: the estimator learns the teacher's next-layer vectors; the student rests
        terms = d(x, y, epoch=0)
        assert set(terms) == {"mhgd_estimator"}
        first = first if first is not None else float(terms["mhgd_estimator"])
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
    assert float(terms["mhgd_estimator"]) < 0.5 * first
    assert all(torch.equal(a, b) for a, b in zip(student0, d.student.parameters()))
    attention0 = [p.detach().clone() for p in m.attention.parameters()]
    terms = d(x, y, epoch=1)  # stage 2: the graphs, the attention frozen
    assert set(terms) == {"ce", "mhgd"} and not m.attention.training
    assert float(terms["mhgd"]) > 0
    grads = torch.autograd.grad(terms["mhgd"], list(d.student.parameters()), allow_unused=True, retain_graph=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    opt.zero_grad()
    sum(terms.values()).backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(attention0, m.attention.parameters()))


def test_mhgd_refuses_bad_settings_and_a_single_layer():
    with pytest.raises(ConfigError, match="heads must be in"):
        create_method("mhgd", heads=0)
    with pytest.raises(ConfigError, match="at least two layers"):
        _mhgd(student_layers=["stage3"], teacher_layers=["stage3"])
