"""The sweep file: its search space, checked against the base recipe, and each trial's recipe."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import config_dict, load_config
from ..errors import ConfigError
from ..yamlio import apply_overrides, load_yaml

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
KINDS = ("log", "range", "int", "choice")


@dataclass
class Param:
    """One searched key: ``log`` and ``range`` (floats, log-uniform or uniform), ``int`` (integers),
    ``choice`` (a list of values)."""

    key: str
    kind: str
    values: list[Any]

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, self.values)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.values[0]), int(self.values[1]))
        return trial.suggest_float(self.key, float(self.values[0]), float(self.values[1]), log=self.kind == "log")


@dataclass
class SweepConfig:
    base: dict[str, Any]
    space: list[Param]
    trials: int = 20
    sampler: str = "tpe"
    pruner: str = "median"
    pruner_warmup: int = 1  # epochs every trial runs before a pruner may stop it (default: half the recipe's)
    metric: str | None = None
    seed: int = 0
    out: str = "runs/sweep"
    name: str = "sweep"
    source: str = "sweep"
    seeds: list[int] = field(default_factory=list)  # final runs of the best config, on test
    methods: list[str] | None = None  # --methods: one search per method (kdkit.sweep.methods)
    method_settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # fixed settings per method


def _param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
        raise ConfigError(f"{where}: space.{key} must be one of {{log: [low, high]}}, {{range: [low, high]}}, "
                          f"{{int: [low, high]}} or {{choice: [a, b, ...]}}, got {spec!r}"[:300])
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: space.{key}.{kind} must be a non-empty list, got {values!r}"[:300])
    if kind == "choice":
        return Param(key, kind, values)
    if len(values) != 2 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: space.{key}.{kind} must be [low, high] numbers, got {values!r}"[:300])
    low, high = values
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ConfigError(f"{where}: space.{key}.{kind}: low must be below high, got [{low}, {high}]")
    if kind == "log" and low <= 0:
        raise ConfigError(f"{where}: space.{key}.log: a log range must be above 0, got [{low}, {high}]")
    if kind == "int" and not all(float(v).is_integer() for v in values):
        raise ConfigError(f"{where}: space.{key}.int: bounds must be integers, got [{low}, {high}]")
    return Param(key, kind, [low, high])


def _has_key(resolved: dict[str, Any], key: str) -> bool:
    """Whether ``key`` (a ``--set`` path) names a setting of the resolved config."""
    node: Any = resolved
    parts = key.split(".")
    for part in parts:
        if isinstance(node, list):
            names = [e.get("name") if isinstance(e, dict) else e for e in node]
            if part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif part in names:
                node = node[names.index(part)]
            else:
                return False
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return False
    return True


def parse_sweep(data: dict[str, Any], where: str = "sweep", root: Path | None = None) -> SweepConfig:
    """A sweep file's mapping, checked whole before any trial runs (one-line errors)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a sweep file is a YAML mapping")
    known = {"base", "space", "trials", "sampler", "pruner", "metric", "seed", "out", "name", "seeds", "methods",
             "pruner_warmup", "method_settings"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; a sweep has {sorted(known)}")
    base = data.get("base")
    if isinstance(base, str):
        base = load_yaml((root or Path(".")) / base)
    if not isinstance(base, dict):
        raise ConfigError(f"{where}: base must be a recipe file or a recipe mapping")
    base = dict(base)
    if isinstance(base.get("method"), str | dict):  # one method: a list, so method.<name>.<key> addresses it
        base["method"] = [base["method"]]
    space = data.get("space")
    methods = data.get("methods")
    if methods is not None and space is not None:
        raise ConfigError(f"{where}: give either space (one search) or methods (a search per method over its "
                          "own weights), not both")
    if methods is None and (not isinstance(space, dict) or not space):
        raise ConfigError(f"{where}: space must map config keys to ranges, e.g. optim.lr: {{log: [0.01, 0.3]}}")
    params = [_param(str(k), v, where) for k, v in (space or {}).items()]
    resolved = config_dict(load_config(base=json.loads(json.dumps(base))))
    for p in params:
        if not _has_key(resolved, p.key):
            raise ConfigError(f"{where}: space key '{p.key}' is not a setting of the base recipe (its sections: "
                              f"{sorted(resolved)})")
    cfg = SweepConfig(base=base, space=params, source=where)
    epochs = int((resolved.get("train") or {}).get("epochs", 10))
    cfg.pruner_warmup = max(1, epochs // 2)
    if "pruner_warmup" in data:
        warm = data["pruner_warmup"]
        if type(warm) is not int or not 1 <= warm <= epochs:
            raise ConfigError(f"{where}: pruner_warmup must be an integer in [1, {epochs}] (epochs), got {warm!r}")
        cfg.pruner_warmup = warm
    for key, kind in (("trials", int), ("seed", int)):
        if key in data:
            value = data[key]
            if type(value) is not kind or value < (1 if key == "trials" else 0):
                raise ConfigError(f"{where}: {key} must be an integer >= {1 if key == 'trials' else 0}, got {value!r}")
            setattr(cfg, key, value)
    for key, allowed in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
        if key in data:
            if data[key] not in allowed:
                raise ConfigError(f"{where}: {key} must be one of {list(allowed)}, got {data[key]!r}")
            setattr(cfg, key, data[key])
    if cfg.sampler == "grid" and any(p.kind in ("log", "range") for p in params):
        raise ConfigError(f"{where}: the grid sampler takes choice and int ranges only (a float range has no grid)")
    metric = data.get("metric", f"val/{_primary(resolved)}")
    if not isinstance(metric, str) or not metric.startswith("val/"):
        raise ConfigError(f"{where}: metric must be a validation metric (val/...), never a test one, got {metric!r}")
    if float(resolved.get("data", {}).get("val_fraction") or 0) <= 0:
        raise ConfigError(f"{where}: the base recipe has no validation split (data.val_fraction is 0); a sweep "
                          "chooses on validation, never on test")
    cfg.metric = metric
    seeds = data.get("seeds", [])
    if not isinstance(seeds, list) or not all(type(v) is int and v >= 0 for v in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds must be a list of distinct integers >= 0 (the final runs), got {seeds!r}")
    cfg.seeds = seeds
    if methods is not None:
        from .methods import resolve_methods

        cfg.methods = resolve_methods(methods, where, str(resolved.get("task", "classification")))
    settings = data.get("method_settings", {})
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise ConfigError(f"{where}: method_settings maps a method name to its fixed settings, got {settings!r}"[:300])
    cfg.method_settings = settings
    cfg.out = str(data.get("out", cfg.out))
    cfg.name = str(data.get("name", Path(cfg.out).name or "sweep"))
    return cfg


def _primary(resolved: dict[str, Any]) -> str:
    from ..tasks import create_task

    return create_task(load_config(base=resolved).task).primary


def load_sweep(path: str | Path, methods: Any = None, seeds: list[int] | None = None) -> SweepConfig:
    """A sweep file; ``methods`` (``--methods``) makes it a comparison of methods, its space unused."""
    path = Path(path)
    data = load_yaml(path)
    if isinstance(data, dict) and (methods is not None or seeds is not None):
        data = dict(data)
        if methods is not None:
            data.pop("space", None)
            data["methods"] = methods
        if seeds is not None:
            data["seeds"] = seeds
    return parse_sweep(data, str(path), path.parent)


def grid_points(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every combination of the grid, in order (the first key varies slowest)."""
    import itertools

    axes = [p.values if p.kind == "choice" else list(range(int(p.values[0]), int(p.values[1]) + 1))
            for p in cfg.space]
    return [dict(zip([p.key for p in cfg.space], combo)) for combo in itertools.product(*axes)]


def trial_config(cfg: SweepConfig, params: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The base recipe with the trial's parameters set, run in ``run_dir``."""
    data = json.loads(json.dumps(cfg.base))
    apply_overrides(data, [f"{k}={json.dumps(v)}" for k, v in params.items()])
    train = dict(data.get("train") or {})
    train.update({"out_dir": str(run_dir.parent), "run_name": run_dir.name, "progress": False,
                  "existing": "overwrite"})  # the trial's folder holds only its claim file until it runs
    if train.get("threads") is None:  # results with one seed differ between thread counts: record it
        import torch

        train["threads"] = torch.get_num_threads()
    data["train"] = train
    return data


