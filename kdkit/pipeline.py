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
    repeat: 2                          # born_again.1, born_again.2: each later one taught by the one before,
                                       # generation k with seed + k - 1
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

Compression steps chain the same way (configs/pipelines/fashion_mnist_compress.yaml): a training run
whose recipe prunes, factorizes or quantization-aware-trains the network of ``init: {from: NAME}`` and
learns from ``teacher: {from: NAME}`` (the uncompressed network), then steps that train nothing:

```yaml
  - name: int8
    quantize: {from: pruned, calibration: 512}   # static int8 ONNX file (kdkit quantize), checked on the test set
  - name: onnx
    export: {from: pruned, format: onnx}         # or safetensors (kdkit export)
profile: {batches: [1, 256], runs: 50}           # summary.{md,json,png}: size, MACs, latency, accuracy
```

A step whose ``result.json`` exists is finished and skipped. With ``profile`` the pipeline ends by
measuring every network it made (parameters, MACs, weight size, CPU latency in PyTorch eager and ONNX
Runtime, test accuracy) into ``<out_dir>/summary.md`` / ``summary.json`` and the accuracy-vs-latency plot
``summary.png``; a teacher the pipeline did not train is not in it (put it in as a run to compare).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import from_config, resume
from .config import apply_overrides, load_config, load_yaml, parse_config, recipe_names, trainable_spec
from .engine.run_files import read_rows
from .engine.trainer import Callback
from .errors import ConfigError, OutputError
from .models.external import use_names
from .registry import suggest
from .schema import from_dict


@dataclass
class RunEntry:
    name: str
    config: Any = None  # a recipe path, or the recipe as a mapping
    set: list[str] = field(default_factory=list)
    teacher: Any = None  # {from: NAME}, a model spec, or a list of either
    init: dict[str, Any] | None = None  # {from: NAME}: initial weights from that run's network
    repeat: int = 1
    quantize: dict[str, Any] | None = None  # {from: NAME, calibration: 512, net: NAME}: a static int8 ONNX file
    export: dict[str, Any] | None = None  # {from: NAME, format: onnx|safetensors, net: NAME}

    def __post_init__(self) -> None:
        if self.repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {self.repeat}")
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"a run name must be a plain folder name, got {self.name!r}")
        kinds = [k for k in ("config", "quantize", "export") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"'{self.name}' needs exactly one of config (a training run), quantize or export, "
                             f"got {', '.join(kinds) or 'none'}")
        step = self.quantize if self.quantize is not None else self.export
        if step is not None:
            allowed = {"from", "net", "calibration"} if self.quantize is not None else {"from", "net", "format"}
            if not isinstance(step, dict) or "from" not in step or not set(step) <= allowed:
                raise ValueError(f"'{self.name}': {kinds[0]} takes {{from: RUN}} and optionally "
                                 f"{', '.join(sorted(allowed - {'from'}))}, got {step!r}")
            if self.export is not None and step.get("format", "onnx") not in ("onnx", "safetensors"):
                raise ValueError(f"'{self.name}': export format must be onnx or safetensors, got {step['format']!r}")
            if self.teacher is not None or self.init is not None or self.set or self.repeat != 1:
                raise ValueError(f"'{self.name}' is a {kinds[0]} step: teacher, init, set and repeat belong to "
                                 "training runs")


@dataclass
class Profile:
    batches: list[int] = field(default_factory=lambda: [1, 256])
    runs: int = 50
    threads: int | None = None  # default: torch's

    def __post_init__(self) -> None:
        if not self.batches or any(b < 1 or b > 65536 for b in self.batches) or not 1 <= self.runs <= 100000:
            raise ValueError(f"profile: batches must be in [1, 65536] and runs in [1, 100000], got {self.batches}, "
                             f"{self.runs}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"profile: threads must be >= 1, got {self.threads}")


@dataclass
class PipelineConfig:
    runs: list[RunEntry]
    out_dir: str = "runs/pipeline"
    profile: Profile | None = None  # measure every network at the end (summary.md/json/png)


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline file: names unique, every ``from`` an earlier run."""
    data = load_yaml(path)
    cfg = from_dict(PipelineConfig, data, "pipeline")
    if not cfg.runs:
        raise ConfigError("pipeline: 'runs' is empty")
    seen: list[str] = []
    steps = {r.name for r in cfg.runs if r.config is None}
    for i, run in enumerate(cfg.runs):
        if run.name in seen:
            raise ConfigError(f"pipeline: two runs are named '{run.name}'")
        for ref in _refs(run):
            if ref not in seen:
                later = " (a later run: runs execute in order)" if ref in [r.name for r in cfg.runs] else ""
                raise ConfigError(f"pipeline: runs[{i}] '{run.name}' takes 'from: {ref}', which is not an earlier "
                                  f"run{later}{suggest(ref, seen)}")
            if ref in steps:
                raise ConfigError(f"pipeline: runs[{i}] '{run.name}' takes 'from: {ref}', a quantize/export step: "
                                  "take the training run it came from")
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
    for step in (run.quantize, run.export):
        if step is not None:
            out.append(step["from"])
    return [str(r) for r in out]


def final_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The final test metrics of the run in ``run_dir``, or None while it has not finished."""
    finals = [row for row in read_rows(run_dir) if row.get("final")]
    return finals[-1] if finals else None


def _network(run_dir: Path, net: str | None = None) -> dict[str, Any]:
    """A model spec for the final weights of one trainable network (default: the student) of the
    finished run in ``run_dir``."""
    from .engine.rebuild import check_name

    net = net or "student"
    spec = trainable_spec(parse_config(load_yaml(run_dir / "config.yaml")), net, f"pipeline: run {run_dir.name}")
    check_name(spec.name, str(run_dir / "config.yaml"))  # a file's name: it must resolve without an import
    return {"name": spec.name, "kwargs": dict(spec.kwargs), "checkpoint": str(run_dir / "checkpoint.pt"),
            **({"net": net} if net != "student" else {})}


def run_pipeline(path: str | Path, out_dir: str | Path | None = None, callbacks: Sequence[Callback] = (),
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or continue) the pipeline in ``path``; returns one summary per run (name, run directory,
    what happened, final test metrics)."""
    cfg = load_pipeline(path)
    use_recipe_names(cfg)
    root = Path(out_dir or cfg.out_dir)
    done: dict[str, Path] = {}  # entry name -> run directory of its (last) network
    summary = []
    for entry in cfg.runs:
        if entry.config is None:
            summary.append(_run_step(entry, root, done, log))
            continue
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
                run_cfg = _run_config(entry, teacher, done)
                run_cfg.train.seed += k - 1  # each generation its own initialisation and data order
                if run_dir.is_dir():  # stopped before its first checkpoint (a full disk, Ctrl-C): start it again
                    run_cfg.train.existing = "overwrite"  # (kdkit's own files only; a foreign config.yaml is refused)
                from_config(run_cfg, run_dir=run_dir, callbacks=callbacks, log=log).fit()
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
    if cfg.profile is not None:
        from .summary import profile_pipeline

        profile_pipeline(summary, cfg.profile, root, log)
    return summary


def _run_step(entry: RunEntry, root: Path, done: dict[str, Path], log: Callable[[str], None]) -> dict[str, Any]:
    """A quantize or export step on the final weights of an earlier training run; skipped when its
    ``result.json`` is there."""
    from .engine.checkpoint import write_atomic

    run_dir = root / entry.name
    step = entry.quantize if entry.quantize is not None else entry.export
    kind = "quantize" if entry.quantize is not None else "export"
    source = done[step["from"]] / "checkpoint.pt"
    result_file = run_dir / "result.json"
    if result_file.is_file():
        result, status = json.loads(result_file.read_text()), "skipped (finished)"
    else:
        log(f"pipeline: {kind} {step['from']} into {run_dir}")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create {run_dir} ({e.strerror or e})") from None
        if kind == "quantize":
            from .quantize import quantize_checkpoint

            result = quantize_checkpoint(source, run_dir / "model.int8.onnx", step.get("net"),
                                         int(step.get("calibration", 512)), fp32_out=run_dir / "model.fp32.onnx")
            result["test/top1"] = result["int8_top1"]
        else:
            result = _export(source, step.get("net"), step.get("format", "onnx"), run_dir)
        write_atomic(result_file, lambda f: f.write(json.dumps(result, indent=1).encode()))
        status = "done"
    row = {"run": entry.name, "dir": str(run_dir), "status": status, "step": kind, "source": str(source),
           "net": step.get("net"), "file": result["out"],
           **{k: v for k, v in result.items() if k.startswith("test/")}}
    top1 = f"test top1 {row['test/top1']:.2f}%" if "test/top1" in row else f"written {result['out']}"
    log(f"pipeline: {entry.name}: {status}, {top1}")
    return row


def _export(source: Path, net: str | None, fmt: str, run_dir: Path) -> dict[str, Any]:
    from .export import export_network

    result = export_network(source, net, fmt, run_dir / f"model.{fmt}")
    if "onnx_top1" in result:
        result["test/top1"] = result["onnx_top1"]
    return result


def ensemble_top1(run_dirs: list[Path]) -> float:
    """Test top-1 of the mean logits of the students of finished runs on one dataset (their first run's)."""
    from .build import pick_device
    from .data import build_loaders
    from .engine.evaluate import MeanLogits, evaluate
    from .engine.rebuild import load_network
    from .tasks import create_task

    loaded = [load_network(d / "checkpoint.pt") for d in run_dirs]
    cfg = loaded[0].cfg
    device = pick_device(cfg.train.device)
    loaders = build_loaders(cfg.data, cfg.train.seed, device)
    expected = create_task(cfg.task).record(loaders.dataset)
    for net in loaded:
        net.check_data(expected, loaders.dataset.name)
    nets = [net.model.to(device) for net in loaded]
    return evaluate(MeanLogits(nets), loaders.test)["top1"]


def _resolve_teachers(entry: RunEntry, done: dict[str, Path], previous: Path | None) -> list[dict] | None:
    """The entry's teachers as model specs; in a repeated run after the first, the previous repetition."""
    if previous is not None and entry.teacher:
        return [_network(previous)]
    if not entry.teacher:
        return None
    teachers = entry.teacher if isinstance(entry.teacher, list) else [entry.teacher]
    return [_network(done[t["from"]], t.get("net")) if isinstance(t, dict) and "from" in t else t for t in teachers]


def use_recipe_names(cfg: PipelineConfig) -> None:
    """Import the modules that the pipeline's own recipes name (``module:Class``): the user's word. A
    network taken ``from:`` an earlier run is named by that run's files, which are data: its name must
    resolve among these (or ``--plugin`` modules) without an import."""
    import copy

    for entry in cfg.runs:
        if entry.config is not None:
            data = load_yaml(entry.config) if isinstance(entry.config, str) else copy.deepcopy(dict(entry.config))
            data = apply_overrides(data, list(entry.set))
            if not isinstance(data.get("teacher"), list):
                data["teacher"] = [data["teacher"]] if data.get("teacher") else []
            data["teacher"] = [t for t in data["teacher"] if not (isinstance(t, dict) and "from" in t)]
            use_names(recipe_names(data), f"pipeline: run '{entry.name}'")


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
    return load_config(base=data, overrides=list(entry.set), import_names=False)  # see use_recipe_names
