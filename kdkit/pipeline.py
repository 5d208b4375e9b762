"""Pipelines: named runs in order, where a later run takes an earlier run's trained network as its
teacher or as its initial weights (teacher-assistant chains, born-again generations, train-then-distil).

    kdkit pipeline configs/digits/pipeline.yaml

```yaml
out_dir: runs/digits-pipeline         # each run goes to <out_dir>/<name>
runs:
  - name: teacher
    config: configs/digits/teacher.yaml
  - name: student
    config: configs/digits/kd.yaml     # a recipe file, or the recipe itself as a mapping
    set: [train.epochs=5]              # --set overrides, applied after the file
    teacher: {from: teacher}           # or a list; a plain {name, checkpoint} spec also works
  - name: born_again
    config: configs/digits/kd.yaml
    teacher: {from: student}
    repeat: 2                          # born_again.1, born_again.2: each later one taught by the one before
  - name: finetune
    config: configs/digits/scratch.yaml
    init: {from: student}              # start from that run's weights (same model)
```

Recipe paths are relative to the working directory, as on the command line.

A run whose ``metrics.jsonl`` holds its final test metrics is finished and skipped; a run with a
checkpoint but no final metrics (the pipeline was killed in it) is resumed from its last epoch; the
others start. So rerunning a killed pipeline continues in the run where it stopped. ``{from: NAME}``
points at the final weights (``checkpoint.pt``) of an earlier run's student, ``{from: NAME, net: peer1}``
at one of its other trainable networks (online runs); for a repeated run it points at its last repetition.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import from_config, resume
from .config import load_config, load_yaml, parse_config, trainable_spec
from .engine.trainer import Callback
from .errors import ConfigError
from .registry import suggest
from .schema import from_dict


@dataclass
class RunEntry:
    name: str
    config: Any  # a recipe path, or the recipe as a mapping
    set: list[str] = field(default_factory=list)
    teacher: Any = None  # {from: NAME}, a model spec, or a list of either
    init: dict[str, Any] | None = None  # {from: NAME}: initial weights from that run's network
    repeat: int = 1

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {self.repeat}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"a run name must be a plain folder name, got {self.name!r}")


@dataclass
class PipelineConfig:
    runs: list[RunEntry]
    out_dir: str = "runs/pipeline"


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file: names unique, every ``from`` an earlier run."""
    data = load_yaml(path)
    cfg = from_dict(PipelineConfig, data, "pipeline")
    if not cfg.runs:
        raise ConfigError("pipeline: 'runs' is empty")
    seen: list[str] = []
    for i, run in enumerate(cfg.runs):
        if run.name in seen:
            raise ConfigError(f"pipeline: two runs are named '{run.name}'")
        for ref in _refs(run):
            if ref not in seen:
                later = " (a later run: runs execute in order)" if ref in [r.name for r in cfg.runs] else ""
                raise ConfigError(f"pipeline: runs[{i}] '{run.name}' takes 'from: {ref}', which is not an earlier "
                                  f"run{later}{suggest(ref, seen)}")
        seen.append(run.name)
    return cfg


def _refs(run: RunEntry) -> list[str]:
    teachers = run.teacher if isinstance(run.teacher, list) else [run.teacher] if run.teacher else []
    out = [t["from"] for t in teachers if isinstance(t, dict) and "from" in t]
    if run.init is not None:
        if "from" not in run.init or not set(run.init) <= {"from", "net"}:
            raise ConfigError(f"pipeline: run '{run.name}': init must be {{from: RUN}} (and optionally net: "
                              f"NAME), got {run.init!r}")
        out.append(run.init["from"])
    return [str(r) for r in out]


def final_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The final test metrics of the run in ``run_dir``, or None while it has not finished."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    finals = [m for m in map(json.loads, filter(str.strip, metrics.read_text().splitlines())) if m.get("final")]
    return finals[-1] if finals else None


def _network(run_dir: Path, net: str | None = None) -> dict[str, Any]:
    """A model spec for the final weights of one trainable network (default: the student) of the
    finished run in ``run_dir``."""
    net = net or "student"
    spec = trainable_spec(parse_config(load_yaml(run_dir / "config.yaml")), net, f"pipeline: run {run_dir.name}")
    return {"name": spec.name, "kwargs": dict(spec.kwargs), "checkpoint": str(run_dir / "checkpoint.pt"),
            **({"net": net} if net != "student" else {})}


def run_pipeline(path: str | Path, out_dir: str | Path | None = None, callbacks: Sequence[Callback] = (),
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or continue) the pipeline in ``path``; returns one summary per run (name, run directory,
    what happened, final test metrics)."""
    cfg = load_pipeline(path)
    root = Path(out_dir or cfg.out_dir)
    done: dict[str, Path] = {}  # entry name -> run directory of its (last) network
    summary = []
    for entry in cfg.runs:
        previous = None
        generations = []
        for k in range(1, entry.repeat + 1):
            name = entry.name if entry.repeat == 1 else f"{entry.name}.{k}"
            run_dir = root / name
            if final_metrics(run_dir) is not None:
                status = "skipped (finished)"
            elif (run_dir / "checkpoint.pt").is_file():
                log(f"pipeline: resuming {name} in {run_dir}")
                resume(run_dir, callbacks=callbacks, log=log).fit()
                status = "resumed"
            else:
                log(f"pipeline: starting {name} in {run_dir}")
                teacher = _resolve_teachers(entry, done, previous)
                from_config(_run_config(entry, teacher, done), run_dir=run_dir, callbacks=callbacks, log=log).fit()
                status = "trained"
            final = final_metrics(run_dir) or {}
            summary.append({"run": name, "dir": str(run_dir), "status": status,
                            **{k: v for k, v in final.items() if k.startswith("test/")}})
            log(f"pipeline: {name}: {status}, test top1 {summary[-1].get('test/top1', float('nan')):.2f}%")
            previous = run_dir
            generations.append(run_dir)
        done[entry.name] = previous
        if entry.repeat > 1:  # born-again generations: also their ensemble (mean logits of every generation)
            top1 = ensemble_top1(generations)
            summary.append({"run": f"{entry.name} (ensemble of {entry.repeat})", "dir": str(root), "status": "ensemble",
                            "test/top1": top1})
            log(f"pipeline: ensemble of {entry.name}.1..{entry.repeat}: test top1 {top1:.2f}%")
    return summary


def ensemble_top1(run_dirs: list[Path]) -> float:
    """Test top-1 of the mean logits of the students of finished runs on one dataset (their first run's)."""
    from .build import build_model, pick_device, stored_config
    from .data import build_loaders
    from .engine.checkpoint import load_checkpoint
    from .engine.evaluate import MeanLogits, evaluate

    cfgs = [stored_config(load_checkpoint(d / "checkpoint.pt"), d / "checkpoint.pt") for d in run_dirs]
    device = pick_device(cfgs[0].train.device)
    loaders = build_loaders(cfgs[0].data, cfgs[0].train.seed, device)
    ds = loaders.dataset
    nets = []
    for d, c in zip(run_dirs, cfgs):
        spec = c.model
        spec.checkpoint = str(d / "checkpoint.pt")
        nets.append(build_model(spec, ds.num_classes, ds.in_channels).to(device))
    return evaluate(MeanLogits(nets), loaders.test)["top1"]


def _resolve_teachers(entry: RunEntry, done: dict[str, Path], previous: Path | None) -> list[dict] | None:
    """The entry's teachers as model specs; in a repeated run after the first, the previous repetition."""
    if previous is not None and entry.teacher:
        return [_network(previous)]
    if not entry.teacher:
        return None
    teachers = entry.teacher if isinstance(entry.teacher, list) else [entry.teacher]
    return [_network(done[t["from"]], t.get("net")) if isinstance(t, dict) and "from" in t else t for t in teachers]


def _run_config(entry: RunEntry, teacher: list[dict] | None, done: dict[str, Path]):
    data = load_yaml(entry.config) if isinstance(entry.config, str) else dict(entry.config)
    if teacher is not None:
        data["teacher"] = teacher
    if entry.init is not None:
        source = _network(done[entry.init["from"]], entry.init.get("net"))
        model = data.get("model")
        model = {"name": model} if isinstance(model, str) else dict(model or {})
        if model.get("name") != source["name"]:
            raise ConfigError(f"pipeline: run '{entry.name}' initialises a '{model.get('name')}' from run "
                              f"'{entry.init['from']}', whose network is a '{source['name']}'")
        data["model"] = {**model, **{k: v for k, v in source.items() if k in ("checkpoint", "net")}}
    return load_config(base=data, overrides=list(entry.set))
