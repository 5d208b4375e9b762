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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..build import Built, build
from ..config import RunConfig, dump_yaml, parse_config, to_dict
from ..errors import ConfigError, KdkitError, NonFiniteLossError
from .checkpoint import FORMAT, VERSION, load_checkpoint, model_record, save_atomic

Callback = Callable[["Trainer", int, dict[str, Any]], None]


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in params if p.requires_grad]
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                               weight_decay=o.weight_decay)
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


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
        [cfg.data.name, cfg.model.name, "+".join(m.method_name for m in cfg.method), time.strftime("%Y%m%d-%H%M%S")])
    return Path(cfg.train.out_dir) / name


class Trainer:
    """Trains ``built.distiller`` on ``built.loaders`` as ``cfg`` says.

    >>> trainer = Trainer(cfg)            # builds data, models and methods from the config
    >>> result = trainer.fit()            # {"epoch": ..., "val/top1": ..., "test/top1": ...}
    """

    def __init__(self, cfg: RunConfig, built: Built | None = None, run_dir: str | Path | None = None,
                 callbacks: Sequence[Callback] = (), log: Callable[[str], None] | None = None,
                 write_files: bool = True):
        self.cfg = cfg
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        if cfg.train.deterministic:
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.built = built or build(cfg)
        self.distiller, self.loaders, self.device = self.built.distiller, self.built.loaders, self.built.device
        self.optimizer = make_optimizer(cfg, self.distiller.parameters())
        self.callbacks = list(callbacks)
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
        self.write_files = write_files
        self.epoch = 0  # epochs completed
        self.step = 0
        self.best = -1.0
        self.history: list[dict[str, Any]] = []
        self._tb = None
        use_amp = cfg.train.amp and self.device.type == "cuda"
        self.autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext

    @property
    def total_epochs(self) -> int:
        return self.distiller.pretrain_epochs + self.cfg.train.epochs

    # ------------------------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, run_dir: str | Path, **kwargs: Any) -> Trainer:
        """Continue the run in ``run_dir`` from its last checkpoint, with the config it was started with."""
        run_dir = Path(run_dir)
        ckpt = load_checkpoint(run_dir / "checkpoint.pt" if run_dir.is_dir() else run_dir)
        if "optimizer" not in ckpt or "config" not in ckpt:
            raise KdkitError(f"{run_dir} holds a model-only checkpoint, which cannot be resumed")
        cfg = parse_config(ckpt["config"])
        trainer = cls(cfg, run_dir=run_dir if run_dir.is_dir() else run_dir.parent, **kwargs)
        trainer.load_state(ckpt)
        return trainer

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
            "config": to_dict(self.cfg),
            "model": model_record(spec.name, ds.num_classes, ds.in_channels, spec.kwargs),
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
        try:
            while self.epoch < self.total_epochs:
                metrics = self._train_epoch(self.epoch)
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

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        d, loader, opt = self.distiller, self.loaders.train, self.optimizer
        d.train()
        steps = len(loader)
        stage = "stage 1" if epoch < d.pretrain_epochs else "train"
        bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{self.total_epochs} {stage}", leave=False,
                   disable=None if self.cfg.train.progress else True, dynamic_ncols=True)
        sums: dict[str, Tensor] = {}
        t0 = time.perf_counter()
        for i, (x, y, idx) in enumerate(bar):
            lr = lr_at(self.cfg, epoch, i, steps, d.pretrain_epochs)
            for group in opt.param_groups:
                group["lr"] = lr
            with self.autocast():
                terms = d(x, y, idx, epoch=epoch)
            loss = sum(terms.values())
            self._check_finite(loss, terms, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(d.parameters(), self.cfg.train.grad_clip)
            opt.step()
            self.step += 1
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            if i % 10 == 0 and bar.disable is False:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.4g}")
        bar.close()
        metrics: dict[str, Any] = {"epoch": epoch + 1, "stage": stage, "lr": lr,
                                   "time/train_s": time.perf_counter() - t0}
        vals = {k: (v / steps).item() for k, v in sums.items()}
        metrics["train/loss"] = sum(vals.values())
        metrics.update({f"train/{k}": v for k, v in vals.items()})
        return metrics

    def _check_finite(self, loss: Tensor, terms: dict[str, Tensor], epoch: int) -> None:
        if torch.isfinite(loss).item():
            return
        bad = next((k for k, v in terms.items() if not torch.isfinite(v).item()), "total")
        raise NonFiniteLossError(bad, float(terms.get(bad, loss).item()), epoch, self.step)

    def _evaluate_epoch(self) -> dict[str, Any]:
        loader = self.loaders.val
        if loader is None or self.epoch % self.cfg.train.eval_every and self.epoch < self.total_epochs:
            return {}
        return {f"val/{k}": v for k, v in self.evaluate(loader).items()}

    def _end_epoch(self, metrics: dict[str, Any]) -> None:
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
        return evaluate(self.distiller.student, loader, self.distiller.teachers, self.autocast)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, teachers: Sequence[torch.nn.Module] = (),
             autocast: Callable = nullcontext) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%), mean cross-entropy, and (with teachers) % agreement of the
    student's prediction with the teachers' (mean-logit) prediction."""
    was_training = model.training
    model.eval()
    n, top1, top5, loss, agree = 0, 0.0, 0.0, 0.0, 0.0
    for x, y, _ in loader:
        with autocast():
            logits = model(x).float()
            t_logits = torch.stack([t(x).float() for t in teachers]).mean(0) if teachers else None
        k = min(5, logits.shape[1])
        pred = logits.topk(k, dim=1).indices
        top1 += (pred[:, 0] == y).sum().item()
        top5 += (pred == y[:, None]).any(1).sum().item()
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        if t_logits is not None:
            agree += (t_logits.argmax(1) == pred[:, 0]).sum().item()
        n += len(y)
    model.train(was_training)
    out = {"top1": 100.0 * top1 / max(n, 1), "top5": 100.0 * top5 / max(n, 1), "loss": loss / max(n, 1)}
    if teachers:
        out["agreement"] = 100.0 * agree / max(n, 1)
    return out
