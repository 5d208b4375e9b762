"""Pure tensor loss functions: no configuration, no hooks, no state."""

from .contrastive import info_nce
from .features import (
    ab_loss,
    align_singular_vectors,
    attention_map,
    attention_transfer,
    factor_transfer,
    fsp_matrix,
    hierarchical_context_loss,
    hint_loss,
    input_gradient_attention,
    match_spatial,
    nst_mmd,
    svd_rbf,
    top_singular_vectors,
    vid_loss,
)
from .logits import dist_loss, dkd_loss, kd_loss, logit_mse, soft_targets
from .relations import (
    attention_graph_kl,
    correlation_congruence,
    hkd_loss,
    irg_edge,
    irg_transformation,
    pkt_loss,
    rbf_taylor_correlation,
    rkd_angle,
    rkd_distance,
    similarity_preserving,
)

__all__ = [
    "ab_loss", "attention_graph_kl", "attention_map", "attention_transfer", "correlation_congruence", "dist_loss",
    "dkd_loss",
    "factor_transfer", "fsp_matrix", "hint_loss", "input_gradient_attention", "kd_loss", "logit_mse",
    "hkd_loss", "match_spatial", "nst_mmd", "pkt_loss", "rbf_taylor_correlation", "rkd_angle", "rkd_distance",
    "similarity_preserving", "soft_targets", "vid_loss", "info_nce", "irg_edge", "irg_transformation",
    "hierarchical_context_loss", "align_singular_vectors", "svd_rbf", "top_singular_vectors",
]
