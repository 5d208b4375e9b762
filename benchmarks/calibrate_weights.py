"""Calibrate a method's weight to kdkit's formula against the reference formula its published weight was
tuned on: at the start of training, on the same inputs, ``weight = w_ref * L_ref / L_kdkit`` gives kdkit's
term the size, relative to the cross-entropy, that the reference term had with its weight.

    python benchmarks/calibrate_weights.py                       # CIFAR-100-shaped pairs, random init
    python benchmarks/calibrate_weights.py --fashion-teacher runs/results/fashion_mnist/teacher/checkpoint.pt

Only cases with a trained teacher calibrate: with a randomly initialised one, kdkit's CC and KD-SVD terms
are near zero (no structure to match) while RepDistiller's CC on unnormalised random embeddings is huge,
so their ratio means nothing; those cases report AB's ratio, which depends only on the feature shapes.

Methods: ``cc`` (kdkit: the paper's RBF-Taylor correlation of the penultimate features; reference:
RepDistiller's ``Correlation`` on two fresh 128-d linear embeddings, weight 0.02) and ``kdsvd`` (kdkit's
spatial singular vectors; reference: RepDistiller's ``KDSVD`` on the stage outputs, weight 1 as in
mdistiller; needs equal channel widths, so only same-width pairs). Also prints AB's ratio between the
authors' summed initialisation loss and the per-element mean. Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import reference_losses as ref  # noqa: E402

from kdkit import create_method, create_model  # noqa: E402
from kdkit.features import FeatureTap, probe  # noqa: E402
from kdkit.losses import ab_loss  # noqa: E402
from kdkit.methods import Distiller  # noqa: E402

CIFAR_PAIRS = [("resnet32x4", "resnet8x4"), ("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8")]
REF_WEIGHT = {"cc": 0.02, "kdsvd": 1.0}


def measure(teacher: nn.Module, student: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> dict:
    """Raw (unweighted) kdkit and reference terms, and the CE, for one batch at initialisation."""
    shape = tuple(x.shape[1:])
    teacher.eval()
    student.train()
    row = {}
    for name in ("cc", "kdsvd"):
        method = create_method(name, beta=1.0)
        d = Distiller(student, [method], [teacher], input_shape=shape)
        terms = d(x, y)
        row["ce"] = terms["ce"].item()
        row[f"{name}_kdkit"] = terms[name].item()
    s_info, t_info = probe(student, shape), probe(teacher, shape)
    s_stages, t_stages = s_info.stages(), t_info.stages()
    s_emb = [i for i in s_info.layers.values() if i.type == "Linear"][-1].path + ":input"
    t_emb = [i for i in t_info.layers.values() if i.type == "Linear"][-1].path + ":input"
    with FeatureTap(student, s_stages + [s_emb]) as ts:
        student(x)
    with torch.no_grad(), FeatureTap(teacher, t_stages + [t_emb]) as tt:
        teacher(x)
    torch.manual_seed(seed)
    f_s, f_t = ts.features[s_emb].flatten(1), tt.features[t_emb].flatten(1)
    embed_s, embed_t = nn.Linear(f_s.shape[1], 128), nn.Linear(f_t.shape[1], 128)
    row["cc_ref"] = ref.correlation(embed_s(f_s), embed_t(f_t)).item()
    gs, gt = [ts.features[s] for s in s_stages], [tt.features[t] for t in t_stages]
    n = min(len(gs), len(gt))
    gs, gt = gs[-n:], gt[-n:]
    if all(a.shape[1:] == b.shape[1:] for a, b in zip(gs, gt)):
        row["kdsvd_ref"] = ref.kdsvd(gs, gt).item()
    # AB: the authors' summed loss over the per-element mean, on the teacher's stage shapes
    pre = [torch.randn_like(t) for t in gt]
    row["ab_ratio"] = (ref.ab_init(pre, gt) / sum(ab_loss(p, t) for p, t in zip(pre, gt))).item()
    return row


def fashion_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from kdkit.config import DataConfig
    from kdkit.data import load_dataset

    ds = load_dataset(DataConfig(name="fashion_mnist"))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds.train.labels), generator=g)[:n]
    x = ds.train.images[idx].float() / 255.0
    mean, std = torch.tensor(ds.mean).view(1, -1, 1, 1), torch.tensor(ds.std).view(1, -1, 1, 1)
    return (x - mean) / std, ds.train.labels[idx]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fashion-teacher", help="a trained cnn_medium checkpoint: adds cnn_medium -> cnn_tiny "
                                              "on real Fashion-MNIST images")
    ap.add_argument("--pairs", default=",".join(f"{t}-{s}" for t, s in CIFAR_PAIRS))
    ap.add_argument("--json", default="docs/results/weight_calibration.json")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cases = []
    for pair in filter(None, args.pairs.split(",")):
        t_name, s_name = pair.split("-", 1)
        cases.append((pair + " (random init, N(0,1) inputs)", t_name, s_name, 100, None))
    if args.fashion_teacher:  # cnn_tiny is the recipes' student; cnn_medium has the teacher's widths (KD-SVD)
        for student in ("cnn_tiny", "cnn_medium"):
            cases.append((f"cnn_medium-{student} (trained teacher, Fashion-MNIST)", "cnn_medium", student, 10,
                          args.fashion_teacher))
    results = []
    for label, t_name, s_name, classes, ckpt in cases:
        rows = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            in_ch = 1 if ckpt else 3
            teacher = create_model(t_name, num_classes=classes, in_channels=in_ch)
            student = create_model(s_name, num_classes=classes, in_channels=in_ch)
            if ckpt:
                teacher.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["student"])
                x, y = fashion_batch(args.batch_size, seed)
            else:
                x = torch.randn(args.batch_size, 3, 32, 32)
                y = torch.randint(0, classes, (args.batch_size,))
            rows.append(measure(teacher, student, x, y, seed))
        summary = {"case": label, "seeds": rows}
        for m, w in REF_WEIGHT.items() if ckpt else ():  # an untrained teacher calibrates nothing (see docs)
            ratios = [r[f"{m}_ref"] / r[f"{m}_kdkit"] for r in rows if f"{m}_ref" in r]
            if ratios:
                summary[f"{m}_ratio"] = statistics.median(ratios)
                summary[f"{m}_weight"] = w * statistics.median(ratios)
                summary[f"{m}_ref_vs_ce"] = statistics.median(w * r[f"{m}_ref"] / r["ce"] for r in rows)
        summary["ab_ratio"] = statistics.median(r["ab_ratio"] for r in rows)
        results.append(summary)
        print(f"done: {label}", file=sys.stderr, flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"config": vars(args), "results": results}, indent=1))
    fmt = lambda r, k, f: f.format(r[k]) if k in r else "-"  # noqa: E731
    lines = [f"Generated by `python benchmarks/calibrate_weights.py {' '.join(sys.argv[1:])}`: batch "
             f"{args.batch_size}, median over seeds 0..{args.seeds - 1}, students at initialisation. Weight for "
             "kdkit = reference weight (CC 0.02, KD-SVD 1) x reference term / kdkit term.", "",
             "| case | CC: ref/kdkit | CC weight for kdkit | KD-SVD: ref/kdkit | KD-SVD weight for kdkit "
             "| AB: authors/mean |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['case']} | {fmt(r, 'cc_ratio', '{:.0f}')} | {fmt(r, 'cc_weight', '{:.1f}')} | "
                     f"{fmt(r, 'kdsvd_ratio', '{:.1f}')} | {fmt(r, 'kdsvd_weight', '{:.1f}')} | {r['ab_ratio']:.1f} |")
    Path(args.json).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

if __name__ == "__main__":
    main()
