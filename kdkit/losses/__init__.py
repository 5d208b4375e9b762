"""Pure tensor loss functions: no configuration, no hooks, no state."""

from .features import attention_map, attention_transfer, hint_loss
from .logits import kd_loss, logit_mse, soft_targets

__all__ = ["attention_map", "attention_transfer", "hint_loss", "kd_loss", "logit_mse", "soft_targets"]
