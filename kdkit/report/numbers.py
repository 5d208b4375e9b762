"""The report's numbers: runs grouped by recipe, mean ± std over each group, config differences."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from .read import Report, Run


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


