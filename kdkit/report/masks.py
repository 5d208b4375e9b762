"""The picture grid of a segmentation run: a few test images with their ground truth and the teacher's and
the student's predicted masks."""

from __future__ import annotations

from pathlib import Path

import torch

from ..batch import call
from ..features import pick_logits
from ..tasks.segmentation import IGNORE


@torch.no_grad()
def mask_grid_png(run_dir: Path, n: int = 4) -> bytes:
    """PNG of ``n`` test images of the run in ``run_dir`` (its best.pt, else checkpoint.pt): the image, the
    ground truth, the teacher's prediction (when its checkpoint is still there) and the student's; one
    colour per class, white where the truth is ignored."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from ..engine.rebuild import load_network, network_and_data
    from ..measure import figure_png

    ckpt = run_dir / "best.pt" if (run_dir / "best.pt").is_file() else run_dir / "checkpoint.pt"
    loaded, loaders = network_and_data(ckpt, None, "cpu")
    nets = {"student": loaded.model.eval()}
    spec = loaded.cfg.teacher[0] if loaded.cfg.teacher else None
    if spec is not None and spec.checkpoint and Path(spec.checkpoint).is_file():
        nets = {"teacher": load_network(spec.checkpoint, None).model.eval(), **nets}
    batch = next(iter(loaders.test))
    x, y = batch.inputs[:n], batch.targets[:n]
    preds = {name: pick_logits(call(net, x)).argmax(1) for name, net in nets.items()}
    ds = loaders.dataset
    k = ds.num_classes
    colours = matplotlib.colormaps["tab20"].resampled(max(k, 2))(range(max(k, 2)))[:k]
    cmap = ListedColormap([*colours, (1, 1, 1, 1)])
    mean, std = torch.tensor(ds.mean).view(-1, 1, 1), torch.tensor(ds.std).view(-1, 1, 1)
    cols = ["image", "ground truth", *preds]
    fig, axes = plt.subplots(len(x), len(cols), figsize=(2.2 * len(cols), 2.2 * len(x)), dpi=100, squeeze=False)
    for i in range(len(x)):
        image = (x[i].float() * std + mean).clamp(0, 1)
        shown = [image[0] if image.shape[0] == 1 else image.permute(1, 2, 0), y[i], *[p[i] for p in preds.values()]]
        for j, (ax, pic) in enumerate(zip(axes[i], shown)):
            if j == 0:
                ax.imshow(pic.numpy(), cmap="gray" if pic.dim() == 2 else None)
            else:
                ax.imshow(torch.where(pic == IGNORE, k, pic).numpy(), cmap=cmap, vmin=0, vmax=k,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
    return figure_png(fig)
