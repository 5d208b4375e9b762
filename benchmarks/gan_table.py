"""The GAN compression table (issue 30, docs/results/fashion_gan_compression.md): pix2pix on fashion_edges
(a Fashion-MNIST garment from its Canny edges), a ResNet generator teacher at ngf 32 and students at 1/2
and 1/4 of its width, each trained without the teacher (``gan``: GAN + L1) and with GAN Compression's
distillation (``gan_compression``), 3 seeds; FID and KID in the feature space of a Fashion-MNIST
classifier (FID-FMNIST, KID-FMNIST), PSNR and SSIM on the test split; MACs and CPU latency.

    python benchmarks/gan_table.py                # resumable; runs in /work/kdkit_runs/gan
    python benchmarks/gan_table.py --write-only   # the table from the runs finished so far

The feature network is trained first, by the recipe of ``configs/fashion_edges/fid_classifier.yaml``, and
every run measures through that one file: the table checks that every checkpoint records its SHA-256.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from dense_table import cost_rows
from sweep_tables import PAUSES, cpu_clause, run_rows, train_once

from kdkit.sweep.compare import epoch_seconds, markdown_table

WIDTHS = {"1/2": 16, "1/4": 8}
METHODS = ("gan", "gan_compression")
TEACHER_NGF, BLOCKS = 32, 6
DISCRIMINATOR = {"ndf": 64, "n_layers": 2}
COLUMNS = (("fid_fmnist", "FID-FMNIST", 2), ("kid_fmnist", "KID-FMNIST x10^3", 2), ("psnr", "PSNR dB", 2),
           ("ssim", "SSIM", 3))


def generator(ngf: int) -> dict[str, Any]:
    return {"name": "resnet_generator", "kwargs": {"ngf": ngf, "n_blocks": BLOCKS}}


def recipe(args: argparse.Namespace, ngf: int, method: str, seed: int, epochs: int, features: Path,
           teacher: Path | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {
        "task": {"name": "image_to_image", "feature_network": str(features), "feature_name": "fmnist"},
        "model": generator(ngf), "method": {"name": method, "discriminator_kwargs": dict(DISCRIMINATOR)},
        "data": {"name": "fashion_edges", "batch_size": 32, "eval_batch_size": 256, "limit_train": args.limit_train,
                 "val_fraction": 0.1},
        "optim": {"name": "adamw", "lr": 2e-4, "betas": [0.5, 0.999], "weight_decay": 0.0},
        "schedule": {"name": "cosine"},
        "train": {"epochs": epochs, "seed": seed, "progress": False, "threads": args.threads, "device": args.device,
                  "balance_factor": 1000.0},
    }
    if teacher is not None:  # the discriminator starts from the teacher's too (GAN Compression's restore_D_path)
        r["teacher"] = {**generator(TEACHER_NGF), "checkpoint": str(teacher)}
        r["method"]["discriminator_checkpoint"] = str(teacher)
    return r


def classifier_recipe(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    r = yaml.safe_load(Path("configs/fashion_edges/fid_classifier.yaml").read_text())
    r["train"] = {**r["train"], "progress": False, "threads": args.threads, "device": args.device}
    r["train"].pop("run_name", None)
    return r


def final(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return rows[-1] if rows and rows[-1].get("final") else {}


def mean_std(values: list[float], digits: int = 2) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def feature_sha(run_dir: Path) -> str | None:
    from kdkit.engine.checkpoint import load_checkpoint

    ckpt = run_dir / "best.pt"
    if not ckpt.is_file():
        return None
    record = load_checkpoint(ckpt).get("model", {})  # the student's model record
    return (record.get("feature_network") or {}).get("sha256")


def students(seeds: list[int]) -> list[tuple[str, int, str, int]]:
    """(width, ngf, method, seed) of every student run, in the order they are trained."""
    return [(width, ngf, method, seed) for width, ngf in WIDTHS.items() for method in METHODS for seed in seeds]


def run_name(ngf: int, method: str, seed: int) -> str:
    return f"ngf{ngf}-{method}-s{seed}"


def collect_runs(out: Path, seeds: list[int]) -> tuple[dict[tuple[str, str], list[dict[str, Any]]], list[str]]:
    """The finished student runs by (width, method): each one's final metrics, folder and training seconds
    (wall and CPU, :func:`~kdkit.sweep.compare.epoch_seconds`); and the names of those not finished."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    pending = []
    for width, ngf, method, seed in students(seeds):
        name = run_name(ngf, method, seed)
        rows = run_rows(out / name)
        if not final(rows):
            pending.append(name)
            continue
        runs.setdefault((width, method), []).append({**final(rows), "dir": str(out / name), **epoch_seconds(rows)})
    return runs, pending


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/work/kdkit_runs/gan")
    ap.add_argument("--teacher-epochs", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--limit-train", type=int, default=8000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--docs", default="docs/results")
    ap.add_argument("--write-only", action="store_true", help="rewrite the table from the runs so far")
    args = ap.parse_args()
    out, t0 = Path(args.out), time.time()
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    seeds = [int(s) for s in args.seeds.split(",")]

    say("feature network: configs/fashion_edges/fid_classifier.yaml")
    classifier = train_once(classifier_recipe(args), out / "fid_classifier", args.write_only)
    features = out / "fid_classifier" / "best.pt"
    say(f"teacher: resnet_generator ngf {TEACHER_NGF}, {BLOCKS} blocks, {args.teacher_epochs} epochs")
    teacher_rows = train_once(recipe(args, TEACHER_NGF, "gan", 0, args.teacher_epochs, features), out / "teacher",
                              args.write_only)
    teacher = out / "teacher" / "best.pt"
    for _width, ngf, method, seed in ([] if args.write_only else students(seeds)):
        run_dir = out / run_name(ngf, method, seed)
        if not final(run_rows(run_dir)):
            say(f"{run_dir.name}: {args.epochs} epochs")
            train_once(recipe(args, ngf, method, seed, args.epochs, features,
                              teacher if method == "gan_compression" else None), run_dir)
        write(args, out, classifier, teacher_rows, *collect_runs(out, seeds), seeds)
    runs, pending = collect_runs(out, seeds)
    write(args, out, classifier, teacher_rows, runs, pending, seeds)
    if not args.write_only and not pending:
        costs(args, out)
    say(f"done in {(time.time() - t0) / 3600:.2f} h")
    return 0


def write(args, out: Path, classifier, teacher_rows, runs, pending, seeds) -> None:
    shas = {feature_sha(Path(r["dir"])) for rs in runs.values() for r in rs} | {feature_sha(out / "teacher")}
    shas.discard(None)
    if len(shas) > 1:
        raise SystemExit(f"the runs were measured through different feature networks: {sorted(shas)}")
    t = final(teacher_rows)
    head = ["student", "method", "runs"] + [f"test {label} (mean ± std)" for _, label, _ in COLUMNS] + \
        ["FID vs gan (paired by seed)"]
    cells = [[f"teacher ngf {TEACHER_NGF}", "gan", "1"] + [f"{t.get('test/' + k, float('nan')):.{d}f}"
                                                          for k, _, d in COLUMNS] + ["-"]]
    timed = [r for rs in runs.values() for r in rs] + [epoch_seconds(teacher_rows)]
    spent = sum(r["train_s"] for r in timed)
    verdicts = []
    for width, ngf in WIDTHS.items():
        plain = {Path(r["dir"]).name.rsplit("-s", 1)[1]: r for r in runs.get((width, "gan"), [])}
        for method in METHODS:
            rs = runs.get((width, method), [])
            row = [f"{width} width (ngf {ngf})", method, str(len(rs))]
            row += [mean_std([r[f"test/{k}"] for r in rs if f"test/{k}" in r], d) for k, _, d in COLUMNS]
            if method == "gan":
                row.append("-")
            else:
                diffs = [r["test/fid_fmnist"] - plain[s]["test/fid_fmnist"]
                         for r in rs if (s := Path(r["dir"]).name.rsplit("-s", 1)[1]) in plain]
                row.append(mean_std(diffs, 2) if diffs else "-")
                if diffs:
                    better = statistics.mean(diffs) < 0
                    verdicts.append(f"- {width} width: distillation {'lowers' if better else 'does not lower'} the "
                                    f"FID-FMNIST ({mean_std(diffs, 2)} over {len(diffs)} seeds, negative is better).")
            cells.append(row)
    acc = final(classifier).get("test/top1", float("nan"))
    text = ["# GAN compression on fashion_edges: pix2pix students at 1/2 and 1/4 of the teacher's width, with "
            "and without distillation", "",
            f"Generated by `python benchmarks/gan_table.py` (resumable; runs in {out}).", "",
            f"Task: the Fashion-MNIST garment (28x28, grey) from its Canny edge map (`fashion_edges`, docs/gan.md). "
            f"Generators: ResNet generators with {BLOCKS} residual blocks; teacher ngf {TEACHER_NGF} "
            f"({args.teacher_epochs} epochs), students ngf 16 and 8 ({args.epochs} epochs, seeds "
            f"{', '.join(map(str, seeds))}); all on {args.limit_train} training images (the first of those left "
            "after a 10% validation split carved by seed 0), batch 32, Adam 2e-4 (0.5, 0.999) with a cosine "
            f"decay for the generator and for the PatchGAN discriminator (ndf {DISCRIMINATOR['ndf']}, "
            f"{DISCRIMINATOR['n_layers']} stride-2 layers), hinge loss, L1 x 100; gan_compression adds GAN "
            "Compression's distillation of the encoder's output and every third block through 1x1 convolutions "
            "(weight 1), its discriminator starting from the teacher's. best.pt: the lowest validation FID-FMNIST; "
            "the numbers are its test metrics.", "",
            "FID-FMNIST and KID-FMNIST (x 10^3, 100 subsets of 1000) are FID and KID computed by torchmetrics in "
            "the 128-d penultimate feature space of a cnn_medium Fashion-MNIST classifier "
            f"(configs/fashion_edges/fid_classifier.yaml, {acc:.2f}% test top-1; SHA-256 "
            f"{next(iter(shas), 'n/a')[:16]}..., the same file for every row), not Inception's: they compare "
            "only with each other. PSNR and SSIM against the target garment.", "",
            f"Cost: {spent / 3600:.2f} h of training (teacher and students; feature network not counted), one CPU "
            f"thread each, on the 2-core development machine; {PAUSES}{cpu_clause(timed, 'runs')}.", "",
            "## Results (test split, 10,000 images)", ""]
    text += markdown_table(head, cells, set(range(2, len(head)))).splitlines()
    text += ["", *verdicts]
    if pending:
        text += ["", f"Not run yet (the table is being built; rerun the command): {', '.join(pending)}."]
    docs = Path(args.docs)
    (docs / "fashion_gan_compression.md").write_text("\n".join(text) + "\n")
    (docs / "fashion_gan_compression.json").write_text(json.dumps(
        {"args": vars(args), "teacher": t, "runs": {f"{w}/{m}": rs for (w, m), rs in runs.items()},
         "pending": pending}, indent=1, default=str))


def costs(args, out: Path) -> None:
    nets = {f"teacher ngf {TEACHER_NGF}": out / "teacher" / "best.pt"}
    nets.update({f"student ngf {ngf} ({w} width)": out / run_name(ngf, "gan", 0) / "best.pt"
                 for w, ngf in WIDTHS.items()})
    rows = cost_rows(nets, args.threads, "fid_fmnist")  # dense_table's: kdkit profile of each checkpoint
    doc = Path(args.docs) / "fashion_gan_compression.md"
    doc.write_text(doc.read_text() + "\n## Size and speed (kdkit profile, CPU, one thread)\n\n" + markdown_table(
        ["network", "params", "MACs per image", "ms, batch 1", "ms, batch 32", "test FID-FMNIST"], rows,
        {1, 2, 3, 4, 5}) + "\n")

if __name__ == "__main__":
    sys.exit(main())
