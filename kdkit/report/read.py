"""What a report reads, each file checked with kdkit's own readers before anything of it is used: a run's
``config.yaml`` with the bounded YAML loader that reads recipes (size, alias expansion, depth), its
``metrics.jsonl`` line by line within a bound on lines and bytes, each value of the type it must have
(:func:`kdkit.engine.run_files.stream_rows`), JSON files within a size bound and their cost rows type
by type, every file decoded as UTF-8 with the decoding error named. A run folder or a JSON file that
fails is left out with one line saying which and why (:attr:`Report.skipped`); the rest is reported."""

from __future__ import annotations

import json
import math
import os
import unicodedata
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ..config import MAX_YAML_BYTES, parse_yaml
from ..engine.run_files import stream_rows
from ..errors import ConfigError

MAX_JSON_BYTES = 64 << 20
MAX_DEPTH = 3  # run folders are looked for this many levels below a folder named on the command line


def printable(text: Any, limit: int = 300) -> str:
    """``text`` without control characters (terminal escape codes, line breaks), shortened to ``limit``."""
    s = "".join(c if unicodedata.category(c)[0] != "C" else "?" for c in str(text))
    return s if len(s) <= limit else s[: limit - 3] + "..."


class Skipped(Exception):
    """A file of a run or a result JSON that cannot be reported: the reason."""


SAME_RECIPE = ("train.seed", "train.run_name", "train.out_dir")  # keys that do not make another recipe


def _same_recipe(key: str) -> bool:
    """Seed, names, output folder, and the checkpoints networks start from or learn from (each seed of a
    recipe may have its own teacher) do not make another recipe."""
    return key in SAME_RECIPE or key.endswith(".checkpoint")


class ReportError(ConfigError):
    """A path that is not a run directory, a folder of runs, or a result JSON."""


@dataclass
class Run:
    name: str
    path: Path
    config: dict[str, Any]  # flattened: "method.0.name" -> "kd"
    epochs: list[dict[str, Any]]
    final: dict[str, Any] | None
    copy_of: str | None = None  # set by report.numbers.groups: another folder of the same recipe and seed

    @property
    def planned_epochs(self) -> int | None:
        value = self.config.get("train.epochs")
        return value if isinstance(value, int) else None

    @property
    def status(self) -> str:
        if self.copy_of is not None:
            return f"copy of {self.copy_of} (same recipe and seed; counted once)"
        if self.final is not None:
            return "finished"
        if not self.epochs:
            return "started, no epoch yet"
        return f"in progress (epoch {self.epochs[-1].get('epoch', len(self.epochs))} of {self.planned_epochs or '?'})"

    @property
    def deployed(self) -> str:
        """The metric prefix of the deployed network (``""`` for the student)."""
        net = (self.final or {}).get("deployed", "student")
        return "" if net == "student" else f"{net}/"

    @cached_property
    def task(self):
        """The run's task (classification when its config names none, or one this kdkit does not know)."""
        from ..errors import KdkitError
        from ..tasks import create_task

        spec = self.config.get("task")
        if spec is None and "task.name" in self.config:  # a flattened {name: ..., options}
            spec = {k[5:]: v for k, v in self.config.items() if k.startswith("task.")}
        try:
            return create_task(spec or "classification")
        except (KdkitError, TypeError):
            return create_task("classification")

    @property
    def primary(self) -> str:
        """The metric of the run's task that best.pt is chosen on (``top1``, ``miou``, ``fid_fmnist``)."""
        return self.task.primary

    @property
    def higher_is_better(self) -> bool:
        return self.task.higher_is_better

    def metric(self, split: str, name: str | None = None) -> str:
        return f"{split}/{self.deployed}{name or self.primary}"

    @property
    def recipe(self) -> str:
        # a key set to None is the same recipe as one an older config did not have yet
        return json.dumps({k: v for k, v in self.config.items() if not _same_recipe(k) and v is not None},
                          sort_keys=True, default=str)


@dataclass
class Report:
    runs: list[Run] = field(default_factory=list)

    @property
    def primary(self) -> str:
        """The runs' primary metric (``top1``, ``miou``), or ``primary metric`` when tasks are mixed."""
        names = {r.primary for r in self.runs} or {"top1"}
        return names.pop() if len(names) == 1 else "primary metric"
    costs: list[dict[str, Any]] = field(default_factory=list)  # label, top1, params, macs, latency columns
    sources: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why): read, found wrong, left out
    sweeps: list[dict[str, Any]] = field(default_factory=list)  # sweep.json summaries (report.sweeps)
    rankings: list[dict[str, Any]] = field(default_factory=list)  # methods.json of `kdkit sweep --methods`


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: value}


def _text(path: Path, limit: int) -> str:
    size = path.stat().st_size
    if size > limit:
        raise Skipped(f"{path.name} is {size:,} bytes, more than the {limit:,} it can be")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise Skipped(f"{path.name} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise Skipped(f"{path.name} cannot be read ({e.strerror or e})") from None


def _config(path: Path) -> dict[str, Any]:
    try:
        data = parse_yaml(_text(path, MAX_YAML_BYTES), path.name)
    except ConfigError as e:
        raise Skipped(str(e)) from None
    if data is not None and not isinstance(data, dict):
        raise Skipped(f"{path.name} is a YAML {type(data).__name__}, not a run's config (a mapping)")
    return _flatten(data or {})


def read_run(path: Path) -> Run:
    """A run directory's config and metrics, checked (:class:`Skipped` says why one cannot be reported)."""
    config = _config(path / "config.yaml") if (path / "config.yaml").is_file() else {}
    epochs: dict[Any, dict[str, Any]] = {}
    final = None
    try:
        rows = stream_rows(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
    except OSError as e:
        raise Skipped(f"metrics.jsonl cannot be read ({e.strerror or e})") from None
    except ValueError as e:
        raise Skipped(str(e)) from None
    for row in rows:  # a line cut by a kill was skipped: the run is in progress or was stopped
        if row.get("final"):
            final = row
        else:
            epochs.pop(row.get("epoch"), None)  # a resume rewrites an epoch: its last line counts
            epochs[row.get("epoch")] = row
    return Run(path.name, path, config, list(epochs.values()), final)


def _is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "config.yaml").is_file()


def _number(value: Any, nullable: bool = True) -> bool:
    return (value is None and nullable) or isinstance(value, int | float) and not isinstance(value, bool)


def _cost_rows(data: Any, source: str) -> list[dict[str, Any]]:
    """Size/latency rows of a pipeline summary (a list) or of a benchmark's result JSON (``rows``), each
    field of the type it must have (:class:`Skipped` names the row and field that is not)."""
    if isinstance(data, dict) and isinstance(data.get("latency"), dict) and "params" in data:
        data = [_profile_row(data)]  # `kdkit profile CHECKPOINT > file.json`
    rows = data.get("rows") if isinstance(data, dict) else data
    if isinstance(rows, dict):
        rows = [{"run": k, **v} for k, v in rows.items() if isinstance(v, dict)]
    if not isinstance(rows, list):
        return []
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "params" not in r or "macs" not in r:
            continue
        for key in ("params", "macs"):
            if type(r[key]) is not int or r[key] < 0:
                raise Skipped(f"row {i}: {key} is {printable(repr(r[key]), 40)}, not a count")
        timings = {k: v for k, v in r.items() if k.endswith("_ms") and "_p90" not in k}
        for key, value in {"top1": r.get("top1_mean", r.get("test_top1")), "top1_std": r.get("top1_std"),
                           **timings}.items():
            if not _number(value) or value is not None and not math.isfinite(value) and key == "top1":
                raise Skipped(f"row {i}: {key} is {printable(repr(value), 40)}, not a number")
        out.append({"label": printable(r.get("run", "?"), 120), "source": source,
                    "top1": r.get("top1_mean", r.get("test_top1")), "top1_std": r.get("top1_std"),
                    "params": r["params"], "macs": r["macs"], **timings})
    return out


def _profile_row(data: dict[str, Any]) -> dict[str, Any]:
    """The cost row of one ``kdkit profile`` result: its medians as ``eager_b<B>_ms`` / ``ort_b<B>_ms``."""
    row = {"run": f"{data.get('model', '?')} ({data.get('net', 'student')}, {data.get('checkpoint', '?')})",
           **{k: data.get(k) for k in ("params", "macs")},
           "test_top1": data.get(f"test_{data.get('test_metric', 'top1')}")}  # the task's primary metric
    for batch, timings in data["latency"].items():
        if not isinstance(timings, dict) or not all(isinstance(t, dict) for t in timings.values()):
            raise Skipped(f"latency of batch {printable(batch, 20)} is not a mapping of timings")
        for engine, key in (("eager", "eager"), ("onnxruntime", "ort")):
            if engine in timings:
                row[f"{key}_b{printable(batch, 20)}_ms"] = timings[engine].get("median_ms")
    return row


def _json_costs(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(_text(path, MAX_JSON_BYTES))
    except json.JSONDecodeError as e:
        raise Skipped(f"not JSON ({e.msg} at line {e.lineno})") from None
    except RecursionError:
        raise Skipped("nested too deeply to be a result JSON") from None
    rows = _cost_rows(data, str(path))
    if not rows:
        raise Skipped("no rows with params and macs (a pipeline summary.json, a benchmark's result JSON or the "
                      "output of kdkit profile)")
    return rows


def _run_folders(root: Path) -> list[Path]:
    """Run directories up to ``MAX_DEPTH`` levels below ``root`` (links not followed)."""
    found = []
    for folder, dirs, _ in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        if depth >= MAX_DEPTH:
            dirs.clear()
        dirs.sort()
        found += [Path(folder) / d for d in dirs if _is_run(Path(folder) / d)]
    return sorted(found)


def read_sweeps(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The sweeps in ``folder`` (its own ``sweep.json``, or one per subfolder: a ``--methods`` folder)
    and its ``methods.json`` ranking, if any."""
    found = []
    for path in [folder / "sweep.json", *sorted(folder.glob("*/sweep.json"))]:
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                if not isinstance(data, dict) or not isinstance(data.get("trials"), list):
                    raise ValueError("no trials list")
            except (ValueError, UnicodeDecodeError) as e:
                raise Skipped(f"{printable(path)}: not a kdkit sweep summary ({printable(e, 80)})") from None
            data["folder"] = str(path.parent)
            found.append(data)
    ranking = None
    if (folder / "methods.json").is_file():
        try:
            ranking = json.loads((folder / "methods.json").read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise Skipped(f"{printable(folder / 'methods.json')}: unreadable ({printable(e, 80)})") from None
    return found, ranking


def collect(paths: list[str | Path]) -> Report:
    """Every run, folder of runs and result JSON in ``paths``; a run or file that cannot be read is left
    out and named in ``report.skipped``."""
    report = Report()
    seen: set[Path] = set()

    def attempt(p: Path, read: Any) -> Any:
        try:
            return read(p)
        except Skipped as e:
            report.skipped.append((printable(p), printable(e)))
            return None

    def add_run(p: Path) -> None:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            run = attempt(p, read_run)
            if run is not None:
                report.runs.append(run)

    for raw in paths:
        p = Path(raw)
        if p.is_file() and p.suffix == ".json":
            report.costs += attempt(p, _json_costs) or []
        elif p.is_dir() and _is_run(p):
            add_run(p)
        elif p.is_dir():
            found = _run_folders(p)
            summary = p / "summary.json"
            if summary.is_file():
                report.costs += attempt(summary, _json_costs) or []
            sweeps, ranking = attempt(p, read_sweeps) or ([], None)
            report.sweeps += sweeps
            report.rankings += [ranking] if ranking else []
            if not found and not summary.is_file() and not sweeps:
                raise ReportError(f"{printable(p)}: no run directories in it (a run has config.yaml and "
                                  "metrics.jsonl)")
            for d in found:
                add_run(d)
        else:
            raise ReportError(f"{printable(p)}: not a run directory, a folder of runs or a result JSON")
        report.sources.append(printable(p))
    if not report.runs and not report.costs and not report.sweeps:
        raise ReportError("nothing to report" + (f" ({len(report.skipped)} left out: "
                                                 + "; ".join(f"{p}: {why}" for p, why in report.skipped[:3]) + ")"
                                                 if report.skipped else ""))
    return report
