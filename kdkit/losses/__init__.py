"""Pure tensor loss functions: no configuration, no hooks, no state."""

from .features import attention_map, attention_transfer, hint_loss
from .logits import dist_loss, dkd_loss, kd_loss, logit_mse, soft_targets
from .relations import (
    correlation_congruence,
    pkt_loss,
    rbf_taylor_correlation,
    rkd_angle,
    rkd_distance,
    similarity_preserving,
)

__all__ = ["attention_map", "attention_transfer", "hint_loss", "dist_loss", "dkd_loss", "kd_loss", "logit_mse",
           "soft_targets", "correlation_congruence", "pkt_loss", "rbf_taylor_correlation", "rkd_angle",
           "rkd_distance", "similarity_preserving"]
