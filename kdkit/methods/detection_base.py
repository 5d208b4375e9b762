"""What the detection methods share: the run's point layout (from the detection task), the ground truth,
the ATSS assignment the task's own loss uses, and the feature pairs they distil (by default each
detector's FPN outputs ``neck.out0``, ``neck.out1``, ... with a 1x1 convolution mapping the student's
channels to the teacher's where they differ)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..errors import ConfigError
from ..features import ModelInfo
from ..tasks.detection import split_output
from .base import Method, MethodConfig, Outputs


@dataclass
class DetectionFeatureConfig(MethodConfig):
    # default: every FPN output of kdkit's detectors (neck.out0, neck.out1, ...), the finest first
    student_layers: list[str] | None = None
    teacher_layers: list[str] | None = None

    def validate(self) -> None:
        if (self.student_layers is None) != (self.teacher_layers is None):
            raise ValueError("student_layers and teacher_layers are given together (or neither: the FPN outputs)")
        if self.student_layers is not None and len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(f"{len(self.student_layers)} student layers but {len(self.teacher_layers)} teacher layers")


class DetectionMethod(Method):
    """A method for the detection task (``tasks = ("detection",)``)."""

    tasks = ("detection",)
    temperature_range = (0.5, 20.0)

    def check_task(self) -> None:
        if getattr(getattr(self, "task", None), "name", None) != "detection":
            raise ConfigError(f"method {self.name} distils detectors: use it with task: detection")

    # -- the layout and the targets --------------------------------------------------------------------
    def grid(self, device) -> tuple[Tensor, Tensor, list[int]]:
        """Point centres ``[A, 2]``, their strides ``[A]`` and the points per level."""
        return (*self.task.layout.grid(device), self.task.layout.level_counts)

    def split(self, output: Tensor) -> tuple[Tensor, Tensor]:
        """Class logits ``[B, A, K]`` and box bins ``[B, A, 4, R + 1]``."""
        return split_output(output.float(), self.task.num_classes, self.task.layout.reg_max)

    def positives(self, out: Outputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The ATSS positives of the batch as the task's loss assigns them (:meth:`Detection.positives`): image
        and point indices, and each one's ground-truth box ``[P, 4]`` and distances to its sides in strides."""
        b, a, _, gt, dist = self.task.positives(out.targets, out.s_logits.device)
        return b, a, gt, dist

    # -- feature pairs -------------------------------------------------------------------------------------
    def pair_features(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        """Choose the feature pairs (default: the FPN outputs) and build a 1x1 connector per pair whose
        channels differ; the maps of a pair must have the same size (same strides)."""
        self.check_task()
        if t_info is None:
            raise ConfigError(f"{self.name} needs a teacher")
        if self.cfg.student_layers is None:
            levels = [n for n in (f"neck.out{i}" for i in range(16)) if n in s_info.layers and n in t_info.layers]
            if not levels:
                raise ConfigError(f"{self.name}: the detectors have no neck.out0 (kdkit's FPN outputs); name the "
                                  "feature maps with student_layers and teacher_layers")
            self.student_specs, self.teacher_specs = levels, list(levels)
        else:
            self.student_specs, self.teacher_specs = list(self.cfg.student_layers), list(self.cfg.teacher_layers)
        self.connectors = nn.ModuleList()
        for s, t in zip(self.student_specs, self.teacher_specs):
            ss, ts = s_info.shape(s), t_info.shape(t)
            if len(ss) != 3 or len(ts) != 3 or ss[1:] != ts[1:]:
                raise ConfigError(f"{self.name}: feature maps '{s}' {list(ss)} and '{t}' {list(ts)} must be [C, H, W] "
                                  "of one size")
            conv = nn.Conv2d(ss[0], ts[0], 1) if ss[0] != ts[0] else nn.Identity()
            self.connectors.append(conv)

    def feature_pairs(self, out: Outputs) -> list[tuple[Tensor, Tensor]]:
        """Each pair's (student map through its connector, teacher map)."""
        return [(conv(out.s_feats[s]), out.t_feats[t])
                for conv, s, t in zip(self.connectors, self.student_specs, self.teacher_specs)]
