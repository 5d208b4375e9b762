"""Online distillation: branched networks (split by module path, gate, tree, gradient rescaling), and the
dml / one / cl losses against computations written out here, their gradient flow, runs through the CLI
(per-branch evaluation, exporting a branch), exact resume of a cohort run, and clear errors."""

import copy
import json
import math

import pytest
import torch
import yaml
from conftest import killed_and_resumed

from kdkit import from_config
from kdkit.cli import main as cli
from kdkit.config import load_config
from kdkit.engine.checkpoint import load_checkpoint
from kdkit.errors import ConfigError
from kdkit.methods import Distiller, create_method
from kdkit.methods.one import sigmoid_rampup
from kdkit.models import create_model
from kdkit.models.branch import LeafView, branch, branch_state_dict, grad_scale

BASE = {"data": {"name": "digits"}, "train": {"epochs": 2, "progress": False, "seed": 0}, "optim": {"lr": 0.05}}


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2


def _kl(p, q):
    """sum_c p_c (log p_c - log q_c), averaged over the batch, written out."""
    return sum((p[b] * (p[b].log() - q[b].log())).sum() for b in range(len(p))) / len(p)


# ------------------------------------------------------------------------------------------- branching
def test_grad_scale_checked_numerically():
    """Forward: identity (its Jacobian from finite differences is I); backward: scale times that."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    scale, eps = 0.25, 1e-6
    numeric = torch.zeros(12, 12, dtype=torch.float64)
    flat = x.detach().flatten()
    for i in range(12):
        d = torch.zeros(12, dtype=torch.float64)
        d[i] = eps
        numeric[:, i] = (grad_scale((flat + d).view(3, 4), scale) - grad_scale((flat - d).view(3, 4), scale)
                         ).flatten() / (2 * eps)
    analytic = torch.stack([torch.autograd.grad(grad_scale(x, scale).flatten()[i], x)[0].flatten()
                            for i in range(12)])
    torch.testing.assert_close(numeric, torch.eye(12, dtype=torch.float64))
    torch.testing.assert_close(analytic, scale * numeric)


def test_branch_keeps_the_first_branch_and_reinitialises_the_others():
    torch.manual_seed(0)
    m = create_model("resnet8", num_classes=10).eval()
    b = branch(copy.deepcopy(m), "layer2", 3, gate=True, input_shape=(3, 16, 16)).eval()
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(LeafView(b, "heads.0")(x), m(x))
    assert not torch.allclose(LeafView(b, "heads.1")(x), m(x))
    sd = branch_state_dict(b, 0)
    assert sd.keys() == m.state_dict().keys() and all(torch.equal(sd[k], m.state_dict()[k]) for k in sd)
    w = b.gate(b.trunk(x))
    torch.testing.assert_close(w.sum(1), torch.ones(4))  # softmax over branches
    outs = torch.stack([b.heads[k](b.trunk(x)) for k in range(3)])
    torch.testing.assert_close(b(x), (w.T[:, :, None] * outs).sum(0))  # the gated sum


def test_tree_and_gradient_rescaling():
    torch.manual_seed(0)
    m = create_model("resnet8", num_classes=10)
    plain = branch(copy.deepcopy(m), ["layer1", "layer2"], [2, 2])
    scaled = branch(copy.deepcopy(m), ["layer1", "layer2"], [2, 2], rescale=True)
    scaled.load_state_dict(plain.state_dict())
    assert plain.leaves() == ["heads.0.heads.0", "heads.0.heads.1", "heads.1.heads.0", "heads.1.heads.1"]
    x = torch.randn(4, 3, 16, 16)
    for net in (plain, scaled):
        net.train()
        net(x).square().sum().backward()
    g_plain = {n: p.grad for n, p in plain.named_parameters()}
    g_scaled = {n: p.grad for n, p in scaled.named_parameters()}
    # the trunk receives 1/2 * 1/2 of the plain gradient through two splits; the first level 1/2
    torch.testing.assert_close(g_scaled["trunk.conv1.weight"], g_plain["trunk.conv1.weight"] / 4)
    mid = next(n for n in g_plain if n.startswith("heads.0.trunk.") and n.endswith("weight"))
    torch.testing.assert_close(g_scaled[mid], g_plain[mid] / 2)
    leaf = next(n for n in g_plain if n.startswith("heads.0.heads.0.") and n.endswith("weight"))
    torch.testing.assert_close(g_scaled[leaf], g_plain[leaf])


def test_branch_errors():
    m = create_model("resnet8", num_classes=10)
    with pytest.raises(ConfigError, match="no module 'layer9'"):
        branch(m, "layer9", 2)
    with pytest.raises(ConfigError, match="split at a stage boundary"):
        branch(m, "layer2.0.conv1", 2)
    with pytest.raises(ConfigError, match="not in forward order"):
        branch(m, ["layer2", "layer1"], [2, 2])
    with pytest.raises(ConfigError, match="one entry per split"):
        branch(m, ["layer1", "layer2"], [2])


# ------------------------------------------------------------------------------------------- losses
def test_dml_loss_written_out_and_gradients():
    torch.manual_seed(0)
    nets = {"student": create_model("cnn_tiny"), "peer1": create_model("cnn_tiny"), "peer2": create_model("cnn_small")}
    d = Distiller(nets["student"], [create_method("dml", temperature=2.0)], input_shape=(3, 16, 16),
                  peers={"peer1": nets["peer1"], "peer2": nets["peer2"]})
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    d.train()
    terms = d(x, y)
    with torch.no_grad():
        z = {k: v(x) for k, v in nets.items()}
    p = {k: (v / 2).softmax(1) for k, v in z.items()}
    for i, key in (("student", "dml"), ("peer1", "dml/peer1"), ("peer2", "dml/peer2")):
        expected = 4 * sum(_kl(p[j], p[i]) for j in p if j != i) / 2
        torch.testing.assert_close(terms[key], expected, rtol=1e-4, atol=1e-6)
    d.zero_grad()
    terms["dml/peer1"].backward()  # only peer1 learns from it: the others' predictions are targets
    assert all(q.grad is not None and q.grad.abs().sum() > 0 for q in nets["peer1"].parameters())
    assert all(q.grad is None for k in ("student", "peer2") for q in nets[k].parameters())


def test_one_loss_written_out_ramp_and_gradients():
    torch.manual_seed(0)
    student = branch(create_model("cnn_small"), "stage2", 3, gate=True, input_shape=(3, 16, 16))
    d = Distiller(student, [create_method("one", rampup_epochs=4)], input_shape=(3, 16, 16))
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    d.train()
    terms = d(x, y, epoch=2)
    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5)) and sigmoid_rampup(80, 80) == 1.0
    w = math.exp(-5 * (1 - 2 / 4) ** 2)
    with torch.no_grad():
        d.train()
        f = student.trunk(x)
        zs = [student.heads[k](f) for k in range(3)]
        g = student.gate(f)
        ze = sum(g[:, k: k + 1] * zs[k] for k in range(3))
    q = (ze / 3).softmax(1) + 1e-7
    for k in range(3):
        log_p = (zs[k] / 3).log_softmax(1)
        kl = 9 * sum((q[b] * (q[b].log() - log_p[b])).sum() for b in range(64)) / 64
        torch.testing.assert_close(terms[f"one/kl{k}"], w * kl, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(terms[f"one/ce{k}"], torch.nn.functional.cross_entropy(zs[k], y), rtol=1e-4,
                                   atol=1e-6)
    torch.testing.assert_close(terms["ce"], torch.nn.functional.cross_entropy(ze, y), rtol=1e-4, atol=1e-6)
    d.zero_grad()
    terms["one/kl1"].backward()  # the ensemble target is detached: no gradient to the gate, other branches
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in student.gate.parameters())
    assert all(p.grad is None for k in (0, 2) for p in student.heads[k].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.heads[1].parameters())


def test_cl_legacy_target_and_t_squared():
    """``target: probs, t_squared: true``: the mean of the other heads' soft predictions, times T^2 (kdkit's
    formulation before issue 25)."""
    torch.manual_seed(0)
    student = branch(create_model("cnn_small"), ["stage1", "stage2"], [2, 2], rescale=True)
    d = Distiller(student, [create_method("cl", temperature=3.0, target="probs", t_squared=True)],
                  input_shape=(3, 16, 16))
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    terms = d.train()(x, y)
    with torch.no_grad():
        probs = [(LeafView(student, path)(x) / 3).softmax(1) for path in student.leaves()]
    for k in range(4):
        q = sum(probs[j] for j in range(4) if j != k) / 3
        torch.testing.assert_close(terms[f"cl/kd{k}"], 0.5 * 9 * _kl(q, probs[k]), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="target must be"):
        create_method("cl", target="mean")


def test_cl_loss_written_out():
    torch.manual_seed(0)
    student = branch(create_model("cnn_small"), ["stage1", "stage2"], [2, 2], rescale=True)
    d = Distiller(student, [create_method("cl")], input_shape=(3, 16, 16))
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    d.train()
    terms = d(x, y)
    assert "ce" not in terms  # the heads' mean has no label loss of its own
    with torch.no_grad():
        zs = [LeafView(student, path)(x) for path in student.leaves()]
    probs = [(z / 2).softmax(1) for z in zs]
    for k in range(4):
        q = (sum(zs[j] for j in range(4) if j != k) / 3 / 2).softmax(1)  # the other heads' mean logits, T=2
        torch.testing.assert_close(terms[f"cl/kd{k}"], 0.5 * _kl(q, probs[k]), rtol=1e-4, atol=1e-6)  # no T^2
        torch.testing.assert_close(terms[f"cl/ce{k}"], 0.5 * torch.nn.functional.cross_entropy(zs[k], y),
                                   rtol=1e-4, atol=1e-6)
    d.zero_grad()
    terms["cl/kd3"].backward()  # the other heads' predictions are its target, detached: only head 3 learns
    leaves = {path: dict(student.named_modules())[path] for path in student.leaves()}
    assert all(p.grad is None for path, h in leaves.items() if path != "heads.1.heads.1" for p in h.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in leaves["heads.1.heads.1"].parameters())
    assert all(p.grad is None for p in student.heads[0].trunk.parameters())  # not even the other subtree
    assert any(p.grad is not None for p in student.trunk.parameters())  # the shared trunk does learn


# ------------------------------------------------------------------------------------------- runs
def _write(tmp_path, cfg, name="c.yaml"):
    (tmp_path / name).write_text(yaml.safe_dump(cfg))
    return str(tmp_path / name)


def test_one_through_the_cli_with_branch_metrics_and_export(tmp_path, capsys):
    cfg = {**BASE, "model": {"name": "cnn_small", "transforms": [{"name": "branch", "n": 3, "gate": True}]},
           "method": {"name": "one", "rampup_epochs": 1}}
    assert cli(["train", _write(tmp_path, cfg), "--out", str(tmp_path / "r")]) == 0
    final = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()][-1]
    assert {f"test/branch{k}/top1" for k in range(3)} <= set(final) and final["test/top1"] > 50
    record = load_checkpoint(tmp_path / "r" / "checkpoint.pt")["model"]["transforms"][0]
    assert record["at"] == ["stage2"] and record["structure"] == {"gate_channels": 32}  # resolved, recorded
    capsys.readouterr()
    assert cli(["export", str(tmp_path / "r" / "checkpoint.pt"), "--branch", "2", "--out", str(tmp_path / "b.pt")]) == 0
    assert cli(["eval", str(tmp_path / "b.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["top1"] == pytest.approx(final["test/branch2/top1"])
    assert load_checkpoint(tmp_path / "b.pt")["model"]["transforms"] == []  # a plain cnn_small
    assert cli(["export", str(tmp_path / "r" / "checkpoint.pt"), "--branch", "3", "--out", str(tmp_path / "x.pt")]) == 2


COHORTS = {
    "dml": {**BASE, "model": "cnn_tiny", "peers": ["cnn_tiny"], "method": "dml"},
    "one": {**BASE, "model": {"name": "cnn_tiny", "transforms": [{"name": "branch", "n": 2, "gate": True}]},
            "method": {"name": "one", "rampup_epochs": 2}},
    "kdcl": {**BASE, "model": "cnn_tiny", "peers": ["cnn_tiny"], "method": "kdcl",
             "data": {"name": "digits", "views": 2, "cutout": 2}},
    "okddip": {**BASE, "model": {"name": "cnn_tiny", "transforms": [{"name": "branch", "n": 3}]},
               "method": {"name": "okddip", "rampup_epochs": 2}},
    "cl": {**BASE, "model": {"name": "cnn_tiny", "transforms": [{"name": "branch", "n": [2, 2], "rescale": True}]},
           "method": "cl"},
    "dcm": {**BASE, "model": "cnn_tiny", "peers": ["cnn_tiny"], "method": "dcm"},
}


@pytest.mark.parametrize("cohort", list(COHORTS))
def test_a_cohort_run_resumes_bit_identically(cohort, tmp_path):
    result = killed_and_resumed(COHORTS[cohort], tmp_path)
    assert result["test/top1"] > 30
    deployed = {"dml": "student", "one": "branch0", "kdcl": "student", "okddip": "branch2",  # the leader
                "cl": "branch0", "dcm": "student"}[cohort]
    assert result["deployed"] == deployed and (deployed == "student" or f"test/{deployed}/top1" in result)


def test_a_cohort_reports_every_network_and_their_ensemble(tmp_path):
    cfg = {**BASE, "model": "cnn_tiny", "peers": ["cnn_small"], "method": "dml"}
    trainer = from_config(load_config(base=cfg), run_dir=tmp_path / "r", log=lambda m: None)
    result = trainer.fit()
    assert {"test/top1", "test/peer1/top1", "test/ensemble/top1", "val/ensemble/top1"} <= set(result)
    nets = [m.eval() for m in trainer.distiller.networks(trainable_only=True).values()]
    hits = n = 0
    with torch.no_grad():
        for x, y, _ in trainer.loaders.test:  # the ensemble: the two networks' mean logits, by hand
            hits += int((torch.stack([m(x) for m in nets]).mean(0).argmax(1) == y).sum())
            n += len(y)
    assert result["test/ensemble/top1"] == pytest.approx(100.0 * hits / n)


@pytest.mark.parametrize("cfg,message", [
    ({"model": {"name": "cnn_tiny", "transforms": [{"name": "branch", "at": "stage9", "n": 2}]}},
     "no module 'stage9'"),
    ({"model": "cnn_tiny", "method": "dml"}, "need 1 peer network"),
    ({"model": "cnn_tiny", "method": "one"}, "one needs a branched student with a gate"),
    ({"model": "cnn_tiny", "method": "cl"}, "cl needs a student with at least two heads"),
    ({"model": {"name": "cnn_tiny", "transforms": [{"name": "branch", "n": [2, 2, 2]}]}}, "too few for 3"),
])
def test_online_errors(cfg, message, tmp_path, capsys):
    assert cli(["train", _write(tmp_path, {**BASE, **cfg}), "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- multi-teacher
def test_weighted_teacher_ensembles_written_out():
    from kdkit.losses import soft_targets
    from kdkit.losses.logits import confidence_weights

    z = [_logits(64, 10, seed=s) for s in range(3)]
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(5))
    w = torch.tensor([2.0, 1.0, 1.0])
    mixed = 0.5 * z[0] + 0.25 * z[1] + 0.25 * z[2]
    torch.testing.assert_close(soft_targets(z, 4.0, "logits", w), (mixed / 4).softmax(1))
    torch.testing.assert_close(soft_targets(z, 4.0, "probs", w),
                               sum(c * (t / 4).softmax(1) for c, t in zip([0.5, 0.25, 0.25], z)))
    torch.testing.assert_close(soft_targets(z, 4.0, "logits", torch.ones(3)), soft_targets(z, 4.0))  # equal = mean
    c = confidence_weights(z, y)
    conf = torch.stack([t.softmax(1)[torch.arange(64), y] for t in z])
    torch.testing.assert_close(c, conf / conf.sum(0))
    expected = torch.stack([sum(c[i, b] * z[i][b] for i in range(3)) for b in range(64)])
    torch.testing.assert_close(soft_targets(z, 2.0, "logits", c), (expected / 2).softmax(1))


def test_kd_teacher_weights_through_a_run(tmp_path, teacher_ckpt):
    spec = {"name": "cnn_small", "checkpoint": teacher_ckpt}
    base = {**BASE, "model": "cnn_tiny", "teacher": [spec, spec], "train": {**BASE["train"], "epochs": 1}}
    for method in ({"name": "kd", "teacher_weights": [3.0, 1.0]}, {"name": "kd", "weighting": "confidence"}):
        run_dir = tmp_path / method.get("weighting", "w")
        result = from_config(load_config(base={**base, "method": method}), run_dir=run_dir, log=lambda m: None).fit()
        assert result["test/top1"] > 20
    with pytest.raises(ConfigError, match="3 entries for 2 teachers"):
        from_config(load_config(base={**base, "method": {"name": "kd", "teacher_weights": [1.0, 1.0, 1.0]}}),
                    log=lambda m: None)
    with pytest.raises(ConfigError, match="exclude each other"):
        load_config(base={**base, "method": {"name": "kd", "teacher_weights": [1.0, 1.0], "weighting": "confidence"}})


def test_a_branch_record_that_does_not_fit_is_a_checkpoint_error(tmp_path, capsys):
    cfg = {**BASE, "model": {"name": "cnn_tiny", "transforms": [{"name": "branch", "n": 2}]},
           "method": "vanilla", "train": {**BASE["train"], "epochs": 1}}
    assert cli(["train", _write(tmp_path, cfg), "--out", str(tmp_path / "r")]) == 0
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    ckpt["model"]["transforms"][0]["at"] = ["stage9"]
    torch.save(ckpt, tmp_path / "bad.pt")
    capsys.readouterr()
    assert cli(["eval", str(tmp_path / "bad.pt")]) == 4
    err = capsys.readouterr().err
    assert "cannot be rebuilt" in err and "stage9" in err and "Traceback" not in err


def test_dcm_loss_written_out():
    torch.manual_seed(0)
    student, peer = create_model("cnn_tiny"), create_model("cnn_small")
    d = Distiller(student, [create_method("dcm", temperature=2.0)], input_shape=(3, 16, 16), peers={"peer1": peer})
    m = d.methods[0]
    assert m.net_specs == {"student": ["stage1", "stage2"], "peer1": ["stage1", "stage2"]}
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    d.train()
    terms = d(x, y)
    with torch.no_grad():  # every classifier of each network, written out from the modules
        heads = {}
        for key, net in (("student", student), ("peer", peer)):
            f1 = net.stage1(x)
            f2 = net.stage2(f1)
            heads[key] = [m.aux[f"{key}0"](f1), m.aux[f"{key}1"](f2), net(x)]
    p = {k: [(z / 2).softmax(1) for z in zs] for k, zs in heads.items()}
    kl_student = 4 * sum(_kl(pb, pa) for pa in p["student"] for pb in p["peer"])  # the student's classifiers learn
    kl_peer = 4 * sum(_kl(pa, pb) for pa in p["student"] for pb in p["peer"])
    torch.testing.assert_close(terms["dcm/kl"], kl_student, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(terms["dcm/kl/peer1"], kl_peer, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(terms["dcm/ce_student_aux1"], torch.nn.functional.cross_entropy(heads["student"][1], y),
                               rtol=1e-4, atol=1e-6)
    d.zero_grad()
    terms["dcm/kl"].backward()  # the peer's classifiers are targets here: no gradient reaches the peer
    assert all(q.grad is None for q in peer.parameters())
    assert all(q.grad is None for n, q in m.aux.named_parameters() if n.startswith("peer"))
    assert any(q.grad is not None for q in student.parameters())


# ------------------------------------------------------------------------------------------- kdcl, okddip
def test_kdcl_ensembles_and_loss_written_out_on_separate_views():
    from kdkit.methods.kdcl import ensemble_logits

    z = [_logits(96, 10, seed=s) for s in range(3)]
    y = torch.randint(0, 10, (96,), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(ensemble_logits(z, y, "mean"), (z[0] + z[1] + z[2]) / 3)
    minl = torch.empty(96, 10)
    best = torch.empty(96, 10)
    for b in range(96):
        for c in range(10):
            minl[b, c] = min(float(z[i][b, c] - z[i][b, y[b]]) for i in range(3))
        ces = [float(-z[i][b].log_softmax(0)[y[b]]) for i in range(3)]
        best[b] = z[ces.index(min(ces))][b]
    torch.testing.assert_close(ensemble_logits(z, y, "min_logit"), minl)
    torch.testing.assert_close(ensemble_logits(z, y, "best"), best)
    from kdkit.methods.kdcl import linear_weights

    z[0] = z[0] + 6 * torch.nn.functional.one_hot(y, 10)  # network 0 knows the labels, the others do not
    w_b = linear_weights(torch.stack(z)[:, 48:], y[48:])  # fitted on the second half...
    lin = ensemble_logits(z, y, "linear")
    torch.testing.assert_close(lin[:48], sum(w_b[i] * z[i][:48] for i in range(3)))  # ...applied to the first
    w = w_b.double().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(sum(w[i] * z[i][48:].double() for i in range(3)), y[48:])
    (grad,) = torch.autograd.grad(ce, w)
    assert grad.abs().max() < 1e-4 and w_b[0] > w_b[1].abs() + w_b[2].abs()  # a minimum, led by network 0
    mean_ce = torch.nn.functional.cross_entropy(sum(z[i][48:] for i in range(3)) / 3, y[48:])
    assert ce < mean_ce

    torch.manual_seed(0)
    nets = {"student": create_model("cnn_tiny"), "peer1": create_model("cnn_small")}
    d = Distiller(nets["student"], [create_method("kdcl", temperature=2.0)], input_shape=(3, 16, 16),
                  peers={"peer1": nets["peer1"]}, views=2)
    x, y = torch.randn(2, 64, 3, 16, 16), torch.randint(0, 10, (64,))
    d.train()
    terms = d(x, y)
    with torch.no_grad():  # network k on view k
        zs = {"student": nets["student"](x[0]), "peer1": nets["peer1"](x[1])}
    zt = torch.minimum(zs["student"] - zs["student"].gather(1, y[:, None]),
                       zs["peer1"] - zs["peer1"].gather(1, y[:, None]))
    q = (zt / 2).softmax(1)
    torch.testing.assert_close(terms["kdcl"], 4 * _kl(q, (zs["student"] / 2).softmax(1)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["kdcl/peer1"], 4 * _kl(q, (zs["peer1"] / 2).softmax(1)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["ce/peer1"], torch.nn.functional.cross_entropy(zs["peer1"], y), rtol=1e-4,
                               atol=1e-6)
    d.zero_grad()
    terms["kdcl"].backward()  # the ensemble target is detached: the peer gets nothing from the student's term
    assert all(p.grad is None for p in nets["peer1"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in nets["student"].parameters())
    with pytest.raises(ConfigError, match=r"expected inputs of shape \[2, B"):
        d(x[0], y)


def test_views_are_independent_augmentations_of_one_batch():
    from kdkit.data import BatchLoader
    from kdkit.data.base import ImageSet

    images = torch.randint(0, 256, (40, 1, 12, 12), dtype=torch.uint8)
    images[:, :, 4:8, 4:8] = (10 + 5 * torch.arange(40, dtype=torch.uint8)).view(40, 1, 1, 1)  # a sample's mark
    data = ImageSet(torch.arange(40) % 10, images=images)
    kw = {"mean": [0.5], "std": [0.5], "shuffle": True, "seed": 3, "crop_padding": 2, "flip": True}
    x, y, idx = next(iter(BatchLoader(data, 16, views=3, **kw)))
    assert x.shape == (3, 16, 1, 12, 12)
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[1], x[2])
    one, _, idx1 = next(iter(BatchLoader(data, 16, **kw)))
    assert torch.equal(idx, idx1) and torch.equal(x[0], one)  # view 0 is the single-view stream's batch
    mark = ((10 + 5 * idx).float() / 255 - 0.5) / 0.5  # every view is a crop/flip of the same images:
    for v in range(3):  # the sample's mark (a 4x4 square, inside any crop with padding 2) is in each view
        assert all(torch.isclose(x[v, b], mark[b]).any() for b in range(16))
    with pytest.raises(ConfigError, match="need training augmentation"):
        BatchLoader(data, 16, mean=[0.5], std=[0.5], shuffle=True, views=2)


def test_okddip_loss_written_out_and_attention_trained_through_the_targets():
    torch.manual_seed(0)
    student = branch(create_model("cnn_small"), "stage2", 4, input_shape=(3, 16, 16))
    d = Distiller(student, [create_method("okddip", rampup_epochs=4)], input_shape=(3, 16, 16))
    m = d.methods[0]
    assert m.embeds == ["heads.0.fc:input", "heads.1.fc:input", "heads.2.fc:input"]
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    d.train()
    terms = d(x, y, epoch=2)
    assert "ce" not in terms
    w = math.exp(-5 * (1 - 2 / 4) ** 2)
    with torch.no_grad():
        f = student.trunk(x)
        zs, hs = [], []
        for k in range(4):  # each head's output, and its classifier's input caught by a hook
            seen = []
            hook = student.heads[k].fc.register_forward_pre_hook(lambda mod, inp, seen=seen: seen.append(inp[0]))
            zs.append(student.heads[k](f))
            hook.remove()
            hs.append(seen[0])
        a = torch.zeros(64, 3, 3)
        for b in range(64):
            for i in range(3):
                e = torch.stack([m.query.weight @ hs[i][b] @ (m.key.weight @ hs[j][b]) for j in range(3)])
                a[b, i] = e.softmax(0)
    for i in range(3):
        target = torch.stack([sum(a[b, i, j] * zs[j][b] for j in range(3)) for b in range(64)])
        q = (target / 3).softmax(1) + 1e-7
        log_p = (zs[i] / 3).log_softmax(1)
        kl = 9 * sum((q[b] * (q[b].log() - log_p[b])).sum() for b in range(64)) / 64
        torch.testing.assert_close(terms[f"okddip/kl{i}"], w * kl, rtol=1e-4, atol=1e-6)
    q = ((zs[0] + zs[1] + zs[2]) / 3 / 3).softmax(1) + 1e-7
    log_p = (zs[3] / 3).log_softmax(1)
    lead = 9 * sum((q[b] * (q[b].log() - log_p[b])).sum() for b in range(64)) / 64
    torch.testing.assert_close(terms["okddip/leader"], w * lead, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["okddip/ce3"], torch.nn.functional.cross_entropy(zs[3], y), rtol=1e-4, atol=1e-6)
    d.zero_grad()
    terms["okddip/kl0"].backward()  # as the authors' code: the target is not detached, so the attention
    assert m.query.weight.grad.abs().sum() > 0 and m.key.weight.grad.abs().sum() > 0  # learns through it
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.heads[1].parameters())
    assert all(p.grad is None for p in student.heads[3].parameters())  # the leader is not in the peers' targets


@pytest.mark.parametrize("cfg,message", [
    ({"model": "cnn_tiny", "method": "kdcl"}, "need 1 peer network"),
    ({"model": "cnn_tiny", "peers": ["cnn_tiny"], "method": {"name": "kdcl", "networks": ["student"]},
      "data": {"name": "digits", "views": 2, "cutout": 2}}, "at least two trainable networks"),
    ({"model": "cnn_tiny", "peers": ["cnn_tiny"], "method": "kdcl"}, "set data.views: 2 (one per network)"),
    ({"model": "cnn_tiny", "method": "okddip"}, "okddip needs a student with one split into at least three"),
    ({"model": {"name": "cnn_tiny", "transforms": [{"name": "branch", "n": 2}]}, "method": "okddip"},
     "at least three branches"),
    ({"model": "cnn_tiny", "peers": ["cnn_tiny"], "method": "kdcl", "data": {"name": "digits", "views": 2}},
     "need training augmentation"),
    ({"model": "cnn_tiny", "peers": ["cnn_tiny"], "method": "kdcl", "data": {"name": "digits", "views": 65}},
     "views must be in [1, 64]"),
])
def test_kdcl_okddip_errors(cfg, message, tmp_path, capsys):
    assert cli(["train", _write(tmp_path, {**BASE, **cfg}), "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err


def test_feature_methods_learn_from_several_teachers_one_entry_each():
    torch.manual_seed(0)
    t0, t1 = create_model("cnn_small").eval(), create_model("cnn_medium").eval()
    student = create_model("cnn_tiny")
    fit = {"student_layer": "stage2", "teacher_layer": "stage2", "stage1_epochs": 0}
    d = Distiller(student, [create_method("kd"), create_method("fitnets", teacher="teacher0", **fit),
                            create_method("fitnets", teacher="teacher1", **fit),
                            create_method("kd", teacher="teacher1")],
                  [t0, t1], input_shape=(3, 16, 16))
    x, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    d.train()
    terms = d(x, y)
    assert {"kd", "hint/teacher0", "hint/teacher1", "kd/teacher1"} <= set(terms)
    for k, name, teacher in ((1, "teacher0", t0), (2, "teacher1", t1)):  # each entry: as a run with that teacher alone
        single = Distiller(student, [create_method("fitnets", **fit), create_method("kd")], [teacher],
                           input_shape=(3, 16, 16))
        single.methods[0].load_state_dict(d.methods[k].state_dict())  # the same regressor
        single.train()
        alone = single(x, y)
        torch.testing.assert_close(terms[f"hint/{name}"], alone["hint"])
        if teacher is t1:
            torch.testing.assert_close(terms["kd/teacher1"], alone["kd"])
    with pytest.raises(ConfigError, match="say whose features each one taps"):
        Distiller(student, [create_method("fitnets", **fit)], [t0, t1], input_shape=(3, 16, 16))
    with pytest.raises(ConfigError, match="teacher 'teacher2' is not a teacher of this run"):
        Distiller(student, [create_method("fitnets", teacher="teacher2", **fit)], [t0, t1], input_shape=(3, 16, 16))
