"""A sweep in the report: ``kdkit report SWEEP_DIR`` shows its trials, the optimisation history, Optuna's
parameter importances and the best configuration; over a ``--methods`` folder, the ranking of the methods
and each method's search. Read from the sweep's own files (``sweep.json``, ``methods.json``, ``best.yaml``),
so the report needs neither Optuna nor the study's storage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .read import printable


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else printable(v, 80)


def sweep_tables(sweeps: list[dict[str, Any]], rankings: list[dict[str, Any]]) -> list[tuple[str, list[str],
                                                                                            list[list[str]]]]:
    """(title, header, rows) for each ranking and each sweep: best, importances, trials."""
    from ..sweep.compare import ranking_table

    out = []
    for r in rankings:
        head, cells = ranking_table(r.get("metric", "val/top1"), r.get("rows", []))
        title = f"Methods compared: {r.get('name', '')} (ranked by validation)"
        if r.get("pending"):
            title += f"; not run yet: {', '.join(r['pending'])}"
        out.append((title, head, cells))
    for s in sweeps:
        name, metric, best = s.get("name", "sweep"), s.get("metric", ""), s.get("best") or {}
        states = [t.get("state") for t in s["trials"]]
        counts = ", ".join(f"{states.count(k)} {k}" for k in ("complete", "pruned", "fail", "running") if k in states)
        best_yaml = Path(s["folder"]) / "best.yaml"
        out.append((f"Sweep {name}: best trial ({counts})", ["trial", metric, "parameters", "best.yaml"],
                    [[str(best.get("number", "-")), _fmt(best.get("value")),
                      ", ".join(f"{k}={_fmt(v)}" for k, v in (best.get("params") or {}).items()),
                      str(best_yaml) if best_yaml.is_file() else "-"]]))
        if s.get("importances"):
            out.append((f"Sweep {name}: parameter importances (Optuna, fANOVA)", ["parameter", "importance"],
                        [[k, f"{v:.3f}"] for k, v in s["importances"].items()]))
        keys = list(dict.fromkeys(k for t in s["trials"] for k in (t.get("params") or {})))
        out.append((f"Sweep {name}: trials", ["trial", "state", metric, *keys],
                    [[str(t.get("number")), str(t.get("state")), _fmt(t.get("value")) if t.get("value") is not None
                      else "-", *[_fmt((t.get("params") or {}).get(k, "-")) for k in keys]] for t in s["trials"]]))
    return out


def history_png(sweeps: list[dict[str, Any]]) -> bytes | None:
    """The optimisation history of each sweep (up to 24): every finished trial's value by trial number and
    the best so far."""
    if not sweeps:
        return None
    import matplotlib.pyplot as plt

    from ..measure import figure_png

    shown = sweeps[:24]
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=100, squeeze=False)
    for ax, s in zip(axes.flat, shown):
        done = [t for t in s["trials"] if t.get("value") is not None]
        xs = [t["number"] for t in done]
        ys = [t["value"] for t in done]
        pick = min if s.get("direction") == "minimize" else max
        running = [pick(ys[: i + 1]) for i in range(len(ys))]
        ax.plot(xs, ys, "o", label="trial")
        ax.step(xs, running, where="post", label="best so far")
        pruned = [t["number"] for t in s["trials"] if t.get("state") == "pruned"]
        for x in pruned:
            ax.axvline(x, color="#ccc", linewidth=0.8)
        ax.set_title(printable(s.get("name", "sweep"), 40) + (" (grey: pruned)" if pruned else ""), fontsize=8)
        ax.set_xlabel("trial")
        ax.set_ylabel(s.get("metric", ""), fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    return figure_png(fig)
