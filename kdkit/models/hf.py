"""Hugging Face ``transformers`` sequence classifiers built from a configuration type, with eager attention
(``hf:<model type>`` names, :mod:`kdkit.models.external`; the zoo's ``hf_bert``, :mod:`kdkit.models.text`).
Never downloaded: no hub, no remote code."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError

INSTALL = "pip install 'kdkit[text]' (transformers and tokenizers; Python >= 3.11)"


def transformers_module():
    """``transformers``, or a ConfigError that says how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise ConfigError(f"text models need Hugging Face transformers, which does not import here ({e}): "
                          f"{INSTALL}") from None
    return transformers


def from_config_type(model_type: str, num_classes: int, vocab: int, **fields: Any) -> nn.Module:
    """``AutoModelForSequenceClassification`` of configuration type ``model_type`` with eager attention."""
    tf = transformers_module()
    if fields.get("vocab_size", vocab) != vocab:
        raise ConfigError(f"model 'hf:{model_type}': model.kwargs.vocab_size is {fields['vocab_size']}, but the "
                          f"tokenizer has {vocab} tokens: a model's vocabulary is its tokenizer's (leave "
                          "vocab_size out, or give the model's own tokenizer as data.tokenizer)")
    fields.pop("vocab_size", None)
    try:
        config = tf.AutoConfig.for_model(model_type, vocab_size=vocab, num_labels=num_classes, **fields)
    except ValueError as e:
        raise ConfigError(f"model 'hf:{model_type}': {str(e).splitlines()[0]}") from None
    if getattr(config, "auto_map", None):
        raise ConfigError(f"model 'hf:{model_type}': its configuration maps to remote code, which kdkit never runs")
    config._attn_implementation = "eager"
    try:
        return tf.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    except ValueError as e:  # a configuration type without a sequence-classification model
        raise ConfigError(f"model 'hf:{model_type}': {str(e).splitlines()[0]}") from None


__all__ = ["INSTALL", "from_config_type", "transformers_module"]
