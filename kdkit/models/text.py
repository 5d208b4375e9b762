"""Text classifiers of Hugging Face ``transformers``, built from a configuration (never downloaded).

- ``hf_bert``: a BERT encoder with a sequence-classification head, sized by its arguments (``layers``,
  ``hidden``, ``heads``, ``intermediate``); ``in_channels`` is the vocabulary size (a text dataset's
  tokenizer's, :mod:`kdkit.data.text`);
- ``hf:<model type>`` (:mod:`kdkit.models.external`): any ``AutoModelForSequenceClassification`` of a
  configuration type (``hf:bert``, ``hf:distilbert``, ``hf:roberta``, ...), its configuration's fields
  from ``model.kwargs``.

Attention is the eager implementation, so that attention probabilities and scores can be taken (the
fused kernels never form them). Taps name modules by path as for any network: ``bert.encoder.layer.3``
is the fourth layer's output (``kdkit inspect`` lists them).
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .hf import from_config_type
from .zoo import register_model

TEXT_MODELS = ("hf_bert",)  # zoo names whose in_channels is a vocabulary size


@register_model("hf_bert")
def hf_bert(num_classes: int = 2, in_channels: int = 8000, layers: int = 4, hidden: int = 256, heads: int = 4,
            intermediate: int | None = None, max_positions: int = 512, dropout: float = 0.1) -> nn.Module:
    """BERT for sequence classification (Devlin et al. 2019), from scratch: ``layers`` encoder layers of
    width ``hidden`` with ``heads`` attention heads and a feed-forward of ``intermediate`` (default
    4 x ``hidden``); ``in_channels`` the vocabulary size."""
    if hidden % heads:
        raise ConfigError(f"hf_bert: hidden {hidden} is not a multiple of heads {heads}")
    return from_config_type("bert", num_classes, in_channels, num_hidden_layers=layers, hidden_size=hidden,
                            num_attention_heads=heads, intermediate_size=intermediate or 4 * hidden,
                            max_position_embeddings=max_positions, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout)


__all__ = ["TEXT_MODELS", "hf_bert"]
