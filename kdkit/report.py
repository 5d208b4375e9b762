"""Reports over runs: ``kdkit report RUN_DIR... --out DIR`` writes one self-contained HTML page (plots
embedded) and its Markdown twin (plots beside it as PNG files); ``kdkit compare RUN_DIR...`` prints the
same comparison as a terminal table.

What it reads: run directories (``config.yaml`` + ``metrics.jsonl``), folders holding run directories
(a pipeline's ``out_dir``, ``runs/``), a pipeline's ``summary.json`` (sizes, MACs, latencies) and result
JSONs of the benchmarks (``docs/results/*.json`` with ``rows`` that carry ``params``/``macs``).

What it shows: every run with its status (finished, or in progress at epoch k of N); the runs grouped by
recipe (runs whose configs differ only in seed, run name or output folder), with mean ± std over the
group of the final test top-1, of the last epoch's validation top-1 and of the best epoch's beside it;
teacher-student agreement; the config keys in which the runs differ; learning curves (validation top-1 of
every network, every named loss term, the learning rate) as PNG plots made with matplotlib; and, where
there are sizes and latencies, a cost table and the accuracy-vs-latency plot.
"""

from __future__ import annotations

import base64
import html
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .engine.checkpoint import write_atomic
from .engine.run_files import read_rows
from .errors import ConfigError

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

    @property
    def planned_epochs(self) -> int | None:
        value = self.config.get("train.epochs")
        return value if isinstance(value, int) else None

    @property
    def status(self) -> str:
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

    def metric(self, split: str, name: str = "top1") -> str:
        return f"{split}/{self.deployed}{name}"

    @property
    def recipe(self) -> str:
        # a key set to None is the same recipe as one an older config did not have yet
        return json.dumps({k: v for k, v in self.config.items() if not _same_recipe(k) and v is not None},
                          sort_keys=True, default=str)


@dataclass
class Report:
    runs: list[Run] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)  # label, top1, params, macs, latency columns
    sources: list[str] = field(default_factory=list)


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


def read_run(path: Path) -> Run:
    import yaml

    config = {}
    if (path / "config.yaml").is_file():
        config = _flatten(yaml.safe_load((path / "config.yaml").read_text()) or {})
    epochs, final = [], None
    for row in read_rows(path):  # a line cut by a kill is skipped: the run is in progress or was stopped
        if row.get("final"):
            final = row
        else:
            epochs = [e for e in epochs if e.get("epoch") != row.get("epoch")] + [row]  # a resume rewrites
    return Run(path.name, path, config, epochs, final)


def _is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "config.yaml").is_file()


def _cost_rows(data: Any, source: str) -> list[dict[str, Any]]:
    """Size/latency rows of a pipeline summary (a list) or of a benchmark's result JSON (``rows``)."""
    rows = data.get("rows") if isinstance(data, dict) else data
    if isinstance(rows, dict):
        rows = [{"run": k, **v} for k, v in rows.items() if isinstance(v, dict)]
    if not isinstance(rows, list):
        return []
    out = []
    for r in rows:
        if not isinstance(r, dict) or "params" not in r or "macs" not in r:
            continue
        top1 = r.get("top1_mean", r.get("test_top1"))
        out.append({"label": str(r.get("run", "?")), "source": source, "top1": top1,
                    "top1_std": r.get("top1_std"), "params": r["params"], "macs": r["macs"],
                    **{k: v for k, v in r.items() if k.endswith("_ms") and "_p90" not in k}})
    return out


def collect(paths: list[str | Path]) -> Report:
    """Every run, folder of runs and result JSON in ``paths``."""
    report = Report()
    seen: set[Path] = set()

    def add_run(p: Path) -> None:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            report.runs.append(read_run(p))

    for raw in paths:
        p = Path(raw)
        if p.is_file() and p.suffix == ".json":
            try:
                data = json.loads(p.read_text())
            except json.JSONDecodeError as e:
                raise ReportError(f"{p}: not JSON ({e.msg} at line {e.lineno})") from None
            rows = _cost_rows(data, str(p))
            if not rows:
                raise ReportError(f"{p}: no rows with params and macs (a pipeline summary.json or a benchmark's "
                                  "result JSON)")
            report.costs += rows
        elif p.is_dir() and _is_run(p):
            add_run(p)
        elif p.is_dir():
            found = sorted(d for d in p.rglob("*") if d.is_dir() and _is_run(d) and len(d.relative_to(p).parts) <= 3)
            if (p / "summary.json").is_file():
                report.costs += _cost_rows(json.loads((p / "summary.json").read_text()), str(p / "summary.json"))
            if not found and not (p / "summary.json").is_file():
                raise ReportError(f"{p}: no run directories in it (a run has config.yaml and metrics.jsonl)")
            for d in found:
                add_run(d)
        else:
            raise ReportError(f"{p}: not a run directory, a folder of runs or a result JSON")
        report.sources.append(str(p))
    if not report.runs and not report.costs:
        raise ReportError("nothing to report")
    return report


# ----------------------------------------------------------------------------------------- the numbers


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan"), 0
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def fmt(ms: tuple[float, float, int]) -> str:
    m, s, n = ms
    if n == 0:
        return "-"
    return f"{m:.2f}" if n == 1 else f"{m:.2f} ± {s:.2f} ({n})"


def groups(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Runs grouped by recipe, in order of first appearance, each labelled by its model and methods (and
    by the recipe keys that tell apart groups that would share a label)."""
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.recipe, []).append(r)
    labels = {}
    for key, members in by.items():
        c = members[0].config
        methods = "+".join(str(c[k]) for k in sorted(c) if k.startswith("method.") and k.endswith(".name")) or "?"
        labels[key] = f"{c.get('model.name', '?')} {methods}"
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    out = []
    for key, members in by.items():
        label = labels[key]
        if counts[label] > 1:  # say what differs: the first key whose value is not shared by the others
            others = [json.loads(k) for k in by if k != key and labels[k] == label]
            mine = json.loads(key)
            diff = sorted(k for k in mine if any(o.get(k) != mine[k] for o in others))
            if diff:
                label += " (" + ", ".join(f"{k}={mine[k]}" for k in diff[:2]) + ")"
        out.append((label, members))
    return out


def group_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for label, members in groups(report.runs):
        best = [max((e.get(r.metric("val"), float("nan")) for e in r.epochs), default=float("nan")) for r in members]
        best_epoch = [max(r.epochs, key=lambda e: e.get(r.metric("val"), -1.0)).get("epoch") for r in members
                      if r.epochs]
        rows.append({"group": label, "runs": [r.name for r in members],
                     "finished": sum(r.final is not None for r in members),
                     "test_top1": _mean_std([(r.final or {}).get(r.metric("test"), float("nan")) for r in members]),
                     "val_last": _mean_std([r.epochs[-1].get(r.metric("val"), float("nan")) if r.epochs
                                            else float("nan") for r in members]),
                     "val_best": _mean_std(best), "best_epochs": best_epoch,
                     "agreement": _mean_std([(r.final or {}).get("test/agreement", float("nan")) for r in members])})
    return rows


def config_differences(runs: list[Run], limit: int = 40) -> list[tuple[str, list[Any]]]:
    keys = sorted({k for r in runs for k in r.config})
    diffs = [(k, [r.config.get(k, "-") for r in runs]) for k in keys]
    diffs = [(k, vals) for k, vals in diffs if len({json.dumps(v, default=str) for v in vals}) > 1]
    return diffs[:limit]


# ------------------------------------------------------------------------------------------- the plots


def plots(report: Report) -> dict[str, bytes]:
    """The report's figures as PNG bytes, by file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .measure import figure_png

    out: dict[str, bytes] = {}
    runs = [r for r in report.runs if r.epochs]
    if runs:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=100)
        for r in runs:
            ep = [e.get("epoch") for e in r.epochs]
            nets = sorted({k for e in r.epochs for k in e if k.startswith("val/") and k.endswith("/top1")})
            for k in nets:
                name = k[4:-5] or "student"
                axes[0].plot(ep, [e.get(k, math.nan) for e in r.epochs], marker=".",
                             label=r.name if k == "val/top1" else f"{r.name} {name}",
                             linestyle="-" if k == "val/top1" else ":")
            axes[1].plot(ep, [e.get("train/loss", math.nan) for e in r.epochs], marker=".", label=r.name)
            axes[2].plot(ep, [e.get("lr", math.nan) for e in r.epochs], marker=".", label=r.name)
        for ax, title in zip(axes, ("validation top-1 (%) per network", "training loss (total)", "learning rate")):
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=6, ncol=2)
        out["curves.png"] = figure_png(fig)
        shown = [(label, members[0]) for label, members in groups(runs)][:12]
        cols = min(3, len(shown))
        rows = math.ceil(len(shown) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), dpi=100, squeeze=False)
        for ax, (label, r) in zip(axes.flat, shown):
            terms = sorted({k for e in r.epochs for k in e if k.startswith("train/") and not k.endswith("_s")})
            for k in terms:
                ax.plot([e.get("epoch") for e in r.epochs], [e.get(k, math.nan) for e in r.epochs], marker=".",
                        label=k[6:])
            ax.set_title(f"{label}: {r.name}", fontsize=8)
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        out["loss_terms.png"] = figure_png(fig)
    if report.costs:
        from .measure import accuracy_latency_png
        key = _latency_key(report.costs)
        if key is not None:
            points = [{"label": c["label"], "latency_ms": c.get(key, math.nan), "top1": c.get("top1") or math.nan,
                       "top1_std": c.get("top1_std")} for c in report.costs]
            out["accuracy_latency.png"] = accuracy_latency_png(points, f"{key[:-3].replace('_', ' ')} (ms)",
                                                               "accuracy against latency")
    return out


def _latency_key(costs: list[dict[str, Any]]) -> str | None:
    keys = sorted({k for c in costs for k in c if k.startswith("ort_b") and k.endswith("_ms")},
                  key=lambda k: int(k[5:-3]) if k[5:-3].isdigit() else 0)
    return keys[-1] if keys else None


# ------------------------------------------------------------------------------------------- the pages


def tables(report: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by the HTML page, the Markdown and the terminal."""
    out = []
    g = group_rows(report)
    if g:
        out.append(("Comparison by recipe (mean ± std over the runs of a recipe; (n) = runs)",
                    ["recipe", "runs", "finished", "test top1 (final)", "val top1 (last epoch)",
                     "val top1 (best epoch)", "best epochs", "test agreement"],
                    [[r["group"], str(len(r["runs"])), str(r["finished"]), fmt(r["test_top1"]), fmt(r["val_last"]),
                      fmt(r["val_best"]), ", ".join(str(e) for e in r["best_epochs"]), fmt(r["agreement"])]
                     for r in g]))
        out.append(("Runs", ["run", "status", "recipe", "seed", "test top1", "val top1 (last)", "deployed", "path"],
                    [[r.name, r.status, label, str(r.config.get("train.seed", "-")),
                      f"{(r.final or {}).get(r.metric('test'), math.nan):.2f}" if r.final else "-",
                      f"{r.epochs[-1].get(r.metric('val'), math.nan):.2f}" if r.epochs else "-",
                      (r.final or {}).get("deployed", "student"), str(r.path)]
                     for label, members in groups(report.runs) for r in members]))
        diffs = config_differences(report.runs)
        if diffs and len(report.runs) > 1:
            out.append(("Config differences (keys whose values differ between runs)",
                        ["key", *[r.name for r in report.runs]], [[k, *[str(v) for v in vals]] for k, vals in diffs]))
    if report.costs:
        lat = sorted({k for c in report.costs for k in c if k.endswith("_ms")})
        out.append(("Size, cost and speed", ["network", "test top1", "params", "MACs", *[k[:-3] + " ms" for k in lat],
                                             "source"],
                    [[c["label"], "-" if c.get("top1") is None else f"{c['top1']:.2f}"
                      + (f" ± {c['top1_std']:.2f}" if c.get("top1_std") else ""),
                      f"{c['params']:,}", f"{c['macs']:,}",
                      *["-" if not isinstance(c.get(k), (int, float)) or c[k] != c[k] else f"{c[k]:.3f}" for k in lat],
                      c["source"]] for c in report.costs]))
    return out


def terminal(report: Report) -> str:
    """The tables as plain text, for ``kdkit compare``."""
    blocks = []
    for title, head, rows in tables(report):
        if title.startswith("Config"):
            continue
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
        lines = [title, "  ".join(h.ljust(w) for h, w in zip(head, widths)), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
</script>"""


def write_report(report: Report, out: str | Path) -> dict[str, Path]:
    """``report.html`` (self-contained), ``report.md`` and the PNG plots in ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = plots(report)
    written = {name: write_atomic(out / name, lambda f, b=data: f.write(b)) for name, data in figures.items()}
    ts = tables(report)
    md = ["# kdkit report", "", "Sources: " + ", ".join(f"`{s}`" for s in report.sources), ""]
    page = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>kdkit report</title><style>",
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
            "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f2f2f2}"
            "img{max-width:100%;border:1px solid #eee}", "</style></head><body>", "<h1>kdkit report</h1>",
            "<p>Sources: " + ", ".join(f"<code>{html.escape(s)}</code>" for s in report.sources) + "</p>"]
    for title, head, rows in ts:
        md += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows] + [""]
        page += [f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                 + "</tr>"]
        page += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows] + ["</table>"]
    captions = {"curves.png": "Learning curves", "loss_terms.png": "Every named loss term (first run of each recipe)",
                "accuracy_latency.png": "Accuracy against latency"}
    for name, data in figures.items():
        md += [f"## {captions[name]}", "", f"![{captions[name]}]({name})", ""]
        page += [f"<h2>{captions[name]}</h2>",
                 f"<img alt='{captions[name]}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"]
    page += [_CHECK, "</body></html>"]
    written["report.md"] = write_atomic(out / "report.md", lambda f: f.write(("\n".join(md) + "\n").encode()))
    written["report.html"] = write_atomic(out / "report.html", lambda f: f.write("\n".join(page).encode()))
    return written
