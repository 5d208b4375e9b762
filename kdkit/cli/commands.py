"""What each sub-command does: parse, build, run (every command is also reachable from Python, see the
README); the heavy imports happen inside each command."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ..errors import ConfigError
from .interrupt import interruptible, start_work


def cmd_run(args: argparse.Namespace, distill: bool) -> int:
    from .. import distributed
    from ..build import from_config, resume
    from ..config import load_config

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    if args.resume:
        if args.config or args.overrides or args.overwrite or args.new_dir:
            raise ConfigError("--resume continues a run with its saved config; drop the config, --set, --overwrite "
                              "and --new-dir (--epochs N extends it)")
        trainer = resume(args.resume, epochs=args.epochs)
    else:
        if not args.config:
            raise ConfigError(f"kdkit {args.command} needs a config file (or --resume RUN_DIR)")
        flags = ([f"train.epochs={args.epochs}"] if args.epochs is not None else []) + (
            ["train.existing=overwrite"] if args.overwrite else ["train.existing=new"] if args.new_dir else [])
        cfg = load_config(args.config, [*args.overrides, *flags])
        if distill and not cfg.teacher:
            raise ConfigError("kdkit distill needs a teacher in the config (use `kdkit train` without one)")
        if not distill and cfg.teacher:
            raise ConfigError("this config has a teacher: use `kdkit distill`")
        trainer = from_config(cfg, run_dir=args.out)
    interruptible()
    try:
        result = trainer.fit()
    except BaseException:
        distributed.cleanup()
        raise
    distributed.cleanup(wait=True)
    if trainer.dist.is_main:  # under torchrun, rank 0 reports
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import default_out, format_bench, run_bench, write_json

    for flag in ("batch_size", "steps", "repeats", "workers"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise ConfigError("--warmup must be >= 0")
    result = run_bench(args.teacher, args.student, args.method, args.dataset, synthetic=not args.real_data,
                       batch_size=args.batch_size, steps=args.steps, warmup=args.warmup, repeats=args.repeats,
                       reference=args.reference, minimal=args.minimal, compile_mode=args.compile,
                       device=args.device, workers=args.workers, peak=args.peak_tflops, data_root=args.data_root,
                       ghost_batch_size=args.ghost_batch_size, log=lambda m: print(m, file=sys.stderr))
    print(format_bench(result))
    if not args.no_write:
        path = Path(args.out) if args.out else default_out(result)
        write_json(result, path)
        print(f"written: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import tempfile

    from ..build import export_branch
    from ..export import export_network, parity_text

    out = Path(args.out)
    fmt = args.format or {".onnx": "onnx", ".safetensors": "safetensors"}.get(out.suffix, "kdkit")
    if fmt == "kdkit":
        if args.branch is None:
            raise ConfigError("a kdkit checkpoint is written for one branch (--branch k); for the whole network use "
                              "the run's checkpoint itself, or --format onnx / safetensors")
        print(f"written: {export_branch(args.checkpoint, args.branch, out, args.net)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        source, net = args.checkpoint, args.net
        if args.branch is not None:  # trunk + branch k as a plain network first
            source, net = export_branch(args.checkpoint, args.branch, Path(tmp) / "branch.pt", args.net), None
        check = export_network(source, net, fmt, out)
    if fmt == "safetensors":
        print(f"written: {out}")
        return 0
    print(f"written: {out} (ONNX Runtime against PyTorch on {check['images']} test samples: {parity_text(check)})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from ..build import pick_device
    from ..engine.evaluate import evaluate
    from ..engine.rebuild import network_and_data
    from ..tasks import create_task, task_spec

    task = None
    if args.pgd_epsilon is not None:  # checked (a negative radius refused) before anything is loaded
        step = args.pgd_step_size if args.pgd_step_size is not None else args.pgd_epsilon / 4 or 1 / 255
        task = {"robust": {"epsilon": args.pgd_epsilon, "step_size": step, "steps": args.pgd_steps}}
        create_task({"name": "classification", **task})
    loaded, loaders = network_and_data(args.checkpoint, args.net, pick_device(args.device), args.data_root)
    net, ds = args.net or "student", loaders.dataset
    loader = loaders.test if args.split == "test" else loaders.val
    if loader is None:
        raise ConfigError("this run has no validation split (data.val_fraction was 0)")
    if task is not None:
        name, options = task_spec(loaded.cfg.task)
        task = create_task({"name": name, **options, **task})
    metrics = evaluate(loaded.model, loader, task=create_task(loaded.cfg.task) if task is None else task)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{loaded.spec.name}{'' if net == 'student' else f' ({net})'} on {ds.name} {args.split} "
              f"({len(loader.data)} {ds.noun}): " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    from ..features import format_inspect, probe
    from ..models import create_model

    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape expects C,H,W integers (T for token ids), got '{args.input_shape}'") from None
    if len(shape) not in (1, 3) or min(shape) < 1 or max(shape) > 4096:
        raise ConfigError("--input-shape expects three integers C,H,W in [1, 4096] (or one, T: token ids of a text "
                          f"model), got '{args.input_shape[:60]}'")
    if not 1 <= args.num_classes <= 1_000_000:
        raise ConfigError(f"--num-classes must be in [1, 1000000], got {args.num_classes}")
    kwargs = {"input_size": shape[1]} if args.model == "mlp" else {}
    channels = args.vocab_size if len(shape) == 1 else shape[0]
    model = create_model(args.model, num_classes=args.num_classes, in_channels=channels, **kwargs)
    spec = shape if len(shape) == 3 else {  # a text model: token ids and their attention mask
        "input_ids": torch.ones(2, shape[0], dtype=torch.int64), "attention_mask": torch.ones(2, shape[0],
                                                                                             dtype=torch.int64)}
    try:
        info = probe(model, spec)
    except (RuntimeError, TypeError, IndexError) as e:
        raise ConfigError(f"{args.model} cannot run on input {list(shape)}: {str(e).splitlines()[0]}") from None
    print(format_inspect(model, info))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        from ..models import create_model, list_models
        from ..models.gan import GENERATORS
        from ..models.text import TEXT_MODELS

        for name in list_models(args.pattern):
            text = name in TEXT_MODELS  # in_channels: the vocabulary size
            image = name in GENERATORS  # num_classes: the output image's channels
            try:
                model = create_model(name, num_classes=3 if image else 10, in_channels=8000 if text else 3)
            except ConfigError as e:  # a library that is not installed
                print(f"{name:16s} (not available: {e})")
                continue
            n = sum(p.numel() for p in model.parameters())
            what = "RGB to RGB" if image else f"10 classes{', 8000-token vocabulary' if text else ''}"
            print(f"{name:16s} {n / 1e6:7.3f}M params ({what})")
    elif args.what == "datasets":
        from ..data import DATASETS

        for name in DATASETS.names(args.pattern):
            print(f"{name:14s} {(DATASETS.get(name).__doc__ or '').strip()}")
    elif args.what in ("transforms", "tasks"):
        from .. import config  # noqa: F401  (registers the transforms of prune, lowrank and qat)
        from ..tasks import TASKS
        from ..transforms import TRANSFORMS

        registry = TRANSFORMS if args.what == "transforms" else TASKS
        for name in registry.names(args.pattern):
            print(f"{name:14s} {first_sentence(registry.get(name).__doc__)}")
    else:
        from ..methods import METHODS

        for name in METHODS.names(args.pattern):
            cls = METHODS.get(name)
            print(f"{name:10s} {cls.family:9s} {cls.paper}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from ..quantize import quantize_checkpoint

    r = quantize_checkpoint(args.checkpoint, args.out, args.net, args.calibration, not args.per_tensor,
                            args.fp32_out, args.scheme)
    print(f"written: {r['out']} ({r['int8_bytes'] / 1024:.0f} KiB, fp32 {r['fp32_bytes'] / 1024:.0f} KiB), "
          f"{r['scheme']} ({r['scheme_reason']}): test top1 {r['int8_top1']:.2f} (fp32 {r['fp32_top1']:.2f}), top-1 "
          f"agreement {r['agreement']:.2f}%, logits off by {r['logit_error_mean']:.3g} on average "
          f"(max {r['logit_error_max']:.3g} of a range of {r['logit_range']:.3g})", file=sys.stderr)
    print(json.dumps(r))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from ..export import format_profile, profile

    result = profile(args.checkpoint, args.net, tuple(args.batch or (1, 64)), args.runs, args.threads,
                     not args.no_onnx, args.data_root)
    print(format_profile(result), file=sys.stderr)
    print(json.dumps(result))
    return 0


def cmd_specialists(args: argparse.Namespace) -> int:
    from ..specialists import load_specialists_config, run_specialists

    start_work()
    summary = run_specialists(load_specialists_config(args.file, args.set), args.out,
                              log=lambda m: print(m, file=sys.stderr))
    print(json.dumps({k: summary[k] for k in ("generalist_top1", "combined_top1", "clusters")}))
    return 0


def cmd_condense(args: argparse.Namespace) -> int:
    from ..condense import condense

    start_work()
    r = condense(args.data, args.ipc, args.iterations, args.model, args.lr, args.batch_real, args.seed, args.out,
                 args.data_root, log=lambda m: print(m, file=sys.stderr), method=args.method)
    print(f"written: {r['out']} ({len(r['labels'])} images, {args.ipc} per class; train on it with "
          f"data.train_file: {r['out']})", file=sys.stderr)
    print(json.dumps({"out": r["out"], "images": len(r["labels"]), "seconds": round(r["seconds"], 1),
                      "held_out_before": r["held_out_before"], "held_out_after": r["held_out_after"]}))
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from ..synthesize import synthesize

    start_work()
    r = synthesize(args.checkpoint, args.images, args.batch, args.iterations, args.lr, args.feature, args.tv,
                   args.l2, args.jitter, args.seed, args.out, log=lambda m: print(m, file=sys.stderr))
    print(f"written: {r['out']} ({len(r['labels'])} images; the teacher gives their target class to "
          f"{r['teacher_top1']:.1f}%); distil from it with data.train_file: {r['out']}", file=sys.stderr)
    print(json.dumps({"out": r["out"], "images": len(r["labels"]), "teacher_top1": r["teacher_top1"],
                      "seconds": round(r["seconds"], 1)}))
    return 0


def cmd_lifelong(args: argparse.Namespace) -> int:
    from ..engine.checkpoint import write_atomic
    from ..lifelong import lifelong

    start_work()
    r = lifelong(args.data, args.model, args.method, args.tasks, args.epochs, args.warmup_epochs, args.lam,
                 args.temperature, args.lr, args.batch_size, args.seed, args.limit_train,
                 log=lambda m: print(m, file=sys.stderr))
    for name in ("task_incremental", "class_incremental"):
        f = r[name]["forgetting"]
        print(f"{name.replace('_', '-')}: average accuracy {r[name]['average']:.2f}"
              + (f", forgetting {f:.2f}" if f is not None else ""), file=sys.stderr)
    text = json.dumps(r)
    if args.out:
        write_atomic(args.out, lambda f: f.write((text + "\n").encode()))
    print(text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``kdkit report`` and ``kdkit compare``: a file that cannot be read is one line, the rest is reported."""
    from ..report import collect, terminal, write_report

    report = collect(args.paths)
    for path, why in report.skipped:
        print(f"kdkit: skipped {path}: {why}", file=sys.stderr)
    if args.command == "compare":
        print(terminal(report))
        return 0
    written = write_report(report, args.out)
    print(f"report: {written['report.html']} ({len(report.runs)} runs; Markdown: {written['report.md']})")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from ..pipeline import run_pipeline

    start_work()
    for row in run_pipeline(args.file, args.out, log=lambda m: print(m, file=sys.stderr)):
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..sweep import load_sweep, run_sweep

    seeds = None
    if args.seeds is not None:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds takes integers separated by commas, got {args.seeds!r}") from None
    cfg = load_sweep(args.file, methods=args.methods, seeds=seeds)
    if args.trials is not None:
        if args.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {args.trials}")
        cfg.trials = args.trials
    if args.out is not None:
        cfg.out = args.out
    if not 1 <= args.workers <= 256:
        raise ConfigError(f"--workers must be in [1, 256], got {args.workers}")
    start_work()
    best = run_sweep(cfg, log=lambda m: print(m, file=sys.stderr), storage=args.storage, workers=args.workers)
    if "methods" in best:  # the ranking, as methods.md in the sweep folder has it
        print((Path(cfg.out) / "methods.md").read_text(), file=sys.stderr)
    print(json.dumps(best, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.seeds < 1 or args.epochs is not None and args.epochs < 1:
        raise ConfigError("kdkit demo: --seeds and --epochs must be >= 1")
    start_work()
    run_demo(seeds=args.seeds, epochs=args.epochs, out=Path(args.out) if args.out else None)
    return 0


def first_sentence(doc: str | None, limit: int = 100) -> str:
    """The docstring's first sentence on one line (shortened to ``limit``)."""
    text = " ".join((doc or "").split()).replace("``", "")
    end = re.search(r"(?<!\bal)(?<!e\.g)(?<!i\.e)\.(\s|$)", text)  # not "et al." nor "e.g."
    text = text if end is None else text[: end.start() + 1]
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


COMMANDS = {"train": lambda a: cmd_run(a, distill=False), "distill": lambda a: cmd_run(a, distill=True),
            "eval": cmd_eval, "inspect": cmd_inspect, "export": cmd_export, "quantize": cmd_quantize,
            "profile": cmd_profile, "list": cmd_list, "bench": cmd_bench, "specialists": cmd_specialists,
            "report": cmd_report, "compare": cmd_report, "pipeline": cmd_pipeline, "demo": cmd_demo,
            "sweep": cmd_sweep, "condense": cmd_condense, "synthesize": cmd_synthesize,
            "lifelong": cmd_lifelong}
