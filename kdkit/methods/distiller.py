"""The :class:`Distiller`: a run's named networks and the methods that train them, run as one module whose
``forward`` returns the named, weighted loss terms of a batch.

Networks have names. The trainable ones are the ``student`` and any ``peers`` (online distillation, an
assistant trained alongside); the frozen ones are the teachers (``teacher``, or ``teacher0``,
``teacher1``... when there are several). The Distiller owns the trainable networks and every method (so
``distiller.parameters()`` is everything the optimizer trains); the teachers are kept outside the module
tree: not trained, not saved in checkpoints, always in ``eval()`` mode. Which objectives are on and which
parameters train is the current stage's (:mod:`kdkit.methods.stages`).
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from ..batch import call, tensors
from ..errors import ConfigError, LayerPathError
from ..features import FeatureTap, logits_output, probe, unwrap
from ..tasks import Task, create_task
from .adversary import Adversary
from .base import Method, Outputs
from .stages import MAIN, PlannedStage, Stage, frozen_match, plan_stages

STUDENT = "student"


def teacher_names(n: int) -> list[str]:
    """Default names of ``n`` teachers: ``teacher`` for one, ``teacher0``.. for several."""
    return ["teacher"] if n == 1 else [f"teacher{i}" for i in range(n)]


class Distiller(nn.Module):
    """Trainable networks + methods (+ frozen teachers): ``forward`` returns the weighted, named loss terms."""

    def __init__(self, student: nn.Module, methods: list[Method], teachers: list[nn.Module] | None = None,
                 input_shape: tuple[int, ...] | None = None, num_samples: int | None = None,
                 peers: dict[str, nn.Module] | None = None, names: list[str] | None = None,
                 task: Task | None = None, views: int = 1):
        super().__init__()
        teachers, peers = list(teachers or []), dict(peers or {})
        if not methods:
            raise ConfigError("at least one method is needed (use 'vanilla' for plain training)")
        needs = [m.name for m in methods if m.needs_teacher]
        if needs and not teachers:
            raise ConfigError(f"method(s) {', '.join(needs)} need a teacher (set 'teacher' in the config)")
        feat = [m.name for m in methods if m.uses_teacher_features and m.cfg.teacher is None]
        if feat and len(teachers) > 1:
            raise ConfigError(f"feature method(s) {', '.join(feat)} with {len(teachers)} teachers: say whose features "
                              "each one taps, listing it once per teacher if it should learn from several "
                              "(method: [{name: kd}, {name: fitnets, teacher: teacher0}, {name: fitnets, "
                              "teacher: teacher1}])")
        wants = max((m.needs_peers for m in methods), default=0)
        if wants > len(peers):
            raise ConfigError(f"method(s) {', '.join(m.name for m in methods if m.needs_peers)} need {wants} "
                              f"peer network(s) besides the student, got {len(peers)} (set 'peers' in the config)")
        views_needed = 1 + len(peers)
        if any(m.needs_views for m in methods) and views < views_needed:
            raise ConfigError(f"method(s) {', '.join(m.name for m in methods if m.needs_views)} give each network its "
                              f"own augmented view of the batch: set data.views: {views_needed} (one per network), "
                              f"got {views}")
        self.teacher_names = list(names) if names is not None else teacher_names(len(teachers))
        all_names = [STUDENT, *peers, *self.teacher_names]
        if len(self.teacher_names) != len(teachers) or len(set(all_names)) != len(all_names):
            raise ConfigError(f"network names must be unique, got {all_names}")
        for m in methods:
            if m.cfg.teacher is not None and m.cfg.teacher not in self.teacher_names:
                raise ConfigError(f"method {m.name}: teacher '{m.cfg.teacher}' is not a teacher of this run "
                                  f"(teachers: {', '.join(self.teacher_names) or 'none'})")
        for net in (student, *peers.values(), *teachers):
            if not hasattr(unwrap(net), "_kdkit_output"):  # built by kdkit: its model.output is set already
                logits_output(unwrap(net))  # a forward that returns a tuple or dict gives its logits
        self.task = task or create_task()
        self.views = views  # >1: a batch is [views, B, ...]; trainable network k sees view k % views
        self.student = student
        self.methods = nn.ModuleList(methods)
        self.peers = nn.ModuleDict(peers)
        object.__setattr__(self, "teachers", teachers)  # not submodules: never trained, never saved
        for t in teachers:
            t.eval().requires_grad_(False)
        taps: dict[str, list[str]] = {}
        if input_shape is not None:
            example = (input_shape if tensors(input_shape) else  # an example batch: probe moves it
                       self.task.example_input(tuple(input_shape), _device(student)))
            nets = self.networks()
            for net in nets.values():  # a task that needs the networks' layout (detection) takes it here
                self.task.bind(unwrap(net), example)
            infos = {name: probe(net, example) for name, net in nets.items()}
            for name, info in infos.items():
                model = type(unwrap(nets[name])).__name__
                info.network = f"the {name} ({model})" if name in ("student", "teacher") else f"'{name}' ({model})"
            object.__setattr__(self, "infos", infos)  # what the probing pass found, by network
            for m in methods:
                m.num_samples, m.infos, m.teacher_names = num_samples, infos, list(self.teacher_names)
                object.__setattr__(m, "task", self.task)  # the run's task (detection methods read its layout)
                object.__setattr__(m, "networks", self.networks(trainable_only=True))  # not submodules of m
                object.__setattr__(m, "teacher_modules", dict(zip(self.teacher_names, teachers)))  # likewise
                try:
                    m.setup(infos[STUDENT], infos[m.cfg.teacher or self.teacher_names[0]] if teachers else None)
                except LayerPathError as e:  # say which method's layer it was
                    raise LayerPathError(f"method {m.name}: {e}") from None
        for m in methods:
            for net, specs in m.taps(self.teacher_names[0] if teachers else None).items():
                if net not in all_names:
                    raise ConfigError(f"method {m.name} taps network '{net}', which this run does not have "
                                      f"(networks: {', '.join(all_names)})")
                taps.setdefault(net, []).extend(specs)
        if any(taps.values()) and input_shape is None:
            raise ConfigError("feature methods need input_shape to probe the models")
        nets = self.networks()
        self.taps = {net: FeatureTap(nets[net], specs) for net, specs in taps.items() if specs}
        self.taps.setdefault(STUDENT, FeatureTap(student, []))
        self.teacher_taps = {net: tap for net, tap in self.taps.items() if net in self.teacher_names}
        self._uses_teacher = bool(needs)
        self._input_grad = any(m.needs_input_grad for m in methods)
        self.set_plan(None)

    # -- networks -------------------------------------------------------------------------------------
    def networks(self, trainable_only: bool = False) -> dict[str, nn.Module]:
        """Every network by name: the student, the peers, then (unless ``trainable_only``) the teachers."""
        nets = {STUDENT: self.student, **dict(self.peers.items())}
        if not trainable_only:
            nets.update(zip(self.teacher_names, self.teachers))
        return nets

    @property
    def s_tap(self) -> FeatureTap:
        return self.taps[STUDENT]

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by network: each peer's own, the student's with the methods' helpers."""
        peer_ids = {id(p) for p in self.peers.parameters()}
        groups = {STUDENT: [p for p in self.parameters() if id(p) not in peer_ids]}
        groups.update({name: list(net.parameters()) for name, net in self.peers.items()})
        return groups

    # -- stages ---------------------------------------------------------------------------------------
    def set_plan(self, stages: list[Stage] | None, main_epochs: int | None = None) -> list[PlannedStage]:
        """Resolve the run's stages (``None``: the methods' preliminary stages, then ``main``)."""
        self.plan = plan_stages(stages, list(self.methods), [n for n, _ in self.named_parameters()], main_epochs)
        self._stage: PlannedStage | None = None
        self._requires_grad = {n: p.requires_grad for n, p in self.named_parameters()}
        return self.plan

    @property
    def pretrain_epochs(self) -> int:
        """Epochs before the first stage with a main objective (0 when the run starts with one)."""
        return next((s.start for s in self.plan if any(o == MAIN for _, o in s.objectives)), 0)

    def stage_at(self, epoch: int) -> PlannedStage:
        for s in self.plan:
            if s.covers(epoch):
                return s
        return self.plan[-1]

    def ce_weight(self, stage: PlannedStage) -> float:
        """The weight of the label loss in ``stage``: the product of its main methods' ``ce_weight()``
        (``1 - alpha`` for kd), 0 where the stage has no label loss."""
        if not stage.ce:
            return 0.0
        w = 1.0
        for i, objective in stage.objectives:
            if objective == MAIN:
                w *= self.methods[i].ce_weight()
        return w

    def enter_stage(self, epoch: int) -> PlannedStage:
        """Make the stage of ``epoch`` current: its frozen parameters stop requiring grad (and their
        modules stay in eval mode), the others are restored. The trainer calls it at each epoch's start,
        outside DDP and ``torch.compile``."""
        stage = self.stage_at(epoch)
        if stage is not self._stage:
            before = self._stage.frozen if self._stage is not None else ()
            self._stage = stage
            for n, p in self.named_parameters():
                p.requires_grad_(self._requires_grad.get(n, True) and not frozen_match(n, stage.frozen))
            for name, module in self.named_modules():
                if frozen_match(name, stage.frozen):
                    module.eval()
                elif frozen_match(name, before):
                    module.train(self.training)
        return stage

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        for t in self.teachers:
            t.eval()
        frozen = self._stage.frozen if getattr(self, "_stage", None) is not None else ()
        if mode and frozen:
            for name, module in self.named_modules():
                if frozen_match(name, frozen):
                    module.eval()
        return self

    def _apply(self, fn, recurse: bool = True):  # .to() / .cuda() / .half() also move the teachers
        super()._apply(fn, recurse)
        for t in self.teachers:
            t._apply(fn, recurse)
        return self

    # -- teachers -------------------------------------------------------------------------------------
    def teacher_outputs(self, x: Tensor, inference_mode: bool = True
                        ) -> tuple[list[Tensor], dict[str, dict[str, Tensor]]]:
        """The teachers' outputs and their tapped features (``{teacher: {layer: tensor}}``) for ``x``,
        computed in inference mode (no autograd bookkeeping at all) and then copied out of it: inference
        tensors may not be saved for backward, and feature losses save their inputs. ``inference_mode=False``
        runs them under plain ``no_grad`` (what most training loops do; the benchmark's reference loop)."""
        if not self._uses_teacher:
            return [], {}
        x = self.view(x, 0)
        logits, feats = [], {}
        with torch.inference_mode() if inference_mode else torch.no_grad():
            for name, t in zip(self.teacher_names, self.teachers):
                tap = self.taps.get(name)
                with tap or nullcontext():
                    logits.append(call(t, x))
                if tap is not None:
                    feats[name] = dict(tap.features)
        if not inference_mode:
            return logits, feats
        return [v.clone() for v in logits], {n: {k: v.clone() for k, v in f.items()} for n, f in feats.items()}

    def pin_taps(self) -> None:
        """Keep the feature hooks attached for good (needed under ``torch.compile``, which would otherwise
        see the hooks change every step)."""
        for tap in self.taps.values():
            tap.pin()

    # -- the step -------------------------------------------------------------------------------------
    def view(self, x: Tensor, k: int) -> Tensor:
        """The input of the ``k``-th trainable network (in the order student, peers): the batch itself, or
        with ``views > 1`` (a batch of shape ``[views, B, ...]``) its view ``k % views``; the teachers and
        the methods' ``out.inputs`` get view 0."""
        if self.views == 1:
            return x
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] != self.views:
            raise ConfigError(f"this run trains on {self.views} views of each batch (data.views): expected inputs "
                              f"of shape [{self.views}, B, ...], got {tuple(x.shape)}")
        return x[k % self.views]

    def forward(self, x: Tensor, y, index: Tensor | None = None, epoch: int = 0,
                teacher: tuple[list[Tensor], dict[str, dict[str, Tensor]]] | None = None) -> dict[str, Tensor]:
        """Named, weighted loss terms for one batch in the stage of ``epoch``. ``teacher`` is
        ``teacher_outputs(x)`` when the caller computed it already (the trainer does, outside
        ``torch.compile`` and DDP, or from its cache)."""
        stage = self._stage if self._stage is not None and self._stage.covers(epoch) else self.enter_stage(epoch)
        if self._input_grad and self.training:
            if not isinstance(x, Tensor):
                raise ConfigError(f"a method needs the gradient of the loss with respect to the input tensor; these "
                                  f"inputs are a {type(x).__name__}")
            x = x.detach().requires_grad_(True)
        logits, feats = {}, {}
        for k, (name, net) in enumerate(self.networks(trainable_only=True).items()):
            tap = self.taps.get(name)
            with tap or nullcontext():
                logits[name] = call(net, self.view(x, k))
            feats[name] = tap.features if tap is not None else {}
        out = Outputs(self.view(x, 0), y, index, epoch, logits[STUDENT], s_feats=feats[STUDENT], student=self.student,
                      teachers=self.teachers, logits=logits, feats=feats, peers=dict(self.peers.items()))
        if self._uses_teacher:
            t_logits, t_feats = teacher if teacher is not None else self.teacher_outputs(x)  # view 0
            out.t_logits, out.t_feats = t_logits, t_feats.get(self.teacher_names[0], {})
            logits.update(zip(self.teacher_names, t_logits))
            feats.update(t_feats)
        if index is None and any(self.methods[i].needs_sample_index for i, _ in stage.objectives):
            raise ConfigError("a method needs sample indices: pass index= to the distiller")
        terms: dict[str, Tensor] = {}
        if stage.ce:
            ce_w = self.ce_weight(stage)
            if ce_w != 0.0:
                for name in self.networks(trainable_only=True):
                    terms["ce" if name == STUDENT else f"ce/{name}"] = ce_w * self.task.loss(logits[name], y)
        parts = [terms]
        for i, objective in stage.objectives:
            m = self.methods[i]
            own = out
            if m.cfg.teacher is not None:  # the method sees its own teacher only
                own = dataclasses.replace(out, t_logits=[logits[m.cfg.teacher]], t_feats=feats.get(m.cfg.teacher, {}))
            if objective == MAIN:
                part = {k: m.cfg.weight * v for k, v in m.losses(own).items()}
            else:
                part = m.pretrain_losses(own)
            parts.append({f"{k}/{m.cfg.teacher}": v for k, v in part.items()} if m.cfg.teacher else part)
        return self._merge(parts)

    def after_step(self) -> None:
        """Every method's :meth:`~kdkit.methods.Method.after_step` (the trainer calls it after each
        optimiser step)."""
        for m in self.methods:
            m.after_step()

    def adversary_losses(self) -> dict[str, Tensor]:
        """Each method-owned adversary's (discriminator's, critic's) mean loss over its updates since the last
        call, as ``<method>/<attribute>_loss``: what the trainer logs beside the student's terms, once an epoch
        (not part of the student's loss)."""
        out: dict[str, Tensor] = {}
        for m in self.methods:
            for attr, sub in m.named_children():
                if isinstance(sub, Adversary) and (mean := sub.mean_loss()) is not None:
                    out[f"{m.name}/{attr}_loss"] = mean
        return out

    @staticmethod
    def _merge(parts) -> dict[str, Tensor]:
        merged: dict[str, Tensor] = {}
        for part in parts:
            for k, v in part.items():
                if k in merged:
                    raise ConfigError(f"two methods return a loss term named '{k}'")
                merged[k] = v
        return merged


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
