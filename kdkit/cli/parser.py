"""The command line's arguments: one sub-command per task (``kdkit --help``). Only the standard library is
imported here, so ``--help`` answers at once."""

from __future__ import annotations

import argparse

from .. import __version__


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
    p.add_argument("--pgd-epsilon", type=float, default=None, help="also report robust_top1, the accuracy under an "
                   "L-inf PGD attack of this radius (pixel units of [0, 1] images, e.g. 0.0314 for 8/255)")
    p.add_argument("--pgd-steps", type=int, default=10, help="with --pgd-epsilon (default 10)")
    p.add_argument("--pgd-step-size", type=float, default=None, help="with --pgd-epsilon (default epsilon / 4)")

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
    p.add_argument("--scheme", default="auto", choices=["auto", "s8s8", "u8u8", "reduce_range"],
                   help="int8 types; auto: the one this CPU's ONNX Runtime kernels compute without saturation "
                   "(u8u8 on x86 without VNNI, else s8s8)")

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
    p.add_argument("--input-shape", default="3,32,32", help="C,H,W (default 3,32,32); T for a text model: token ids")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--vocab-size", type=int, default=8000, help="a text model's vocabulary (with --input-shape T)")

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

    p = sub.add_parser("sweep", help="search a recipe's settings on validation with Optuna: every trial a kdkit "
                       "run, best.yaml written; a killed sweep continues")
    p.add_argument("file", help="the sweep's YAML (base recipe, space, trials, sampler, pruner, metric, seed, out)")
    p.add_argument("--trials", type=int, default=None, help="number of trials (default: the file's)")
    p.add_argument("--out", default=None, help="the sweep's folder (default: the file's out)")
    p.add_argument("--storage", default=None, help="an Optuna storage URL (default: a journal file in the folder)")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine sharing the sweep (default 1)")
    p.add_argument("--methods", default=None, help="one search per method over the base recipe's teacher/student "
                   "pair, ranked: offline, online, or names (kd,dkd,at); the file's space is not used")
    p.add_argument("--seeds", default=None, help="final runs of the best config on test, e.g. 0,1,2 (default: the "
                   "file's seeds; with --methods 0,1,2)")

    p = sub.add_parser("specialists", help="a generalist and specialists for clusters of classes it confuses "
                       "(Hinton et al. 2015, sec. 5): cluster, train, combine, report")
    p.add_argument("file", help="the specialists' YAML (generalist checkpoint, clusters, top_k, set)")
    p.add_argument("--out", default=None, help="output directory (default: out_dir in the file)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the file, e.g. --set clusters=4 (repeatable)")

    p = sub.add_parser("condense", help="condense a training set into a few synthetic images per class "
                       "(distribution matching, Zhao & Bilen 2023, or gradient matching, Zhao et al. 2021) for "
                       "data.train_file")
    p.add_argument("--method", default="dm", help="dm (distribution matching, the default) or gm (gradient "
                   "matching: far dearer)")
    p.add_argument("--data", default="fashion_mnist", help="the dataset (an in-memory image classification set)")
    p.add_argument("--ipc", type=int, default=10, help="synthetic images per class")
    p.add_argument("--iterations", type=int, default=1000, help="0: a random real subset of the same size")
    p.add_argument("--model", default=None, help="the randomly initialised networks that embed the images "
                   "(default: cnn_small for dm, convnet, the papers' ConvNet, for gm)")
    p.add_argument("--lr", type=float, default=None, help="SGD learning rate on the pixels, momentum 0.5 (default: "
                   "0.003 for dm, 0.1 for gm)")
    p.add_argument("--batch-real", type=int, default=256, help="real images per class per iteration")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", required=True, help="the safetensors file to write")

    p = sub.add_parser("synthesize", help="training images from a teacher alone (DeepInversion, Yin et al. 2020), "
                       "for a student to learn from by KD with data.train_file")
    p.add_argument("checkpoint", help="the teacher (a kdkit checkpoint of an image classifier with batch norms)")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=256, help="images optimised together (the feature prior's batch)")
    p.add_argument("--iterations", type=int, default=2000)
    p.add_argument("--lr", type=float, default=0.1, help="Adam's learning rate on the pixels")
    p.add_argument("--feature", type=float, default=100.0, help="weight of the batch-norm statistics prior")
    p.add_argument("--tv", type=float, default=2.5e-5, help="weight of the total-variation prior")
    p.add_argument("--l2", type=float, default=0.0, help="weight of the L2 prior on the pixels")
    p.add_argument("--jitter", type=int, default=None, help="random roll in pixels (default: the image side / 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="the safetensors file to write")

    p = sub.add_parser("lifelong", help="learn a dataset's classes as a task sequence with Learning without "
                       "Forgetting (Li & Hoiem 2016), fine-tuning or joint training; accuracy and forgetting")
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--model", default="cnn_tiny")
    p.add_argument("--method", default="lwf", choices=["lwf", "finetune", "joint"])
    p.add_argument("--tasks", default=None, help="classes per task, e.g. 0,1/2,3/4,5 (names or indices; default: "
                   "consecutive pairs)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per task")
    p.add_argument("--warmup-epochs", type=int, default=0, help="the new head trained alone first (the paper's)")
    p.add_argument("--lam", type=float, default=1.0, help="weight of the distillation term (the paper's lambda_o)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit-train", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result JSON here too")

    p = sub.add_parser("demo", help="distill on the embedded digits dataset and print a results table")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default: the demo's recipe)")
    p.add_argument("--out", default=None, help="where the demo's runs and report go (default: runs/demo)")
    return parser
