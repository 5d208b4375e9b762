"""The :class:`Distiller`: the student, the methods that train it and the frozen teachers, run as one
module whose ``forward`` returns the named, weighted loss terms of a batch.

The Distiller owns the student and every method (so ``distiller.parameters()`` is everything the optimizer
trains); the teachers are kept outside the module tree: they are not trained, not saved in checkpoints,
and always in ``eval()`` mode.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..features import FeatureTap, probe
from .base import Method, Outputs


class Distiller(nn.Module):
    """Student + methods (+ frozen teachers): ``forward`` returns the weighted, named loss terms."""

    def __init__(self, student: nn.Module, methods: list[Method], teachers: list[nn.Module] | None = None,
                 input_shape: tuple[int, ...] | None = None, num_samples: int | None = None):
        super().__init__()
        teachers = list(teachers or [])
        if not methods:
            raise ConfigError("at least one method is needed (use 'vanilla' for plain training)")
        needs = [m.name for m in methods if m.needs_teacher]
        if needs and not teachers:
            raise ConfigError(f"method(s) {', '.join(needs)} need a teacher (set 'teacher' in the config)")
        feat = [m.name for m in methods if m.uses_teacher_features]
        if feat and len(teachers) > 1:
            raise ConfigError(f"feature method(s) {', '.join(feat)} need a single teacher, got {len(teachers)}")
        self.student = student
        self.methods = nn.ModuleList(methods)
        object.__setattr__(self, "teachers", teachers)  # not submodules: never trained, never saved
        for t in teachers:
            t.eval().requires_grad_(False)
        if input_shape is not None:
            s_info = probe(student, input_shape)
            t_info = probe(teachers[0], input_shape) if teachers else None
            for m in methods:
                m.num_samples = num_samples
                m.setup(s_info, t_info)
        s_specs = [s for m in methods for s in m.student_specs]
        t_specs = [s for m in methods for s in m.teacher_specs]
        if (s_specs or t_specs) and input_shape is None:
            raise ConfigError("feature methods need input_shape to probe the models")
        self.s_tap = FeatureTap(student, s_specs)
        self.t_tap = FeatureTap(teachers[0], t_specs) if t_specs else None
        self._uses_teacher = bool(needs)
        self._input_grad = any(m.needs_input_grad for m in methods)
        self.pretrain_epochs = max((m.pretrain_epochs for m in methods), default=0)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        for t in self.teachers:
            t.eval()
        return self

    def _apply(self, fn, recurse: bool = True):  # .to() / .cuda() / .half() also move the teachers
        super()._apply(fn, recurse)
        for t in self.teachers:
            t._apply(fn, recurse)
        return self

    @torch.no_grad()
    def teacher_logits(self, x: Tensor) -> list[Tensor]:
        return [t(x) for t in self.teachers]

    def teacher_outputs(self, x: Tensor, inference_mode: bool = True) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The teachers' logits and the first teacher's tapped features for ``x``, computed in inference
        mode (no autograd bookkeeping at all) and then copied out of it: inference tensors may not be
        saved for backward, and feature losses save their inputs. ``inference_mode=False`` runs them under
        plain ``no_grad`` (what most training loops do; the benchmark's reference loop)."""
        if not self._uses_teacher:
            return [], {}
        with torch.inference_mode() if inference_mode else torch.no_grad(), self.t_tap or nullcontext():
            logits = self.teacher_logits(x)
        feats = dict(self.t_tap.features) if self.t_tap is not None else {}
        if not inference_mode:
            return logits, feats
        return [v.clone() for v in logits], {k: v.clone() for k, v in feats.items()}

    def pin_taps(self) -> None:
        """Keep the feature hooks attached for good (needed under ``torch.compile``, which would otherwise
        see the hooks change every step)."""
        for tap in (self.s_tap, self.t_tap):
            if tap is not None:
                tap.pin()

    def forward(self, x: Tensor, y: Tensor, index: Tensor | None = None, epoch: int = 0,
                teacher: tuple[list[Tensor], dict[str, Tensor]] | None = None) -> dict[str, Tensor]:
        """Named, weighted loss terms for one batch. ``teacher`` is ``teacher_outputs(x)`` when the caller
        computed it already (the trainer does, outside ``torch.compile`` and DDP, or from its cache)."""
        if self._input_grad and self.training:
            x = x.detach().requires_grad_(True)
        with self.s_tap:
            s_logits = self.student(x)
        out = Outputs(x, y, index, epoch, s_logits, s_feats=self.s_tap.features, student=self.student,
                      teachers=self.teachers)
        if self._uses_teacher:
            out.t_logits, out.t_feats = teacher if teacher is not None else self.teacher_outputs(x)
        if index is None and any(m.needs_sample_index for m in self.methods):
            raise ConfigError("a method needs sample indices: pass index= to the distiller")
        if epoch < self.pretrain_epochs:
            active = [m for m in self.methods if epoch < m.pretrain_epochs]
            return self._merge(m.pretrain_losses(out) for m in active)
        ce_w = 1.0
        for m in self.methods:
            ce_w *= m.ce_weight()
        terms: dict[str, Tensor] = {}
        if ce_w != 0.0:
            terms["ce"] = ce_w * F.cross_entropy(s_logits.float(), y)
        return self._merge([terms] + [
            {k: m.cfg.weight * v for k, v in m.losses(out).items()} for m in self.methods])

    def after_step(self) -> None:
        """Every method's :meth:`~kdkit.methods.Method.after_step` (the trainer calls it after each
        optimiser step)."""
        for m in self.methods:
            m.after_step()

    @staticmethod
    def _merge(parts) -> dict[str, Tensor]:
        merged: dict[str, Tensor] = {}
        for part in parts:
            for k, v in part.items():
                if k in merged:
                    raise ConfigError(f"two methods return a loss term named '{k}'")
                merged[k] = v
        return merged
