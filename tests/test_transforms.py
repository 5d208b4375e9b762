"""Model transforms: applied by the build step before feature taps, recorded in checkpoints, rebuilt on
load from plain data."""

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from conftest import HANG_S
from torch import nn

from kdkit import from_config
from kdkit.cli import main as cli
from kdkit.engine.checkpoint import load_checkpoint, save_atomic
from kdkit.errors import CheckpointError, ConfigError
from kdkit.transforms import Transform, register_transform

QUIET = {"log": lambda m: None}


@register_transform
@dataclass
class SplitClassifier(Transform):
    """A structural toy transform: the classifier ``fc`` becomes two linear layers through ``hidden``
    units. The width actually built is its recorded structure (as a pruned width would be)."""

    name = "test_split_fc"
    hidden: int = 12

    def apply(self, model: nn.Module) -> nn.Module:
        return self._split(model, self.hidden)

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {"hidden": model.fc[0].out_features}

    def rebuild(self, model: nn.Module, structure: dict[str, Any]) -> nn.Module:
        return self._split(model, structure["hidden"])

    @staticmethod
    def _split(model: nn.Module, hidden: int) -> nn.Module:
        fc = model.fc
        model.fc = nn.Sequential(nn.Linear(fc.in_features, hidden), nn.Linear(hidden, fc.out_features))
        return model


def _cfg(digits_cfg, tmp_path, name, train=None, **over):
    return digits_cfg(tmp_path, train={"epochs": 1, "progress": False, "out_dir": str(tmp_path), "run_name": name,
                                       **(train or {})}, **over)


def test_a_structural_transform_is_recorded_and_rebuilt_on_load(tmp_path, digits_cfg, capsys):
    cfg = _cfg(digits_cfg, tmp_path, "split", model={"name": "cnn_tiny",
                                                      "transforms": [{"name": "test_split_fc", "hidden": 12}]})
    trainer = from_config(cfg, **QUIET)
    assert isinstance(trainer.distiller.student.fc, nn.Sequential)
    trainer.fit()
    path = tmp_path / "split" / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    assert ckpt["model"]["transforms"] == [{"name": "test_split_fc", "hidden": 12, "structure": {"hidden": 12}}]
    from kdkit import create_model
    with pytest.raises(RuntimeError):  # the plain zoo model does not fit these weights
        create_model("cnn_tiny", num_classes=10, in_channels=1).load_state_dict(ckpt["student"])
    # the recorded structure wins over the parameter: a checkpoint saying 7 rebuilds 7
    ckpt["model"]["transforms"][0]["structure"] = {"hidden": 7}
    ckpt["student"] = {k: v for k, v in ckpt["student"].items()}
    ckpt["student"]["fc.0.weight"], ckpt["student"]["fc.0.bias"] = torch.zeros(7, 32), torch.zeros(7)
    ckpt["student"]["fc.1.weight"] = torch.zeros(10, 7)
    save_atomic(ckpt, tmp_path / "seven.pt")
    assert cli(["eval", str(path), "--json"]) == 0  # kdkit eval rebuilds the structure
    assert '"top1"' in capsys.readouterr().out
    assert cli(["eval", str(tmp_path / "seven.pt"), "--json"]) == 0
    # and a later run can take the transformed network as its teacher
    kd = _cfg(digits_cfg, tmp_path, "kd", model="cnn_tiny", method="kd",
              teacher={"name": "cnn_tiny", "checkpoint": str(path)})
    teacher = from_config(kd, **QUIET).distiller.teachers[0]
    assert isinstance(teacher.fc, nn.Sequential) and teacher.fc[0].out_features == 12


def test_ghost_bn_as_a_model_transform_equals_the_train_shorthand(tmp_path, digits_cfg):
    a = from_config(_cfg(digits_cfg, tmp_path, "a", data={"name": "digits", "batch_size": 64},
                         model={"name": "cnn_tiny", "transforms": [{"name": "ghost_bn", "group_size": 16}]}), **QUIET)
    b = from_config(_cfg(digits_cfg, tmp_path, "b", data={"name": "digits", "batch_size": 64},
                         train={"ghost_batch_size": 16}), **QUIET)
    a.fit()
    b.fit()
    sa, sb = a.distiller.state_dict(), b.distiller.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_transform_entries_are_validated(tmp_path, digits_cfg):
    with pytest.raises(ConfigError, match="unknown transform 'ghost_nb'; did you mean 'ghost_bn'"):
        _cfg(digits_cfg, tmp_path, "x", model={"name": "cnn_tiny", "transforms": ["ghost_nb"]})
    with pytest.raises(ConfigError, match=r"model.transforms\[0\]: group_size must be >= 2"):
        _cfg(digits_cfg, tmp_path, "x", model={"name": "cnn_tiny", "transforms": [{"name": "ghost_bn",
                                                                                     "group_size": 1}]})
    with pytest.raises(ConfigError, match="unknown key 'model.transforms\\[0\\].size'"):
        _cfg(digits_cfg, tmp_path, "x", model={"name": "cnn_tiny", "transforms": [{"name": "ghost_bn", "size": 8}]})


def test_a_checkpoint_recording_an_unknown_transform_is_refused(tmp_path, digits_cfg):
    trainer = from_config(_cfg(digits_cfg, tmp_path, "r", model="cnn_tiny"), **QUIET)
    trainer.fit()
    ckpt = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    ckpt["model"]["transforms"] = [{"name": "not_a_transform", "structure": {}}]
    save_atomic(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="unknown transform 'not_a_transform'"):
        _load(tmp_path / "bad.pt")


def _load(path):
    from kdkit.config import ModelSpec
    from kdkit.engine.rebuild import build_model

    return build_model(ModelSpec("cnn_tiny", checkpoint=str(path)), 10, 1)


def test_cli_lists_transforms(capsys):
    assert cli(["list", "transforms"]) == 0
    out = capsys.readouterr().out
    assert "ghost_bn" in out and "test_split_fc" in out


def test_a_fresh_process_lists_every_transform():
    """Not only those some earlier import happened to register (issue 25: prune, sparsify, lowrank and qat
    were missing), each with its first sentence on one line."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "kdkit", "list", "transforms"], capture_output=True, text=True,
                       timeout=HANG_S)
    names = [line.split()[0] for line in p.stdout.splitlines()]
    expected = ["binarize", "branch", "ghost_bn", "lowrank", "prune", "qat", "sparsify", "weight_share"]
    assert p.returncode == 0 and names == expected, p.stdout
    assert "(ONE, Lan et al. 2018)" in p.stdout
