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


def _labels(by: dict[str, list[Run]]) -> dict[str, str]:
    """Each recipe's label: its model and methods, and where recipes share those, the keys that tell them
    apart: keys whose value differs between the recipes that have them, and the names of parts only some
    of them have (a transform, a second method). A key only some recipes have, with one value wherever
    it is (a default that a newer version writes out), does not label."""
    base = {}
    for key, members in by.items():
        c = members[0].config
        methods = "+".join(str(c[k]) for k in sorted(c) if k.startswith("method.") and k.endswith(".name")) or "?"
        base[key] = f"{c.get('model.name', '?')} {methods}"
    labels = dict(base)
    for shared in {b for b in base.values() if list(base.values()).count(b) > 1}:
        recipes = {key: json.loads(key) for key, b in base.items() if b == shared}
        keys = sorted({k for r in recipes.values() for k in r})
        values = {k: {json.dumps(r[k], sort_keys=True) for r in recipes.values() if k in r} for k in keys}
        varying = [k for k in keys if len(values[k]) > 1]
        partial = [k for k in keys if len(values[k]) == 1 and k.endswith("name")
                   and any(k not in r for r in recipes.values())]
        for key, r in recipes.items():
            parts = [f"{k}={r[k]}" for k in partial + varying if k in r]
            if parts:
                labels[key] = f"{shared} ({', '.join(parts[:3])}{', ...' if len(parts) > 3 else ''})"
    seen: dict[str, int] = {}
    for key, label in labels.items():  # still the same (differences past the third): number them
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[key] = f"{label} #{seen[label]}"
    return labels


def _progress(r: Run) -> tuple[int, int]:
    return (r.final is not None, len(r.epochs))


def groups(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """Runs grouped by recipe, in order of first appearance, each labelled (:func:`_labels`). A run is its
    recipe and seed: a second folder of the same recipe and seed (a resumed copy, a rerun) is the same run,
    marked ``copy_of`` the one that got furthest (finished, then most epochs), and is not another seed."""
    by: dict[str, list[Run]] = {}
    for r in runs:
        by.setdefault(r.recipe, []).append(r)
    labels = _labels(by)
    for members in by.values():
        by_seed: dict[Any, list[Run]] = {}
        for r in members:
            seed = r.config.get("train.seed")
            by_seed.setdefault(json.dumps(seed) if seed is not None else id(r), []).append(r)
        for same in by_seed.values():
            primary = max(same, key=_progress)  # the first of equals
            for r in same:
                r.copy_of = None if r is primary else primary.name
    return [(labels[key], members) for key, members in by.items()]


def group_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for label, members in groups(report.runs):
        copies = [r.name for r in members if r.copy_of is not None]
        members = [r for r in members if r.copy_of is None]
        best, best_epoch = [], []
        for r in members:  # the best validation epoch: the highest value, or the lowest (an error, an FID)
            sign = 1.0 if r.higher_is_better else -1.0
            vals = [(sign * v, e.get("epoch")) for e in r.epochs
                    if isinstance(v := e.get(r.metric("val")), int | float) and not math.isnan(v)]
            top = max(vals, key=lambda t: t[0]) if vals else None
            best.append(sign * top[0] if top else float("nan"))
            if r.epochs:
                best_epoch.append(top[1] if top else r.epochs[0].get("epoch"))
        rows.append({"group": label, "runs": [r.name for r in members], "copies": copies,
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




def balance_rows(runs: list[Run]) -> list[list[str]]:
    """Per run with balance hints (its first epoch's ``grad_share/*``): each term's share of the gradient on
    the student over the first steps, largest first, and whether one term dominates by more than the run's
    ``train.balance_factor``."""
    rows = []
    for r in runs:
        first = r.epochs[0] if r.epochs else {}
        shares = {k[len("grad_share/"):]: v for k, v in first.items()
                  if k.startswith("grad_share/") and k != "grad_share/dominance" and isinstance(v, (int, float))}
        if not shares:
            continue
        dom = first.get("grad_share/dominance")
        factor = r.config.get("train.balance_factor", 50.0)
        flag = (f"{max(shares, key=shares.get)} dominates ({dom:.1f}x > {factor:g}x)"
                if isinstance(dom, (int, float)) and isinstance(factor, (int, float)) and dom > factor else "ok")
        rows.append([r.name, ", ".join(f"{k} {v:.2f}" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])),
                     "-" if not isinstance(dom, (int, float)) else f"{dom:.1f}", flag])
    return rows
