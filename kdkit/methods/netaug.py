"""Cai, Gan, Lin & Han, "Network Augmentation for Tiny Deep Learning", ICLR 2022 (NetAug).

A tiny network underfits more than it overfits, so instead of regularising it NetAug puts it inside wider
networks that share its weights and trains it as part of them: each step the loss is the base network's
own loss plus the loss of one augmented network, ``L(W_base) + alpha * L([W_base, W_aug])``, whose every
layer is ``m`` times as wide as the base's (``m`` drawn per step from ``width_mults``). The base network is
the first channels of each augmented layer, so the deployed network (the student) is the base alone: no
extra cost at inference.

How kdkit builds the augmented networks, for any student made of convolutions, linear layers and batch
norms (the zoo's models, or your own): every convolution's and hidden linear layer's outputs are widened
to ``make_divisible(m * c, divisor)`` (the nearest multiple of 8 by default, as the authors' code rounds; the
classifier keeps its classes), and every layer's inputs follow from one traced
forward pass (so a ``flatten`` before a linear layer, a residual sum, a depthwise convolution work as they
are). The widened weights are the base weights in the leading block plus extra trainable weights (this
method's parameters, initialised like fresh layers); the base network is checked once, at set-up, to be
exactly the augmented network whose extra weights are zero (a model whose channels do not widen as a
prefix, a channel shuffle or split, is refused there with the reason).

Differences from the authors' code, said plainly: one multiplier per step for every layer (the code can
draw a width per layer, and also augments the expand ratio of inverted blocks, which plain convolutions do
not have); the augmented networks' batch norms use batch statistics only and keep no running statistics,
so the base network's running statistics are never mixed with the wider networks' (the authors' code
shares them and recomputes the base's statistics before each evaluation). ``weight`` is the paper's
``alpha`` (1, as in the code: the two losses are added). The code turns the augmentation off for the last
epochs; here that is a stage (``stages:`` with netaug left out of the last one).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..errors import ConfigError
from ..prune import classifier, resize_layers
from .base import Method, MethodConfig, Outputs, register_method

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class NetAugConfig(MethodConfig):
    # width multipliers of the augmented network, one drawn per step (the authors' recipes augment widths up
    # to 3x: [1.0, 2.0, 3.0] per layer for MobileNetV3, [1.0, 1.8, 2.6] for their tiny MobileNetV2)
    width_mults: list[float] = field(default_factory=lambda: [1.5, 2.0, 2.5, 3.0])
    # widened channel counts are rounded to a multiple of this, as the authors' make_divisible does (8, as in
    # their code and MobileNet's); 1: rounding to the nearest integer (halves up)
    divisor: int = 8

    def validate(self) -> None:
        if not self.width_mults or any(not 1.0 < m <= 8.0 for m in self.width_mults):
            raise ValueError(f"width_mults must be a non-empty list of multipliers in (1, 8], got {self.width_mults}")
        if isinstance(self.divisor, bool) or not isinstance(self.divisor, int) or not 1 <= self.divisor <= 128:
            raise ValueError(f"divisor must be an integer in [1, 128], got {self.divisor!r}")


def make_divisible(v: float, divisor: int = 8) -> int:
    """``v`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), one step up when that
    falls more than 10% below ``v``: the rounding of MobileNet's and the NetAug authors' channel counts."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _key(name: str) -> str:
    return name.replace(".", "__")


def _channels(module: nn.Module, out_dim: int | None = None, in_dim: int | None = None) -> dict[str, int]:
    """The channel counts of one convolution / linear / batch norm with new outputs or inputs, in the
    form :func:`kdkit.prune.resize_layers` takes (a depthwise convolution's outputs follow its inputs)."""
    if isinstance(module, _CONV):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        if module.groups > 1 and not depthwise:
            raise ConfigError(f"netaug: a grouped convolution ({module.groups} groups) does not widen as a prefix")
        cin = module.in_channels if in_dim is None else in_dim
        cout = module.out_channels if out_dim is None else out_dim
        if depthwise and in_dim is not None:
            cout = in_dim * (module.out_channels // module.in_channels)
        return {"in_channels": cin, "out_channels": cout, "groups": cin if depthwise else 1}
    if isinstance(module, nn.Linear):
        return {"in_features": module.in_features if in_dim is None else in_dim,
                "out_features": module.out_features if out_dim is None else out_dim}
    return {"num_features": module.num_features if in_dim is None else in_dim}


def _batch_statistics_only(model: nn.Module) -> None:
    """Batch norms that normalise with the batch's statistics and keep none (the augmented networks')."""
    for m in model.modules():
        if isinstance(m, _NORM):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


def widen(model: nn.Module, mult: float, example: Tensor, divisor: int = 8) -> nn.Module:
    """A copy of ``model`` whose convolutions and hidden linear layers have ``make_divisible(mult * c)`` outputs
    (the classifier keeps its own) and whose layers' inputs follow, found by one forward pass on
    ``example``. Its batch norms use batch statistics only; its weights are uninitialised."""
    wide = copy.deepcopy(model)
    _batch_statistics_only(wide)
    head = classifier(wide)
    paths = {m: n for n, m in wide.named_modules()}
    for name, m in wide.named_modules():
        if isinstance(m, (*_CONV, nn.Linear)) and name != head:
            depthwise = isinstance(m, _CONV) and m.groups > 1 and m.groups == m.in_channels
            if not depthwise:  # a depthwise convolution's outputs follow its inputs
                c = m.out_channels if isinstance(m, _CONV) else m.out_features
                resize_layers(wide, {name: _channels(m, out_dim=max(c, make_divisible(mult * c, divisor)))})

    def follow(module: nn.Module, inputs: tuple) -> None:
        x = inputs[0] if inputs and isinstance(inputs[0], Tensor) else None
        if x is None:
            return
        have = x.shape[-1] if isinstance(module, nn.Linear) else x.shape[1]
        want = module.in_features if isinstance(module, nn.Linear) else (
            module.in_channels if isinstance(module, _CONV) else module.num_features)
        if have != want:
            resize_layers(wide, {paths[module]: _channels(module, in_dim=int(have))})

    layers = [m for m in wide.modules() if isinstance(m, (*_CONV, nn.Linear, *_NORM))]
    handles = [m.register_forward_pre_hook(follow) for m in layers]
    try:
        with torch.no_grad():
            wide.train()
            wide(example)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (the model's own forward on new shapes)
        raise ConfigError(f"netaug: this model cannot be widened ({type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''})") from None
    finally:
        for h in handles:
            h.remove()
    return wide


def _lead(shape: torch.Size | tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(0, s) for s in shape)


@register_method
class NetAug(Method):
    """Network augmentation (see :mod:`kdkit.methods.netaug`): ``weight * CE(augmented network)`` added to
    the base network's own loss (the trainer's cross-entropy, and any other method's terms, such as kd's).
    The augmented network is ``m`` times as wide as the student, ``m`` drawn from ``width_mults`` each step,
    and shares the student's weights as its leading channels; the student alone is deployed."""

    name = "netaug"
    family = "augmentation"
    paper = "Cai et al. 2022, Network Augmentation for Tiny Deep Learning"
    Config = NetAugConfig
    needs_teacher = False

    def setup(self, s_info, t_info) -> None:
        student = self.networks["student"]
        root = s_info.layers.get("")
        if root is None or root.in_shape is None:
            raise ConfigError("netaug: could not find the student's input shape by probing")
        p = next(student.parameters())
        example = torch.zeros(2, *root.in_shape, device=p.device)
        self.mults = sorted(float(m) for m in self.cfg.width_mults)
        wides = [widen(student, m, example, self.cfg.divisor) for m in self.mults]
        base = dict(student.named_parameters())
        self.extra = nn.ParameterDict()
        widest = wides[-1]
        for name, m in widest.named_modules():
            if isinstance(m, (*_CONV, nn.Linear, *_NORM)) and any(
                    getattr(m, n).shape != base[f"{name}.{n}" if name else n].shape
                    for n, _ in m.named_parameters(recurse=False)):
                m.reset_parameters()  # the extra weights start as a fresh layer's
        for name, w in widest.named_parameters():
            if name not in base:
                raise ConfigError(f"netaug: the widened student has a parameter {name!r} the student lacks")
            if w.shape != base[name].shape:
                if any(a < b for a, b in zip(w.shape, base[name].shape)) or w.dim() != base[name].dim():
                    raise ConfigError(f"netaug: {name} does not widen ({tuple(base[name].shape)} -> {tuple(w.shape)})")
                self.extra[_key(name)] = nn.Parameter(w.detach().clone())
        if not len(self.extra):
            raise ConfigError("netaug: the student has no convolution or hidden linear layer to widen")
        # the augmented networks only lend their structure: their tensors come from the student and self.extra
        object.__setattr__(self, "_wides", wides)
        self._check_prefix(student, example)

    # -- the augmented network --------------------------------------------------------------------------
    def params(self, student: nn.Module, k: int, zero_extra: bool = False) -> dict[str, Tensor]:
        """The tensors of augmented network ``k`` (multiplier ``self.mults[k]``): each widened weight is
        the student's weight in its leading block and this method's extra weights around it (zeros
        with ``zero_extra``), cut to network ``k``'s shapes; unwidened ones are the student's own."""
        wide = self._wides[k]
        out: dict[str, Tensor] = {}
        for name, base in student.named_parameters():
            extra = self.extra[_key(name)] if _key(name) in self.extra else None
            if extra is None:
                out[name] = base
                continue
            full = torch.zeros_like(extra) if zero_extra else extra.clone()
            full[_lead(base.shape)] = base
            out[name] = full[_lead(wide.get_parameter(name).shape)]
        for name, buf in student.named_buffers():
            mod, _, leaf = name.rpartition(".")
            owner = wide.get_submodule(mod) if mod else wide
            if not isinstance(owner, _NORM):  # the batch norms' statistics stay the student's alone
                out[name] = buf
        return out

    def augmented(self, student: nn.Module, x: Tensor, k: int, zero_extra: bool = False) -> Tensor:
        """The logits of augmented network ``k`` on ``x``."""
        return functional_call(self._wides[k], self.params(student, k, zero_extra), (x,))

    def _check_prefix(self, student: nn.Module, example: Tensor) -> None:
        """The base network must be the augmented one with zero extra weights; otherwise its channels do
        not sit in the leading block of each widened layer and sharing would be meaningless."""
        base = copy.deepcopy(student).train()
        _batch_statistics_only(base)  # as in the augmented network
        for m in base.modules():
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        x = torch.randn(8, *example.shape[1:], generator=torch.Generator().manual_seed(0)).to(example.device)
        with torch.no_grad():
            want = base(x)
            for k, m in enumerate(self.mults):
                wide = self._wides[k]
                drops = [d for d in wide.modules() if isinstance(d, nn.modules.dropout._DropoutNd)]
                for d in drops:
                    d.eval()
                got = self.augmented(base, x, k, zero_extra=True)
                for d in drops:
                    d.train()
                err = (got.float() - want.float()).abs().max().item()
                if err > 1e-4 * (1.0 + want.float().abs().max().item()):
                    raise ConfigError(f"netaug: at width x{m} the student is not the leading block of the widened "
                                      f"network (max logit difference {err:.2g} with zero extra weights): its "
                                      "channels do not widen as a prefix (a channel shuffle, split or grouped layer?)")

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        if out.student is None:
            raise ConfigError("netaug needs the student network in the step")
        k = int(torch.randint(len(self.mults), ()).item())
        logits = self.augmented(out.student, out.inputs, k)
        return {"netaug": F.cross_entropy(logits.float(), out.targets)}
