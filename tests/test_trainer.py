import json
import math

import pytest
import torch

from kdkit import from_config, resume
from kdkit.config import load_config
from kdkit.engine.checkpoint import load_checkpoint, save_atomic
from kdkit.engine.trainer import lr_at
from kdkit.errors import CheckpointError, NonFiniteLossError
from kdkit.methods import Distiller, create_method
from kdkit.models import create_model


def quiet(*_):
    return None


def test_fit_lowers_loss_and_writes_run_dir(digits_cfg, tmp_path):
    cfg = digits_cfg(tmp_path, train={"epochs": 3})
    trainer = from_config(cfg, log=quiet)
    result = trainer.fit()
    losses = [h["train/loss"] for h in trainer.history]
    assert losses[-1] < losses[0]
    assert result["test/top1"] > 50  # far above the 10% of chance after three epochs
    run = tmp_path / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line.get("epoch") for line in lines[:3]] == [1, 2, 3] and lines[-1]["final"] is True
    assert "val/top1" in lines[0] and "val/top5" in lines[0]
    assert load_config(run / "config.yaml") == cfg
    assert list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoint.pt").is_file() and (run / "best.pt").is_file()
    assert not list(run.glob(".*tmp"))
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["epoch"] == 3 and ckpt["model"]["name"] == "cnn_tiny"


def test_existing_run_dir_is_not_overwritten(digits_cfg, tmp_path):
    cfg = digits_cfg(tmp_path)
    from_config(cfg, log=quiet).fit()
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(Exception, match="already holds a run"):
        from_config(cfg, log=quiet).fit()
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


class _Crash(Exception):
    pass


def _crash_after(n):
    def cb(trainer, epoch, metrics):
        if epoch == n:
            raise _Crash

    return cb


def test_resume_equals_uninterrupted_run(digits_cfg, tmp_path, teacher_ckpt):
    over = {"teacher": {"name": "cnn_small", "checkpoint": teacher_ckpt},
            "method": [{"name": "kd"}, {"name": "fitnets"}], "train": {"epochs": 3}}
    full = from_config(digits_cfg(tmp_path / "a", **over), log=quiet)
    full.fit()
    crashed = from_config(digits_cfg(tmp_path / "b", **over), log=quiet, callbacks=[_crash_after(1)])
    with pytest.raises(_Crash):
        crashed.fit()
    assert load_checkpoint(tmp_path / "b" / "run" / "checkpoint.pt")["epoch"] == 1
    resumed = resume(tmp_path / "b" / "run", log=quiet)
    assert resumed.epoch == 1
    resumed.fit()
    a, b = full.distiller.state_dict(), resumed.distiller.state_dict()
    assert a.keys() == b.keys() and any("regressor" in k for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    metrics = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m).get("epoch") for m in metrics[:3]] == [1, 2, 3]


def test_nan_loss_stops_names_term_and_keeps_checkpoint(digits_cfg, tmp_path, teacher_ckpt, monkeypatch):
    import kdkit.methods.kd as kd_module

    cfg = digits_cfg(tmp_path, teacher={"name": "cnn_small", "checkpoint": teacher_ckpt}, method="kd",
                     train={"epochs": 3})
    real = kd_module.kd_loss

    def flaky(s, p, t):
        out = real(s, p, t)
        return out * float("nan") if trainer.epoch >= 1 else out

    monkeypatch.setattr(kd_module, "kd_loss", flaky)
    trainer = from_config(cfg, log=quiet)
    with pytest.raises(NonFiniteLossError, match="loss term 'kd' became nan at epoch 2"):
        trainer.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["student"].values())


def test_schedules():
    cfg = load_config(base={"model": "cnn_tiny", "optim": {"lr": 0.1}, "train": {"epochs": 10},
                            "schedule": {"name": "step", "milestones": [5, 8], "gamma": 0.1, "warmup_epochs": 2}})
    assert lr_at(cfg, 0, 0, 10) == pytest.approx(0.005)  # first warm-up step
    assert lr_at(cfg, 1, 9, 10) == pytest.approx(0.1)  # last warm-up step reaches the base rate
    assert lr_at(cfg, 4, 9, 10) == pytest.approx(0.1)  # last step before the milestone is not decayed
    assert lr_at(cfg, 5, 0, 10) == pytest.approx(0.01)
    assert lr_at(cfg, 9, 3, 10) == pytest.approx(0.001)
    stage1, main = Distiller(create_model("cnn_tiny", num_classes=10), [create_method("fitnets", stage1_epochs=3)],
                             [create_model("cnn_tiny", num_classes=10)], (3, 32, 32)).set_plan(None, 10)
    assert (stage1.start, stage1.epochs, main.start, main.epochs) == (0, 3, 3, 10)
    assert lr_at(cfg, 1, 0, 10, stage1) == pytest.approx(0.1)  # stage 1 at the base rate
    assert lr_at(cfg, 3, 0, 10, main) == pytest.approx(0.005)  # then the schedule starts
    cfg.schedule.name, cfg.schedule.warmup_epochs = "cosine", 0
    assert lr_at(cfg, 0, 0, 10) == pytest.approx(0.1)
    assert lr_at(cfg, 5, 0, 10) == pytest.approx(0.05)
    assert lr_at(cfg, 2, 5, 10) == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.25)))
    assert 0 < lr_at(cfg, 9, 9, 10) < 0.001


def test_adamw_with_step_schedule_and_warmup(digits_cfg, tmp_path):
    cfg = digits_cfg(tmp_path, optim={"name": "adamw", "lr": 0.003, "weight_decay": 0.01},
                     schedule={"name": "step", "milestones": [1], "warmup_epochs": 0.5}, train={"epochs": 2})
    trainer = from_config(cfg, log=quiet)
    result = trainer.fit()
    assert isinstance(trainer.optimizer, torch.optim.AdamW)
    assert [h["lr"] for h in trainer.history] == pytest.approx([0.003, 0.0003])
    assert result["test/top1"] > 50


def test_fitnets_stage1_runs_before_main_epochs(digits_cfg, tmp_path, teacher_ckpt):
    cfg = digits_cfg(tmp_path, teacher={"name": "cnn_small", "checkpoint": teacher_ckpt},
                     method={"name": "fitnets", "stage1_epochs": 1}, train={"epochs": 1})
    trainer = from_config(cfg, log=quiet)
    trainer.fit()
    assert [h["stage"] for h in trainer.history] == ["stage1", "main"]
    assert "train/ce" not in trainer.history[0] and "train/ce" in trainer.history[1]


def test_checkpoint_loading_is_safe(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a kdkit checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a kdkit checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    import argparse

    torch.save({"format": "kdkit-checkpoint", "x": argparse.Namespace(a=1)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_atomic_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"a": torch.ones(1)}, path)

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"a": Unsaveable()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_a_scaled_label_loss_is_logged_unscaled_too(digits_cfg, tmp_path, teacher_ckpt):
    """(issue 25) kd's logged ce is (1 - alpha) CE, which looks like a good fit; the plain CE is logged beside
    it as ce_unscaled. A run whose label loss is not scaled logs no such key."""
    kd = from_config(digits_cfg(tmp_path / "kd", teacher={"name": "cnn_small", "checkpoint": teacher_ckpt},
                                method={"name": "kd", "alpha": 0.9}), log=quiet)
    kd.fit()
    row = kd.history[0]
    assert row["train/ce_unscaled"] == pytest.approx(row["train/ce"] / 0.1)
    assert row["train/loss"] == pytest.approx(row["train/ce"] + row["train/kd"])  # not summed into the loss
    plain = from_config(digits_cfg(tmp_path / "plain"), log=quiet)
    plain.fit()
    assert "train/ce_unscaled" not in plain.history[0] and "train/ce" in plain.history[0]
