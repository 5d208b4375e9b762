"""The final runs of a sweep (its best configuration over several seeds, on test) and ``--methods``: one
search per method over a teacher/student pair, ranked on validation, then each best over the seeds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..engine.checkpoint import write_atomic
from ..errors import ConfigError
from ..yamlio import load_yaml
from .run import NoTrialFinished, search, trial_dir
from .space import SweepConfig, parse_sweep

DEFAULT_SEEDS = [0, 1, 2]


def final_runs(cfg: SweepConfig, best: dict[str, Any], log: Any = print) -> list[dict[str, Any]]:
    """``best.yaml`` trained with each of ``cfg.seeds``, measured on test; one row per seed. The run with
    the recipe's own seed is the best trial's run itself (training from ``best.yaml`` reproduces it
    exactly); finished runs are read, not trained again. Written to ``final.json``."""
    from ..build import trainer_in

    out = Path(cfg.out)
    recipe = load_yaml(out / "best.yaml")
    base_seed = int(recipe["train"]["seed"])
    primary = cfg.metric.replace("val/", "test/", 1)
    rows = []
    for seed in cfg.seeds:
        if seed == base_seed:
            run_dir = trial_dir(out, best["number"])
        else:
            run_dir = out / "final" / f"trial-{best['number']:04d}-seed{seed}"
        data = {**recipe, "train": {**recipe["train"], "seed": seed, "progress": False}}
        final = trainer_in(run_dir, data, log=lambda m: None).fit()
        row = {"seed": seed, "run": str(run_dir), **{k: v for k, v in final.items() if k.startswith("test/")}}
        rows.append(row)
        log(f"{cfg.name}: final run, seed {seed}: {primary} {row.get(primary, float('nan')):.4g}")
    data = json.dumps({"name": cfg.name, "fingerprint": fingerprint(cfg), **_trial_seconds(out), "best": best,
                       "runs": rows}, indent=1, default=str).encode()
    write_atomic(out / "final.json", lambda f: f.write(data))
    return rows


def fingerprint(cfg: SweepConfig) -> str:
    """A digest of what decides a sweep's result: its base recipe, space, budget, sampler, pruner, metric,
    seeds, and the teacher's weights (not the path of its checkpoint: a teacher trained again to the same
    weights, elsewhere, gives the same digest). ``final.json`` carries it; a method whose ``final.json``
    matches is finished (:func:`run_methods` does not search it again, even without its journal and runs:
    a table carried to another machine as its small result files goes on from there). Where a teacher cache
    is kept is not part of it (float32 outputs from memory or from disk are the same numbers; tested): every
    ``train.teacher_cache`` with a ``store`` counts as ``store: memory`` without a path."""
    base = json.loads(json.dumps(cfg.base, default=str))
    cache = base["train"].get("teacher_cache") if isinstance(base.get("train"), dict) else None
    if isinstance(cache, dict) and "store" in cache:
        cache.pop("path", None)
        cache["store"] = "memory"
    teacher = base.get("teacher")
    ckpt = teacher.get("checkpoint") if isinstance(teacher, dict) else None
    if ckpt and "://" not in str(ckpt) and Path(ckpt).is_file():
        from ..engine.checkpoint import load_checkpoint, network_entry
        from ..errors import CheckpointError

        try:
            record, weights = network_entry(load_checkpoint(ckpt), teacher.get("net"), str(ckpt))  # the one used
        except CheckpointError:  # plain weights (a state dict, safetensors): the file's bytes
            h = hashlib.sha256(Path(ckpt).read_bytes())
        else:
            h = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode())
            for name in sorted(weights):
                h.update(name.encode())
                h.update(weights[name].detach().cpu().contiguous().numpy().tobytes())
        teacher["checkpoint"] = f"weights:{h.hexdigest()}"
    spec = {"base": base, "space": [dataclasses.asdict(p) for p in cfg.space], "trials": cfg.trials,
            "sampler": cfg.sampler, "pruner": cfg.pruner, "pruner_warmup": cfg.pruner_warmup, "metric": cfg.metric,
            "seed": cfg.seed, "seeds": cfg.seeds}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()


def _finished(sub: SweepConfig, check: bool = True, log: Any = print) -> dict[str, Any] | None:
    """A method's result from its ``final.json`` and ``sweep.json`` (None when it has not finished, or,
    with ``check``, when its fingerprint is not this sweep's)."""
    final, summary = Path(sub.out) / "final.json", Path(sub.out) / "sweep.json"
    if not (final.is_file() and summary.is_file()):
        return None
    data = json.loads(final.read_text())
    if check and data.get("fingerprint") != fingerprint(sub):
        return None
    if check:
        log(f"== {sub.name}: finished already ({final} matches this sweep)")
    return {"sub": sub, "best": data["best"], "final": data["runs"], "train_s": data.get("train_s"),
            "train_cpu_s": data.get("train_cpu_s")}


def method_configs(cfg: SweepConfig) -> dict[str, SweepConfig]:
    """Each method's search, by method name in the comparison's order: its own sweep file, checked whole
    before any trial runs."""
    from .methods import method_recipe, method_space

    subs = {}
    for name in cfg.methods or []:
        data = {"base": method_recipe(cfg.base, name, cfg.method_settings.get(name)),
                "space": method_space(cfg.base, name), "trials": cfg.trials, "sampler": cfg.sampler,
                "pruner": cfg.pruner, "pruner_warmup": cfg.pruner_warmup, "metric": cfg.metric, "seed": cfg.seed,
                "out": str(Path(cfg.out) / name),
                "name": f"{cfg.name}-{name}", "seeds": cfg.seeds or DEFAULT_SEEDS}
        subs[name] = parse_sweep(data, f"{cfg.source} ({name})")
    teacher = cfg.base.get("teacher")
    ckpt = teacher.get("checkpoint") if isinstance(teacher, dict) else None
    if ckpt and "://" not in str(ckpt) and not Path(ckpt).is_file():
        raise ConfigError(f"{cfg.source}: the teacher's checkpoint {ckpt} does not exist (train it first)")
    unknown = sorted(set(cfg.method_settings) - set(cfg.methods or []))
    if unknown:
        raise ConfigError(f"{cfg.source}: method_settings names methods that are not compared: {unknown}")
    return subs


def run_methods(cfg: SweepConfig, log: Any = print, storage: str | None = None, workers: int = 1,
                after: Any = None) -> list[dict]:
    """Every method's search (the same trial count each), then each best over the final seeds on test;
    ``methods.json`` and ``methods.md`` in the sweep folder rank them, rewritten after each method (with
    the methods still to run listed), and ``after(rows, pending)`` is called then. Resumable: finished
    trials and final runs are kept, and a method whose ``final.json`` has this sweep's :func:`fingerprint`
    is read, not searched."""
    subs = method_configs(cfg)
    results: dict[str, dict[str, Any]] = {}
    rows: list[dict[str, Any]] = []
    for i, (method, sub) in enumerate(subs.items()):
        results[method] = _finished(sub, log=log) or _search_method(method, sub, log, storage, workers)
        rows = rank(cfg, results)
        pending = list(subs)[i + 1:]
        write_ranking(cfg, rows, pending)
        if after is not None:
            after(rows, pending)
    return rows


def _search_method(method: str, sub: SweepConfig, log: Any, storage: str | None, workers: int) -> dict[str, Any]:
    log(f"== {method}: {sub.trials} trials over {', '.join(p.key for p in sub.space)}")
    try:
        best = search(sub, log=log, storage=storage, workers=workers)
        best["final"] = final_runs(sub, best, log)
    except NoTrialFinished as e:  # every trial diverged or was pruned: ranked last, the others go on
        log(f"{method}: {e}")
        best = None
    return {"sub": sub, "best": best, "final": (best or {}).get("final", [])}


def read_methods(cfg: SweepConfig) -> tuple[list[dict[str, Any]], list[str]]:
    """The ranking from what the method searches have written so far (nothing is trained): methods with a
    ``final.json`` are ranked, the others are pending."""
    results, pending = {}, []
    for method, sub in method_configs(cfg).items():
        done = _finished(sub, check=False)
        if done is not None:
            results[method] = done
        else:
            pending.append(method)
    return rank(cfg, results), pending


def epoch_seconds(rows: Iterable[dict[str, Any]]) -> dict[str, float | None]:
    """The training seconds of a run's metrics lines: ``train_s`` (wall) and ``train_cpu_s`` (the process's
    CPU time; None when an epoch that has a wall time lacks it: a run trained before kdkit recorded CPU time,
    so that a sum is never partial)."""
    wall: float = 0.0
    cpu: float | None = 0.0
    for row in rows:
        wall += float(row.get("time/train_s", 0.0) or 0.0)
        if cpu is not None:
            cpu = None if "time/train_s" in row and "time/train_cpu_s" not in row else (
                cpu + float(row.get("time/train_cpu_s", 0.0) or 0.0))
    return {"train_s": wall, "train_cpu_s": cpu}


def _trial_seconds(out: Path) -> dict[str, float | None]:
    """:func:`epoch_seconds` over every run under ``out`` (trials and final runs), from their metrics files."""
    rows = (json.loads(line) for path in out.rglob("metrics.jsonl")
            for line in path.read_text().splitlines() if line.strip())
    return epoch_seconds(rows)


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def rank(cfg: SweepConfig, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method: its best validation value, its best parameters, test mean and std over the
    final seeds, and the difference to vanilla paired by seed (mean and std of the per-seed differences)."""
    primary = cfg.metric.replace("val/", "test/", 1)
    base = {r["seed"]: r[primary] for r in results.get("vanilla", {}).get("final", []) if primary in r}
    rows = []
    for method, res in results.items():
        sub, best = res["sub"], res["best"]
        summary = json.loads((Path(sub.out) / "sweep.json").read_text()) if best else {"trials": []}
        states = [t["state"] for t in summary["trials"]]
        tests = {r["seed"]: r[primary] for r in res["final"] if primary in r}
        diffs = [tests[s] - base[s] for s in tests if s in base]
        mean, std = _mean_std(list(tests.values()))
        dmean, dstd = _mean_std(diffs)
        counts = {s: states.count(s) for s in sorted(set(states))}  # sorted: the same file from every process
        # a finished method's seconds from its final.json; otherwise (or when that predates them) its runs' logs
        spent = ({k: res.get(k) for k in ("train_s", "train_cpu_s")} if res.get("train_s")
                 else _trial_seconds(Path(sub.out)))
        rows.append({"method": method, "val": best["value"] if best else None,
                     "params": best["params"] if best else {}, "trials": counts,
                     "test_mean": mean, "test_std": std, "delta_mean": dmean, "delta_std": dstd,
                     "seeds": sorted(tests), **spent})
    rows.sort(key=lambda r: (r["val"] is None, -(r["val"] or 0.0) if not cfg.metric.endswith("loss") else r["val"]))
    return rows


def write_ranking(cfg: SweepConfig, rows: list[dict[str, Any]], pending: list[str] | None = None) -> None:
    out = Path(cfg.out)
    data = json.dumps({"name": cfg.name, "metric": cfg.metric, "rows": rows, "pending": pending or []}, indent=1,
                      default=str).encode()
    write_atomic(out / "methods.json", lambda f: f.write(data))
    text = ranking_markdown(cfg.metric, rows) + (f"\nNot run yet: {', '.join(pending)}.\n" if pending else "")
    write_atomic(out / "methods.md", lambda f: f.write(text.encode()))


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def ranking_table(metric: str, rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The ranking's header and cells (shared by methods.md, the report and the results tables)."""
    test = metric.replace("val/", "test/", 1)
    head = ["rank", "method", f"best {metric}", f"{test} (mean ± std)", "vs vanilla (paired by seed)", "best settings",
            "trials (complete/pruned/failed)", "train s, all runs"]
    cells = []
    for i, r in enumerate(rows, 1):
        val = f"{r['val']:.2f}" if r["val"] is not None else "no trial finished"
        test_s = f"{r['test_mean']:.2f} ± {r['test_std']:.2f}" if r["test_mean"] is not None else "-"
        delta = (f"{r['delta_mean']:+.2f} ± {r['delta_std']:.2f}" if r["delta_mean"] is not None
                 and r["method"] != "vanilla" else "-")
        params = ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in r["params"].items())
        t = r["trials"]
        counts = f"{t.get('complete', 0)}/{t.get('pruned', 0)}/{t.get('fail', 0)}"
        cells.append([str(i), r["method"], val, test_s, delta, params, counts, f"{r['train_s']:.0f}"])
    return head, cells


def markdown_table(head: list[str], cells: list[list[str]], numeric: set[int]) -> str:
    """A Markdown table; the columns in ``numeric`` right-aligned."""
    rule = "|" + "".join("---:|" if i in numeric else "---|" for i in range(len(head)))
    lines = ["| " + " | ".join(head) + " |", rule]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


RANKING_NUMERIC = {0, 2, 3, 4, 7}


def ranking_markdown(metric: str, rows: list[dict[str, Any]]) -> str:
    return markdown_table(*ranking_table(metric, rows), RANKING_NUMERIC)
