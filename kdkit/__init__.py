"""kdkit: knowledge distillation for PyTorch.

>>> import kdkit
>>> cfg = kdkit.load_config("configs/digits/kd.yaml", ["method.temperature=2"])
>>> result = kdkit.from_config(cfg).fit()
"""

__version__ = "0.1.0"

from .build import from_config, resume
from .config import RunConfig, load_config, parse_config
from .data import list_datasets, load_dataset
from .data.tensors import dataset_from_loaders, load_tensors
from .engine.checkpoint import load_checkpoint
from .engine.trainer import Trainer, evaluate
from .features import FeatureTap, probe
from .methods import Distiller, Method, Stage, create_method, list_methods, register_method
from .models import create_model, list_models, register_model
from .models.external import trust_module
from .tasks import Task, create_task, register_task
from .transforms import Transform, list_transforms, register_transform

__all__ = [
    "trust_module", "dataset_from_loaders", "load_tensors",
    "__version__", "RunConfig", "load_config", "parse_config", "from_config", "resume", "list_datasets", "load_dataset",
    "load_checkpoint", "Trainer", "evaluate", "FeatureTap", "probe", "Distiller", "Method", "create_method",
    "list_methods", "register_method", "create_model", "list_models", "register_model", "Transform",
    "list_transforms", "register_transform", "Stage", "Task", "create_task", "register_task",
]
