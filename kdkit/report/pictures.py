"""The picture grids of dense runs: a few test images with their ground truth and the teacher's and the
student's predictions, as masks (segmentation), boxes (detection) or images (image-to-image)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..batch import call
from ..features import pick_logits
from ..tasks import create_task
from ..tasks.segmentation import IGNORE

SHOWN_SCORE = 0.3  # detections drawn: those scoring at least this


def _pictures(run_dir: Path, n: int) -> tuple[dict[str, Any], Any, Any, Any, Any]:
    """The run's networks (teacher first, when its checkpoint is still there), ``n`` test inputs and targets,
    the dataset and the run's task."""
    from ..engine.rebuild import load_network, network_and_data

    ckpt = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "checkpoint.pt"
    loaded, loaders = network_and_data(ckpt, None, "cpu")
    nets = {"student": loaded.model.eval()}
    spec = loaded.cfg.teacher[0] if loaded.cfg.teacher else None
    if spec is not None and spec.checkpoint and Path(spec.checkpoint).is_file():
        nets = {"teacher": load_network(spec.checkpoint, None).model.eval(), **nets}
    batch = next(iter(loaders.test))
    return nets, batch.inputs[:n], batch.targets[:n], loaders.dataset, create_task(loaded.cfg.task)


def _grid(ds, x, cols: list[str], draw) -> bytes:
    """A figure of one row per image and one column per name of ``cols`` (the first the image itself);
    ``draw(ax, row, column)`` fills each other cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..measure import figure_png

    mean, std = torch.tensor(ds.mean).view(-1, 1, 1), torch.tensor(ds.std).view(-1, 1, 1)
    fig, axes = plt.subplots(len(x), len(cols), figsize=(2.2 * len(cols), 2.2 * len(x)), dpi=100, squeeze=False)
    for i in range(len(x)):
        image = (x[i].float() * std + mean).clamp(0, 1)
        for j, ax in enumerate(axes[i]):
            if j == 0:
                ax.imshow(image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy(),
                          cmap="gray" if image.shape[0] == 1 else None)
            else:
                draw(ax, i, j, image)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
    return figure_png(fig)


def _colours(k: int):
    import matplotlib

    return matplotlib.colormaps["tab20"].resampled(max(k, 2))(range(max(k, 2)))[:k]


@torch.no_grad()
def mask_grid_png(run_dir: Path, n: int = 4) -> bytes:
    """PNG of ``n`` test images of the segmentation run in ``run_dir`` (its best.pt, else checkpoint.pt): the
    image, the ground truth, the teacher's prediction (when its checkpoint is still there) and the
    student's; one colour per class, white where the truth is ignored."""
    from matplotlib.colors import ListedColormap

    nets, x, y, ds, _ = _pictures(run_dir, n)
    preds = {name: pick_logits(call(net, x)).argmax(1) for name, net in nets.items()}
    k = ds.num_classes
    cmap = ListedColormap([*_colours(k), (1, 1, 1, 1)])
    shown = [y, *preds.values()]

    def draw(ax, i, j, image):
        ax.imshow(torch.where(shown[j - 1][i] == IGNORE, k, shown[j - 1][i]).numpy(), cmap=cmap, vmin=0, vmax=k,
                  interpolation="nearest")
    return _grid(ds, x, ["image", "ground truth", *preds], draw)


@torch.no_grad()
def box_grid_png(run_dir: Path, n: int = 4) -> bytes:
    """PNG of ``n`` test images of the detection run in ``run_dir``: the ground-truth boxes, then the teacher's
    (when its checkpoint is still there) and the student's detections scoring at least ``SHOWN_SCORE``, one
    colour per class, each box labelled with its class (and score)."""
    from matplotlib.patches import Rectangle

    nets, x, y, ds, task = _pictures(run_dir, n)
    task.num_classes = ds.num_classes
    found = {}
    for name, net in nets.items():
        task.bind(net, x)
        found[name] = task.decode(pick_logits(call(net, x)).float())
    truth = [(t[t[:, 0] >= 0][:, 1:], None, t[t[:, 0] >= 0][:, 0].long()) for t in y]
    shown = [truth, *found.values()]
    colours, names = _colours(ds.num_classes), ds.classes or [str(c) for c in range(ds.num_classes)]

    def draw(ax, i, j, image):
        ax.imshow(image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy(),
                  cmap="gray" if image.shape[0] == 1 else None)
        boxes, scores, classes = shown[j - 1][i]
        for b, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
            if scores is not None and float(scores[b]) < SHOWN_SCORE:
                continue
            c = int(classes[b])
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, lw=1.2, ec=colours[c]))
            label = names[c] if scores is None else f"{names[c]} {float(scores[b]):.2f}"
            ax.text(x1 - 0.5, y1 - 1, label, fontsize=5, color=colours[c], va="bottom")
    return _grid(ds, x, ["image", "ground truth", *found], draw)


@torch.no_grad()
def image_grid_png(run_dir: Path, n: int = 6) -> bytes:
    """PNG of ``n`` test inputs of the image-to-image run in ``run_dir``: the input, the target, the teacher's
    image (when its checkpoint is still there) and the student's."""
    nets, x, y, ds, task = _pictures(run_dir, n)
    made = {name: ((pick_logits(call(net, x)).float() + 1) / 2).clamp(0, 1) for name, net in nets.items()}
    shown = [(task.target_image(y) + 1) / 2, *made.values()]

    def draw(ax, i, j, image):
        picture = shown[j - 1][i]
        ax.imshow(picture[0].numpy() if picture.shape[0] == 1 else picture.permute(1, 2, 0).numpy(),
                  cmap="gray" if picture.shape[0] == 1 else None, vmin=0, vmax=1)
    return _grid(ds, x, ["input", "target", *made], draw)
