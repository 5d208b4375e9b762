"""``kdkit bench``: steady-state training speed of a teacher/student/method/dataset, against baselines.

Three loops can be timed in one run, on the same device, over the same number of steps:

- **kdkit**: the real :class:`~kdkit.engine.trainer.Trainer` step (in-memory data on the device, batch
  augmentation, bf16 autocast and channels_last on CUDA, teacher in inference mode, fused optimizer, no
  host synchronisation per step; ``--compile`` adds ``torch.compile``);
- **reference** (``--reference``): the loop of the common CIFAR distillation repositories: a
  ``DataLoader`` with per-image transforms in worker processes, fp32, no compile, the teacher under
  ``no_grad`` and the loss read with ``.item()`` every step (running averages);
- **minimal** (``--minimal``, ``kd`` and ``vanilla`` only): a hand-written PyTorch loop over the same
  device tensors with the same batch augmentation and loss and nothing else. kdkit's time over it is
  the framework's own overhead.

Each loop runs ``--warmup`` steps, then ``--steps`` timed steps, ``--repeats`` times in turn (so that
drifting machine load hits every loop alike); the median repeat is reported. Reported per loop: images
per second, milliseconds per step, seconds per epoch (training-set size / throughput, evaluation not
included), achieved TFLOP/s and model FLOPs utilisation (FLOPs of one step counted with
``torch.utils.flop_counter`` over the forward and backward passes, divided by the device's peak dense
bf16 rate on known GPUs, or ``--peak-tflops``), and peak memory (CUDA: allocator peak; CPU: the process's
peak resident set, which includes the dataset).
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import load_config
from .errors import ConfigError
from .methods import method_name

# name -> (channels, height, width, classes, training images, crop padding, flip)
SHAPES = {
    "cifar10": (3, 32, 32, 10, 50_000, 4, True),
    "cifar100": (3, 32, 32, 100, 50_000, 4, True),
    "mnist": (1, 28, 28, 10, 60_000, 2, False),
    "fashion_mnist": (1, 28, 28, 10, 60_000, 2, True),
    "digits": (1, 8, 8, 10, 1_437, 0, False),
}

# dense bf16 tensor-core peak (no sparsity), TFLOP/s, from the vendors' data sheets
PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4, "H200": 989.4,
               "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "RTX 4090": 165.2}


def synthetic_dataset(name: str, seed: int = 0):
    """Random uint8 images and labels with the shape, size and augmentation of dataset ``name``."""
    from .data.base import Dataset, ImageSet

    if name not in SHAPES:
        raise ConfigError(f"--synthetic knows {', '.join(SHAPES)}; got '{name}'")
    c, h, w, k, n, pad, flip = SHAPES[name]
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, k, (n,), generator=g)
    test = ImageSet(labels[:1000], images=imgs[:1000])
    return Dataset(f"synthetic-{name}", ImageSet(labels, images=imgs), test, k, c, (h, w), (0.5,) * c,
                   (0.25,) * c, crop_padding=pad, flip=flip)


def peak_tflops(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, platform.processor() or platform.machine()
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key], name
    return None, name


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def count_flops(step: Callable[[], Any]) -> float:
    """FLOPs of one call of ``step`` (forward and backward passes of every model in it)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def _cycle(loader):
    while True:
        yield from loader


# ---------------------------------------------------------------------------------------------- loops
class KdkitLoop:
    name = "kdkit"

    def __init__(self, cfg, dataset, device):
        from .build import build
        from .engine.trainer import Trainer

        built = build(cfg, device, dataset=dataset, load_teachers=False)
        self.trainer = Trainer(cfg, built, write_files=False, log=lambda m: None)
        self.trainer.distiller.enter_stage(self.trainer.distiller.pretrain_epochs)  # the main stage, outside compile
        self.trainer.distiller.train()
        self.batches = _cycle(self.trainer.loaders.train)
        self.device, self.lr = built.device, cfg.optim.lr

    def step(self) -> None:
        x, y, idx = next(self.batches)
        self.trainer.train_step(x, y, idx, epoch=self.trainer.distiller.pretrain_epochs, lr=self.lr)


class ReferenceLoop:
    """DataLoader with per-image transforms and workers, fp32, per-step ``.item()``."""

    name = "reference"

    def __init__(self, cfg, dataset, device, workers: int):
        from .build import build

        cfg.train.amp, cfg.train.channels_last, cfg.train.compile = False, False, "none"
        cfg.data.pipeline, cfg.data.num_workers = "dataloader", workers
        built = build(cfg, device, dataset=dataset, load_teachers=False)
        self.distiller, self.device = built.distiller.train(), built.device
        # plain torch SGD with its defaults, as the reference repositories use (the bench's recipe is SGD)
        self.opt = torch.optim.SGD([p for p in self.distiller.parameters() if p.requires_grad], lr=cfg.optim.lr,
                                   momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)
        self.loader = built.loaders.train
        self.batches = _cycle(self.loader)
        self.running = 0.0
        self.epoch = self.distiller.pretrain_epochs
        self.distiller.enter_stage(self.epoch)

    def step(self) -> None:
        x, y, idx = next(self.batches)
        teacher = self.distiller.teacher_outputs(x, inference_mode=False)  # under no_grad
        terms = self.distiller(x, y, idx, epoch=self.epoch, teacher=teacher)
        loss = sum(terms.values())
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.running += loss.item()  # the usual running-average meter: a host sync every step


class MinimalLoop:
    """Hand-written KD (or plain) training over the same device tensors, nothing else."""

    name = "minimal"

    def __init__(self, cfg, dataset, device):
        from .build import build, use_channels_last

        method = cfg.method[0]
        if len(cfg.method) != 1 or method_name(method) not in ("kd", "vanilla"):
            raise ConfigError("--minimal is a hand-written KD loop: use --method kd or vanilla")
        built = build(cfg, device, dataset=dataset, load_teachers=False)
        self.device = built.device
        self.student = built.distiller.student.train()
        self.teacher = built.distiller.teachers[0] if built.distiller.teachers else None
        self.T, self.alpha = (method.temperature, method.alpha) if method_name(method) == "kd" else (1.0, 0.0)
        self.opt = torch.optim.SGD(self.student.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                   weight_decay=cfg.optim.weight_decay,
                                   **({"fused": True} if self.device.type == "cuda" else {"foreach": True}))
        self.images = dataset.train.images.to(self.device)
        self.labels = dataset.train.labels.to(self.device)
        self.mean = torch.tensor(dataset.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(dataset.std, device=self.device).view(1, -1, 1, 1)
        self.pad, self.flip, self.bs = dataset.crop_padding, dataset.flip, cfg.data.batch_size
        self.cl = use_channels_last(cfg, self.device)
        self.amp = cfg.train.amp and self.device.type == "cuda"
        self.gen = torch.Generator(device=self.device if self.device.type == "cuda" else "cpu").manual_seed(0)
        self.perm, self.pos = None, 0

    def _batch(self):
        n, b = len(self.labels), self.bs
        if self.perm is None or self.pos + b > n:
            self.perm, self.pos = torch.randperm(n, generator=self.gen, device=self.gen.device), 0
        idx = self.perm[self.pos:self.pos + b].to(self.device)
        self.pos += b
        x = self.images[idx].float() / 255
        if self.pad:
            p, (h, w) = self.pad, x.shape[-2:]
            xp = F.pad(x, (p, p, p, p))
            dy, dx = torch.randint(0, 2 * p + 1, (2, b, 1), generator=self.gen, device=self.gen.device).to(self.device)
            r = (dy + torch.arange(h, device=self.device))[:, None, :, None]
            c = (dx + torch.arange(w, device=self.device))[:, None, None, :]
            x = xp[torch.arange(b, device=self.device)[:, None, None, None],
                   torch.arange(x.shape[1], device=self.device)[None, :, None, None], r, c]
        if self.flip:
            f = (torch.rand(b, generator=self.gen, device=self.gen.device) < 0.5).to(self.device)
            x = torch.where(f[:, None, None, None], x.flip(3), x)
        x = (x - self.mean) / self.std
        if self.cl:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]

    def step(self) -> None:
        x, y = self._batch()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            logits = self.student(x).float()
            loss = (1 - self.alpha) * F.cross_entropy(logits, y)
            if self.teacher is not None and self.alpha > 0:
                with torch.inference_mode():
                    t = self.teacher(x).float()
                t = t.clone()
                kl = F.kl_div(F.log_softmax(logits / self.T, 1), F.softmax(t / self.T, 1), reduction="batchmean")
                loss = loss + self.alpha * self.T * self.T * kl
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


# ---------------------------------------------------------------------------------------------- driver
def _time(loop, steps: int, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loop.step()
    _sync(device)
    return time.perf_counter() - t0


def run_bench(teacher: str | None, student: str, method: str, dataset: str, *, synthetic: bool = True,
              batch_size: int = 64, steps: int = 50, warmup: int = 10, repeats: int = 3,
              reference: bool = False, minimal: bool = False, compile_mode: str = "none", device: str = "auto",
              workers: int = 4, peak: float | None = None, data_root: str | None = None,
              ghost_batch_size: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    from .build import pick_device
    from .data import load_dataset

    dev = pick_device(device)
    base: dict[str, Any] = {
        "model": student, "method": method,
        "data": {"name": "digits" if synthetic else dataset, "batch_size": batch_size, "root": data_root,
                 "val_fraction": 0.0},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "constant"},
        "train": {"epochs": 1, "progress": False, "device": str(dev), "compile": compile_mode},
    }
    if teacher:
        base["teacher"] = {"name": teacher}
    cfg = load_config(base=base)  # validates the options before any data is made
    ds = synthetic_dataset(dataset) if synthetic else load_dataset(cfg.data)
    n_train = len(ds.train)
    # the large-batch recipe's ghost batch norm is kdkit's: the minimal and reference loops keep plain BN
    kdkit_base = {**base, "train": {**base["train"], "ghost_batch_size": ghost_batch_size}}
    loops = [KdkitLoop(load_config(base=kdkit_base), ds, dev)]
    if minimal:
        loops.append(MinimalLoop(load_config(base=base), ds, dev))
    if reference:
        loops.append(ReferenceLoop(load_config(base=base), ds, dev, workers))
    # FLOPs of one step, counted on an eager kdkit step (the counter does not see into compiled graphs)
    flops = count_flops((loops[0] if compile_mode == "none" else
                         KdkitLoop(load_config(base={**kdkit_base,
                                                     "train": {**kdkit_base["train"], "compile": "none"}}),
                                   ds, dev)).step)
    peak_tf, device_name = peak_tflops(dev)
    peak_tf = peak if peak is not None else peak_tf
    for loop in loops:
        log(f"warming up {loop.name} ({warmup} steps)")
        _time(loop, warmup, dev)
    times: dict[str, list[float]] = {loop.name: [] for loop in loops}
    for r in range(repeats):
        for loop in loops:
            times[loop.name].append(_time(loop, steps, dev))
            log(f"repeat {r + 1}/{repeats} {loop.name}: {steps * batch_size / times[loop.name][-1]:.0f} images/s")
    results: dict[str, Any] = {}
    for loop in loops:
        t = statistics.median(times[loop.name]) / steps
        ips = batch_size / t
        tflops = flops / t / 1e12
        results[loop.name] = {
            "images_per_s": round(ips, 1), "ms_per_step": round(1000 * t, 3),
            "s_per_epoch": round(n_train // batch_size * t, 2), "achieved_tflops": round(tflops, 3),
            "mfu": round(tflops / peak_tf, 4) if peak_tf else None,
            "repeat_s": [round(v, 4) for v in times[loop.name]], **_peak_memory(dev)}
    out: dict[str, Any] = {
        "teacher": teacher, "student": student, "method": method, "dataset": dataset, "synthetic": synthetic,
        "batch_size": batch_size, "train_images": n_train, "steps": steps, "warmup": warmup, "repeats": repeats,
        "compile": compile_mode, "ghost_batch_size": ghost_batch_size, "device": str(dev),
        "device_name": device_name, "peak_tflops": peak_tf, "flops_per_step": flops, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "results": results,
    }
    if "reference" in results:
        out["speedup_vs_reference"] = round(results["reference"]["ms_per_step"] / results["kdkit"]["ms_per_step"], 3)
    if "minimal" in results:
        out["overhead_vs_minimal"] = round(results["kdkit"]["ms_per_step"] / results["minimal"]["ms_per_step"] - 1, 4)
    return out


def format_bench(r: dict[str, Any]) -> str:
    head = (f"{r['method']}: {r['teacher']} -> {r['student']} on {'synthetic ' if r['synthetic'] else ''}"
            f"{r['dataset']}, batch {r['batch_size']}, {r['device_name']} ({r['device']}), torch {r['torch']}")
    lines = [head, f"FLOPs per step: {r['flops_per_step'] / 1e9:.2f} GFLOP; peak: "
             f"{r['peak_tflops'] if r['peak_tflops'] else 'unknown (pass --peak-tflops)'} TFLOP/s", "",
             f"{'loop':<10}{'images/s':>12}{'ms/step':>10}{'s/epoch':>10}{'TFLOP/s':>10}{'MFU':>8}{'peak mem GiB':>14}"]
    for name, v in r["results"].items():
        mem = v.get("peak_memory_gib", v.get("peak_rss_gib"))
        mfu = f"{100 * v['mfu']:.1f}%" if v["mfu"] is not None else "-"
        lines.append(f"{name:<10}{v['images_per_s']:>12.0f}{v['ms_per_step']:>10.2f}{v['s_per_epoch']:>10.2f}"
                     f"{v['achieved_tflops']:>10.3f}{mfu:>8}{mem:>14.2f}")
    if "speedup_vs_reference" in r:
        lines.append(f"kdkit vs reference: {r['speedup_vs_reference']:.2f}x faster")
    if "overhead_vs_minimal" in r:
        lines.append(f"kdkit vs minimal loop: {100 * r['overhead_vs_minimal']:+.1f}% time per step")
    return "\n".join(lines)


def default_out(r: dict[str, Any], out_dir: str | Path = "runs/bench") -> Path:
    """``<out_dir>/bench-<dataset>-<teacher>-<student>-<method>-b<batch>-<device>[...].json``: under the
    runs folder by default, never over the repository's tracked results unless ``--out`` says so."""
    dev = "cuda" if r["device"].startswith("cuda") else "cpu"
    parts = ["bench", r["dataset"], str(r["teacher"]), r["student"], r["method"], f"b{r['batch_size']}", dev]
    if r["compile"] != "none":
        parts.append(r["compile"])
    if r.get("ghost_batch_size"):
        parts.append(f"ghost{r['ghost_batch_size']}")
    if not r["synthetic"]:
        parts.append("real")
    return Path(out_dir) / ("-".join(parts) + ".json")


def write_json(r: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(r, indent=1) + "\n")
    tmp.replace(path)


__all__ = ["run_bench", "format_bench", "synthetic_dataset", "count_flops", "SHAPES", "PEAK_TFLOPS"]
