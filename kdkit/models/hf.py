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


def is_directory(name: str) -> bool:
    """``hf:<path>`` names a saved model when the path is written as one (``./x``, ``../x``, ``/x``, ``~/x``
    or with a ``/``); ``hf:<word>`` is a configuration type."""
    return name.startswith((".", "/", "~")) or "/" in name


def from_directory(path: str, num_classes: int, vocab: int, **fields: Any) -> nn.Module:
    """A sequence classifier a ``save_pretrained`` call wrote to ``path`` (``config.json`` and
    ``model.safetensors``, or its shards): its configuration and weights, read from the folder only (no hub),
    safetensors only (no pickle), no remote code, eager attention. Its label count and vocabulary must be
    the dataset's and tokenizer's."""
    import json
    from pathlib import Path

    tf = transformers_module()
    folder = Path(path).expanduser()
    where = f"model 'hf:{path}'"
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{where}: no config.json in {folder} (a folder written by save_pretrained)")
    if not any(folder.glob("*.safetensors")):
        bins = [p.name for p in folder.glob("*.bin")]
        raise ConfigError(f"{where}: no .safetensors weights in {folder}" + (
            f" ({', '.join(bins)}: pickle files, which kdkit never loads; save with safe_serialization=True)"
            if bins else ""))
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: config.json is not JSON ({e})") from None
    if not isinstance(raw, dict) or raw.get("auto_map"):
        raise ConfigError(f"{where}: its config.json maps to remote code, which kdkit never runs")
    labels = raw.get("num_labels", len(raw.get("id2label") or {}) or 2)
    if labels != num_classes:
        raise ConfigError(f"{where} classifies {labels} labels, the dataset has {num_classes} classes")
    if raw.get("vocab_size") != vocab:
        raise ConfigError(f"{where} has a vocabulary of {raw.get('vocab_size')} tokens, the tokenizer {vocab}: give "
                          f"the model's own tokenizer as data.tokenizer (its folder's tokenizer.json)")
    bars = tf.utils.logging.is_progress_bar_enabled()
    tf.utils.logging.disable_progress_bar()  # "Loading weights: 100%", once per network built
    try:
        return tf.AutoModelForSequenceClassification.from_pretrained(
            str(folder), local_files_only=True, trust_remote_code=False, use_safetensors=True,
            attn_implementation="eager", **fields)
    except (OSError, ValueError, RuntimeError) as e:
        raise ConfigError(f"{where}: {str(e).strip().splitlines()[0][:300]}") from None
    finally:
        if bars:
            tf.utils.logging.enable_progress_bar()


__all__ = ["INSTALL", "from_config_type", "from_directory", "is_directory", "transformers_module"]
