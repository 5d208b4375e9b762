"""The beyond table (issue 32, docs/results/fashion_mnist_beyond.md): each of issue 32's topics against its
natural baseline on Fashion-MNIST, 3 seeds, mean ± std.

    python benchmarks/beyond_table.py               # resumable; runs in /work/kdkit_runs/beyond
    python benchmarks/beyond_table.py --write-only  # the table from the jobs finished so far

- lifelong: Split-Fashion-MNIST (5 tasks of 2 classes), LwF against fine-tuning and joint training;
- data-free: KD into cnn_tiny from DeepInversion images of the teacher, against KD on as many random real
  images and on the regime's 10,000 real images;
- dataset distillation: fresh cnn_small networks trained on a distribution-matching set and on a random real
  subset of the same size, at 1 and 10 images per class;
- binarization: a binary cnn_small by ReActNet's two steps with KD, against the same binary network trained
  from scratch on the labels (and the full-precision cnn_small beside them);
- weight sharing: the teacher's weights clustered into 2^b values, before and after KD fine-tuning of the
  palettes, against the unshared teacher; size against bits.

The teacher is the offline table's (benchmarks/sweep_tables.py: cnn_medium, 10 epochs on the whole
training split), trained here by the same recipe into the same folder when it is not there yet. Every job
(a run, a synthesis, a condensation) writes its result into ``<out>/results/<job>.json`` once finished;
the command skips those, and an interrupted training run resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from gan_table import mean_std
from sweep_tables import PAUSES, base_recipe, train_once

from kdkit.atomic import write_atomic
from kdkit.sweep.compare import markdown_table

SECTIONS = ("lifelong", "datafree", "condense", "binarize", "share")


def verdict(name: str, base: str, a: list[float], b: list[float], higher_better: bool = True) -> str:
    """One plain sentence: does ``a`` beat ``b`` by more than the seeds' spread (the larger std)?"""
    if not a or not b:
        return f"- {name} against {base}: not measured yet."
    diff = statistics.mean(a) - statistics.mean(b)
    spread = max(statistics.stdev(v) if len(v) > 1 else 0.0 for v in (a, b))
    if abs(diff) <= spread:
        word = "no clear difference from"
    else:
        word = "better than" if (diff > 0) == higher_better else "worse than"
    return f"- {name}: {word} {base} ({diff:+.2f}; the larger std over seeds is {spread:.2f})."


class Jobs:
    """Each job's result kept as ``<out>/results/<name>.json`` with the seconds the job took (wall and CPU)."""

    def __init__(self, out: Path, read_only: bool, say: Callable[[str], None]):
        self.dir, self.read_only, self.say = out / "results", read_only, say
        self.dir.mkdir(parents=True, exist_ok=True)
        self.on_done: Callable[[], None] = lambda: None

    def get(self, name: str) -> dict[str, Any] | None:
        path = self.dir / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def run(self, name: str, work: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        done = self.get(name)
        if done is not None or self.read_only:
            return done
        self.say(f"{name} ...")
        t0, cpu0 = time.time(), time.process_time()
        result = {**work(), "seconds": time.time() - t0, "cpu_seconds": time.process_time() - cpu0}
        write_atomic(self.dir / f"{name}.json", lambda f: f.write(json.dumps(result, indent=1).encode()))
        self.on_done()
        return result

    def seconds(self) -> float:
        return sum(json.loads(p.read_text()).get("seconds", 0.0) for p in self.dir.glob("*.json"))

    def cpu_clause(self) -> str:
        """The cost line's CPU time (this process's own over each job, all its threads: no pause or other load
        in it), over the jobs that recorded it (those run since 2026-12-07); empty while none has."""
        done = [json.loads(p.read_text()) for p in self.dir.glob("*.json")]
        cpu = [j["cpu_seconds"] for j in done if j.get("cpu_seconds") is not None]
        if not cpu:
            return ""
        return (f"; CPU time {sum(cpu) / 3600:.2f} h over the {len(cpu)} of {len(done)} jobs that recorded it "
                "(the process's own CPU time: no pause or other load in it)")


def student(args: argparse.Namespace, model: Any, epochs: int, teacher: Path | None, seed: int) -> dict[str, Any]:
    """The offline table's student recipe (its 10,000 images, replayed views, teacher cache: on disk in
    ``<out>/teacher_cache``, shared by this table's runs) for ``model``."""
    ns = SimpleNamespace(dataset=args.dataset, student=model, limit_train=args.limit_train, replay_views=4,
                         threads=args.threads, device=args.device, teacher="cnn_medium", out=args.out)
    r = base_recipe(ns, epochs, teacher)
    r["train"]["seed"] = seed
    return r


def trained(jobs: Jobs, out: Path, name: str, recipe: dict[str, Any], costs: bool = False) -> dict[str, Any] | None:
    """A training job: its final test metrics (and with ``costs`` its network's :func:`sizes`)."""
    def work() -> dict[str, Any]:
        rows = train_once(recipe, out / "runs" / name)
        return {"test_top1": rows[-1]["test/top1"], "run": str(out / "runs" / name),
                **({"costs": sizes(out / "runs" / name)} if costs else {})}
    return jobs.run(name, work)


def lifelong_jobs(args, jobs: Jobs) -> None:
    from kdkit.lifelong import lifelong

    for method in ("finetune", "lwf", "joint"):
        for seed in args.seeds:
            jobs.run(f"lifelong-{method}-s{seed}", lambda m=method, s=seed: lifelong(
                args.dataset, "cnn_tiny", m, None, args.lifelong_epochs, seed=s, limit_train=args.limit_train))


def small_set_recipe(args, train_file: str, model: Any, method: dict[str, Any], teacher: Path | None, seed: int,
                     images: int) -> dict[str, Any]:
    """Training on a small file (``data.train_file``): ``args.small_steps`` steps of batch min(images, 100),
    evaluated on the real test split at the end only."""
    batch = min(images, 100)
    epochs = max(1, args.small_steps * batch // images)
    r: dict[str, Any] = {
        "model": model, "method": method,
        "data": {"name": args.dataset, "train_file": train_file, "val_fraction": 0.0, "batch_size": batch},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "train": {"epochs": epochs, "seed": seed, "progress": False, "threads": args.threads, "device": args.device,
                  "eval_every": epochs},
    }
    if teacher is not None:
        r["teacher"] = {"name": "cnn_medium", "checkpoint": str(teacher)}
    return r


def datafree_jobs(args, jobs: Jobs, out: Path, teacher: Path) -> None:
    from kdkit.condense import condense
    from kdkit.synthesize import synthesize

    kd_only = {"name": "kd", "alpha": 1.0, "temperature": 4.0}  # the images' own targets are not labels
    n = args.di_images
    for seed in args.seeds:
        trained(jobs, out, f"datafree-kd-real-s{seed}", {**student(args, "cnn_tiny", args.epochs, teacher, seed),
                                                          "method": {"name": "kd", "alpha": 0.9, "temperature": 4.0}})
        di = out / "files" / f"deepinversion-{n}-it{args.di_iterations}-s{seed}.safetensors"
        r = jobs.run(f"datafree-synthesize-s{seed}", lambda s=seed, f=di: {
            k: v for k, v in synthesize(teacher, n, n, args.di_iterations, seed=s, out=f).items()
            if k in ("teacher_top1", "out")})
        real = out / "files" / f"random-{n}-s{seed}.safetensors"
        jobs.run(f"datafree-random-s{seed}", lambda s=seed, f=real: {
            "out": str(condense(args.dataset, n // 10, 0, seed=s, out=f)["out"])})
        if r is None:
            continue
        for kind, f in (("synthetic", di), ("random", real)):
            trained(jobs, out, f"datafree-kd-{kind}{n}-s{seed}",
                    small_set_recipe(args, str(f), "cnn_tiny", kd_only, teacher, seed, n))


def condense_jobs(args, jobs: Jobs, out: Path) -> None:
    from kdkit.condense import condense

    for ipc in (1, 10):
        for seed in args.seeds:
            for kind, iterations in (("random", 0), ("dm", args.condense_iterations)):
                f = out / "files" / f"condense-{kind}-ipc{ipc}-it{iterations}-s{seed}.safetensors"
                r = jobs.run(f"condense-{kind}-ipc{ipc}-s{seed}", lambda i=ipc, s=seed, it=iterations, f=f: {
                    k: v for k, v in condense(args.dataset, i, it, batch_real=args.batch_real, seed=s,
                                              out=f).items() if k in ("held_out_before", "held_out_after", "out")})
                if r is not None:
                    trained(jobs, out, f"condense-train-{kind}-ipc{ipc}-s{seed}",
                            small_set_recipe(args, str(f), "cnn_small", {"name": "vanilla"}, None, seed, ipc * 10))


def binarize_jobs(args, jobs: Jobs, out: Path, teacher: Path) -> None:
    e = args.binary_epochs
    adam = lambda wd: {"name": "adamw", "lr": 1e-3, "weight_decay": wd}  # noqa: E731  ReActNet's optimiser
    binary = {"name": "cnn_small", "transforms": ["binarize"]}
    for seed in args.seeds:
        base = student(args, "cnn_small", 2 * e, None, seed)
        trained(jobs, out, f"binarize-fp-s{seed}", {**base, "optim": adam(0.0)}, costs=True)
        trained(jobs, out, f"binarize-scratch-s{seed}", {**base, "model": binary, "optim": adam(0.0)}, costs=True)
        kd = {"name": "kd", "alpha": 1.0, "temperature": 1.0}
        step1 = {**student(args, {"name": "cnn_small", "transforms": [{"name": "binarize", "weights": False}]},
                           e, teacher, seed), "method": kd, "optim": adam(5e-6)}
        if trained(jobs, out, f"binarize-step1-s{seed}", step1) is None:
            continue
        init = {**binary, "checkpoint": str(out / "runs" / f"binarize-step1-s{seed}" / "checkpoint.pt")}
        trained(jobs, out, f"binarize-kd-s{seed}", {**student(args, init, e, teacher, seed), "method": kd,
                                                     "optim": adam(0.0)}, costs=True)


def share_jobs(args, jobs: Jobs, out: Path, teacher: Path) -> None:
    for bits in args.share_bits:
        shared = {"name": "cnn_medium", "checkpoint": str(teacher), "transforms": [{"name": "weight_share",
                                                                                      "bits": bits}]}
        for seed in args.seeds:
            recipe = {**student(args, shared, args.share_epochs, teacher, seed),
                      "method": {"name": "kd", "alpha": 0.9, "temperature": 4.0},
                      "optim": {"name": "sgd", "lr": 0.005, "momentum": 0.9, "weight_decay": 0.0}}
            if seed == args.seeds[0]:  # the clustering alone is deterministic: measured once
                jobs.run(f"share{bits}-cluster",
                         lambda r=recipe, b=bits: clustered(r, out / "runs" / f"share{b}-cluster"))
            trained(jobs, out, f"share{bits}-kd-s{seed}", recipe)


def clustered(recipe: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The shared network's test accuracy and size before any fine-tuning (its trainer built, never fitted)."""
    from kdkit.build import trainer_in
    from kdkit.engine.evaluate import evaluate
    from kdkit.weight_share import shared_size

    t = trainer_in(run_dir, recipe, log=lambda m: None)
    net = t.distiller.student
    return {"test_top1": evaluate(net, t.loaders.test, task=t.task)["top1"], **shared_size(net)}


def sizes(run: Path) -> dict[str, Any]:
    """The weight-size and operation counts of a finished run's network."""
    import torch

    from kdkit.binarize import binary_costs
    from kdkit.engine.rebuild import load_network
    from kdkit.weight_share import shared_size

    net = load_network(run / "checkpoint.pt")
    shape = net.ckpt["inference"]["input_shape"]
    return {**binary_costs(net.model, torch.zeros(1, *shape)), "shared": shared_size(net.model)}


def values(jobs: Jobs, pattern: str, seeds: list[int], key: str = "test_top1") -> list[float]:
    got = [jobs.get(pattern.format(seed=s)) for s in seeds]
    return [g[key] for g in got if g is not None and g.get(key) is not None]


def lifelong_section(args, jobs: Jobs) -> list[str]:
    head = ["method", "task-incr. average", "task-incr. forgetting", "class-incr. average", "class-incr. forgetting"]
    cells, got = [], {}
    for method in ("finetune", "lwf", "joint"):
        rs = [r for s in args.seeds if (r := jobs.get(f"lifelong-{method}-s{s}")) is not None]
        got[method] = rs
        cells.append([f"{method} ({len(rs)} seeds)"] + [
            mean_std([r[setting][k] for r in rs if r[setting][k] is not None])
            for setting in ("task_incremental", "class_incremental") for k in ("average", "forgetting")])
    ti = {m: [r["task_incremental"] for r in rs] for m, rs in got.items()}
    return [
        f"## Lifelong distillation: Learning without Forgetting on Split-{args.dataset}", "",
        f"`kdkit lifelong`: 5 tasks of 2 consecutive classes, cnn_tiny with one head per task, the first "
        f"{args.limit_train} training images, {args.lifelong_epochs} epochs per task, SGD lr 0.05, batch 128; LwF "
        "lambda 1, T 2 (the paper's, no T^2). Average accuracy after the last task and forgetting, in % on the test "
        "images of every task (lower forgetting is better). joint has no sequence: its forgetting is empty.", "",
        *markdown_table(head, cells, {1, 2, 3, 4}).splitlines(), "",
        verdict("LwF's task-incremental average", "fine-tuning", [x["average"] for x in ti["lwf"]],
                [x["average"] for x in ti["finetune"]]),
        verdict("LwF's task-incremental forgetting", "fine-tuning's", [x["forgetting"] for x in ti["lwf"]],
                [x["forgetting"] for x in ti["finetune"]], higher_better=False),
        verdict("LwF's task-incremental average", "joint training (the upper bound)",
                [x["average"] for x in ti["lwf"]], [x["average"] for x in ti["joint"]]), ""]


def datafree_section(args, jobs: Jobs, teacher_top1: float) -> list[str]:
    n, s = args.di_images, args.seeds
    syn = values(jobs, f"datafree-kd-synthetic{n}-s{{seed}}", s)
    rnd = values(jobs, f"datafree-kd-random{n}-s{{seed}}", s)
    real = values(jobs, "datafree-kd-real-s{seed}", s)
    hit = values(jobs, "datafree-synthesize-s{seed}", s, "teacher_top1")
    cost = [jobs.get(f"datafree-synthesize-s{x}") for x in s]
    minutes = [c["seconds"] / 60 for c in cost if c]
    cells = [["teacher cnn_medium", "-", f"{teacher_top1:.2f}"],
             [f"cnn_tiny, KD on the regime's {args.limit_train} real images ({args.epochs} epochs)",
              f"{len(real)}", mean_std(real)],
             [f"cnn_tiny, KD on {n} random real images", f"{len(rnd)}", mean_std(rnd)],
             [f"cnn_tiny, KD on {n} DeepInversion images (no real image)", f"{len(syn)}", mean_std(syn)]]
    return [
        "## Distillation without the training data: DeepInversion", "",
        f"`kdkit synthesize`: {n} images per seed from the teacher alone ({args.di_iterations} iterations, batch {n}, "
        "the other settings the command's defaults), then KD into cnn_tiny (alpha 1, T 4: the images' target "
        f"classes are not labels) for about {args.small_steps} steps of batch {min(n, 100)}; the same for {n} random "
        "real training images (as many per class), and KD (alpha 0.9, T 4) on the offline regime's real images. "
        f"The teacher classifies {mean_std(hit, 1)}% of the synthesised images as their target; a synthesis took "
        f"{mean_std(minutes, 1)} minutes. Test top-1 on the real test split:", "",
        *markdown_table(["student", "seeds", "test top-1 % (mean ± std)"], cells, {1, 2}).splitlines(), "",
        verdict("KD on DeepInversion images", f"KD on {n} random real images", syn, rnd),
        verdict("KD on DeepInversion images", "KD on the regime's real images", syn, real), ""]


def condense_section(args, jobs: Jobs) -> list[str]:
    cells, lines = [], []
    for ipc in (1, 10):
        got = {k: values(jobs, f"condense-train-{k}-ipc{ipc}-s{{seed}}", args.seeds) for k in ("random", "dm")}
        held = [(r["held_out_before"], r["held_out_after"]) for x in args.seeds
                if (r := jobs.get(f"condense-dm-ipc{ipc}-s{x}")) is not None]
        cells.append([f"{ipc}", f"{ipc * 10}", mean_std(got["random"]), mean_std(got["dm"]),
                      mean_std([b for b, _ in held], 0) + " -> " + mean_std([a for _, a in held], 0)])
        lines.append(verdict(f"distribution matching at {ipc} image(s) per class", "the random real subset",
                             got["dm"], got["random"]))
    return [
        "## Dataset distillation: distribution matching", "",
        f"`kdkit condense`: {args.condense_iterations} iterations, {args.batch_real} real images per class per "
        "iteration, embedding networks cnn_small (instance norms, fresh each iteration); the random subset is the "
        "same command with 0 iterations (the images distribution matching starts from, same seed). A fresh "
        f"cnn_small (batch norms) trained on each set for about {args.small_steps} steps (SGD lr 0.01, cosine, the "
        "dataset's crop and flip), test top-1 on the real test split; the held-out matching loss before and after:",
        "", *markdown_table(["images per class", "images", "random subset (mean ± std)", "distribution matching",
                             "held-out matching loss"], cells, {0, 1, 2, 3}).splitlines(), "", *lines, ""]


def binarize_section(args, jobs: Jobs) -> list[str]:
    e, cells = args.binary_epochs, []
    rows = (("fp", f"cnn_small, full precision, labels ({2 * e} epochs)"),
            ("scratch", f"binary cnn_small from scratch, labels ({2 * e} epochs)"),
            ("kd", f"binary cnn_small, ReActNet's two steps with KD ({e} + {e} epochs)"))
    got = {}
    for key, label in rows:
        got[key] = values(jobs, f"binarize-{key}-s{{seed}}", args.seeds)
        first = jobs.get(f"binarize-{key}-s{args.seeds[0]}")
        c = first["costs"] if first else None
        cells.append([label, str(len(got[key])), mean_std(got[key]),
                      f"{c['size_bits'] / 8192:.1f}" if c else "-", f"{c['size_bits_fp32'] / c['size_bits']:.1f}x"
                      if c else "-", f"{c['ops'] / 1e6:.2f}" if c else "-",
                      f"{c['macs'] / c['ops']:.1f}x" if c else "-"])
    return [
        "## Binarization: ReActNet-style binary cnn_small", "",
        f"The `binarize` transform (1-bit activations and weights in every layer but the first and last), on the "
        f"regime's {args.limit_train} images (4 replayed views), Adam lr 1e-3 cosine, batch 128; the two steps "
        "(activations first, then weights too from step 1's weights) learn from the cnn_medium teacher by KD alone "
        "(alpha 1, T 1), weight decay 5e-6 then 0, as configs/pipelines/fashion_mnist_binarize.yaml. Size: 1-bit "
        "binary weights, every other parameter 32-bit; OPs: binary MACs / 64 + floating-point MACs (ReActNet's "
        "count), against the network's MACs.", "",
        *markdown_table(["network", "seeds", "test top-1 % (mean ± std)", "weights KiB", "smaller by", "MOPs",
                         "fewer ops by"], cells, {1, 2, 3, 4, 5, 6}).splitlines(), "",
        verdict("the binary network by two-step KD", "the binary network from scratch", got["kd"], got["scratch"]),
        verdict("the binary network by two-step KD", "the full-precision cnn_small", got["kd"], got["fp"]), ""]


def share_section(args, jobs: Jobs, teacher_top1: float, teacher_size: dict[str, Any]) -> list[str]:
    kib = lambda bits: f"{bits / 8192:.1f}"  # noqa: E731
    cells, lines = [["unshared teacher cnn_medium (32-bit)", "-", f"{teacher_top1:.2f}",
                     kib(teacher_size["size_bits_fp32"]), "1.0x"]], []
    for bits in args.share_bits:
        once = jobs.get(f"share{bits}-cluster")
        kd = values(jobs, f"share{bits}-kd-s{{seed}}", args.seeds)
        size = [kib(once["size_bits"]), f"{once['size_bits_fp32'] / once['size_bits']:.1f}x"] if once else ["-", "-"]
        cells.append([f"{2 ** bits} shared values ({bits} bits), clustered only", "1",
                      f"{once['test_top1']:.2f}" if once else "-", *size])
        cells.append([f"{2 ** bits} shared values ({bits} bits), palettes fine-tuned by KD", str(len(kd)), mean_std(kd),
                      *size])
        lines.append(verdict(f"{bits}-bit sharing after KD fine-tuning", "the unshared teacher", kd, [teacher_top1]))
    return [
        "## Parameter sharing: weight_share (Deep Compression's trained quantization)", "",
        "The teacher's convolution and linear weights clustered per layer (k-means, linear start) into 2^bits "
        f"values; the palettes then fine-tuned by KD from the unshared teacher (alpha 0.9, T 4) for "
        f"{args.share_epochs} epochs on the regime's {args.limit_train} images, SGD lr 0.005 cosine. Size: indices at "
        "bits each plus 32-bit palettes, every other parameter and buffer 32-bit (what the checkpoint stores, "
        "without its own overhead), against all 32-bit.", "",
        *markdown_table(["network", "seeds", "test top-1 % (mean ± std)", "weights KiB", "smaller by"], cells,
                        {1, 2, 3, 4}).splitlines(), "", *lines, ""]


def teacher_recipe(args) -> dict[str, Any]:
    """The offline table's teacher recipe (benchmarks/sweep_tables.py), so that its finished run is shared."""
    r = student(args, "cnn_medium", args.teacher_epochs, None, 0)
    r["data"]["limit_train"] = None
    r["data"].pop("replay_views", None)
    return r


def write(args, jobs: Jobs, teacher_rows: list[dict[str, Any]], teacher_size: dict[str, int]) -> None:
    top1 = teacher_rows[-1]["test/top1"]
    builders = {"lifelong": lambda: lifelong_section(args, jobs),
                "datafree": lambda: datafree_section(args, jobs, top1),
                "condense": lambda: condense_section(args, jobs),
                "binarize": lambda: binarize_section(args, jobs),
                "share": lambda: share_section(args, jobs, top1, teacher_size)}
    done = sorted(p.stem for p in jobs.dir.glob("*.json"))
    teacher_h = sum(r.get("time/train_s", 0) for r in teacher_rows) / 3600
    text = ["# Beyond one student and one dataset: lifelong, data-free, dataset distillation, binarization, "
            f"weight sharing ({args.dataset})", "",
            "Generated by `python benchmarks/beyond_table.py` (resumable: finished jobs are kept in "
            f"{args.out}/results and skipped; `--write-only` rewrites this file from them). Issue 32; the commands "
            "and transforms are described in docs/beyond.md and docs/compression.md.", "",
            f"Teacher: cnn_medium, {top1:.2f}% test top-1 (the offline table's, {args.teacher_epochs} epochs on the "
            "whole training split). Seeds " + ", ".join(map(str, args.seeds)) + "; test figures on the real "
            "10,000-image test split. A verdict says \"better\" or \"worse\" only where the means differ by more than "
            "the larger standard deviation over seeds.", "",
            f"Cost: {jobs.seconds() / 3600:.2f} h for the {len(done)} jobs finished (each timed when it ran, one CPU "
            f"thread, on the 2-core development machine beside the other tables' jobs), teacher's training "
            f"({teacher_h:.2f} h) not counted; {PAUSES}{jobs.cpu_clause()}.", ""]
    for section in args.sections:
        text += builders[section]()
    todo = [s for s in args.sections if not any(d.startswith(s) for d in done)]
    if todo:
        text += [f"Not run yet (rerun the command): {', '.join(todo)}.", ""]
    docs = Path(args.docs)
    (docs / f"{args.dataset}_beyond.md").write_text("\n".join(text))
    (docs / f"{args.dataset}_beyond.json").write_text(json.dumps(
        {"settings": settings(args), "teacher_final": teacher_rows[-1],
         "jobs": {name: jobs.get(name) for name in done}}, indent=1, default=str))


SIZES = ("dataset", "teacher_epochs", "seeds", "limit_train", "epochs", "lifelong_epochs", "di_images", "di_iterations",
         "condense_iterations", "batch_real", "small_steps", "binary_epochs", "share_bits", "share_epochs")


def settings(args) -> dict[str, Any]:
    return {k: getattr(args, k) for k in SIZES}


def check_settings(args, out: Path) -> None:
    """The sizes are not in the job names: one ``--out`` holds one set of sizes (``<out>/settings.json``)."""
    path = out / "settings.json"
    if path.is_file():
        kept = json.loads(path.read_text())
        if kept != settings(args):
            diff = ", ".join(f"{k} {kept.get(k)} -> {v}" for k, v in settings(args).items() if kept.get(k) != v)
            raise SystemExit(f"{out} holds jobs run with other sizes ({diff}): give another --out")
    elif not args.write_only:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda f: f.write(json.dumps(settings(args)).encode()))


def dependents(name: str, n: int) -> list[str]:
    """The jobs that read what job ``name`` left in ``<out>`` (a file, a checkpoint)."""
    head, _, seed = name.rpartition("-s")
    return {"binarize-step1": [f"binarize-kd-s{seed}"], "datafree-synthesize": [f"datafree-kd-synthetic{n}-s{seed}"],
            "datafree-random": [f"datafree-kd-random{n}-s{seed}"]}.get(
        head, [name.replace("condense-", "condense-train-", 1)] if head.startswith(("condense-dm", "condense-random"))
        else [])


def restore(args, jobs: Jobs, teacher_rows: list[dict[str, Any]]) -> int:
    """Copy the finished jobs kept beside the table (``fashion_mnist_beyond.json``, committed) into
    ``<out>/results`` where they are missing, when they were measured with these sizes and a teacher with the
    same final metrics; a job whose output a missing job still needs is left to run again. How many."""
    path = Path(args.docs) / f"{args.dataset}_beyond.json"
    if not path.is_file():
        return 0
    kept = json.loads(path.read_text())
    if kept.get("settings") != settings(args) or kept.get("teacher_final") != teacher_rows[-1]:
        return 0
    n = 0
    for name, result in kept.get("jobs", {}).items():
        if result is None or jobs.get(name) is not None:
            continue
        if all(d in kept["jobs"] for d in dependents(name, args.di_images)):
            write_atomic(jobs.dir / f"{name}.json", lambda f, r=result: f.write(json.dumps(r, indent=1).encode()))
            n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/work/kdkit_runs/beyond")
    ap.add_argument("--teacher-dir", default="/work/kdkit_runs/sweep_tables/teacher",
                    help="the teacher's run folder (default: the offline table's; trained there when missing)")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--dataset", default="fashion_mnist", help="an image classification set with 10 classes "
                    "(the tests use digits)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"a subset of {','.join(SECTIONS)}")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--limit-train", type=int, default=10000, help="the regime's training images")
    ap.add_argument("--epochs", type=int, default=20, help="KD on the regime's real images")
    ap.add_argument("--lifelong-epochs", type=int, default=5, help="epochs per task")
    ap.add_argument("--di-images", type=int, default=250, help="DeepInversion images per seed (one batch)")
    ap.add_argument("--di-iterations", type=int, default=500)
    ap.add_argument("--condense-iterations", type=int, default=300)
    ap.add_argument("--batch-real", type=int, default=64, help="condense: real images per class per iteration")
    ap.add_argument("--small-steps", type=int, default=300, help="steps of training on a small file")
    ap.add_argument("--binary-epochs", type=int, default=5, help="epochs of each ReActNet step")
    ap.add_argument("--share-bits", default="2,4")
    ap.add_argument("--share-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--docs", default="docs/results")
    ap.add_argument("--write-only", action="store_true", help="rewrite the table from the jobs finished so far")
    args = ap.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.share_bits = [int(b) for b in args.share_bits.split(",")]
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"--sections: unknown {', '.join(sorted(unknown))} (choose from {', '.join(SECTIONS)})")
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    out, t0 = Path(args.out), time.time()
    import torch

    torch.set_num_threads(args.threads)
    jobs = Jobs(out, args.write_only, say)
    teacher_dir = Path(args.teacher_dir)
    say(f"teacher: {teacher_dir}")
    teacher_rows = train_once(teacher_recipe(args), teacher_dir, args.write_only)
    teacher = teacher_dir / "checkpoint.pt"
    check_settings(args, out)
    if not args.write_only and (n := restore(args, jobs, teacher_rows)):
        say(f"{n} finished jobs restored from {args.docs}/{args.dataset}_beyond.json")
    teacher_size = sizes(teacher_dir)["shared"]  # the unshared teacher's, for the sharing section
    jobs.on_done = lambda: write(args, jobs, teacher_rows, teacher_size)
    runners = {"lifelong": lambda: lifelong_jobs(args, jobs),
               "datafree": lambda: datafree_jobs(args, jobs, out, teacher),
               "condense": lambda: condense_jobs(args, jobs, out),
               "binarize": lambda: binarize_jobs(args, jobs, out, teacher),
               "share": lambda: share_jobs(args, jobs, out, teacher)}
    for section in [] if args.write_only else args.sections:
        runners[section]()
    write(args, jobs, teacher_rows, teacher_size)
    say(f"done in {(time.time() - t0) / 3600:.2f} h")
    return 0


if __name__ == "__main__":
    sys.exit(main())
