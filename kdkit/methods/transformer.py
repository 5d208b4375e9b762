"""Where a transformer's parts are, found from the probing pass by module path, for the text methods.

A transformer encoder's layers are the numbered children of one module list whose outputs are
``[T, H]`` per sample (BERT and RoBERTa: ``bert.encoder.layer.<i>``; DistilBERT:
``distilbert.transformer.layer.<i>``); its embeddings are the module named ``...embeddings`` with the same
output; each layer's query, key and value projections are its ``Linear`` modules named ``query``/``key``/
``value`` (BERT), ``q_lin``/``k_lin``/``v_lin`` (DistilBERT) or ``q_proj``/``k_proj``/``v_proj``. Hidden
states are numbered as Hugging Face's ``hidden_states``: 0 the embeddings, ``i`` the output of layer ``i``
(1-based). The taps read them without changing the model (no fork, no ``output_attentions``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from ..features import ModelInfo

PROJECTIONS = {"q": ("query", "q_lin", "q_proj"), "k": ("key", "k_lin", "k_proj"), "v": ("value", "v_lin", "v_proj")}


@dataclass
class Layout:
    embeddings: str | None
    layers: list[str]  # layer i + 1's module path at index i
    width: int
    projections: list[dict[str, str]]  # per layer: "q", "k", "v" -> module path
    method: str  # for messages: the method that reads the layout, and of which network
    network: str

    def _check(self, index: int, first: int) -> None:
        if not first <= index <= len(self.layers):
            raise ConfigError(f"{self.method}: {self.network} has {'hidden states' if first == 0 else 'layers'} "
                              f"{first}-{len(self.layers)}, not {index}")

    def hidden(self, index: int, first: int = 0) -> str:
        """The module path of hidden state ``index`` (0: the embeddings; ``first``: the lowest allowed)."""
        self._check(index, first)
        if index == 0:
            if self.embeddings is None:
                raise ConfigError(f"{self.method}: {self.network} has no module named ...embeddings: hidden state 0 "
                                  "cannot be tapped")
            return self.embeddings
        return self.layers[index - 1]

    def projection(self, index: int, role: str) -> str:
        """Layer ``index``'s (1-based) ``role`` projection ("q", "k" or "v")."""
        self._check(index, 1)
        path = self.projections[index - 1].get(role)
        if path is None:
            raise ConfigError(f"{self.method}: no {'/'.join(PROJECTIONS[role])} Linear found in {self.network}'s "
                              f"layer {self.layers[index - 1]}")
        return path


def layout(info: ModelInfo, method: str) -> Layout:
    """The layout of the network ``info`` describes, or a ConfigError naming the method."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for path, layer in info.layers.items():
        found = re.fullmatch(r"(.+)\.(\d+)", path)
        if found and layer.shape is not None and len(layer.shape) == 2:
            groups.setdefault(found.group(1), []).append((int(found.group(2)), path))
    if not groups:
        raise ConfigError(f"{method} needs a transformer: {info.network or 'the network'} has no numbered layers "
                          "with [tokens, width] outputs (`kdkit inspect MODEL --input-shape T` lists its modules)")
    base = max(groups, key=lambda b: len(groups[b]))
    layers = [p for _, p in sorted(groups[base])]
    width = info.layers[layers[-1]].shape[-1]
    embeddings = next((p for p, layer in info.layers.items() if p.split(".")[-1] == "embeddings"
                       and layer.shape is not None and len(layer.shape) == 2), None)
    projections = []
    for path in layers:
        found = {}
        for role, names in PROJECTIONS.items():
            match = [p for p, layer in info.layers.items() if p.startswith(path + ".") and layer.type == "Linear"
                     and p.split(".")[-1] in names]
            if len(match) == 1:
                found[role] = match[0]
        projections.append(found)
    return Layout(embeddings, layers, width, projections, method, info.network or "the network")


def head_count(network: nn.Module) -> int:
    """The attention heads of a Hugging Face model (its configuration's ``num_attention_heads`` or
    ``n_heads``)."""
    net = getattr(network, "module", network)  # DDP
    config = getattr(net, "config", None)
    for name in ("num_attention_heads", "n_heads", "num_heads"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ConfigError(f"{type(net).__name__} states no attention head count (config.num_attention_heads): give the "
                      "method's heads explicitly")


def uniform_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """TinyBERT's uniform mapping: student layer ``m`` learns from teacher layer ``m * N / M`` (1-based;
    ``N / M`` rounded down, as its code's ``layers_per_block``)."""
    if teacher_layers < student_layers:
        raise ConfigError(f"the teacher has {teacher_layers} layers, fewer than the student's {student_layers}: give "
                          "layer_map")
    per = teacher_layers // student_layers
    return [(m, m * per) for m in range(1, student_layers + 1)]


def check_map(pairs: list[list[int]] | None, s: Layout, t: Layout, method: str,
              allow_embeddings: bool = True) -> list[tuple[int, int]]:
    """A user's ``layer_map`` (pairs ``[student, teacher]`` of hidden-state indices) checked, or the
    uniform one."""
    if pairs is None:
        return uniform_map(len(s.layers), len(t.layers))
    low = 0 if allow_embeddings else 1
    out = []
    for pair in pairs:
        if len(pair) != 2:
            raise ConfigError(f"{method}: layer_map holds pairs [student, teacher], got {pair}")
        a, b = int(pair[0]), int(pair[1])
        if not (low <= a <= len(s.layers) and low <= b <= len(t.layers)):
            raise ConfigError(f"{method}: layer_map pair {pair}: the student has hidden states {low}-{len(s.layers)}, "
                              f"the teacher {low}-{len(t.layers)} (0: the embeddings)")
        out.append((a, b))
    return out


__all__ = ["Layout", "check_map", "head_count", "layout", "uniform_map"]
