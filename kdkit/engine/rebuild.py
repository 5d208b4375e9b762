"""Networks from files, one way down: every path that creates a network from a spec or rebuilds one
from a checkpoint goes through :func:`build_model` (a spec, perhaps with weights) or
:func:`load_network` (a checkpoint's own network), and each check comes before the step that needs it:

1. the file, read with ``weights_only=True`` (:mod:`kdkit.engine.checkpoint`): the kdkit marker and
   version and the model record, or a plain state dict / safetensors file;
2. a kdkit checkpoint's stored config, validated as a recipe is; every model name in it resolvable
   without importing anything (:mod:`kdkit.models.external`: a checkpoint is data);
3. the network asked for (``net``), its record against the spec the caller holds (name, classes,
   input channels) and, for a teacher, the data it was trained on;
4. the network created (:func:`kdkit.models.build_network`: an ``nn.Module`` class or a registered
   factory, checked before the call), its logits picked, its recorded structure rebuilt
   (:func:`kdkit.transforms.rebuild_transforms`);
5. the weights against the network (names, shapes, dtypes, finite values), then loaded.

Nothing here calls back up into the build layer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from ..config import ModelSpec, RunConfig, parse_config, trainable_spec
from ..errors import CheckpointError, ConfigError, first_line
from ..features import input_of, logits_output
from ..models import MODELS, build_network
from ..models.external import LIBRARIES, is_external, resolve
from ..transforms import rebuild_transforms
from ..validate import check_tensors
from .checkpoint import load_checkpoint, load_plain_weights, network_entry, read_weights


def stored_config(ckpt: dict[str, Any], source: str | Path, rebuild: bool = True) -> RunConfig:
    """The run config a checkpoint holds, validated; a CheckpointError (exit 4) naming the file if it has
    none or if it does not validate. ``rebuild``: the caller builds the networks it names, so each name
    must resolve without importing anything and name an ``nn.Module`` class (or a registered factory)."""
    if "config" not in ckpt:
        raise CheckpointError(f"{source}: holds no run config (a model-only checkpoint)")
    try:
        cfg = parse_config(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{source}: its stored config does not validate ({e})") from None
    if rebuild:
        for spec in (cfg.model, *cfg.peers, *cfg.teacher):
            check_name(spec.name, str(source))
    return cfg


def check_name(name: str, source: str) -> None:
    """A model name read from a file: resolvable without an import (CheckpointError otherwise)."""
    if not is_external(name):
        if name not in MODELS:
            raise CheckpointError(f"{source} names the model '{name[:80]}', which is not registered (a model of a "
                                  "plugin: pass --plugin FILE.py)")
        return
    if name.partition(":")[0] in LIBRARIES:
        return
    try:
        resolve(name, MODELS.holds)
    except ConfigError as e:
        raise CheckpointError(f"{source}: {e}") from None


def check_same_data(ckpt: dict[str, Any], spec: ModelSpec, data: dict[str, Any]) -> None:
    """Refuse a teacher checkpoint trained on other data than this run's (another dataset, input shape or
    normalisation, as its ``inference`` record says), unless the spec sets ``other_data``. Checkpoints
    written before the record existed are taken as they are."""
    rec = ckpt.get("inference")
    if spec.other_data or not isinstance(rec, dict):
        return
    src = spec.checkpoint
    shape = rec.get("input_shape")
    if rec.get("dataset") != data["dataset"] or (list(shape or []) if not isinstance(shape, dict) else shape) != \
            data["input_shape"] or rec.get("input_form") != data.get("input_form"):
        raise CheckpointError(
            f"{src} was trained on {rec.get('dataset')} {rec.get('input_shape')}, this run's data is "
            f"{data['dataset']} {data['input_shape']}: a teacher must see the data it learned from (set "
            "other_data: true on it to use it anyway)")
    for key in ("mean", "std"):
        theirs, ours = rec.get(key), data[key]
        if not isinstance(theirs, list) or len(theirs) != len(ours) or any(
                not isinstance(a, (int, float)) or abs(a - b) > 1e-5 for a, b in zip(theirs, ours)):
            raise CheckpointError(
                f"{src} was trained on inputs normalised with mean {rec.get('mean')}, std {rec.get('std')}; this "
                f"run normalises with mean {[round(v, 6) for v in data['mean']]}, std "
                f"{[round(v, 6) for v in data['std']]}: set data.mean and data.std to the teacher's (or "
                "other_data: true)")


def _create(spec: ModelSpec, num_classes: int, in_channels: int, source: str | None) -> nn.Module:
    """Step 4's creation: ``source`` set when the name was read from that file (refusals are then the
    file's: exit 4)."""
    try:
        model = build_network(spec.name, num_classes=num_classes, in_channels=in_channels, **spec.kwargs)
    except ConfigError as e:
        error: Exception = e
    except (TypeError, ValueError, RuntimeError) as e:  # arguments the model refuses (a size of -1, ...)
        error = ConfigError(f"model '{spec.name}' cannot be built with kwargs {str(spec.kwargs)[:120]}: "
                            f"{first_line(e)[:200]}")
    else:
        return input_of(logits_output(model, spec.output), spec.input)
    if source is not None:
        raise CheckpointError(f"{source}: {error}") from None
    raise error from None


def _check_record(rec: dict[str, Any], spec: ModelSpec, num_classes: int, in_channels: int, source: str) -> None:
    """Step 3: the checkpoint's network is the one the caller is about to create."""
    if rec.get("name") != spec.name:
        raise CheckpointError(f"{source} holds a '{str(rec.get('name'))[:80]}' model, but the config asks for "
                              f"'{spec.name}'")
    if rec.get("num_classes") != num_classes:
        raise CheckpointError(f"{source} was trained for {rec.get('num_classes')} classes, the dataset has "
                              f"{num_classes}")
    if rec.get("in_channels") != in_channels:
        raise CheckpointError(f"{source} expects {rec.get('in_channels')} input channels (a text model: tokens in its "
                              f"vocabulary), the dataset has {in_channels} (a text dataset: its tokenizer's vocabulary;"
                              " give the teacher's tokenizer as data.tokenizer)")


def _load_recorded(model: nn.Module, rec: dict[str, Any], weights: Any, spec: ModelSpec, source: str) -> nn.Module:
    """Step 5 for a kdkit checkpoint's network: its recorded structure, then its weights, checked."""
    model = rebuild_transforms(model, rec.get("transforms") or [], source)
    net = spec.net or "student"
    check_tensors(model.state_dict(), weights, source, "weights" if net == "student" else f"weights of '{net}'")
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{source} does not fit model '{spec.name}': {first_line(e)}") from None
    return model


def build_model(spec: ModelSpec, num_classes: int, in_channels: int, load: bool = True,
                data: dict[str, Any] | None = None, from_file: str | None = None) -> nn.Module:
    """Create ``spec``'s network and load its checkpoint if it names one. ``data``: the run's
    :func:`~kdkit.engine.checkpoint.inference_record`, checked against a teacher's (:func:`check_same_data`).
    ``from_file``: the spec was read from that file (a stored config), so a refused name is exit 4."""
    if not (load and spec.checkpoint):
        return _create(spec, num_classes, in_channels, from_file)
    ckpt, weights = read_weights(spec.checkpoint)  # step 1
    if ckpt is None:  # a plain state dict or safetensors file: pretrained weights from anywhere
        if spec.net:
            raise ConfigError(f"net: '{spec.net}' picks a network of a kdkit checkpoint; {spec.checkpoint} "
                              "holds plain weights")
        model = _create(spec, num_classes, in_channels, from_file)
        skipped = load_plain_weights(model, weights, spec.checkpoint, spec.strict)
        if skipped:
            warnings.warn(f"{spec.checkpoint} loaded into '{spec.name}' with strict: false; not loaded: "
                          + "; ".join(skipped), stacklevel=2)
        return model
    if "config" in ckpt:
        stored_config(ckpt, spec.checkpoint, rebuild=False)  # step 2: a stored config that does not validate
    rec, weights = network_entry(ckpt, spec.net, spec.checkpoint)  # step 3, before anything is created
    _check_record(rec, spec, num_classes, in_channels, spec.checkpoint)
    if data is not None:
        check_same_data(ckpt, spec, data)
    model = _create(spec, num_classes, in_channels, from_file)  # step 4
    return _load_recorded(model, rec, weights, spec, spec.checkpoint)


@dataclass
class Network:
    """A checkpoint's network, rebuilt: the model, the run config it was trained with, its spec, and the
    checkpoint's contents (checked) with the network's record."""

    model: nn.Module
    cfg: RunConfig
    spec: ModelSpec
    ckpt: dict[str, Any]
    record: dict[str, Any]

    def check_data(self, expected: dict[str, Any], data_name: str) -> None:
        """The network was built for the data it is about to see: ``expected`` is the task's record of
        that dataset (``Task.record``: classes, input channels)."""
        for key, ours in expected.items():
            if self.record.get(key) != ours:
                theirs = str(self.record.get(key))[:40]
                raise CheckpointError(f"{self.spec.checkpoint}: the network's {key} is {theirs}, its run's data "
                                      f"({data_name}) has {ours}")


def load_network(checkpoint: str | Path, net: str | None = None) -> Network:
    """Rebuild one trainable network (default: the student) of a kdkit checkpoint as the checkpoint
    records it, every check before the step that needs it (see the module docstring)."""
    source = str(checkpoint)
    ckpt = load_checkpoint(checkpoint)  # step 1
    cfg = stored_config(ckpt, source, rebuild=False)  # step 2 (the one name rebuilt is checked in step 4)
    spec = trainable_spec(cfg, net, "--net")
    rec, weights = network_entry(ckpt, net, source)  # step 3
    num_classes, in_channels = rec.get("num_classes"), rec.get("in_channels")
    if num_classes is None or in_channels is None:
        raise CheckpointError(f"{source}: the model record has no num_classes / in_channels")
    spec = replace(spec, checkpoint=source, net=net or "student", kwargs=dict(spec.kwargs))
    _check_record(rec, spec, num_classes, in_channels, source)
    model = _create(spec, num_classes, in_channels, source)  # step 4
    return Network(_load_recorded(model, rec, weights, spec, source), cfg, spec, ckpt, rec)


def network_and_data(checkpoint: str | Path, net: str | None, device: Any,
                     data_root: str | None = None) -> tuple[Network, Any]:
    """:func:`load_network`, then the data loaders of its run (``data_root``: where the dataset files
    are), checked against the network: what ``kdkit eval``, ``export``, ``profile`` and ``quantize`` use."""
    from ..data import build_loaders
    from ..tasks import create_task

    loaded = load_network(checkpoint, net)  # every check of the file before any data is read
    if data_root:
        loaded.cfg.data.root = data_root
    loaders = build_loaders(loaded.cfg.data, loaded.cfg.train.seed, device)
    loaded.check_data(create_task(loaded.cfg.task).record(loaders.dataset), loaders.dataset.name)
    loaded.model.to(device)
    return loaded, loaders
