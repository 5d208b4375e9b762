"""The report's pages: plots (matplotlib PNGs), tables, the HTML page and its Markdown twin, and the
terminal table of ``kdkit compare``. Every text that comes from a file (run names, config values, labels)
is escaped for where it goes: mathtext in plot labels, HTML in the page and the Markdown, control
characters in the terminal."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from ..engine.checkpoint import make_folder, write_atomic
from .numbers import balance_rows, config_differences, fmt, group_rows, groups
from .read import Report, printable


def _label(text: Any) -> str:
    """A text from a file as a plot label: no mathtext (``$``), no control characters, not hidden from the
    legend (matplotlib leaves out labels that start with ``_``)."""
    s = printable(text, 80).replace("$", r"\$")
    return " " + s if s.startswith("_") else s


def plots(report: Report) -> dict[str, bytes]:
    """The report's figures as PNG bytes, by file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..measure import figure_png

    out: dict[str, bytes] = {}
    runs = [r for r in report.runs if r.epochs]
    if runs:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=100)
        for r in runs:
            ep = [e.get("epoch") for e in r.epochs]
            p = r.primary
            nets = sorted({k for e in r.epochs for k in e if k.startswith("val/") and k.endswith("/" + p)})
            for k in nets:
                name = k[4:-len(p) - 1] or "student"
                axes[0].plot(ep, [e.get(k, math.nan) for e in r.epochs], marker=".",
                             label=_label(r.name if k == f"val/{p}" else f"{r.name} {name}"),
                             linestyle="-" if k == f"val/{p}" else ":")
            axes[1].plot(ep, [e.get("train/loss", math.nan) for e in r.epochs], marker=".", label=_label(r.name))
            axes[2].plot(ep, [e.get("lr", math.nan) for e in r.epochs], marker=".", label=_label(r.name))
        for ax, title in zip(axes, (f"validation {report.primary} (%) per network", "training loss (total)",
                                    "learning rate")):
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
                        label=_label(k[6:]))
            ax.set_title(_label(f"{label}: {r.name}"), fontsize=8)
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        out["loss_terms.png"] = figure_png(fig)
    if report.costs:
        from ..measure import accuracy_latency_png
        key = _latency_key(report.costs)
        if key is not None:
            points = [{"label": _label(c["label"]), "latency_ms": c.get(key, math.nan),
                       "top1": c.get("top1") or math.nan, "top1_std": c.get("top1_std")} for c in report.costs]
            out["accuracy_latency.png"] = accuracy_latency_png(points, f"{key[:-3].replace('_', ' ')} (ms)",
                                                               "accuracy against latency")
    from .pictures import box_grid_png, image_grid_png, mask_grid_png

    for primaries, name, grid in ((("miou",), "masks.png", mask_grid_png), (("map",), "boxes.png", box_grid_png),
                                  (("l1", "fid_"), "images.png", image_grid_png)):
        dense = next((r for r in runs if r.primary.startswith(primaries) and r.final), None)
        if dense is not None:  # one finished dense run's test pictures
            from ..errors import KdkitError

            try:
                out[name] = grid(dense.path)
            except (KdkitError, OSError) as e:
                report.skipped.append((str(dense.path), f"no picture grid: {e}"))
    if report.sweeps:
        from .sweeps import history_png

        out["sweep_history.png"] = history_png(report.sweeps)
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
    m = report.primary
    if g:
        out.append(("Comparison by recipe (mean ± std over the runs of a recipe; (n) = runs)",
                    ["recipe", "runs", "finished", f"test {m} (final)", f"val {m} (last epoch)",
                     f"val {m} (best epoch)", "best epochs", "test agreement"],
                    [[r["group"], str(len(r["runs"])) + (f" (+{len(r['copies'])} copies)" if r["copies"] else ""),
                      str(r["finished"]), fmt(r["test_top1"]), fmt(r["val_last"]),
                      fmt(r["val_best"]), ", ".join(str(e) for e in r["best_epochs"]), fmt(r["agreement"])]
                     for r in g]))
        out.append(("Runs", ["run", "status", "recipe", "seed", f"test {m}", f"val {m} (last)", "deployed", "path"],
                    [[r.name, r.status, label, str(r.config.get("train.seed", "-")),
                      f"{(r.final or {}).get(r.metric('test'), math.nan):.2f}" if r.final else "-",
                      f"{r.epochs[-1].get(r.metric('val'), math.nan):.2f}" if r.epochs else "-",
                      (r.final or {}).get("deployed", "student"), str(r.path)]
                     for label, members in groups(report.runs) for r in members]))
        balance = balance_rows(report.runs)
        if balance:
            out.append(("Balance (each loss term's share of the gradient on the student over the first steps)",
                        ["run", "shares", "largest / second", "hint"], balance))
        diffs = config_differences(report.runs)
        if diffs and len(report.runs) > 1:
            out.append(("Config differences (keys whose values differ between runs)",
                        ["key", *[r.name for r in report.runs]], [[k, *[str(v) for v in vals]] for k, vals in diffs]))
    if report.costs:
        lat = sorted({k for c in report.costs for k in c if k.endswith("_ms")})
        out.append(("Size, cost and speed", ["network", f"test {report.primary}", "params", "MACs",
                                             *[k[:-3] + " ms" for k in lat],
                                             "source"],
                    [[c["label"], "-" if c.get("top1") is None else f"{c['top1']:.2f}"
                      + (f" ± {c['top1_std']:.2f}" if c.get("top1_std") else ""),
                      f"{c['params']:,}", f"{c['macs']:,}",
                      *["-" if not isinstance(c.get(k), (int, float)) or c[k] != c[k] else f"{c[k]:.3f}" for k in lat],
                      c["source"]] for c in report.costs]))
    if report.sweeps or report.rankings:
        from .sweeps import sweep_tables

        out = sweep_tables(report.sweeps, report.rankings) + out
    if report.skipped:
        out.append(("Left out (could not be read)", ["path", "why"], [[p, why] for p, why in report.skipped]))
    return out


def terminal(report: Report) -> str:
    """The tables as plain text, for ``kdkit compare``."""
    blocks = []
    for title, head, rows in tables(report):
        if title.startswith("Config"):
            continue
        head, rows = [printable(h, 60) for h in head], [[printable(c, 200) for c in r] for r in rows]
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


def _md(text: str) -> str:
    """A text from a file in Markdown: HTML escaped (a viewer renders raw HTML), Markdown's own marks too."""
    s = html.escape(printable(text, 10_000), quote=False)
    for c in "\\`*_[]|#!":
        s = s.replace(c, "\\" + c)
    return s


def write_report(report: Report, out: str | Path) -> dict[str, Path]:
    """``report.html`` (self-contained), ``report.md`` and the PNG plots in ``out``; returns their paths."""
    out = make_folder(Path(out), "the report folder (--out)")
    figures = plots(report)
    written = {name: write_atomic(out / name, lambda f, b=data: f.write(b)) for name, data in figures.items()}
    ts = tables(report)
    md = ["# kdkit report", "", "Sources: " + ", ".join(_md(s) for s in report.sources), ""]
    page = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>kdkit report</title><style>",
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}"
            "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f2f2f2}"
            "img{max-width:100%;border:1px solid #eee}", "</style></head><body>", "<h1>kdkit report</h1>",
            "<p>Sources: " + ", ".join(f"<code>{html.escape(s)}</code>" for s in report.sources) + "</p>"]
    for title, head, rows in ts:
        md += [f"## {title}", "", "| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
        md += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows] + [""]
        page += [f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
                 + "</tr>"]
        page += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows] + ["</table>"]
    captions = {"curves.png": "Learning curves", "loss_terms.png": "Every named loss term (first run of each recipe)",
                "accuracy_latency.png": "Accuracy against latency",
                "sweep_history.png": "Optimisation history of each sweep",
                "masks.png": "Test images: ground truth and predicted masks (a segmentation run)",
                "boxes.png": "Test images: ground-truth and detected boxes (a detection run)",
                "images.png": "Test inputs: target and generated images (an image-to-image run)"}
    for name, data in figures.items():
        md += [f"## {captions[name]}", "", f"![{captions[name]}]({name})", ""]
        page += [f"<h2>{captions[name]}</h2>",
                 f"<img alt='{captions[name]}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"]
    page += [_CHECK, "</body></html>"]
    written["report.md"] = write_atomic(out / "report.md", lambda f: f.write(("\n".join(md) + "\n").encode()))
    written["report.html"] = write_atomic(out / "report.html", lambda f: f.write("\n".join(page).encode()))
    return written
