"""kdkit: knowledge distillation for PyTorch.

>>> import kdkit
>>> cfg = kdkit.load_config("configs/digits/kd.yaml", ["method.temperature=2"])
>>> result = kdkit.from_config(cfg).fit()

The names below are imported on first use (PEP 562), so ``import kdkit.cli`` starts without loading
torch: the command line answers Ctrl-C and ``--help`` from its first instant.
"""

from __future__ import annotations

# No import at module level: `python -m kdkit` and the `kdkit` script import this package before the command
# line installs its Ctrl-C handler, so this file runs in that window and must take no time (typing alone took
# about a millisecond). TYPE_CHECKING = False is the constant type checkers read as typing.TYPE_CHECKING.
TYPE_CHECKING = False

__version__ = "0.1.0"

_EXPORTS = {
    "from_config": "build", "resume": "build",
    "RunConfig": "config", "load_config": "config", "parse_config": "config",
    "list_datasets": "data", "load_dataset": "data",
    "dataset_from_loaders": "data.tensors", "load_tensors": "data.tensors",
    "load_checkpoint": "engine.checkpoint",
    "Trainer": "engine.trainer", "evaluate": "engine.trainer",
    "FeatureTap": "features", "probe": "features",
    "Distiller": "methods", "Method": "methods", "Stage": "methods", "create_method": "methods",
    "list_methods": "methods", "register_method": "methods",
    "create_model": "models", "list_models": "models", "register_model": "models",
    "trust_module": "models.external",
    "Task": "tasks", "create_task": "tasks", "register_task": "tasks",
    "Transform": "transforms", "list_transforms": "transforms", "register_transform": "transforms",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    import importlib

    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kdkit' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from typing import Any

    from .build import from_config, resume  # noqa: F401
    from .config import RunConfig, load_config, parse_config  # noqa: F401
    from .data import list_datasets, load_dataset  # noqa: F401
    from .data.tensors import dataset_from_loaders, load_tensors  # noqa: F401
    from .engine.checkpoint import load_checkpoint  # noqa: F401
    from .engine.trainer import Trainer, evaluate  # noqa: F401
    from .features import FeatureTap, probe  # noqa: F401
    from .methods import Distiller, Method, Stage, create_method, list_methods, register_method  # noqa: F401
    from .models import create_model, list_models, register_model  # noqa: F401
    from .models.external import trust_module  # noqa: F401
    from .tasks import Task, create_task, register_task  # noqa: F401
    from .transforms import Transform, list_transforms, register_transform  # noqa: F401
