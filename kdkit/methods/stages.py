"""Stages of a run, as data: which objectives are on, which parameters train, at what learning rate.

A run is a list of stages run one after the other. Each names its epochs, the method objectives it
optimises (``"kd"``: a method's main objective, ``"fitnets.pretrain"``: its preliminary one), whether the
label loss is on, the parameters it holds fixed (``frozen``: prefixes of the distiller's parameter names,
``student.stage1``, ``methods.0.paraphraser``, ``peers.peer1``) and its learning rate (the run's schedule,
or constant). Without ``stages`` in the config, the plan is made from the methods: their preliminary
stages (FitNets' hints, FSP, AB, FT's paraphraser: ``stage1_epochs``) then ``main``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..registry import suggest

MAIN, PRETRAIN = "main", "pretrain"  # a method's two objectives: ``losses`` and ``pretrain_losses``


@dataclass
class Stage:
    """One stage of a run, as written in a config (``stages: [...]``)."""

    name: str
    epochs: int | None = None  # None: train.epochs
    methods: list[str] | None = None  # objectives on: "kd", "fitnets.pretrain"; None: every main objective
    ce: bool | None = None  # the label loss; None: on when a main objective is
    frozen: list[str] = field(default_factory=list)  # parameter-name prefixes held fixed (eval mode, no grad)
    lr: float | None = None  # base learning rate in this stage; None: optim.lr (or the network's own)
    schedule: bool = True  # follow the run's schedule (over all scheduled stages); False: constant lr

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a stage needs a name")
        if self.epochs is not None and (isinstance(self.epochs, bool) or self.epochs < 1):
            raise ValueError(f"stage '{self.name}': epochs must be >= 1, got {self.epochs}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"stage '{self.name}': lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class PlannedStage:
    """A stage resolved against the run's methods: epochs ``[start, start + epochs)`` of the run."""

    name: str
    start: int
    epochs: int | None  # None: open-ended (a distiller used outside a trainer)
    objectives: tuple[tuple[int, str], ...]  # (method index, MAIN or PRETRAIN)
    ce: bool
    frozen: tuple[str, ...]
    lr: float | None
    schedule: bool
    scheduled_before: int  # scheduled epochs in the stages before this one

    def covers(self, epoch: int) -> bool:
        return epoch >= self.start and (self.epochs is None or epoch < self.start + self.epochs)


def default_stages(methods) -> list[Stage]:
    """The methods' preliminary stages (one per distinct length: a method's objective stays on while its
    own ``pretrain_epochs`` last), then ``main``."""
    stages: list[Stage] = []
    start = 0
    for end in sorted({m.pretrain_epochs for m in methods if m.pretrain_epochs > 0}):
        active = [f"{i}.{PRETRAIN}" for i, m in enumerate(methods) if m.pretrain_epochs >= end]
        stages.append(Stage(f"stage{len(stages) + 1}", end - start, active, ce=False, schedule=False))
        start = end
    return stages + [Stage(MAIN)]


def _objective(spec: str, methods, where: str) -> tuple[int, str]:
    name, _, objective = spec.partition(".")
    objective = objective or MAIN
    if objective not in (MAIN, PRETRAIN):
        raise ConfigError(f"{where}: '{spec}': a method's objective is '{MAIN}' or '{PRETRAIN}'")
    if name.isdigit() and int(name) < len(methods):
        i = int(name)
    else:
        hits = [i for i, m in enumerate(methods) if m.name == name]
        if not hits:
            raise ConfigError(f"{where}: no method '{name}' in this run{suggest(name, [m.name for m in methods])}")
        if len(hits) > 1:
            raise ConfigError(f"{where}: the run has {len(hits)} '{name}' methods: address them by index "
                              f"({', '.join(f'{i}.{objective}' for i in hits)})")
        i = hits[0]
    if objective == PRETRAIN and type(methods[i]).pretrain_losses is _base_pretrain():
        raise ConfigError(f"{where}: method '{methods[i].name}' has no preliminary objective")
    return i, objective


def _base_pretrain():
    from .base import Method

    return Method.pretrain_losses


def plan_stages(stages: list[Stage] | None, methods, param_names: list[str],
                main_epochs: int | None) -> list[PlannedStage]:
    """Resolve ``stages`` (or the methods' default ones) against the methods and the distiller's
    parameter names; ``main_epochs`` fills the stages without ``epochs`` (None: open-ended)."""
    stages = list(stages) if stages else default_stages(methods)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stages: names must be unique, got {names}")
    plan: list[PlannedStage] = []
    start = scheduled = 0
    for k, s in enumerate(stages):
        where = f"stages[{k}] ({s.name})"
        epochs = s.epochs if s.epochs is not None else main_epochs
        if epochs is None and k < len(stages) - 1:
            raise ConfigError(f"{where}: only the last stage may leave epochs unset here")
        specs = s.methods if s.methods is not None else [str(i) for i in range(len(methods))]
        objectives = tuple(_objective(spec, methods, where) for spec in specs)
        ce = s.ce if s.ce is not None else any(obj == MAIN for _, obj in objectives)
        if not objectives and not ce:
            raise ConfigError(f"{where}: nothing to train (no method objective and no label loss)")
        frozen = list(s.frozen) + [f"methods.{i}.{p}" for i, obj in objectives for p in methods[i].frozen(obj)]
        for prefix in s.frozen:
            if not any(frozen_match(n, (prefix,)) for n in param_names):
                raise ConfigError(f"{where}: frozen '{prefix}' matches no parameter "
                                  f"(e.g. {', '.join(sorted({n.rsplit('.', 1)[0] for n in param_names})[:6])})")
        plan.append(PlannedStage(s.name, start, epochs, objectives, ce, tuple(frozen), s.lr, s.schedule, scheduled))
        start += epochs or 0
        scheduled += (epochs or 0) if s.schedule else 0
    return plan


def frozen_match(name: str, frozen: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in frozen)
