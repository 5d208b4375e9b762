"""``kdkit sweep FILE``: search a recipe's settings on the validation metric with Optuna, every trial an
ordinary kdkit run in its own directory.

A sweep file::

    base: recipe.yaml          # or the recipe inline, as a mapping
    space:                     # config keys (``--set`` paths) and their ranges
      method.kd.temperature: {log: [1, 16]}
      method.kd.alpha: {range: [0.1, 1.0]}
      optim.lr: {log: [0.01, 0.3]}
      optim.name: {choice: [sgd, adamw]}
      train.epochs: {int: [2, 6]}
    trials: 20
    sampler: tpe               # tpe, random or grid (grid: choice and int ranges only)
    pruner: median             # median, hyperband or none
    metric: val/top1           # a validation metric the task reports (default: its primary one)
    seed: 0
    out: runs/sweeps/kd        # the trials' run directories and the journal

Reproducible: every trial trains with the base recipe's seed, so the validation split (drawn from
``train.seed``) is the same for all of them; each trial's parameters are drawn by a sampler seeded by the
sweep seed and the trial number, so that a resumed sweep proposes what an uninterrupted one would (an
Optuna sampler's random state is not stored). The study lives in a journal file in ``out`` (no server);
a killed sweep continues: finished trials are kept and a trial that was running resumes from its run's
checkpoint with its own parameters. ``best.yaml`` is the best trial's whole resolved config, threads
included: training from it reproduces the trial.
"""

from __future__ import annotations

from typing import Any

from .compare import final_runs, run_methods
from .run import (
    HOST,
    NoTrialFinished,
    database_url,
    make_pruner,
    make_sampler,
    search,
    trial_dir,
    trial_seed,
    write_best,
)
from .space import PRUNERS, SAMPLERS, Param, SweepConfig, grid_points, load_sweep, parse_sweep, trial_config

__all__ = ["HOST", "PRUNERS", "SAMPLERS", "NoTrialFinished", "Param", "SweepConfig", "database_url", "final_runs",
           "grid_points", "load_sweep", "make_pruner", "make_sampler", "parse_sweep", "run_methods", "run_sweep",
           "search", "trial_config", "trial_dir", "trial_seed", "write_best"]


def run_sweep(cfg: SweepConfig, log: Any = print, storage: str | None = None, workers: int = 1) -> dict[str, Any]:
    """Run (or continue) the sweep; returns the best trial's number, value, parameters and best.yaml, and
    with ``seeds`` the final runs on test (``final``). A sweep with ``methods`` runs one search per method
    and returns their ranking (``methods``; :mod:`kdkit.sweep.compare`). ``workers``: that many processes
    on this machine share the study (each with its share of the CPU threads, recorded in its trials'
    configs); ``storage``: a database URL instead of the journal file."""
    if cfg.methods:
        return {"methods": run_methods(cfg, log, storage, workers)}
    best = search(cfg, log, storage, workers)
    if cfg.seeds:
        best["final"] = final_runs(cfg, best, log)
    return best
