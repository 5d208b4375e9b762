"""Named networks (peers trained with the student, each evaluated, saved and loadable), stages written in a
config, and the worked examples of docs/architecture.md run through the CLI."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from kdkit import from_config, resume
from kdkit.cli import main as cli
from kdkit.config import load_config
from kdkit.engine.checkpoint import load_checkpoint
from kdkit.errors import CheckpointError, ConfigError
from kdkit.methods import Distiller, Stage, create_method
from kdkit.models import create_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BASE = {"data": {"name": "digits", "limit_train": 600}, "optim": {"lr": 0.05},
        "train": {"epochs": 2, "progress": False, "seed": 0}}


def quiet(msg):
    pass


def _metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def mutual_run(tmp_path_factory):
    """The two-peer mutual-learning example (examples/toy_mutual.py), trained through the CLI; the peer
    has its own learning rate."""
    tmp = tmp_path_factory.mktemp("mutual")
    cfg = {**BASE, "data": {"name": "digits"}, "train": {**BASE["train"], "epochs": 3},
           "model": "cnn_tiny", "peers": [{"name": "cnn_small", "lr": 0.03}], "method": "toy_mutual"}
    (tmp / "mutual.yaml").write_text(yaml.safe_dump(cfg))
    run_dir = tmp / "run"
    assert cli(["--plugin", str(EXAMPLES / "toy_mutual.py"), "train", str(tmp / "mutual.yaml"),
                "--out", str(run_dir)]) == 0
    return run_dir


def test_two_peer_mutual_learning_through_the_cli(mutual_run, capsys):
    rows = _metrics(mutual_run)
    epochs, final = rows[:-1], rows[-1]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    for r in epochs:  # both networks trained on both terms, both evaluated every epoch
        assert {"train/ce", "train/ce/peer1", "train/mutual", "train/mutual/peer1"} <= set(r)
        assert {"val/top1", "val/peer1/top1", "val/peer1/top5", "val/peer1/loss"} <= set(r)
    assert final["test/top1"] > 50 and final["test/peer1/top1"] > 50
    ckpt = load_checkpoint(mutual_run / "checkpoint.pt")
    peer = ckpt["networks"]["peer1"]
    assert peer["model"]["name"] == "cnn_small" and peer["model"]["num_classes"] == 10
    lrs = {g["net"]: (g["lr"], g["net_lr"]) for g in ckpt["optimizer"]["param_groups"]}
    assert set(lrs) == {"student", "peer1"} and lrs["peer1"][1] == 0.03 and lrs["student"][1] is None
    assert lrs["peer1"][0] < 0.03 and lrs["student"][0] < 0.05  # each on the cosine from its own base
    assert lrs["peer1"][0] / 0.03 == pytest.approx(lrs["student"][0] / 0.05)
    # kdkit eval takes the peer, and reproduces the run's own test figure for it
    capsys.readouterr()
    assert cli(["eval", str(mutual_run / "checkpoint.pt"), "--net", "peer1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(final["test/peer1/top1"])
    assert cli(["eval", str(mutual_run / "checkpoint.pt"), "--net", "peer7"]) == 2


def test_a_peer_is_a_later_runs_teacher(mutual_run, tmp_path):
    spec = {"name": "cnn_small", "checkpoint": str(mutual_run / "checkpoint.pt"), "net": "peer1"}
    cfg = load_config(base={**BASE, "data": {"name": "digits"}, "model": "cnn_tiny", "method": "kd", "teacher": spec})
    result = from_config(cfg, run_dir=tmp_path / "kd", log=quiet).fit()
    peer_top1 = _metrics(mutual_run)[-1]["test/peer1/top1"]
    assert "test/agreement" in result and result["test/top1"] > 30
    teacher = from_config(cfg, run_dir=tmp_path / "x", log=quiet).distiller.teachers[0]
    weights = load_checkpoint(mutual_run / "checkpoint.pt")["networks"]["peer1"]["weights"]
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in weights.items())  # the peer's weights
    assert peer_top1 > 50
    bad = load_config(base={**BASE, "model": "cnn_tiny", "method": "kd", "teacher": {**spec, "net": "peer2"}})
    with pytest.raises(CheckpointError, match="no network 'peer2'.*student, peer1"):
        from_config(bad, log=quiet)


def test_a_peer_run_resumes_bit_identically(tmp_path):
    from kdkit.cli import load_plugin

    load_plugin(str(EXAMPLES / "toy_mutual.py"))
    base = {**BASE, "model": "cnn_tiny", "peers": ["cnn_tiny"], "method": "toy_mutual"}
    full = from_config(load_config(base=base), run_dir=tmp_path / "full", log=quiet)
    full.fit()

    def stop(trainer, epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        from_config(load_config(base=base), run_dir=tmp_path / "cut", log=quiet, callbacks=[stop]).fit()
    resume(tmp_path / "cut", log=quiet).fit()
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt") for d in ("full", "cut"))
    for k, v in a["distiller"].items():
        assert torch.equal(v, b["distiller"][k]), k
    assert any(k.startswith("peers.peer1.") for k in a["distiller"])


def test_peers_are_checked():
    with pytest.raises(ConfigError, match="need 1 peer network"):
        from kdkit.cli import load_plugin

        load_plugin(str(EXAMPLES / "toy_mutual.py"))
        Distiller(create_model("cnn_tiny"), [create_method("toy_mutual")], input_shape=(3, 16, 16))
    with pytest.raises(ConfigError, match="unique"):
        load_config(base={**BASE, "model": "cnn_tiny", "peers": [{"name": "cnn_tiny", "id": "student"}]})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        load_config(base={**BASE, "model": "cnn_tiny", "peers": [{"name": "cnn_tiny", "lr": -1}]})


def test_a_method_taps_features_on_any_network():
    """A method declares features on a peer and on a second teacher by network name; the step context
    holds every network's outputs and features."""
    from kdkit.methods import Method

    seen = {}

    class Probe(Method):
        name = "probe_taps"
        needs_teacher = True

        def setup(self, s_info, t_info):
            self.net_specs = {"peer1": ["stage2"], "teacher1": ["stage3"], "student": ["stage1"]}

        def losses(self, out):
            seen.update({net: {k: v.shape for k, v in f.items()} for net, f in out.feats.items()})
            seen["logits"] = sorted(out.logits)
            return {}

    torch.manual_seed(0)
    teachers = [create_model("cnn_small"), create_model("cnn_tiny")]
    d = Distiller(create_model("cnn_tiny"), [Probe()], teachers, (3, 16, 16), peers={"peer1": create_model("cnn_tiny")})
    x = torch.randn(4, 3, 16, 16)
    d(x, torch.tensor([0, 1, 2, 3]))
    assert seen["logits"] == ["peer1", "student", "teacher0", "teacher1"]
    assert set(seen["peer1"]) == {"stage2"} and set(seen["teacher1"]) == {"stage3"} and "stage1" in seen["student"]
    with pytest.raises(ConfigError, match="taps network 'peer9'"):
        class Bad(Probe):
            def setup(self, s_info, t_info):
                self.net_specs = {"peer9": ["stage1"]}

        Distiller(create_model("cnn_tiny"), [Bad()], teachers, (3, 16, 16))


def test_stages_from_the_config(tmp_path, teacher_ckpt):
    """Two stages written in the config: a constant-rate hint stage with the early student layers frozen
    (they stay fixed, their batch norm in eval mode), then the main stage."""
    stages = [{"name": "hints", "epochs": 1, "methods": ["fitnets.pretrain"], "frozen": ["student.stage1"],
               "schedule": False, "lr": 0.01},
              {"name": "main", "methods": ["fitnets"]}]
    cfg = load_config(base={**BASE, "model": "cnn_tiny", "teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt},
                            "method": {"name": "fitnets", "student_layer": "stage2", "teacher_layer": "stage2"},
                            "stages": stages, "train": {**BASE["train"], "epochs": 1}})
    trainer = from_config(cfg, run_dir=tmp_path / "r", log=quiet)
    before = {k: v.clone() for k, v in trainer.distiller.student.stage1.state_dict().items()}
    seen = {}
    trainer.callbacks.append(lambda t, e, m: seen.setdefault(e, {k: v.clone() for k, v in
                                                                 t.distiller.student.stage1.state_dict().items()}))
    trainer.fit()
    h = trainer.history
    assert [m["stage"] for m in h] == ["hints", "main"] and h[0]["lr"] == 0.01
    assert set(k for k in h[0] if k.startswith("train/")) == {"train/loss", "train/hint"}
    assert {"train/ce", "train/hint"} <= set(h[1])
    assert all(torch.equal(before[k], seen[1][k]) for k in before)  # frozen: weights and BN statistics
    assert not all(torch.equal(before[k], seen[2][k]) for k in before)  # trained in the main stage
    assert all(p.requires_grad for p in trainer.distiller.parameters())


def test_stage_errors():
    m = [create_method("kd")]
    d = Distiller(create_model("cnn_tiny"), m, [create_model("cnn_tiny")], (3, 16, 16))
    with pytest.raises(ConfigError, match="no method 'fitnets'"):
        d.set_plan([Stage("a", 1, ["fitnets"])])
    with pytest.raises(ConfigError, match="'kd' has no preliminary objective"):
        d.set_plan([Stage("a", 1, ["kd.pretrain"])])
    with pytest.raises(ConfigError, match="frozen 'student.stage9' matches no parameter"):
        d.set_plan([Stage("a", 1, frozen=["student.stage9"])])
    with pytest.raises(ConfigError, match="unique"):
        d.set_plan([Stage("a", 1), Stage("a", 1)])
    with pytest.raises(ConfigError, match="stages\\[0\\].*epochs must be >= 1"):
        load_config(base={**BASE, "model": "cnn_tiny", "stages": [{"name": "a", "epochs": 0}]})


def test_ft_paraphraser_is_frozen_by_its_stage_not_its_loss():
    torch.manual_seed(0)
    d = Distiller(create_model("cnn_tiny"), [create_method("ft", stage1_epochs=1)], [create_model("cnn_small")],
                  (3, 16, 16))
    d.train()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    para = d.methods[0].paraphraser
    assert set(d(x, y, epoch=0)) == {"ft_reconstruction"} and para.training
    assert all(p.requires_grad for p in para.parameters())
    assert {"ce", "ft"} == set(d(x, y, epoch=1))
    assert not para.training and not any(p.requires_grad for p in para.parameters())
    assert d.plan[1].frozen == ("methods.0.paraphraser",)


def test_calibrated_task_example_through_the_cli(tmp_path):
    """examples/calibrated_task.py: a task with its own metric (ECE), and best.pt chosen on the lowest."""
    cfg = {**BASE, "model": "cnn_tiny", "task": "calibrated_classification", "train": {**BASE["train"], "epochs": 3}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert cli(["--plugin", str(EXAMPLES / "calibrated_task.py"), "train", str(tmp_path / "c.yaml"),
                "--out", str(tmp_path / "r")]) == 0
    rows = _metrics(tmp_path / "r")
    eces = [r["val/ece"] for r in rows[:-1]]
    assert all(0 <= e <= 100 for e in eces) and "test/ece" in rows[-1]
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    assert best["metrics"]["val/ece"] == min(eces) and best["best"] == min(eces)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "task": "calibrated"}))
    assert cli(["train", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r2")]) == 2  # unknown task
    assert cli(["--plugin", str(tmp_path / "missing.py"), "list", "methods"]) == 2


def test_list_tasks(capsys):
    assert cli(["list", "tasks", "classification"]) == 0
    assert capsys.readouterr().out.startswith("classification")
