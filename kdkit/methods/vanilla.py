"""Plain supervised training with cross-entropy: the baseline, and how teachers are trained."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Method, MethodConfig, register_method


@dataclass
class VanillaConfig(MethodConfig):
    pass


@register_method
class Vanilla(Method):
    """Cross-entropy with the labels only; needs no teacher."""

    name = "vanilla"
    family = "baseline"
    paper = "-"
    Config = VanillaConfig
    tasks = ("classification", "segmentation", "detection", "text_classification", "image_to_image")
    needs_teacher = False
