"""The search: an Optuna study in a journal file (or a database), its trials claimed by workers, each an
ordinary kdkit run; best.yaml from the best trial."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engine.checkpoint import write_atomic
from ..errors import ConfigError, KdkitError
from .space import SweepConfig, grid_points, trial_config


class NoTrialFinished(KdkitError):
    """Every trial of a sweep was pruned or diverged: there is no best configuration."""


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``'s sampler: from the sweep seed and the trial number only."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "little")


def make_sampler(cfg: SweepConfig, number: int) -> Any:
    import optuna

    seed = trial_seed(cfg.seed, number)
    if cfg.sampler in ("random", "grid"):  # grid: its points are enqueued in order, so this draws nothing
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, cfg.trials // 3)))


def make_pruner(cfg: SweepConfig) -> Any:
    import optuna

    # no trial is stopped before it has run pruner_warmup epochs (early validation curves are noisy and
    # cross each other; by default half the recipe's epochs)
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=cfg.pruner_warmup)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.pruner_warmup)
    return optuna.pruners.NopPruner()


Log = Callable[[str], None]
HOST = socket.gethostname()  # trials record the machine that runs them


def search(cfg: SweepConfig, log: Log = print, storage: str | None = None, workers: int = 1) -> dict[str, Any]:
    """Run (or continue) the search; the best trial's number, value, parameters and best.yaml.
    ``workers``: that many processes on this machine share the study (each with its share of the CPU
    threads, recorded in its trials' configs)."""
    if workers > 1:
        return _run_workers(cfg, storage, workers, log)
    return write_best(cfg, _work(cfg, log, storage, LiveLine()))


def _study(cfg: SweepConfig, storage: str | None) -> Any:
    """The sweep's study, created or loaded: from ``storage`` (a database URL) or the journal file in its
    folder; a storage that cannot be reached or a journal written by something else is one line."""
    import optuna

    journal = Path(cfg.out) / "journal.log"
    if storage is None:
        journal.parent.mkdir(parents=True, exist_ok=True)
    try:
        store = database_url(storage) if storage else _journal(journal)
        return optuna.create_study(study_name=cfg.name, storage=store, direction="maximize"
                                   if not cfg.metric.endswith("loss") else "minimize",
                                   pruner=make_pruner(cfg), load_if_exists=True)
    except Exception as e:  # noqa: BLE001  (storage back ends raise many kinds)
        what = storage[:120] if storage else f"{journal} (not an Optuna journal?)"
        raise ConfigError(f"sweep storage {what}: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}") from None


def database_url(url: str) -> str:
    """A PostgreSQL URL without a driver named uses psycopg 3 (the pinned driver); SQLAlchemy's default
    for ``postgresql://`` is psycopg2, which kdkit does not install."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def _worker(cfg: SweepConfig, storage: str | None, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _work(cfg, lambda m: print(m, flush=True), storage)


def _run_workers(cfg: SweepConfig, storage: str | None, workers: int, log: Log) -> dict[str, Any]:
    import multiprocessing as mp

    _study(cfg, storage)  # created (or its storage refused) once, before any worker starts
    threads = max(1, (os.cpu_count() or 1) // workers)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(cfg, storage, threads)) for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode != 0]
    if bad:
        raise KdkitError(f"{len(bad)} of {workers} sweep workers failed (exit codes {bad}); run the sweep again "
                         "to continue it")
    return write_best(cfg, _study(cfg, storage))


class LiveLine:
    """One line on a terminal that each epoch of the running trial rewrites (trial, parameters, epoch,
    metric); nothing when the stream is not a terminal (a log file keeps the finished trials' lines)."""

    def __init__(self, stream: Any = None, enabled: bool | None = None):
        self.stream = stream or sys.stderr
        self.on = self.stream.isatty() if enabled is None else enabled
        self.shown = False

    def update(self, text: str) -> None:
        if self.on:
            width = shutil.get_terminal_size((120, 20)).columns - 1
            self.stream.write("\r\033[K" + text[:width])
            self.stream.flush()
            self.shown = True

    def clear(self) -> None:
        if self.on and self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def _work(cfg: SweepConfig, log: Log, storage: str | None, live: LiveLine | None = None) -> Any:
    """Trials until the sweep has its count: this process's share of the work."""
    import optuna

    from ..build import trainer_in

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(cfg.out)
    study = _study(cfg, storage)
    (out / "trials").mkdir(parents=True, exist_ok=True)
    done = optuna.trial.TrialState
    while True:
        picked = _next_trial(cfg, study, out)
        if picked is None:
            break
        trial, params, claim = picked
        trial.set_user_attr("worker", os.getpid())
        try:
            run_dir = trial_dir(out, trial.number)
            head = f"trial {trial.number}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
            show = (lambda t, h=head: live.update(f"{h}: {t}")) if live else None
            state, value = _run_trial(cfg, trial, params, run_dir, trainer_in, show=show)
            if (run_dir / "config.yaml").is_file():  # best.yaml from any machine that shares the study
                trial.set_user_attr("config", (run_dir / "config.yaml").read_text())
            study.tell(trial, value if state == done.COMPLETE else None, state=state)
        finally:
            claim.release()
            if live:
                live.clear()
        log(f"{head}: {state.name.lower()}"
            + (f", {cfg.metric} {value:.4g}" if value is not None else ""))
    return study


def trial_dir(out: Path, number: int) -> Path:
    """Trial ``number``'s run directory in the sweep folder ``out``."""
    return out / "trials" / f"trial-{number:04d}"


def _journal(path: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def _next_trial(cfg: SweepConfig, study: Any, out: Path) -> tuple[Any, dict[str, Any], Any] | None:
    """Under the sweep's lock (one worker chooses at a time): a trial that a killed process left running
    (its claim file is not locked), resumed with its own parameters; else a new trial, its parameters
    drawn by a sampler seeded by the sweep seed and its number; None when no trial is left to run here.
    The trial's claim file is locked before the sweep's lock is let go, and held while it runs."""
    import optuna

    from ..engine.run_files import FileLock

    done = optuna.trial.TrialState
    gate = FileLock(out / "sweep.lock")
    if not gate.acquire(True, wait_s=3600.0):
        raise KdkitError(f"{out / 'sweep.lock'}: another worker held it for an hour")
    try:
        trials = study.get_trials(deepcopy=False)
        for t in trials:
            # a trial running on another machine (a database shared by several) is not this one's to resume
            if t.state == done.RUNNING and t.user_attrs.get("host", HOST) == HOST and trial_dir(out, t.number).is_dir():
                claim = _claim(out, t.number)
                if claim is not None:
                    return optuna.trial.Trial(study, t._trial_id), dict(t.params), claim
        finished = sum(t.state in (done.COMPLETE, done.PRUNED, done.FAIL) for t in trials)
        running = sum(t.state == done.RUNNING for t in trials)
        if finished + running >= cfg.trials:
            return None  # the rest are running in other workers, or the sweep is done
        study.sampler = make_sampler(cfg, len(trials))
        if cfg.sampler == "grid":
            grid = grid_points(cfg)
            study.enqueue_trial(grid[len(trials) % len(grid)])
        trial = study.ask()
        trial.set_user_attr("host", HOST)
        params = {p.key: p.suggest(trial) for p in cfg.space}
        claim = _claim(out, trial.number)
        return trial, params, claim
    finally:
        gate.release()


def _claim(out: Path, number: int) -> Any:
    """Trial ``number``'s claim file, locked; None when another live process holds it."""
    from ..engine.run_files import FileLock

    run_dir = trial_dir(out, number)
    run_dir.mkdir(parents=True, exist_ok=True)
    claim = FileLock(run_dir / ".trial.lock")
    if claim.acquire(True):
        return claim
    claim.release()
    return None


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _run_trial(cfg: SweepConfig, trial: Any, params: dict[str, Any], run_dir: Path, trainer_in: Any,
               show: Callable[[str], None] | None = None) -> tuple[Any, float | None]:
    """One trial: a kdkit run reporting the metric every epoch (and ``show``-ing it); pruned, failed
    (diverged) or complete."""
    import optuna

    from ..errors import DivergedError, NonFiniteLossError

    last: dict[str, float] = {}

    def report(trainer: Any, epoch: int, metrics: dict[str, Any]) -> None:
        value = metrics.get(cfg.metric)
        if value is None:
            raise ConfigError(f"the metric {cfg.metric} is not among the run's metrics "
                              f"({sorted(k for k in metrics if k.startswith('val/'))})")
        last["value"] = float(value)
        if show is not None:
            show(f"epoch {epoch}/{trainer.cfg.train.epochs}, {cfg.metric} {float(value):.4g}")
        trial.report(float(value), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    quiet = {"log": lambda m: None, "callbacks": [report]}
    try:
        trainer_in(run_dir, lambda: trial_config(cfg, params, run_dir), **quiet).fit()
    except optuna.TrialPruned:
        return optuna.trial.TrialState.PRUNED, None
    except (DivergedError, NonFiniteLossError):
        return optuna.trial.TrialState.FAIL, None
    if "value" not in last:  # a finished run resumed: its last epoch's line
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        epochs = [r for r in rows if not r.get("final")]
        if not epochs or cfg.metric not in epochs[-1]:
            raise ConfigError(f"{run_dir} holds a finished run that reports no {cfg.metric}: the sweep folder "
                              f"{cfg.out} holds another sweep's trials; give the sweep another out folder")
        last["value"] = float(epochs[-1][cfg.metric])
    return optuna.trial.TrialState.COMPLETE, last["value"]


def importances(study: Any, seed: int) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA, seeded) over the finished trials; empty with fewer than two
    finished trials or parameters that never varied."""
    import optuna

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if len(complete) < 2:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study, evaluator=evaluator).items()}
    except (RuntimeError, ValueError):  # e.g. every finished trial had the same parameters
        return {}


def write_best(cfg: SweepConfig, study: Any) -> dict[str, Any]:
    """``best.yaml`` (the best trial's resolved config, with its thread count) and ``sweep.json``."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
    if not complete:
        raise NoTrialFinished(f"sweep {cfg.name}: no trial finished (every one was pruned or failed)")
    best = study.best_trial
    run_dir = trial_dir(Path(cfg.out), best.number)
    # the run's resolved config (threads, seed, every default), as the study holds it or its run's file
    text = (best.user_attrs.get("config") or (run_dir / "config.yaml").read_text()).encode()
    write_atomic(Path(cfg.out) / "best.yaml", lambda f: f.write(text))
    rows = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
             "worker": t.user_attrs.get("worker"), "host": t.user_attrs.get("host")}
            for t in study.get_trials(deepcopy=False)]
    summary = {"name": cfg.name, "metric": cfg.metric, "direction": study.direction.name.lower(),
               "best": {"number": best.number, "value": best.value, "params": best.params},
               "importances": importances(study, cfg.seed), "trials": rows}
    data = json.dumps(summary, indent=1, default=str).encode()
    write_atomic(Path(cfg.out) / "sweep.json", lambda f: f.write(data))
    return {**summary["best"], "best_yaml": str(Path(cfg.out) / "best.yaml")}
