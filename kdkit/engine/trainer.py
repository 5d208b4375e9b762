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
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..config import RunConfig, config_dict, dump_yaml
from ..data import Loaders
from ..errors import ConfigError, KdkitError, NonFiniteLossError
from ..methods import Distiller, method_name
from ..transforms import Transform, records
from . import distributed
from .checkpoint import FORMAT, VERSION, model_record, save_atomic

Callback = Callable[["Trainer", int, dict[str, Any]], None]
NEVER = 2**62  # "no non-finite value yet", as a step number


def make_optimizer(cfg: RunConfig, params, device: torch.device | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW; on CUDA the fused implementation (one kernel for all parameters), elsewhere the
    multi-tensor ``foreach`` one."""
    o = cfg.optim
    params = [p for p in params if p.requires_grad]
    impl = {"fused": True} if device is not None and device.type == "cuda" else {"foreach": True}
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay, **impl)
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **impl)


def lr_at(cfg: RunConfig, epoch: int, i: int = 0, steps: int = 1, pretrain_epochs: int = 0) -> float:
    """Learning rate for step ``i`` of ``steps`` in ``epoch`` (0-based).

    Preliminary-stage epochs run at the base rate; the schedule covers the ``train.epochs`` main epochs that
    follow: a linear warm-up that reaches the base rate at the last warm-up step, then step decay at the
    start of each milestone epoch, or a cosine curve over the steps of the main epochs.
    """
    base, s = cfg.optim.lr, cfg.schedule
    if epoch < pretrain_epochs:
        return base
    e = epoch - pretrain_epochs
    pos = e + i / steps
    if s.warmup_epochs > 0 and pos < s.warmup_epochs:
        return base * min(1.0, (pos + 1 / steps) / s.warmup_epochs)
    if s.name == "step":
        return base * s.gamma ** sum(1 for m in s.milestones if e >= m)
    if s.name == "cosine":
        return s.min_lr + (base - s.min_lr) * 0.5 * (1 + math.cos(math.pi * min(pos / cfg.train.epochs, 1.0)))
    return base


def default_run_dir(cfg: RunConfig) -> Path:
    name = cfg.train.run_name or "-".join(
        [cfg.data.name, cfg.model.name, "+".join(method_name(m) for m in cfg.method), time.strftime("%Y%m%d-%H%M%S")])
    return Path(cfg.train.out_dir) / name


@dataclass
class Built:
    """What a trainer trains: the data loaders, the distiller (student, methods, teachers), the device.
    ``kdkit.build.build`` makes them from a config."""

    loaders: Loaders
    distiller: Distiller
    device: torch.device
    transforms: list[Transform] = field(default_factory=list)  # applied to the student, recorded when saved


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
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.built = built
        self.distiller, self.loaders, self.device = self.built.distiller, self.built.loaders, self.built.device
        self.optimizer = make_optimizer(cfg, self.distiller.parameters(), self.device)
        self.callbacks = list(callbacks)
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
        if self.dist.enabled:  # the default name holds the time: take rank 0's
            self.run_dir = Path(distributed.broadcast_object(str(self.run_dir), self.dist))
        self.write_files = write_files and main
        self.model = self._wrap(self.distiller)
        self.cache = None
        self.epoch = 0  # epochs completed
        self.step = 0
        self.best = -1.0
        self.history: list[dict[str, Any]] = []
        self._tb = None
        use_amp = cfg.train.amp and self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    def _wrap(self, distiller: torch.nn.Module) -> torch.nn.Module:
        """What a training step calls: the distiller, in DDP when distributed, compiled when asked."""
        t = self.cfg.train
        model: torch.nn.Module = distiller
        if t.compile != "none" or t.compile_teacher:
            distiller.pin_taps()
        if t.compile_teacher:
            distiller.teachers[:] = [self._compile(m) for m in distiller.teachers]
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # a method with a preliminary stage trains only some helpers in it
            model = DDP(distiller, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                        find_unused_parameters=distiller.pretrain_epochs > 0)
        if t.compile != "none":
            model = self._compile(model)
        return model

    def _compile(self, module: torch.nn.Module) -> torch.nn.Module:
        t = self.cfg.train
        kwargs: dict[str, Any] = {"backend": t.compile_backend}
        if t.compile not in ("none", "default") and t.compile_backend == "inductor":
            kwargs["mode"] = t.compile
        return torch.compile(module, **kwargs)

    @property
    def total_epochs(self) -> int:
        return self.distiller.pretrain_epochs + self.cfg.train.epochs

    # ------------------------------------------------------------------------------------ resume
    def load_state(self, ckpt: dict[str, Any]) -> None:
        self.distiller.load_state_dict(ckpt["distiller"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch, self.step, self.best = ckpt["epoch"], ckpt["step"], ckpt.get("best", -1.0)
        self.loaders.train.load_state_dict(ckpt["loader"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    def state(self) -> dict[str, Any]:
        ds, spec = self.loaders.dataset, self.cfg.model
        return {
            "format": FORMAT, "version": VERSION,
            "config": config_dict(self.cfg),
            "model": model_record(spec.name, ds.num_classes, ds.in_channels, spec.kwargs,
                                  records(self.distiller.student, self.built.transforms)),
            "student": self.distiller.student.state_dict(),
            "distiller": self.distiller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "step": self.step, "best": self.best,
            "loader": self.loaders.train.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "metrics": self.history[-1] if self.history else {},
        }

    # ------------------------------------------------------------------------------------ training
    def fit(self) -> dict[str, Any]:
        if self.write_files:
            self._prepare_run_dir()
        distributed.barrier(self.dist)  # the run directory exists before any rank writes into it
        if self.cfg.train.teacher_cache is not None and self.cache is None:
            self._build_cache()
        try:
            while self.epoch < self.total_epochs:
                metrics = self._train_epoch(self.epoch)
                distributed.broadcast_buffers(self.distiller, self.dist)  # evaluate and save rank 0's
                self.epoch += 1
                metrics.update(self._evaluate_epoch())
                self._end_epoch(metrics)
            final = {f"test/{k}": v for k, v in self.evaluate(self.loaders.test).items()}
            final["epoch"] = self.epoch
            self._write_metrics({"final": True, **final})
            self.log(f"test: top1 {final['test/top1']:.2f}%" + (
                f", agreement with teacher {final['test/agreement']:.2f}%" if "test/agreement" in final else ""))
            return {**(self.history[-1] if self.history else {}), **final}
        finally:
            if self._tb is not None:
                self._tb.close()

    def _prepare_run_dir(self) -> None:
        ckpt = self.run_dir / "checkpoint.pt"
        if self.epoch == 0 and ckpt.exists():
            raise ConfigError(f"{self.run_dir} already holds a run; resume it with --resume {self.run_dir} "
                              "or choose another --out / train.run_name")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_yaml(self.cfg))
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
        self.cache.fill(self.distiller, self.loaders.train, self.autocast,
                        progress=self.cfg.train.progress and self.dist.is_main)
        if shared_disk and self.dist.is_main:
            distributed.barrier(self.dist)
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
        d.train()
        steps = len(loader)
        stage = "stage 1" if epoch < d.pretrain_epochs else "train"
        bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{self.total_epochs} {stage}", leave=False,
                   disable=None if self.cfg.train.progress and self.dist.is_main else True, dynamic_ncols=True)
        names: list[str] = []
        sums = first_bad = None  # per term: summed value, and the first step at which it was not finite
        every = self.cfg.train.log_every
        t0 = time.perf_counter()
        lr = lr_at(self.cfg, epoch, 0, steps, d.pretrain_epochs)
        for i, (x, y, idx) in enumerate(bar):
            lr = lr_at(self.cfg, epoch, i, steps, d.pretrain_epochs)
            terms, values = self.train_step(x, y, idx, epoch, lr)
            if sums is None:
                names = list(terms)
                sums = torch.zeros_like(values)
                first_bad = torch.full(values.shape, NEVER, dtype=torch.int64, device=values.device)
            sums += values
            first_bad = torch.where(torch.isfinite(values), first_bad, first_bad.clamp(max=self.step))
            if (i + 1) % every == 0 or i + 1 == steps:
                means = self._read_sums(names, sums, first_bad, i + 1, epoch)
                if bar.disable is False:
                    bar.set_postfix(loss=f"{sum(means.values()):.4f}", lr=f"{lr:.4g}")
        bar.close()
        metrics: dict[str, Any] = {"epoch": epoch + 1, "stage": stage, "lr": lr,
                                   "time/train_s": time.perf_counter() - t0}
        vals = means if sums is not None else {}
        metrics["train/loss"] = sum(vals.values())
        metrics.update({f"train/{k}": v for k, v in vals.items()})
        return metrics

    def train_step(self, x: Tensor, y: Tensor, idx: Tensor, epoch: int,
                   lr: float) -> tuple[dict[str, Tensor], Tensor]:
        """One optimisation step; returns the loss terms and their detached values stacked (on the device,
        not read: reading them would synchronise with the device)."""
        opt = self.optimizer
        for group in opt.param_groups:
            group["lr"] = lr
        with self.autocast():
            terms = self.model(x, y, idx, epoch=epoch, teacher=self._teacher(x, idx))
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
            raise NonFiniteLossError(names[j], means[names[j]], epoch, int(bad_at[j]))
        return means

    def _evaluate_epoch(self) -> dict[str, Any]:
        loader = self.loaders.val
        if loader is None or self.epoch % self.cfg.train.eval_every and self.epoch < self.total_epochs:
            return {}
        return {f"val/{k}": v for k, v in self.evaluate(loader).items()}

    def _end_epoch(self, metrics: dict[str, Any]) -> None:
        if self.dist.enabled:
            metrics["ddp/world_size"] = self.dist.world_size
            metrics["ddp/replicas_identical"] = distributed.replicas_identical(self.distiller, self.dist)
            if not metrics["ddp/replicas_identical"]:
                raise KdkitError(f"after epoch {metrics['epoch']} the ranks hold different weights; "
                                 "stopping before a diverged checkpoint is written")
        self.history.append(metrics)
        top1 = metrics.get("val/top1")
        improved = top1 is not None and top1 > self.best
        if improved:
            self.best = top1
        if self.write_files:
            state = self.state()
            save_atomic(state, self.run_dir / "checkpoint.pt")
            if improved or (top1 is None and self.epoch == self.total_epochs):
                save_atomic(state, self.run_dir / "best.pt")
            self._write_metrics(metrics)
        terms = ", ".join(f"{k[6:]} {v:.4f}" for k, v in metrics.items()
                          if k.startswith("train/") and k != "train/loss")
        val = f"  val top1 {top1:.2f}%" if top1 is not None else ""
        self.log(f"epoch {metrics['epoch']}/{self.total_epochs}  loss {metrics['train/loss']:.4f} ({terms})"
                 f"{val}  lr {metrics['lr']:.4g}  {metrics['time/train_s']:.1f}s")
        for cb in self.callbacks:
            cb(self, self.epoch, metrics)

    def _write_metrics(self, metrics: dict[str, Any]) -> None:
        if not self.write_files:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir))
        for k, v in metrics.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch":
                self._tb.add_scalar(k, v, metrics.get("epoch", self.epoch))
        self._tb.flush()

    # ------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        return evaluate(self.distiller.student, loader, self.distiller.teachers, self.autocast, self.dist)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, teachers: Sequence[torch.nn.Module] = (),
             autocast: Callable = nullcontext, dist_info: distributed.DistInfo | None = None) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%), mean cross-entropy, and (with teachers) % agreement of the
    student's prediction with the teachers' (mean-logit) prediction. Distributed: each rank evaluates
    its shard of ``loader`` and the counts are summed over ranks. Counts stay on the device until the end."""
    was_training = model.training
    model.eval()
    counts = None  # n, top1, top5, summed loss, agreement
    for x, y, _ in loader:
        with autocast():
            logits = model(x).float()
            t_logits = torch.stack([t(x).float() for t in teachers]).mean(0) if teachers else None
        k = min(5, logits.shape[1])
        pred = logits.topk(k, dim=1).indices
        batch = torch.stack([
            torch.tensor(float(len(y)), device=logits.device),
            (pred[:, 0] == y).sum().float(),
            (pred == y[:, None]).any(1).sum().float(),
            F.cross_entropy(logits, y, reduction="sum"),
            (t_logits.argmax(1) == pred[:, 0]).sum().float() if t_logits is not None else logits.new_zeros(()),
        ]).double()
        counts = batch if counts is None else counts + batch
    model.train(was_training)
    if counts is None:
        counts = torch.zeros(5, dtype=torch.float64)
    if dist_info is not None:
        counts = distributed.all_reduce(counts, dist_info)
    n, top1, top5, loss, agree = counts.tolist()
    out = {"top1": 100.0 * top1 / max(n, 1), "top5": 100.0 * top5 / max(n, 1), "loss": loss / max(n, 1)}
    if teachers:
        out["agreement"] = 100.0 * agree / max(n, 1)
    return out
