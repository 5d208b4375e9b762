"""Tasks: what is specific to the kind of prediction a run trains, one file each (``base.py`` holds the
interface). Classification was the first; segmentation shows how a task is added (docs/architecture.md)."""

from . import classification, detection, image_to_image, segmentation, text  # noqa: F401  (importing a task's module registers it)
from .base import TASKS, Task, create_task, register_task, task_spec
from .classification import Classification
from .detection import Detection
from .image_to_image import ImageToImage
from .segmentation import Segmentation
from .text import TextClassification

__all__ = ["TASKS", "Classification", "Detection", "ImageToImage", "Segmentation", "Task", "TextClassification",
           "create_task", "register_task", "task_spec"]
