"""The training loop: optimisation, schedule, evaluation, checkpoints, resume and logging.

Methods never run a loop of their own: they return loss terms, the trainer sums them, steps the
optimizer, evaluates the student each epoch (top-1, top-5, agreement with the teacher) and writes the run
directory: ``config.yaml`` (resolved), ``metrics.jsonl``, TensorBoard events, ``checkpoint.pt`` (the
last epoch, written atomically) and ``best.pt`` (best validation top-1).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from .. import distributed
from ..config import RunConfig, config_dict, dump_yaml, trainable_specs
from ..data import Loaders
from ..errors import DivergedError, KdkitError, NonFiniteLossError, OutputError
from ..methods import Distiller
from ..methods.distiller import STUDENT
from ..transforms import Transform, records
from . import run_files
from .balance import BalanceProbe
from .checkpoint import FORMAT, VERSION, check_resume, inference_record, model_record, save_atomic
from .evaluate import TeacherOutputs, evaluate, evaluate_networks
from .optim import group_lrs, lr_at, make_optimizer  # noqa: F401  (lr_at: part of this module's API)
from .throughput import Throughput
from .wrap import wrap

Callback = Callable[["Trainer", int, dict[str, Any]], None]
NEVER = 2**62  # "no non-finite value yet", as a step number


@dataclass
class Built:
    """What a trainer trains: the data loaders, the distiller (student, methods, teachers), the device.
    ``kdkit.build.build`` makes them from a config."""

    loaders: Loaders
    distiller: Distiller
    device: torch.device
    transforms: list[Transform] = field(default_factory=list)  # applied to the student, recorded when saved
    peer_transforms: dict[str, list[Transform]] = field(default_factory=dict)  # each peer's, likewise


class Trainer:
    """Trains ``built.distiller`` on ``built.loaders`` as ``cfg`` says. It takes built parts; the build
    layer makes them from a config (``kdkit.from_config(cfg)``, ``kdkit.resume(run_dir)``).

    >>> trainer = kdkit.from_config(cfg)  # builds data, models and methods, then this Trainer
    >>> result = trainer.fit()            # {"epoch": ..., "val/top1": ..., "test/top1": ...}

    Under ``torchrun`` the process group must be joined (``distributed.setup``) before the parts are
    built, on the device it returns; ``from_config`` does both.
    """

    def __init__(self, cfg: RunConfig, built: Built, run_dir: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), log: Callable[[str], None] | None = None,
                 write_files: bool = True, dist_info: distributed.DistInfo | None = None):
        self.cfg = cfg
        self.dist = dist_info or distributed.from_env()
        main = self.dist.is_main
        self.log = (log or (lambda msg: print(msg, file=sys.stderr))) if main else (lambda msg: None)
        if cfg.train.deterministic:
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        self.built = built
        self.distiller, self.loaders, self.device = self.built.distiller, self.built.loaders, self.built.device
        self.task = self.distiller.task
        self.plan = self.distiller.set_plan(cfg.stages, cfg.train.epochs)
        self.horizon = sum(s.epochs for s in self.plan if s.schedule) or cfg.train.epochs
        self.specs = trainable_specs(cfg)  # every trainable network's spec, by name (the student first)
        self.optimizer = make_optimizer(cfg, self.distiller.param_groups(), self.device, {
            net: {"lr": spec.lr, "weight_decay": spec.weight_decay} for net, spec in self.specs.items()
            if net != STUDENT})
        self.callbacks = list(callbacks)
        self.run_dir = Path(run_dir) if run_dir is not None else run_files.default_run_dir(cfg)
        if self.dist.enabled:  # the default name holds the time: take rank 0's
            self.run_dir = Path(distributed.broadcast_object(str(self.run_dir), self.dist))
        self.write_files = write_files and main
        self.model = wrap(self.distiller, cfg.train, self.plan, self.dist, self.device)
        self.cache, self.teacher_eval = None, TeacherOutputs(self.distiller.teachers)  # both: teacher outputs kept
        self.epoch, self.step = 0, 0  # epochs completed, optimiser steps taken
        self.best: float | None = None  # the best validation value of the task's primary metric
        self.history: list[dict[str, Any]] = []
        self.best_epoch: int | None = None  # the epoch best.pt holds
        self._resumed_metrics: dict[str, Any] | None = None  # the checkpoint's last epoch metrics, on resume
        self._final: dict[str, Any] | None = None  # a finished run's final metrics, when it is resumed
        self._lock: run_files.FileLock | None = None  # held on the run directory while fit() writes into it
        self._resumed_from: tuple[Path, int, int] | None = None  # the checkpoint resumed from, as it was read
        self._tb = None
        probe = cfg.train.balance_steps and not self.dist.enabled and cfg.train.compile == "none"
        self.balance = BalanceProbe([p for p in self.distiller.student.parameters() if p.requires_grad],
                                    cfg.train.balance_steps if probe else 0, cfg.train.balance_factor)
        use_amp = cfg.train.amp and self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.plan)

    # ------------------------------------------------------------------------------------ resume
    def check_state(self, ckpt: dict[str, Any], source: str = "checkpoint") -> None:
        """Refuse (CheckpointError, one line) a checkpoint this run cannot resume from, before using any
        of it (:func:`~kdkit.engine.checkpoint.check_resume`; the loader checks its own state)."""
        records = {net: {"name": spec.name, "kwargs": dict(spec.kwargs), **self.task.record(self.loaders.dataset)}
                   for net, spec in self.specs.items()}
        check_resume(ckpt, source, self.distiller.networks(trainable_only=True), records, self.distiller.state_dict(),
                     self.optimizer, self.total_epochs)
        self.loaders.train.check_state(ckpt["loader"], source)

    def load_state(self, ckpt: dict[str, Any], source: str = "checkpoint") -> None:
        self.check_state(ckpt, source)
        if Path(source).is_file():  # fit() checks, under the run's lock, that no other run replaced it since
            st = Path(source).stat()
            self._resumed_from = (Path(source), st.st_ino, st.st_mtime_ns)
        self.distiller.load_state_dict(ckpt["distiller"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch, self.step, self.best = ckpt["epoch"], ckpt["step"], ckpt.get("best")
        self.best_epoch = ckpt.get("best_epoch")
        self._resumed_metrics = ckpt.get("metrics") if isinstance(ckpt.get("metrics"), dict) else None
        self.loaders.train.load_state_dict(ckpt["loader"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    def state(self) -> dict[str, Any]:
        ds, spec, d = self.loaders.dataset, self.cfg.model, self.distiller
        networks = {name: {"model": model_record(self.specs[name].name, self.specs[name].kwargs,
                                                 records(peer, self.built.peer_transforms.get(name, [])),
                                                 **self.task.record(ds), **self.task.network_record(peer)),
                           "weights": peer.state_dict()} for name, peer in d.peers.items()}
        return {
            "format": FORMAT, "version": VERSION,
            "config": config_dict(self.cfg),
            "model": model_record(spec.name, spec.kwargs, records(d.student, self.built.transforms),
                                  **self.task.record(ds), **self.task.network_record(d.student)),
            "student": self.distiller.student.state_dict(),
            "distiller": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "step": self.step, "best": self.best, "best_epoch": self.best_epoch,
            "loader": self.loaders.train.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "metrics": self.history[-1] if self.history else {},
            "inference": inference_record(ds, self.loaders.input_shape),
        } | ({"networks": networks} if networks else {})

    # ------------------------------------------------------------------------------------ training
    def fit(self) -> dict[str, Any]:
        try:
            if self.write_files:
                self._prepare_run_dir()
            if self.dist.enabled:  # rank 0 may have moved to a new directory (train.existing: new)
                self.run_dir = Path(distributed.broadcast_object(str(self.run_dir), self.dist))
            distributed.barrier(self.dist)  # the run directory exists before any rank writes into it
            if self._final is not None:  # resuming a finished run: nothing to train or evaluate again
                self.log(f"{self.run_dir} is finished ({self.epoch} epochs); nothing to do (--epochs N extends it)")
                return dict(self._final)
            if self.cfg.train.teacher_cache is not None and self.cache is None:
                self._build_cache()
            while self.epoch < self.total_epochs:
                metrics = self._train_epoch(self.epoch)
                distributed.broadcast_buffers(self.distiller, self.dist)  # evaluate and save rank 0's
                self.epoch += 1
                metrics.update(self._evaluate_epoch())
                self._end_epoch(metrics)
            final = {**self.evaluate_networks(self.loaders.test, "test"), "epoch": self.epoch}
            deployed = next((d for d in (m.deployed() for m in self.distiller.methods) if d), "")
            final["deployed"] = deployed.rstrip("/") or "student"  # the scheme's deployed network
            self._write_metrics({"final": True, **final})
            p = self.task.primary
            self.log(f"test: {p} {final[f'test/{p}']:.2f}" + (
                f", agreement with teacher {final['test/agreement']:.2f}" if "test/agreement" in final else "")
                + "".join(f", {net} {p} {final[f'test/{net}/{p}']:.2f}" for net in self.distiller.peers)
                + (f", ensemble {p} {final[f'test/ensemble/{p}']:.2f}" if f"test/ensemble/{p}" in final else "")
                + (f"; deployed: {deployed[:-1]} {p} {final[f'test/{deployed}{p}']:.2f}" if deployed else ""))
            return {**(self.history[-1] if self.history else {}), **final}
        finally:
            if self._tb is not None:
                self._tb.close()
                self._tb = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            if self.cache is not None:
                self.cache.release()  # other runs may rebuild a shared disk cache once no run reads it

    def _prepare_run_dir(self) -> None:
        self.run_dir, self._lock = run_files.open_run_dir(self.run_dir, self.epoch == 0, self.cfg.train.existing,
                                                          self._resumed_from, self.log)
        if self.epoch > 0 and self.epoch == self.total_epochs:  # a finished run: its final line, if it has one
            self._final = run_files.final_line(self.run_dir, self.epoch)
        if self.epoch > 0 and self._final is None:  # resuming: the files as they were after this epoch
            last = self._resumed_metrics
            self.history = run_files.reconcile_metrics(self.run_dir, self.epoch, last)
            no_val = (last or {}).get(f"val/{self.task.primary}") is None
            was_best = self.best_epoch == self.epoch or no_val and self.epoch == self.total_epochs
            if run_files.repair_best(self.run_dir, self.epoch, was_best):
                self.log("best.pt restored from checkpoint.pt (the run was stopped between the two writes)")
        run_files.write_files(self.run_dir, {"config.yaml": dump_yaml(self.cfg).encode(), **self.loaders.dataset.files})
        self.log(f"run directory: {self.run_dir}")

    def _build_cache(self) -> None:
        from .cache import build_cache

        t0 = time.perf_counter()
        cfg = self.cfg.train.teacher_cache
        shared_disk = cfg.store == "disk" and self.dist.enabled
        if shared_disk and not self.dist.is_main:
            distributed.barrier(self.dist)  # rank 0 fills the shared directory first
        self.cache = build_cache(cfg, self.distiller, self.loaders.train, self.device, self.run_dir)
        reused = self.cache.complete
        if self.cache.invalid is not None:
            self.log(f"teacher cache in {self.cache.path} not reused: {self.cache.invalid}; rebuilding it")
        self.cache.fill(self.distiller, self.loaders.train, self.autocast,
                        progress=self.cfg.train.progress and self.dist.is_main)
        if shared_disk and self.dist.is_main:
            distributed.barrier(self.dist)
        elif self.cache.path is not None and not self.dist.enabled:  # the evaluation passes' outputs beside it
            self.teacher_eval.store = self.cache.path.parent / "eval"
        self.log(f"teacher cache: {self.cache.num_keys} inputs, {self.cache.nbytes() / 2**20:.1f} MiB, "
                 + ("reused" if reused else f"filled in {time.perf_counter() - t0:.1f}s"))

    def _teacher(self, x: Tensor, idx: Tensor) -> tuple[list[Tensor], dict[str, Tensor]] | None:
        d = self.distiller
        if not d._uses_teacher:
            return None
        if self.cache is not None:
            return self.cache.lookup(self.loaders.train.view_keys(idx), self.loaders.dataset.num_classes)
        return d.teacher_outputs(x)

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        """One epoch. Loss terms are summed on the device and read on the host only every
        ``train.log_every`` steps and at the end (finite check, progress bar): no per-step sync."""
        d, loader = self.distiller, self.loaders.train
        stage = d.enter_stage(epoch)
        d.train()
        steps = len(loader)
        bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{self.total_epochs} {stage.name}", leave=False,
                   disable=None if self.cfg.train.progress and self.dist.is_main else True, dynamic_ncols=True)
        names: list[str] = []
        sums = first_bad = None  # per term: summed value, and the first step at which it was not finite
        every = self.cfg.train.log_every
        t0, speed = time.perf_counter(), Throughput(self.task)
        lrs = group_lrs(self.cfg, self.optimizer, epoch, 0, steps, stage, self.horizon)
        for i, batch in enumerate(bar):
            x, y, idx = self.task.split_batch(batch)
            lrs = group_lrs(self.cfg, self.optimizer, epoch, i, steps, stage, self.horizon)
            terms, values = self.train_step(x, y, idx, epoch, lrs)
            speed.add(x)
            if sums is None:
                names = list(terms)
                sums = torch.zeros_like(values)
                first_bad = torch.full(values.shape, NEVER, dtype=torch.int64, device=values.device)
            sums += values
            first_bad = torch.where(torch.isfinite(values), first_bad, first_bad.clamp(max=self.step))
            if (i + 1) % every == 0 or i + 1 == steps:
                means = self._read_sums(names, sums, first_bad, i + 1, epoch)
                if not bar.disable:  # None on a terminal (tqdm decides), True when off
                    bar.set_postfix(loss=f"{sum(means.values()):.4f}", lr=f"{lrs[0]:.4g}",
                                    **{k: f"{v:.0f}" for k, v in speed.rates().items()})
        bar.close()
        vals = means if sums is not None else {}
        metrics: dict[str, Any] = {"epoch": epoch + 1, "stage": stage.name, "lr": lrs[0],
                                   "time/train_s": time.perf_counter() - t0, **speed.metrics(),
                                   "train/loss": sum(vals.values()), **{f"train/{k}": v for k, v in vals.items()}}
        adversaries = distributed.mean_over_ranks(d.adversary_losses(), self.dist)  # logged, not the student's loss
        metrics.update({f"train/{k}": v for k, v in adversaries.items()})
        if self.balance.seen:  # the first epoch: the shares once, logged and in its metrics
            metrics.update(self.balance.finish(self.log))
        ce_w = d.ce_weight(stage)  # the label loss as a plain cross-entropy too, when a method scaled it
        if ce_w not in (0.0, 1.0):
            metrics.update({f"train/{k}_unscaled": v / ce_w for k, v in vals.items()
                            if k == "ce" or k.startswith("ce/")})
        return metrics

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor, epoch: int,
                   lr: float | Sequence[float]) -> tuple[dict[str, Tensor], Tensor]:
        """One optimisation step at learning rate ``lr`` (one per parameter group, or one for all);
        returns the loss terms and their detached values stacked (on the device, not read: reading them
        would synchronise with the device)."""
        opt = self.optimizer
        lrs = [lr] * len(opt.param_groups) if isinstance(lr, int | float) else lr
        for group, group_lr in zip(opt.param_groups, lrs):
            group["lr"] = group_lr
        with self.autocast():
            terms = self.model(x, y, idx, epoch=epoch, teacher=self._teacher(x, idx))
        if self.balance.active and epoch == 0 and self.step < self.balance.steps:  # a run's first steps only
            self.balance.measure(terms)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.distiller.parameters(), self.cfg.train.grad_clip)
        opt.step()
        self.distiller.after_step()
        self.step += 1
        return terms, torch.stack([v.detach().float() for v in terms.values()])

    def _read_sums(self, names: list[str], sums: Tensor, first_bad: Tensor, n: int, epoch: int) -> dict[str, float]:
        """Mean of each loss term over the ``n`` steps so far (over all ranks); stops the run, naming the
        term that went bad first, if any is not finite. The training loop's only host synchronisation."""
        mean = distributed.all_reduce(sums / n, self.dist, "mean")
        first = distributed.all_reduce(first_bad, self.dist, "min")  # the earliest bad step on any rank
        vals = torch.cat([mean, first.double()]).tolist()
        k = len(names)
        means, bad_at = dict(zip(names, vals[:k])), vals[k:]
        if min(bad_at) < NEVER:
            j = min(range(k), key=lambda j: bad_at[j])
            raise NonFiniteLossError(names[j], means[names[j]], epoch, int(bad_at[j]),
                                     checkpoint=(self.run_dir / "checkpoint.pt").is_file())
        return means

    def _evaluate_epoch(self) -> dict[str, Any]:
        due = self.epoch % self.cfg.train.eval_every == 0 or self.epoch >= self.total_epochs
        return self.evaluate_networks(self.loaders.val, "val") if self.loaders.val is not None and due else {}

    def _check_finite(self, metrics: dict[str, Any]) -> None:
        """Refuse to call an epoch good (checkpoint, best.pt, metrics line) when a metric or a weight is
        NaN or infinite: a blow-up in the epoch's last updates passes the per-step loss check."""
        bad = next((k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)), None)
        what = f"{bad} is {metrics[bad]}" if bad else None
        if what is None:
            state = self.distiller.state_dict()
            floats = [t for t in state.values() if t.is_floating_point() and t.numel()]
            if floats and not bool(torch.stack([t.detach().float().abs().amax() for t in floats]).isfinite().all()):
                name = next(k for k, t in state.items() if t.is_floating_point() and not bool(t.isfinite().all()))
                what = f"the weights hold non-finite values ('{name}')"
        if what is not None:
            raise DivergedError(what, metrics.get("epoch", self.epoch), (self.run_dir / "checkpoint.pt").is_file())

    def _end_epoch(self, metrics: dict[str, Any]) -> None:
        self._check_finite(metrics)
        if self.dist.enabled:
            metrics["ddp/world_size"] = self.dist.world_size
            metrics["ddp/replicas_identical"] = distributed.replicas_identical(self.distiller, self.dist)
            if not metrics["ddp/replicas_identical"]:
                raise KdkitError(f"after epoch {metrics['epoch']} the ranks hold different weights; "
                                 "stopping before a diverged checkpoint is written")
        self.history.append(metrics)
        primary = f"val/{self.task.primary}"
        top1 = metrics.get(primary)
        improved = top1 is not None and self.task.better(top1, self.best)
        if improved:
            self.best, self.best_epoch = top1, self.epoch
        if self.write_files:
            state = self.state()
            save_atomic(state, self.run_dir / "checkpoint.pt")
            if improved or (top1 is None and self.epoch == self.total_epochs):
                save_atomic(state, self.run_dir / "best.pt")
            self._write_metrics(metrics)
        terms = ", ".join(f"{k[6:]} {v:.4f}" for k, v in metrics.items()
                          if k.startswith("train/") and k != "train/loss")
        val = f"  val {self.task.primary} {top1:.2f}" if top1 is not None else ""
        self.log(f"epoch {metrics['epoch']}/{self.total_epochs}  loss {metrics['train/loss']:.4f} ({terms})"
                 f"{val}  lr {metrics['lr']:.4g}  {metrics['time/train_s']:.1f}s" + "".join(
                     f"  {v:.0f} {k[5:].replace('_per_s', '/s')}" for k, v in metrics.items() if k.endswith("_per_s")))
        for cb in self.callbacks:
            cb(self, self.epoch, metrics)

    def _write_metrics(self, metrics: dict[str, Any]) -> None:
        if not self.write_files:
            return
        try:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        except OSError as e:
            raise OutputError(f"cannot append to {self.run_dir / 'metrics.jsonl'} ({e.strerror or e}; is the disk "
                              "full?); this epoch's checkpoint is written: --resume restores the line") from None
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir))
        for k, v in metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch":
                self._tb.add_scalar(k, v, metrics.get("epoch", self.epoch))
        self._tb.flush()

    # ------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, loader, net: str = STUDENT) -> dict[str, float]:
        """The task's metrics of one trainable network (default: the student) on ``loader``."""
        model = self.distiller.networks(trainable_only=True)[net]
        return evaluate(model, loader, self.teacher_eval, self.autocast, self.dist, self.task)

    def evaluate_networks(self, loader, prefix: str) -> dict[str, float]:
        """Every trainable network's metrics (``<prefix>/<metric>`` for the student,
        ``<prefix>/<peer>/<metric>`` for a peer), and each branch of a branched one (``.../branch<k>/...``)."""
        return evaluate_networks(self.distiller.networks(trainable_only=True), loader, prefix, self.teacher_eval,
                                 self.autocast, self.dist, self.task)
