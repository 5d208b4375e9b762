"""Specialist ensembles (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", 2015,
section 5): a trained generalist, and specialists for clusters of classes it confuses.

    kdkit specialists configs/fashion_mnist/specialists.yaml

```yaml
generalist: runs/fashion_mnist-teacher/checkpoint.pt   # a kdkit run's checkpoint
clusters: 4            # k-means clusters of the classes (one specialist per cluster of 2+ classes)
top_k: 2               # the generalist's most probable classes that pick the specialists of a test image
dustbin_ratio: 1.0     # out-of-cluster training images per in-cluster one (the paper: half and half)
out_dir: runs/fashion_mnist-specialists
set: [train.epochs=3]  # overrides of the generalist's run config for the specialists' training
```

1. **Clusters.** The generalist's softmax outputs on the training images give a ``K x K`` covariance
   matrix; k-means on its rows (scikit-learn, ``n_init=10``) groups classes that are predicted together.
   By default the covariance is normalised into a correlation matrix first (``similarity``; see
   :func:`class_clusters` for why).
2. **Specialists.** For each cluster ``S`` of two or more classes: a network of the generalist's
   architecture with ``|S| + 1`` outputs (the cluster's classes and a *dustbin* class for all others),
   initialised from the generalist (its classifier's rows for ``S``; the dustbin row from the mean of
   the others, bias raised by ``log(K - |S|)``), trained with the labels on every training image of
   ``S`` plus a random subsample of the others (``dustbin_ratio`` of them per image of ``S``). Its
   dustbin logit is then raised by ``log(n_out / n_used)``, the factor by which the dustbin class was
   under-sampled, as the paper corrects for its biased training set.
3. **Inference** (the paper's procedure): for each test image take the ``top_k`` classes the generalist
   finds most probable; the active specialists are those whose cluster meets them; the prediction is the
   distribution ``q = softmax(z)`` over all classes minimising
   ``KL(p_g || q) + sum_{m active} KL(p_m || q_m)``, where ``q_m`` is ``q`` seen by specialist ``m`` (its
   classes, and the summed probability of all others as the dustbin), found by L-BFGS on ``z`` from
   ``z = log p_g``. An image without active specialists keeps the generalist's prediction.

Each specialist is an ordinary run in ``<out_dir>/specialist<m>`` (metrics, checkpoints, resume): a
finished one is skipped when the command is run again, one killed part-way resumes. The report
(``summary.json`` and ``summary.md``) gives the generalist alone and with its specialists, overall and
on the test images of each cluster, and each specialist's own accuracy on its ``|S| + 1``-way problem.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .batch import index as index_inputs
from .build import build, build_model, from_config, pick_device, resume
from .config import apply_overrides, config_dict, load_yaml, parse_config
from .data import BatchLoader, Dataset, ImageSet, load_dataset
from .engine.checkpoint import write_atomic
from .engine.rebuild import load_network
from .engine.trainer import Callback
from .errors import ConfigError
from .features import probe
from .pipeline import final_metrics
from .schema import from_dict
from .specialist_combination import COMBINE_TOL, active_specialists, combination_residual, combine  # noqa: F401
from .tasks import create_task


@dataclass
class SpecialistsConfig:
    generalist: str  # a kdkit checkpoint of the trained generalist
    clusters: int = 2
    similarity: Literal["correlation", "covariance"] = "correlation"  # of the generalist's outputs, clustered
    top_k: int = 2
    dustbin_ratio: float = 1.0
    out_dir: str = "runs/specialists"
    set: list[str] = field(default_factory=list)  # overrides of the generalist's config for the specialists
    net: str | None = None  # which network of the generalist's checkpoint (default: its student)
    seed: int = 0  # k-means and the dustbin subsample

    def __post_init__(self) -> None:
        if not 2 <= self.clusters <= 4096:
            raise ValueError(f"clusters must be in [2, 4096], got {self.clusters}")
        if not 1 <= self.top_k <= 4096:
            raise ValueError(f"top_k must be in [1, 4096], got {self.top_k}")
        if not 0.0 < self.dustbin_ratio <= 1000.0 or not math.isfinite(self.dustbin_ratio):
            raise ValueError(f"dustbin_ratio must be in (0, 1000], got {self.dustbin_ratio}")


def load_specialists_config(path: str | Path, overrides: list[str] | None = None) -> SpecialistsConfig:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with 'generalist'")
    try:
        return from_dict(SpecialistsConfig, apply_overrides(data, list(overrides or [])))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# ------------------------------------------------------------------------------------------- clusters
def class_clusters(probs: Tensor, n: int, seed: int = 0, similarity: str = "correlation") -> list[list[int]]:
    """Clusters of classes predicted together: k-means (``n`` clusters) on the rows of the covariance
    matrix of the softmax outputs ``probs`` ``[N, K]`` (``similarity="covariance"``, the paper's words) or
    of the correlation matrix, the covariance normalised by the classes' variances (the default: on
    Fashion-MNIST the raw covariance's rows are dominated by each class's own variance and k-means put
    seven classes together; the correlation found T-shirt/shirt, pullover/coat, the shoes); each cluster
    sorted, the clusters by first class."""
    from sklearn.cluster import KMeans

    k = probs.shape[1]
    if n > k:
        raise ConfigError(f"specialists: {n} clusters asked for, but the dataset has only {k} classes")
    cov = torch.cov(probs.double().T)
    if similarity == "correlation":
        std = cov.diagonal().clamp_min(1e-24).sqrt()
        cov = cov / std[:, None] / std[None, :]
    labels = KMeans(n_clusters=n, n_init=10, random_state=seed).fit_predict(cov.numpy())
    clusters = [sorted(int(c) for c in range(k) if labels[c] == j) for j in range(n)]
    return sorted((c for c in clusters if c), key=lambda c: c[0])


# ------------------------------------------------------------------------------------------- data
@dataclass
class SpecialistData:
    dataset: Dataset
    cluster: list[int]
    n_out: int  # out-of-cluster training images available
    n_used: int  # of which the specialist trains on

    @property
    def dustbin_shift(self) -> float:
        """Added to the dustbin logit: ``log(n_out / n_used)``, undoing the under-sampling of the dustbin."""
        return math.log(self.n_out / self.n_used) if self.n_used else 0.0


def remap(labels: Tensor, cluster: list[int], num_classes: int) -> Tensor:
    """Labels of a cluster's specialist: ``cluster[i] -> i``, any other class -> ``len(cluster)`` (dustbin)."""
    table = torch.full((num_classes,), len(cluster), dtype=torch.int64)
    table[torch.tensor(cluster)] = torch.arange(len(cluster))
    return table[labels]


def specialist_data(ds: Dataset, cluster: list[int], ratio: float, seed: int) -> SpecialistData:
    """The training set of one specialist (every image of the cluster and a random ``ratio`` of as many
    others) and the whole test set, with remapped labels."""
    if ds.train.images is None:
        raise ConfigError("specialists need an in-memory dataset (not an image folder read lazily)")
    member = torch.isin(ds.train.labels, torch.tensor(cluster))
    inside, outside = member.nonzero().flatten(), (~member).nonzero().flatten()
    g = torch.Generator().manual_seed(seed)
    n_used = min(len(outside), max(1, round(ratio * len(inside))))
    picked = outside[torch.randperm(len(outside), generator=g)[:n_used]]
    index = torch.cat([inside, picked]).sort().values
    train = ImageSet(remap(ds.train.labels[index], cluster, ds.num_classes),
                     images=index_inputs(ds.train.images, index))
    test = ImageSet(remap(ds.test.labels, cluster, ds.num_classes), images=ds.test.images)
    names = [ds.classes[c] if c < len(ds.classes) else str(c) for c in cluster]
    sub = Dataset(ds.name, train, test, len(cluster) + 1, ds.in_channels, ds.image_size, ds.mean, ds.std,
                  ds.crop_padding, ds.flip, classes=[*names, "dustbin"])
    return SpecialistData(sub, list(cluster), len(outside), n_used)


# ------------------------------------------------------------------------------------------- models
def classifier_path(model: nn.Module, input_shape: tuple[int, ...], num_classes: int) -> str:
    """The module path of the last linear layer with ``num_classes`` outputs (the classifier)."""
    info = probe(model, input_shape)
    hits = [i for i in info.layers.values() if i.type == "Linear" and i.shape == (num_classes,)]
    if not hits:
        raise ConfigError(f"specialists: the generalist has no linear classifier with {num_classes} outputs "
                          "whose rows could initialise a specialist")
    return max(hits, key=lambda i: i.order).path


def init_from_generalist(specialist: nn.Module, generalist: nn.Module, path: str, cluster: list[int]) -> None:
    """Copy the generalist's weights into ``specialist`` (same architecture, ``|S| + 1`` classes): every
    layer but the classifier at ``path`` as is; the classifier's rows of ``cluster``, and for the dustbin
    the mean of the other rows with the bias raised by ``log(number of other classes)``."""
    g_state = generalist.state_dict()
    head = {k for k in g_state if k.startswith(path + ".")}
    missing = specialist.load_state_dict({k: v for k, v in g_state.items() if k not in head}, strict=False)
    if missing.unexpected_keys or set(missing.missing_keys) - head:
        raise ConfigError(f"specialists: the specialist and the generalist differ beyond the classifier: "
                          f"{sorted(set(missing.missing_keys) - head)[:3]}")
    g_fc = dict(generalist.named_modules())[path]
    s_fc = dict(specialist.named_modules())[path]
    others = [c for c in range(g_fc.out_features) if c not in cluster]
    with torch.no_grad():
        s_fc.weight[:-1] = g_fc.weight[cluster]
        s_fc.weight[-1] = g_fc.weight[others].mean(0)
        if s_fc.bias is not None and g_fc.bias is not None:
            s_fc.bias[:-1] = g_fc.bias[cluster]
            s_fc.bias[-1] = g_fc.bias[others].mean() + math.log(len(others))


# ------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict(model: nn.Module, loader: BatchLoader) -> tuple[Tensor, Tensor]:
    """Logits and labels of ``model`` over ``loader`` (eval mode, on the loader's device; returned on CPU)."""
    model.eval()
    outs, labels = [], []
    for x, y, _ in loader:
        outs.append(model(x).float().cpu())
        labels.append(y.cpu())
    return torch.cat(outs), torch.cat(labels)


# ------------------------------------------------------------------------------------------- the command
def run_specialists(cfg: SpecialistsConfig, out_dir: str | Path | None = None,
                    log: Callable[[str], None] = print, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Cluster the classes, train (or continue) one specialist per cluster, and evaluate the generalist
    alone and with its specialists; writes and returns the summary."""
    root = Path(out_dir or cfg.out_dir)
    loaded = load_network(cfg.generalist, cfg.net)
    g_cfg, spec = loaded.cfg, loaded.spec
    device = pick_device(g_cfg.train.device)
    ds = load_dataset(g_cfg.data)
    k = ds.num_classes
    loaded.check_data(create_task(g_cfg.task).record(ds), ds.name)
    if cfg.clusters > k:
        raise ConfigError(f"specialists: {cfg.clusters} clusters asked for, but {ds.name} has only {k} classes")
    if cfg.top_k > k:
        raise ConfigError(f"specialists: top_k is {cfg.top_k}, but {ds.name} has only {k} classes (top_k picks the "
                          "generalist's most probable classes)")
    generalist = loaded.model.to(device)
    loader = {split: BatchLoader(getattr(ds, split), g_cfg.data.eval_batch_size, mean=ds.mean, std=ds.std,
                                 device=device) for split in ("train", "test")}
    log(f"specialists: generalist {spec.name} from {cfg.generalist}; its predictions on {len(ds.train)} "
        "training images")
    z_train, _ = predict(generalist, loader["train"])
    clusters = class_clusters(z_train.softmax(1), cfg.clusters, cfg.seed, cfg.similarity)
    names = ds.classes or [str(c) for c in range(k)]
    for c in clusters:
        log(f"specialists: cluster {', '.join(names[i] for i in c)}")
    trained = [c for c in clusters if len(c) >= 2]
    if not trained:
        raise ConfigError("specialists: every cluster holds a single class; ask for fewer clusters")
    path = classifier_path(generalist, ds.input_shape, k)

    base = config_dict(g_cfg)
    base.update(method=["vanilla"], teacher=[], peers=[], stages=[])
    base["model"] = {**base["model"], "checkpoint": None, "net": None}
    base = apply_overrides(base, list(cfg.set))
    z_test, y_test = predict(generalist, loader["test"])
    runs, probs = [], []
    for m, cluster in enumerate(trained):
        data = specialist_data(ds, cluster, cfg.dustbin_ratio, cfg.seed + m)
        run_dir = root / f"specialist{m}"
        run_cfg = parse_config({**base, "train": {**base["train"], "run_name": f"specialist{m}"}})
        if final_metrics(run_dir) is not None:
            status = "skipped (finished)"
        elif (run_dir / "checkpoint.pt").is_file():
            log(f"specialists: resuming specialist{m} in {run_dir}")
            resume(run_dir, built=build(run_cfg, device, dataset=data.dataset), log=log, callbacks=callbacks).fit()
            status = "resumed"
        else:
            log(f"specialists: training specialist{m} ({len(cluster)} classes + dustbin, "
                f"{len(data.dataset.train)} images) in {run_dir}")
            built = build(run_cfg, device, dataset=data.dataset)
            init_from_generalist(built.distiller.student, generalist, path, cluster)
            from_config(run_cfg, built=built, run_dir=run_dir, log=log, callbacks=callbacks).fit()
            status = "trained"
        s_spec = copy.deepcopy(run_cfg.model)
        s_spec.checkpoint = str(run_dir / "checkpoint.pt")
        specialist = build_model(s_spec, len(cluster) + 1, ds.in_channels).to(device)
        z_m, _ = predict(specialist, loader["test"])
        z_m[:, -1] += data.dustbin_shift
        probs.append((cluster, z_m.softmax(1)))
        own = final_metrics(run_dir) or {}
        runs.append({"specialist": m, "classes": [names[c] for c in cluster], "dir": str(run_dir), "status": status,
                     "train_images": len(data.dataset.train), "dustbin_shift": data.dustbin_shift,
                     "own_test_top1": own.get("test/top1")})

    p_g = z_test.softmax(1)
    active = active_specialists(p_g, trained, cfg.top_k)
    q = combine(p_g, probs, active)
    residual = combination_residual(q, p_g, probs, active)
    g_hit, c_hit = p_g.argmax(1) == y_test, q.argmax(1) == y_test
    per_cluster = []
    for m, cluster in enumerate(trained):
        rows = torch.isin(y_test, torch.tensor(cluster))
        per_cluster.append({"specialist": m, "classes": [names[c] for c in cluster], "test_images": int(rows.sum()),
                            "generalist_top1": 100.0 * float(g_hit[rows].float().mean()),
                            "combined_top1": 100.0 * float(c_hit[rows].float().mean()),
                            "active_on": 100.0 * float(active[:, m].float().mean())})
    summary = {"generalist": cfg.generalist, "clusters": [[names[c] for c in cl] for cl in clusters],
               "top_k": cfg.top_k, "test_images": len(y_test),
               "generalist_top1": 100.0 * float(g_hit.float().mean()),
               "combined_top1": 100.0 * float(c_hit.float().mean()),
               "with_active_specialist": 100.0 * float(active.any(1).float().mean()),
               "changed_predictions": int((p_g.argmax(1) != q.argmax(1)).sum()),
               "combination_residual": residual,  # the largest gradient entry left (float32 q)
               "specialists": runs, "per_cluster": per_cluster}
    root.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=1).encode()
    write_atomic(root / "summary.json", lambda f: f.write(text))
    table = format_summary(summary)
    write_atomic(root / "summary.md", lambda f: f.write(f"# Specialists of {cfg.generalist}\n\n{table}\n".encode()))
    log(table)
    return summary


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"generalist alone: test top1 {s['generalist_top1']:.2f}%; with its specialists: "
             f"{s['combined_top1']:.2f}% ({s['changed_predictions']} of {s['test_images']} predictions changed, "
             f"{s['with_active_specialist']:.1f}% of test images with an active specialist, top_k {s['top_k']})",
             "", "| specialist | classes | test images | generalist top1 | with specialists top1 "
                 "| own top1 (|S|+1 classes) |",
             "|---|---|---:|---:|---:|---:|"]
    for c, r in zip(s["per_cluster"], s["specialists"]):
        own = f"{r['own_test_top1']:.2f}" if r["own_test_top1"] is not None else "-"
        lines.append(f"| {c['specialist']} | {', '.join(c['classes'])} | {c['test_images']} | "
                     f"{c['generalist_top1']:.2f} | {c['combined_top1']:.2f} | {own} |")
    return "\n".join(lines)
