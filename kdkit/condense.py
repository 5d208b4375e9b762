"""Dataset distillation: ``kdkit condense`` condenses a training set into ``ipc`` synthetic images per class by
distribution matching (``method="dm"``, the default: Zhao & Bilen 2023, "Dataset Condensation with Distribution
Matching", WACV) or by gradient matching (``method="gm"``: Zhao, Mopuri & Bilen 2021, "Dataset Condensation with
Gradient Matching", ICLR).

The synthetic images start as ``ipc`` random real images of each class. Each iteration draws a freshly
initialised network (``model``, a kdkit zoo classifier with its batch norms made instance norms, as in the
paper's ConvNet; its embedding is its last feature map before global pooling, flattened, as the paper's, or
without a global pooling the input of its last linear layer: the paper's ConvNet, ``convnet``),
embeds a batch of ``batch_real`` real images of every class and the class's synthetic images, both under the
same random augmentation (the paper's siamese augmentation, reduced here to a shared random flip and
translation), and moves the synthetic images to make each class's mean embedding match the real one: the loss
is the sum over classes of the squared distance between the two means; SGD with momentum 0.5 on the pixels (in
normalised units), batch 256 as in the paper, each step projected back into valid images ([0, 1]). The
learning rate is not the paper's 1.0: kdkit's zoo networks are initialised at another scale, and on digits and
Fashion-MNIST (ipc 2, cnn_small) the matching loss on held-out networks rose at 0.1 and above and fell at
0.003 (the default); it is reported before and after, on networks and real batches never used for an update.

Gradient matching moves the synthetic images so that the gradient of the cross-entropy with respect to a network's
weights on them matches its gradient on real images of the same class. The distance is the paper's: for every
weight tensor of two or more dimensions, the sum over its output units of one minus the cosine between the two
gradients (biases and normalisation scales left out), summed over layers and classes. Each iteration draws a fresh
network (by default ``convnet``, the paper's ConvNet: on the zoo's narrow, globally pooled networks the distance
did not fall, docs/beyond.md) and alternates ``outer`` image updates (one per class batch, the same siamese
augmentation) with ``inner`` full-batch SGD steps of the network on the current synthetic images (learning rate
0.01), as the paper does; its loops by ipc: 1 -> (1, 1), 10 -> (10, 50), 20 -> (20, 25), 50 -> (50, 10), in general
``outer = min(ipc, 50)``, ``inner = 500 // ipc`` within [10, 50] (1 for ipc 1). Pixel learning rate 0.1, the
paper's, momentum 0.5. It is far dearer than distribution matching (a double backward per class per image update,
and ``outer`` updates per iteration): at 10 images per class, 1000 iterations cost about 400 epochs of the real
set's forward and backward passes.

The result is a safetensors file (``images`` in [0, 1], ``labels``; :mod:`kdkit.data.synthetic`) that any
recipe trains on with ``data.train_file`` (the test split stays the real one). ``iterations: 0`` writes the
starting point, a random real subset of the same size: the baseline the papers compare with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ConfigError

METHODS = ("dm", "gm")
DEFAULT_LR = {"dm": 0.003, "gm": 0.1}  # on the pixels, in normalised units (module docstring)
DEFAULT_MODEL = {"dm": "cnn_small", "gm": "convnet"}  # the networks drawn fresh (module docstring)
HELD_OUT_NETS = 4  # fresh networks on which the objective is measured before and after, never trained on


def _embedder(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``model``'s last feature map before its global pooling (the paper's ConvNet embeds with its flattened
    last feature map: averaging it away leaves an instance-normalised network almost blind to its input), or,
    without a global pooling layer, the input of its last linear layer; flattened, as a function of the
    model's input."""
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d)
             and m.output_size in (1, (1, 1))]
    last = pools or [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ConfigError(f"condense: {type(model).__name__} has no global pooling or linear layer whose input "
                          "could embed the images")
    store: dict[str, Tensor] = {}

    def embed(x: Tensor) -> Tensor:
        hook = last[-1].register_forward_pre_hook(lambda m, args: store.__setitem__("x", args[0]))
        try:
            model(x)
        finally:
            hook.remove()
        return store.pop("x").flatten(1)

    return embed


def _takes_input_size(name: str) -> bool:
    """Whether zoo model ``name`` is built for one input size (``input_size``: convnet, mlp), which the dataset's
    image side then sets."""
    import inspect

    from .models import MODELS

    if name not in MODELS.names():
        return False
    return "input_size" in inspect.signature(MODELS.get(name)).parameters


def _instance_norm(model: nn.Module) -> nn.Module:
    """Every ``BatchNorm2d`` of ``model`` replaced by instance normalisation (each image normalised on its own,
    as in the paper's ConvNet), so that the embeddings of a fresh network are of order one and a batch of a
    few synthetic images is not normalised by its own statistics."""
    from .transforms import replace_module

    for path, m in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]:
        replace_module(model, path, nn.InstanceNorm2d(m.num_features, affine=True))
    return model


def _augment(x: Tensor, params: tuple[bool, int, int]) -> Tensor:
    """A flip and a translation (zero padded) by ``params``: the same for the real and the synthetic batch."""
    flip, dy, dx = params
    if flip:
        x = x.flip(-1)
    h, w = x.shape[-2:]
    pad = max(abs(dy), abs(dx))
    if pad:
        x = nn.functional.pad(x, (pad, pad, pad, pad))[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]
    return x


def _gradient_distance(real: tuple[Tensor, ...], syn: tuple[Tensor, ...]) -> Tensor:
    """Zhao et al. 2021's distance between two lists of weight gradients: for every tensor of two or more
    dimensions, the sum over its output units (first dimension) of one minus the cosine between the two
    gradients of that unit; one-dimensional tensors (biases, normalisation scales) are left out."""
    total = syn[0].new_zeros(())
    for a, b in zip(real, syn):
        if b.dim() < 2:
            continue
        a, b = a.flatten(1), b.flatten(1)
        total = total + (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-6)).sum()
    return total


def loops(ipc: int) -> tuple[int, int]:
    """Gradient matching's (outer, inner) loop counts for ``ipc`` (module docstring; the paper's at 1, 10, 20
    and 50)."""
    return (1, 1) if ipc == 1 else (min(ipc, 50), min(50, max(10, 500 // ipc)))


def condense(data: str = "fashion_mnist", ipc: int = 10, iterations: int = 1000, model: str | None = None,
             lr: float | None = None, batch_real: int = 256, seed: int = 0, out: str | Path | None = None,
             root: str | None = None, log: Callable[[str], None] | None = None,
             method: str = "dm") -> dict[str, Any]:
    """Condense dataset ``data``'s training split into ``ipc`` images per class by ``method`` (``dm`` or ``gm``,
    see the module docstring; ``lr`` and ``model`` default to :data:`DEFAULT_LR` and :data:`DEFAULT_MODEL`);
    writes ``out`` (a safetensors file for ``data.train_file``) when given; returns the images, labels, the
    loss curve, and the matching loss on held-out networks and real batches before and after."""
    from .data.synthetic import write_train_file
    from .data.tensors import image_classification, unit_images
    from .models import create_model

    if method not in METHODS:
        raise ConfigError(f"condense: method must be one of {', '.join(METHODS)} (distribution or gradient "
                          f"matching), got {method!r}")
    lr = DEFAULT_LR[method] if lr is None else lr
    model = DEFAULT_MODEL[method] if model is None else model
    if type(ipc) is not int or ipc < 1:
        raise ConfigError(f"condense: ipc (images per class) must be an integer >= 1, got {ipc!r}")
    if iterations < 0 or batch_real < 1 or lr <= 0:
        raise ConfigError("condense: iterations must be >= 0, batch_real >= 1 and lr > 0")
    ds, mean, std = image_classification(data, "condense", root)
    gen = torch.Generator().manual_seed(seed)
    real = unit_images(ds.train.images)
    by_class = [torch.nonzero(ds.train.labels == c).flatten() for c in range(ds.num_classes)]
    short = [ds.classes[c] if c < len(ds.classes) else str(c) for c, idx in enumerate(by_class) if len(idx) < ipc]
    if short:
        raise ConfigError(f"condense: class {short[0]} has fewer than {ipc} training images")
    start = torch.cat([idx[torch.randperm(len(idx), generator=gen)[:ipc]] for idx in by_class])
    syn = ((real[start] - mean) / std).clone().requires_grad_(True)  # optimised in normalised units
    labels = ds.train.labels[start].clone()
    opt = torch.optim.SGD([syn], lr=lr, momentum=0.5)
    shift = max(1, ds.image_size[0] // 8)
    sized = {"input_size": ds.image_size[0]} if _takes_input_size(model) else {}

    def fresh(net_seed: int) -> nn.Module:
        torch.manual_seed(net_seed)
        net = _instance_norm(create_model(model, num_classes=ds.num_classes, in_channels=ds.in_channels, **sized))
        net.eval()
        for p in net.parameters():
            p.requires_grad_(method == "gm")
        return net

    def dm_loss(net: nn.Module, picks: list[Tensor], augs: list[Any]) -> Tensor:
        embed, loss = _embedder(net), syn.new_zeros(())
        for c, (pick, params) in enumerate(zip(picks, augs)):
            with torch.no_grad():
                target = embed(_augment((real[pick] - mean) / std, params)).mean(0)
            loss = loss + ((target - embed(_augment(syn[c * ipc:(c + 1) * ipc], params)).mean(0)) ** 2).sum()
        return loss

    def gm_loss(net: nn.Module, picks: list[Tensor], augs: list[Any], graph: bool = True) -> Tensor:
        weights, loss = [p for p in net.parameters()], syn.new_zeros(())
        for c, (pick, params) in enumerate(zip(picks, augs)):
            x = _augment((real[pick] - mean) / std, params)
            target = torch.autograd.grad(nn.functional.cross_entropy(net(x), ds.train.labels[pick]), weights)
            mine = syn[c * ipc:(c + 1) * ipc]
            grads = torch.autograd.grad(nn.functional.cross_entropy(net(_augment(mine, params)),
                                                                    labels[c * ipc:(c + 1) * ipc]),
                                        weights, create_graph=graph)
            loss = loss + _gradient_distance(target, grads)
        return loss

    matching = dm_loss if method == "dm" else gm_loss
    # held out: the objective on networks and real batches never used to update the images, unaugmented
    held_gen = torch.Generator().manual_seed(seed + 1)
    held_picks = [idx[torch.randint(len(idx), (batch_real,), generator=held_gen)] for idx in by_class]
    held_nets = [fresh(-(seed * 101 + k + 1)) for k in range(HELD_OUT_NETS)]

    def held_out() -> float:
        plain = [(False, 0, 0)] * len(by_class)
        if method == "gm":
            return sum(float(gm_loss(n, held_picks, plain, graph=False)) for n in held_nets) / len(held_nets)
        with torch.no_grad():
            return sum(float(dm_loss(n, held_picks, plain)) for n in held_nets) / len(held_nets)

    def draw() -> tuple[list[Tensor], list[Any]]:
        picks = [idx[torch.randint(len(idx), (batch_real,), generator=gen)] for idx in by_class]
        augs = [(bool(torch.rand((), generator=gen) < 0.5), *(int(v) for v in torch.randint(
            -shift, shift + 1, (2,), generator=gen))) for _ in by_class]
        return picks, augs

    before = held_out()
    curve: list[float] = []
    outer, inner = loops(ipc) if method == "gm" else (1, 0)
    t0 = time.time()
    for it in range(iterations):
        net = fresh(seed * 1_000_003 + it)  # each iteration's fresh network
        net_opt = torch.optim.SGD(net.parameters(), lr=0.01) if method == "gm" else None
        for step in range(outer):
            loss = matching(net, *draw())
            syn.grad = torch.autograd.grad(loss, [syn])[0]  # the pixels only (not the network's weights)
            opt.step()
            with torch.no_grad():  # the images stay images: projected back into [0, 1]
                syn.copy_(torch.maximum(torch.minimum(syn, (1 - mean) / std), -mean / std))
            curve.append(float(loss.detach()))
            for _ in range(inner if net_opt is not None and step < outer - 1 else 0):  # gm: train the network
                net_opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(net(syn.detach()), labels).backward()
                net_opt.step()
        if log and (it + 1) % max(1, iterations // 10) == 0:
            log(f"condense: iteration {it + 1}/{iterations}, loss {curve[-1]:.4f}, {time.time() - t0:.0f}s")
    after = held_out()
    if log:
        log(f"condense: held-out matching loss {before:.4f} -> {after:.4f} ({HELD_OUT_NETS} networks never trained on)")
    images = (syn.detach() * std + mean).clamp(0.0, 1.0)
    result = {"images": images, "labels": labels, "curve": curve, "seconds": time.time() - t0,
              "held_out_before": before, "held_out_after": after}
    if out is not None:
        made = {"dm": "distribution matching", "gm": "gradient matching"}[method]
        write_train_file(out, images, labels, {"dataset": data, "made_by": f"kdkit condense ({made})",
                                               "method": method, "ipc": ipc, "iterations": iterations,
                                               "model": model, "lr": lr, "batch_real": batch_real, "seed": seed})
        result["out"] = str(out)
    return result
