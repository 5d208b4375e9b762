"""Yao & Sun, "Knowledge Transfer via Dense Cross-Layer Mutual-Distillation", ECCV 2020."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import kd_loss, soft_targets
from ..models.branch import _reinit, split_model
from .base import Method, MethodConfig, Outputs, default_stages, register_method


@dataclass
class DCMConfig(MethodConfig):
    temperature: float = 1.0
    layers: list[str] | None = None  # stages given auxiliary classifiers, on both networks (default: all but the last)
    peer: str | None = None  # the second network (default: the first peer)

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register_method
class DCM(Method):
    """Dense cross-layer mutual distillation of two networks trained together from scratch (the student
    and a peer). Auxiliary classifiers are attached after hidden stages of both networks; every classifier
    (auxiliary or final) of one network learns from every classifier of the other, in both directions:
    ``L = sum_c CE(c) + sum_{a in A, b in B} [T^2 KL(p_b || p_a) + T^2 KL(p_a || p_b)]`` with the target
    side detached, summed without weights as in the authors' code (``sundw2014/DCM``, whose connection
    map links each classifier of one network to all classifiers of the other, none within a network).
    The authors' auxiliary classifiers are hand-made for WRN (copies of the later groups, some halved or
    widened); here the auxiliary classifier after stage ``i`` is a fresh copy of everything after that
    stage (split by ``torch.fx``, re-initialised), which fits any architecture. The authors'
    ``KL_divergence.py`` (in ``wrn/`` and ``wrn_mobi/``) takes plain softmaxes, i.e. temperature 1 (our
    default), of the detached target and the learning classifier, ``mean_b sum_k p log(p / q)``, with both
    distributions smoothed by 1e-8 (``(p + eps) / (1 + K eps)``), which changes nothing measurable; we
    compute the same KL without that smoothing. The auxiliary classifiers are discarded after training:
    the deployed networks are unchanged."""

    name = "dcm"
    family = "online"
    paper = "Yao & Sun 2020, Knowledge Transfer via Dense Cross-Layer Mutual-Distillation"
    Config = DCMConfig
    needs_teacher = False
    needs_peers = 1

    def setup(self, s_info, t_info) -> None:
        peers = [n for n in self.infos if n != "student" and n not in self.teacher_names]
        peer = self.cfg.peer or (peers[0] if peers else None)
        if peer not in peers:
            raise ConfigError(f"dcm: peer '{peer}' is not a trainable network of the run (peers: {peers})")
        self.pair = ["student", peer]
        self.aux = nn.ModuleDict()
        for key, net in zip(("student", "peer"), self.pair):
            layers = self.cfg.layers or default_stages(self.infos[net])[:-1]
            if not layers:
                raise ConfigError(f"dcm: network '{net}' has no hidden stage to attach a classifier to")
            segments = split_model(self.networks[net], list(layers))
            for i in range(len(layers)):
                head = nn.Sequential(*[copy.deepcopy(s) for s in segments[i + 1:]])
                _reinit(head)
                self.aux[f"{key}{i}"] = head
            self.net_specs[net] = list(layers)

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        t = self.cfg.temperature
        heads: dict[str, list[Tensor]] = {}
        terms = {}
        for key, net in zip(("student", "peer"), self.pair):
            aux = [self.aux[f"{key}{i}"](out.feats[net][spec]) for i, spec in enumerate(self.net_specs[net])]
            for i, z in enumerate(aux):
                terms[f"dcm/ce_{net}_aux{i}"] = F.cross_entropy(z.float(), out.targets)
            heads[net] = aux + [out.logits[net]]  # the final classifier's CE is the trainer's
        p = {n: [soft_targets([z], t) for z in zs] for n, zs in heads.items()}  # detached targets
        a, b = self.pair
        terms["dcm/kl"] = sum(kd_loss(za, pb, t) for za in heads[a] for pb in p[b])
        terms[f"dcm/kl/{b}"] = sum(kd_loss(zb, pa, t) for pa in p[a] for zb in heads[b])
        return terms
