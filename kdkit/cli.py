"""Command line: parse, build, run. Every command is also reachable from Python (see README)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import ConfigError, KdkitError


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML recipe (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set method.temperature=2 (repeatable)")
    p.add_argument("--out", help="run directory (default: train.out_dir/<data>-<model>-<method>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    p.add_argument("--epochs", type=int, default=None, help="train.epochs; with --resume, extend a run (finished "
                   "or not) to this many epochs")
    exists = p.add_mutually_exclusive_group()
    exists.add_argument("--overwrite", action="store_true", help="when the run directory holds a run, replace it "
                        "(train.existing=overwrite)")
    exists.add_argument("--new-dir", action="store_true", help="when the run directory holds a run, keep it and "
                        "write to <run>-2, <run>-3, ... (train.existing=new)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdkit", description="Knowledge distillation for PyTorch.")
    parser.add_argument("--version", action="version", version=f"kdkit {__version__}")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="import a Python file (as the module named by its stem) or a module first: the "
                        "methods, models, transforms or tasks it registers, and its nn.Module classes, can then be "
                        "named in configs and rebuilt from checkpoints (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model with labels only (a teacher or a baseline)")
    _add_run_args(p)
    p = sub.add_parser("distill", help="train a student from a teacher")
    _add_run_args(p)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its dataset's test (or validation) split")
    p.add_argument("checkpoint")
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument("--net", default=None, help="which trainable network of the run (default: the student)")
    p.add_argument("--data-root", help="where the dataset files are (default: the lookup order in docs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")

    p = sub.add_parser("export", help="write a trained network as ONNX (checked against PyTorch with ONNX "
                       "Runtime), safetensors weights, or (with --branch) one branch of a branched network as a "
                       "plain network's kdkit checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="the file to write; its extension picks the format unless --format")
    p.add_argument("--format", choices=["kdkit", "onnx", "safetensors"], default=None,
                   help="default: onnx for .onnx, safetensors for .safetensors, else a kdkit checkpoint")
    p.add_argument("--branch", type=int, default=None, help="one branch (0-based, as val/branch<k>/ in metrics): "
                   "trunk + that branch as a plain network")
    p.add_argument("--net", default=None, help="which trainable network of the run (default: the student)")

    p = sub.add_parser("quantize", help="post-training static int8 for CPU inference (ONNX Runtime QDQ, calibrated "
                       "on training images), checked against fp32 on the test set")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True, help="the int8 ONNX file to write")
    p.add_argument("--net", default=None, help="which trainable network of the run (default: the student)")
    p.add_argument("--calibration", type=int, default=512, help="training images that calibrate the ranges")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per channel)")
    p.add_argument("--fp32-out", default=None, help="also keep the fp32 ONNX file here")

    p = sub.add_parser("profile", help="parameters, MACs, file sizes, CPU latency (PyTorch eager and ONNX Runtime) "
                       "and test accuracy of a checkpoint's network")
    p.add_argument("checkpoint")
    p.add_argument("--net", default=None, help="which trainable network of the run (default: the student)")
    p.add_argument("--batch", type=int, action="append", default=None, help="batch sizes (default: 1 and 64)")
    p.add_argument("--runs", type=int, default=50, help="timed calls per measurement, after 10 warm-up calls")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--no-onnx", action="store_true", help="PyTorch eager only")
    p.add_argument("--data-root", help="where the dataset files are")

    p = sub.add_parser("inspect", help="print every module path of a model with output shape and parameters")
    p.add_argument("model")
    p.add_argument("--input-shape", default="3,32,32", help="C,H,W (default 3,32,32)")
    p.add_argument("--num-classes", type=int, default=10)

    p = sub.add_parser("list", help="list models, datasets, methods, transforms or tasks")
    p.add_argument("what", choices=["models", "datasets", "methods", "transforms", "tasks"])
    p.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. 'resnet*'")

    p = sub.add_parser("bench", help="training speed (images/s, s/epoch, MFU, memory), optionally against "
                       "a reference DataLoader loop and a minimal hand-written loop")
    p.add_argument("--teacher", default=None, help="teacher model (randomly initialised: speed only)")
    p.add_argument("--student", required=True)
    p.add_argument("--method", default="kd")
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--real-data", action="store_true",
                   help="load the dataset itself (default: synthetic data of its shape and size)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=50, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference", action="store_true", help="also time the reference DataLoader loop")
    p.add_argument("--minimal", action="store_true", help="also time a minimal hand-written loop (kd/vanilla)")
    p.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"])
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers of the reference loop")
    p.add_argument("--ghost-batch-size", type=int, default=None,
                   help="kdkit loop: batch norm over groups of this many samples (the large-batch recipe)")
    p.add_argument("--device", default="auto")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (known GPUs: built in)")
    p.add_argument("--out", default=None, help="JSON file (default: runs/bench/bench-<...>.json; "
                   "the repository's docs/results only when named here)")
    p.add_argument("--no-write", action="store_true", help="print only")

    p = sub.add_parser("pipeline", help="run named runs in order, later ones taught by earlier ones")
    p.add_argument("file", help="pipeline YAML (see docs/architecture.md): runs, each a recipe")
    p.add_argument("--out", default=None, help="where the runs go (default: the file's out_dir)")

    p = sub.add_parser("report", help="one HTML page (and its Markdown twin) over runs, pipelines and result JSONs: "
                       "comparison by recipe (mean ± std over seeds), config differences, learning curves, costs")
    p.add_argument("paths", nargs="+", help="run directories, folders of runs (a pipeline's out_dir), result JSONs")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")

    p = sub.add_parser("compare", help="the report's comparison tables in the terminal")
    p.add_argument("paths", nargs="+", help="run directories, folders of runs, result JSONs")

    p = sub.add_parser("specialists", help="a generalist and specialists for clusters of classes it confuses "
                       "(Hinton et al. 2015, sec. 5): cluster, train, combine, report")
    p.add_argument("file", help="the specialists' YAML (generalist checkpoint, clusters, top_k, set)")
    p.add_argument("--out", default=None, help="output directory (default: out_dir in the file)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the file, e.g. --set clusters=4 (repeatable)")

    p = sub.add_parser("demo", help="distill on the embedded digits dataset and print a results table")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the demo's recipe)")
    p.add_argument("--out", default=None, help="where the demo's runs and report go (default: runs/demo)")
    return parser


def cmd_run(args: argparse.Namespace, distill: bool) -> int:
    from . import distributed
    from .build import from_config, resume
    from .config import load_config

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
    from .bench import default_out, format_bench, run_bench, write_json

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

    from .build import export_branch
    from .export import export_network

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
    print(f"written: {out} (ONNX Runtime against PyTorch on {check['images']} test images: max |logit diff| "
          f"{check['max_abs_diff']:.2e}, top-1 agreement {check['top1_agreement']:.2f}%, top1 "
          f"{check['onnx_top1']:.2f} vs {check['torch_top1']:.2f})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .build import pick_device
    from .engine.evaluate import evaluate
    from .engine.rebuild import network_and_data
    from .tasks import create_task

    loaded, loaders = network_and_data(args.checkpoint, args.net, pick_device(args.device), args.data_root)
    net, ds = args.net or "student", loaders.dataset
    loader = loaders.test if args.split == "test" else loaders.val
    if loader is None:
        raise ConfigError("this run has no validation split (data.val_fraction was 0)")
    metrics = evaluate(loaded.model, loader, task=create_task(loaded.cfg.task))
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{loaded.spec.name}{'' if net == 'student' else f' ({net})'} on {ds.name} {args.split} "
              f"({len(loader.data)} images): " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .features import format_inspect, probe
    from .models import create_model

    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape expects C,H,W integers, got '{args.input_shape}'") from None
    if len(shape) != 3 or min(shape) < 1 or max(shape) > 4096:
        raise ConfigError(f"--input-shape expects three integers C,H,W in [1, 4096], got '{args.input_shape[:60]}'")
    if not 1 <= args.num_classes <= 1_000_000:
        raise ConfigError(f"--num-classes must be in [1, 1000000], got {args.num_classes}")
    kwargs = {"input_size": shape[1]} if args.model == "mlp" else {}
    model = create_model(args.model, num_classes=args.num_classes, in_channels=shape[0], **kwargs)
    try:
        info = probe(model, shape)
    except RuntimeError as e:
        raise ConfigError(f"{args.model} cannot run on input {shape}: {str(e).splitlines()[0]}") from None
    print(format_inspect(model, info))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "models":
        from .models import create_model, list_models

        for name in list_models(args.pattern):
            n = sum(p.numel() for p in create_model(name, num_classes=10, in_channels=3).parameters())
            print(f"{name:16s} {n / 1e6:7.3f}M params (10 classes)")
    elif args.what == "datasets":
        from .data import DATASETS

        for name in DATASETS.names(args.pattern):
            print(f"{name:14s} {(DATASETS.get(name).__doc__ or '').strip()}")
    elif args.what in ("transforms", "tasks"):
        from .tasks import TASKS
        from .transforms import TRANSFORMS

        registry = TRANSFORMS if args.what == "transforms" else TASKS
        for name in registry.names(args.pattern):
            doc = (registry.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:14s} {doc}")
    else:
        from .methods import METHODS

        for name in METHODS.names(args.pattern):
            cls = METHODS.get(name)
            print(f"{name:10s} {cls.family:9s} {cls.paper}")
    return 0


def load_plugin(name: str) -> None:
    """``--plugin``: import a Python file (``path/to/file.py``) or a module by name; its top-level code
    registers what it adds (``@register_method`` and the like) and its classes may be named by
    checkpoints (:func:`kdkit.models.external.load_plugin`)."""
    from .models.external import load_plugin as load

    try:
        load(name)
    except KdkitError:
        raise
    except Exception as e:  # the plugin's own error: say which plugin, keep the message
        raise ConfigError(f"--plugin {name}: {type(e).__name__}: {e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130


INTERRUPTED = ("kdkit: interrupted; files already written are kept (a stopped run continues with "
               "--resume RUN_DIR)")


def _leave_now(signum: int, frame: object) -> None:
    """Ctrl-C while kdkit starts (imports, data, models): nothing is being written yet, so leave at once.
    An interrupt raised inside an import (torch's C++ initialisation calls back into Python) would leave
    extension modules half set up: a traceback, or an abort at interpreter exit, instead of exit 130."""
    import os

    print(INTERRUPTED, file=sys.stderr, flush=True)
    os._exit(130)


def interruptible() -> None:
    """From here on, Ctrl-C raises KeyboardInterrupt (training stops cleanly between writes)."""
    import signal

    if signal.getsignal(signal.SIGINT) is _leave_now:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _start_work() -> None:
    """Commands that run several trainings (pipeline, specialists, demo): finish the slow imports while
    Ctrl-C still leaves at once, then make it interruptible."""
    import importlib

    for name in ("torch", "kdkit.build", "sklearn.datasets"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    interruptible()


def entry() -> None:
    """The ``kdkit`` command (and ``python -m kdkit``): Ctrl-C leaves at once until work that writes
    files begins (:func:`interruptible`), then stops it cleanly; exit code 130 and one line either way."""
    import os
    import signal

    signal.signal(signal.SIGINT, _leave_now)
    code = main()
    # interrupted: leave without the interpreter's clean-up of half-used extensions. Under torchrun too:
    # gloo's threads can race the interpreter's teardown after the process group is destroyed ("terminate
    # called without an active exception": 3 aborts in about 12 runs on a loaded machine); every
    # file is written and closed by now, so nothing is lost by skipping that teardown
    if code == 130 or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for plugin in args.plugin:
            load_plugin(plugin)
        if args.command in ("train", "distill"):
            return cmd_run(args, distill=args.command == "distill")
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "inspect":
            return cmd_inspect(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "quantize":
            from .quantize import quantize_checkpoint

            r = quantize_checkpoint(args.checkpoint, args.out, args.net, args.calibration, not args.per_tensor,
                                    args.fp32_out)
            print(f"written: {r['out']} ({r['int8_bytes'] / 1024:.0f} KiB, fp32 {r['fp32_bytes'] / 1024:.0f} KiB): "
                  f"test top1 {r['int8_top1']:.2f} (fp32 {r['fp32_top1']:.2f}), top-1 agreement {r['agreement']:.2f}%",
                  file=sys.stderr)
            print(json.dumps(r))
            return 0
        if args.command == "profile":
            from .export import format_profile, profile

            result = profile(args.checkpoint, args.net, tuple(args.batch or (1, 64)), args.runs, args.threads,
                             not args.no_onnx, args.data_root)
            print(format_profile(result), file=sys.stderr)
            print(json.dumps(result))
            return 0
        if args.command == "list":
            return cmd_list(args)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "specialists":
            from .specialists import load_specialists_config, run_specialists

            _start_work()
            summary = run_specialists(load_specialists_config(args.file, args.set), args.out,
                                      log=lambda m: print(m, file=sys.stderr))
            print(json.dumps({k: summary[k] for k in ("generalist_top1", "combined_top1", "clusters")}))
            return 0
        if args.command in ("report", "compare"):
            from .report import collect, terminal, write_report

            report = collect(args.paths)
            for path, why in report.skipped:  # one line each; the rest is reported
                print(f"kdkit: skipped {path}: {why}", file=sys.stderr)
            if args.command == "compare":
                print(terminal(report))
                return 0
            written = write_report(report, args.out)
            print(f"report: {written['report.html']} ({len(report.runs)} runs; Markdown: {written['report.md']})")
            return 0
        if args.command == "pipeline":
            from .pipeline import run_pipeline

            _start_work()
            for row in run_pipeline(args.file, args.out, log=lambda m: print(m, file=sys.stderr)):
                print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
            return 0
        from .demo import run_demo

        if args.seeds < 1 or args.epochs is not None and args.epochs < 1:
            raise ConfigError("kdkit demo: --seeds and --epochs must be >= 1")
        _start_work()
        run_demo(seeds=args.seeds, epochs=args.epochs, out=Path(args.out) if args.out else None)
        return 0
    except KdkitError as e:
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"kdkit: error: {message}", file=sys.stderr)  # one line, whatever the error
        return e.exit_code
    except OSError as e:
        import errno

        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
            raise
        # a write outside kdkit's atomic writers (TensorBoard, a library's file): files already written are kept
        print(f"kdkit: error: cannot write {e.filename or 'a file'} ({e.strerror}; is the disk full?); files "
              "already written are kept (a stopped run continues with --resume RUN_DIR)", file=sys.stderr)
        return 6


if __name__ == "__main__":
    entry()
