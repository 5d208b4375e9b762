"""kdkit checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of plain data and tensors: ``format``/``version`` markers, the resolved config,
the trained model's spec (``model``: name, classes, input channels, kwargs) and weights (``student``),
the whole trainable state (``distiller``: student and method helpers), and for resuming the optimizer,
epoch, step and RNG states. kdkit never unpickles arbitrary objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import batch as batch_protocol
from ..atomic import write_atomic  # noqa: F401  (part of this module's API: every writer imports it from here)
from ..errors import CheckpointError, ConfigError, first_line
from ..validate import check_record, check_tensors, check_training_state, is_state_dict

FORMAT = "kdkit-checkpoint"
VERSION = 1


def make_folder(path: Path, what: str, hint: str = "") -> Path:
    """Create the folder ``path`` (``what`` names it in errors, ``hint`` says what to do): a ConfigError in one
    line when a file is in the way or it cannot be created."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} exists and is not a folder{hint}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {what} {path}: {e.strerror or e}{hint}") from None
    return path


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``: a
    reader (or a crash) sees the old file or the new one, never a partial one."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a kdkit checkpoint; anything else raises :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file" if path.is_dir()
                              else f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, zip errors, refused globals ...
        raise CheckpointError(f"{path} is not a kdkit checkpoint (cannot be read safely: {first_line(e)})") from None
    return _checked(obj, path)


def _checked(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a kdkit checkpoint (no '{FORMAT}' marker)")
    version = obj.get("version", 0)
    if type(version) is not int or version < 0:
        raise CheckpointError(f"{path}: the checkpoint version is {str(version)[:20]!r}, not a number")
    if version > VERSION:
        raise CheckpointError(f"{path} was written by a newer kdkit (checkpoint version {version})")
    for key in ("model", "student"):
        if key not in obj:
            raise CheckpointError(f"{path} is an incomplete kdkit checkpoint (no '{key}')")
    check_record(obj["model"], str(path))
    if not is_state_dict(obj["student"]):
        raise CheckpointError(f"{path}: the student weights are not a mapping of names to tensors")
    return obj


def model_record(name: str, kwargs: dict[str, Any], transforms: list[dict[str, Any]] | None = None,
                 **task_fields: Any) -> dict[str, Any]:
    """What a checkpoint says of a model: enough to create it again (zoo name, keyword arguments, what
    the task records of its input and output: classes and input channels for classification) and to
    give it the recorded structure (``kdkit.transforms.records``)."""
    return {"name": name, **task_fields, "kwargs": dict(kwargs), "transforms": list(transforms or [])}


def inference_record(dataset: Any, input_shape: Any) -> dict[str, Any]:
    """What using the network outside kdkit needs, as plain data: the dataset's name, the input shape
    ``[C, H, W]`` (several inputs: their structure of shapes, and ``input_form`` with their dtypes), the
    normalisation (``(x / 255 - mean) / std`` per channel) and the class names."""
    several = batch_protocol.structured(input_shape)
    form = {"input_form": batch_protocol.signature(input_shape)} if several else {}
    return {"dataset": dataset.name, **form, "input_shape": (batch_protocol.shapes(input_shape) if several else
                                                           [int(v) for v in input_shape]),
            "mean": [float(v) for v in dataset.mean], "std": [float(v) for v in dataset.std],
            "classes": [str(c) for c in dataset.classes] or [str(i) for i in range(dataset.num_classes)]}


def network_entry(ckpt: dict[str, Any], net: str | None, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model record and weights of one of a checkpoint's trainable networks (default: the student;
    peers are under ``networks``)."""
    if net is None or net == "student":
        return ckpt["model"], ckpt["student"]
    nets = ckpt.get("networks") or {}
    if not isinstance(nets, dict):
        raise CheckpointError(f"{source}: 'networks' is not a mapping")
    if net not in nets:
        raise CheckpointError(f"{source} has no network '{net}' (networks: {', '.join(['student', *nets])})")
    entry = nets[net]
    if not isinstance(entry, dict) or "model" not in entry or "weights" not in entry:
        raise CheckpointError(f"{source}: network '{net}' has no model record and weights")
    return check_record(entry["model"], source, f"model record of '{net}'"), entry["weights"]


def check_resume(ckpt: dict[str, Any], source: str, networks: dict[str, nn.Module], records: dict[str, dict[str, Any]],
                 distiller_state: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, total_epochs: int) -> None:
    """Everything resuming reads, against the rebuilt run: each trainable network's model record (``records``:
    what the run's config says of it) and weights, then the training state (:func:`check_training_state`)."""
    for net, model in networks.items():
        rec, weights = network_entry(ckpt, net, source)
        wrong = [k for k, v in records[net].items() if rec.get(k) != v]
        if wrong:
            k = wrong[0]
            raise CheckpointError(f"{source}: the model record of '{net}' says {k}={str(rec.get(k))[:60]!r}, "
                                  f"the run's config says {str(records[net][k])[:60]!r}")
        check_tensors(model.state_dict(), weights, source, f"weights of '{net}'")
    check_training_state(ckpt, source, distiller_state, optimizer, total_epochs)


# ----------------------------------------------------------------------------- weights from elsewhere

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")  # where other tools nest them


def _nested_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict) and obj.get("format") != FORMAT:
        for key in WRAPPER_KEYS:
            if is_state_dict(obj.get(key)) and obj[key]:
                return obj[key]
    return None


def read_weights(path: str | Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor] | None]:
    """``(checkpoint, None)`` for a kdkit checkpoint (checked as :func:`load_checkpoint` does), or
    ``(None, state_dict)`` for a plain PyTorch ``state_dict`` file (``torch.save(model.state_dict())``,
    read with ``weights_only=True``; also one nested under ``state_dict``/``model``/... as training tools
    save it) or a ``.safetensors`` file. A ``module.`` prefix on every key (DataParallel) is removed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} is a directory, not a weights file" if path.is_dir()
                              else f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            weights: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(obj, dict) and obj.get("format") == FORMAT:
                return _checked(obj, path), None
            weights = obj if is_state_dict(obj) else _nested_state_dict(obj)
    except CheckpointError:
        raise
    except Exception as e:  # pickle errors, zip errors, refused globals, a malformed safetensors header ...
        raise CheckpointError(f"{path} is neither a kdkit checkpoint nor a weights file that can be read safely "
                              f"({first_line(e)[:200]})") from None
    if not weights:
        raise CheckpointError(f"{path}: neither a kdkit checkpoint nor a state dict (a mapping of names to tensors, "
                              f"possibly under one of {', '.join(WRAPPER_KEYS)})")
    if all(k.startswith("module.") for k in weights):
        weights = {k[len("module."):]: v for k, v in weights.items()}
    return None, weights


def grey_stem(weight: torch.Tensor, own: torch.Tensor | None) -> torch.Tensor:
    """A 3-channel convolution's weight ``[O, 3, kh, kw]`` for a 1-channel one ``[O, 1, kh, kw]``: summed over
    its input channels, which computes exactly what the 3-channel layer computes on the grey image
    repeated on three channels (how a colour model's released weights serve a grey dataset)."""
    if (own is not None and weight.dim() == 4 and own.dim() == 4 and weight.shape[1] == 3 and own.shape[1] == 1
            and weight.shape[0] == own.shape[0] and weight.shape[2:] == own.shape[2:] and weight.is_floating_point()):
        return weight.sum(1, keepdim=True)
    return weight


def load_plain_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str,
                       strict: bool = True) -> list[str]:
    """Load a plain state dict into ``model``. ``strict``: every key of the model, no other key, same
    shapes, or a CheckpointError that lists what differs (missing, unexpected and mismatched keys, with
    their counts). Not strict: the keys that fit are loaded and the returned lines say what was not."""
    own = model.state_dict()
    weights = {k: grey_stem(v, own.get(k)) for k, v in weights.items()}
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if own[k].shape != weights[k].shape)
    kinds = sorted(k for k in set(own) & set(weights) if own[k].is_floating_point() != weights[k].is_floating_point()
                   or own[k].is_complex() != weights[k].is_complex())
    if kinds:  # int64 weights for float parameters: casting them gives a network that computes nonsense
        k = kinds[0]
        raise CheckpointError(f"{source}: {len(kinds)} weight(s) of another kind than the model's ('{k}' is "
                              f"{weights[k].dtype}, the model's is {own[k].dtype}): not a weights file of this model")

    def some(keys: list[str], shape: bool = False) -> str:
        items = [f"{k} {list(weights[k].shape)} vs {list(own[k].shape)}" if shape else k for k in keys[:4]]
        return ", ".join(items) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

    report = ([f"{len(missing)} missing ({some(missing)})"] if missing else []) + (
        [f"{len(unexpected)} unexpected ({some(unexpected)})"] if unexpected else []) + (
        [f"{len(shapes)} of another shape ({some(shapes, True)})"] if shapes else [])
    fit = {k: v for k, v in weights.items() if k in own and k not in shapes}
    if strict and report:
        raise CheckpointError(f"{source} does not fit the model: {'; '.join(report)} (of the model's {len(own)} "
                              f"keys; set strict: false to load the {len(fit)} that fit)")
    if not fit:
        raise CheckpointError(f"{source}: none of its {len(weights)} weights fits the model")
    for k, v in fit.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{source}: the weights hold non-finite values in '{k}'")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in fit.items()}, strict=False)
    return report
