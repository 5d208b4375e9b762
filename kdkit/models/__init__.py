"""Model zoo: plain ``nn.Module`` classifiers, created by name.

>>> from kdkit import create_model
>>> net = create_model("resnet20", num_classes=10, in_channels=3)
"""

from __future__ import annotations

from . import cifar_resnet, detection, gan, mobilenetv2, segmentation, shufflenet, small, text, vgg, wrn  # noqa: F401, E501  (importing registers the models)
from .zoo import MODELS, build_network, count_params, create_model, list_models, register_model

__all__ = ["MODELS", "build_network", "count_params", "create_model", "list_models", "register_model"]
