"""The method interface and the method registry.

A :class:`Method` is one distillation objective. It declares the features it needs by module path,
builds its trainable helpers (regressors, embeddings) from probed shapes, and returns named loss terms.
The :class:`~kdkit.methods.distiller.Distiller` runs methods.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..features import ModelInfo, default_embedding  # noqa: F401  (methods import it from here)
from ..registry import Registry
from ..schema import from_dict


@dataclass
class MethodConfig:
    """Fields every method has. ``weight`` multiplies every loss term the method returns.

    Checks shared by every method run here, once, for every Config: a field named ``*_epochs`` (a
    preliminary stage, a warm-up) must be an integer >= 0. A method's own checks go in ``validate``;
    a Config may not define ``__post_init__`` itself (``register_method`` refuses it), so no method
    can skip the shared checks.
    """

    weight: float = 1.0
    # the one teacher this method learns from, by name (teacher0, teacher1.. or a teacher's id): its logits
    # and features only. Default: all teachers' logits, the first one's features. A feature method with
    # several teachers is listed once per teacher; the terms of a method with a teacher end in "/<teacher>"
    teacher: str | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_epochs") and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{f.name} must be an integer >= 0, got {value!r}")
        self.validate()

    def validate(self) -> None:
        """The method's own checks of its fields; raise ``ValueError`` with a message that names them."""


@dataclass
class Outputs:
    """What one forward pass produced, handed to every method's ``losses``."""

    inputs: Tensor
    targets: Tensor
    index: Tensor | None
    epoch: int
    s_logits: Tensor
    t_logits: list[Tensor] = field(default_factory=list)  # one per teacher
    s_feats: dict[str, Tensor] = field(default_factory=dict)
    t_feats: dict[str, Tensor] = field(default_factory=dict)  # from the method's teacher (cfg.teacher, or the first)
    student: nn.Module | None = None  # for methods that need an extra forward (gradient-based AT)
    teachers: list[nn.Module] = field(default_factory=list)
    logits: dict[str, Tensor] = field(default_factory=dict)  # every network's output, by network name
    feats: dict[str, dict[str, Tensor]] = field(default_factory=dict)  # every network's tapped features
    peers: dict[str, nn.Module] = field(default_factory=dict)  # the trainable networks besides the student

    @property
    def t_logits_mean(self) -> Tensor:
        """The teachers' mean logits ``[B, K]`` (the single teacher's logits when there is one)."""
        return self.t_logits[0] if len(self.t_logits) == 1 else torch.stack(self.t_logits).mean(0)


def warmup_ramp(epoch: int, warmup_epochs: int) -> float:
    """Linear ramp of a loss weight from ``1/warmup`` at the first epoch to 1 at epoch ``warmup - 1``."""
    return min((epoch + 1) / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0


class Method(nn.Module):
    """Base class of distillation methods; subclasses set the class attributes and override hooks."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""  # response, feature, relation, contrastive, baseline
    paper: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs_teacher: ClassVar[bool] = True
    needs_sample_index: ClassVar[bool] = False
    uses_teacher_features: ClassVar[bool] = False
    needs_input_grad: ClassVar[bool] = False  # the inputs require grad in the student's forward
    needs_peers: ClassVar[int] = 0  # trainable networks it needs besides the student (online methods)
    student_transform: ClassVar[dict | None] = None  # the model transform its student needs (a branched one)
    needs_views: ClassVar[bool] = False  # each network of its cohort sees its own augmented view (data.views)
    needs_dense_output: ClassVar[bool] = False  # reads per-pixel outputs [B, K, H, W] (segmentation logits)
    # the tasks it is written for and tested on: the sweep's method families and the recipes follow it
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    # a softening temperature outside this range is accepted with a warning (None: its temperature is another
    # kind, e.g. CRD's contrastive one)
    temperature_range: ClassVar[tuple[float, float] | None] = (0.5, 20.0)

    def __init__(self, cfg: MethodConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else self.Config()
        self.student_specs: list[str] = []
        self.teacher_specs: list[str] = []
        self.net_specs: dict[str, list[str]] = {}  # features on any network, by network name
        self.num_samples: int | None = None  # training-set size, set by the Distiller before setup()
        self.infos: dict[str, ModelInfo] = {}  # every network's probed layers, set before setup()
        self.teacher_names: list[str] = []  # the run's teachers, in order, set before setup()
        self.networks: dict[str, nn.Module] = {}  # the trainable networks by name, set before setup() (read only)
        self.teacher_modules: dict[str, nn.Module] = {}  # the teachers by name, set before setup() (read only)
        # the training loader's normalisation (mean, std), [1, C, 1, 1] on its device, set by build (None when the
        # inputs are not normalised images): what pixel units are in the inputs' space (ARD's PGD ball)
        self.input_norm: tuple[Tensor, Tensor] | None = None

    # -- set-up -------------------------------------------------------------------------------------
    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        """Choose feature layers (``student_specs``/``teacher_specs``, or ``net_specs`` for any network
        by name, whose probed layers are in ``self.infos``) and build helpers from shapes."""

    def taps(self, first_teacher: str | None) -> dict[str, list[str]]:
        """The features this method reads, by network name (``out.feats[net][spec]`` in ``losses``); the
        teacher's (``teacher_specs``) on its own teacher, ``cfg.teacher`` or else ``first_teacher``."""
        taps = {"student": list(self.student_specs)}
        teacher = self.cfg.teacher or first_teacher
        if self.teacher_specs and teacher is not None:
            taps[teacher] = list(self.teacher_specs)
        for net, specs in self.net_specs.items():
            taps.setdefault(net, []).extend(specs)
        return taps

    def frozen(self, objective: str) -> list[str]:
        """The method's own modules (paths below it) held fixed while ``objective`` (``"main"`` or
        ``"pretrain"``) is on: kept in eval mode, not trained."""
        return []

    @property
    def pretrain_epochs(self) -> int:
        """Epochs of a preliminary stage run before the main training: the config's ``stage1_epochs``
        for methods that have one, else 0."""
        return getattr(self.cfg, "stage1_epochs", 0)

    # -- losses -------------------------------------------------------------------------------------
    def ce_weight(self) -> float:
        """Factor on the cross-entropy with the labels while this method is active."""
        return 1.0

    def losses(self, out: Outputs) -> dict[str, Tensor]:
        return {}

    def deployed(self) -> str:
        """The network this scheme deploys, as the prefix of its metrics: ``""`` for the student itself,
        ``"peer1/"`` for a peer, ``"branch3/"`` for one branch of a branched student (trunk + that branch,
        written out by ``kdkit export --branch 3``)."""
        return ""

    def after_step(self) -> None:
        """Called once after each optimiser step, on every rank, outside autocast, DDP and
        ``torch.compile``: where state that is not trained by gradients is updated (memory banks, EMA
        teachers). What it needs it keeps from ``losses`` (detached); across ranks it can gather rows
        with :func:`kdkit.distributed.gather_batches`."""

    def pretrain_losses(self, out: Outputs) -> dict[str, Tensor]:
        raise NotImplementedError(f"{self.name} has no preliminary stage")

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in vars(self.cfg).items())


METHODS: Registry[type[Method]] = Registry("method")
_CONFIG_NAMES: dict[type[MethodConfig], str] = {}  # each registered method's Config class -> its name


def method_name(cfg: Any) -> str | None:
    """The registered name of the method a config belongs to (None for anything that is not one)."""
    return _CONFIG_NAMES.get(type(cfg))


def register_method(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a name")
    if cls.Config in (MethodConfig, LayerPairsConfig, EmbeddingConfig) or cls.Config in _CONFIG_NAMES:
        raise TypeError(f"{cls.__name__} needs a Config class of its own")
    for klass in cls.Config.__mro__:
        if klass is not MethodConfig and "__post_init__" in vars(klass):
            raise TypeError(f"{klass.__name__} defines __post_init__: put its checks in validate() so that "
                            "MethodConfig's shared checks (stage and warm-up epochs) still run")
    METHODS.add(cls.name, cls)
    _CONFIG_NAMES[cls.Config] = cls.name
    return cls


def method_config(entry: Any, where: str = "method") -> MethodConfig:
    """Validate one method entry (``"kd"`` or ``{"name": "kd", "temperature": 4}``) into its Config."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{where}: expected a method name or a mapping with 'name', got {entry!r}")
    entry = dict(entry)
    cls = METHODS.get(str(entry.pop("name")))
    cfg = from_dict(cls.Config, entry, where)
    t, bounds = getattr(cfg, "temperature", None), cls.temperature_range
    if isinstance(t, int | float) and bounds is not None and not bounds[0] <= t <= bounds[1]:
        warnings.warn(f"{where}: temperature {t} is outside [{bounds[0]}, {bounds[1]}], where softened targets are "
                      "useful (near 0 they are one-hot, far above they are uniform); the papers use 1 to 8",
                      stacklevel=2)
    return cfg


def create_method(name_or_cfg: str | MethodConfig, **kwargs: Any) -> Method:
    """A method from its name and parameters (``create_method("kd", temperature=4)``) or its Config."""
    if isinstance(name_or_cfg, MethodConfig):
        cfg = name_or_cfg
    else:
        cfg = method_config({"name": name_or_cfg, **kwargs})
    name = method_name(cfg)
    if name is None:
        raise ConfigError(f"{type(cfg).__name__} is not the Config of a registered method")
    return METHODS.get(name)(cfg)


def list_methods(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered method names matching ``pattern``; with ``task``, those written for it (``Method.tasks``)."""
    return [m for m in METHODS.names(pattern) if task is None or task in METHODS.get(m).tasks]


# ------------------------------------------------------------------------------- layer choice helpers


def default_stages(info: ModelInfo, n: int | None = None) -> list[str]:
    """The last module of each spatial stage (:meth:`ModelInfo.stages`); a network with no spatial maps
    (an MLP on vectors, a transformer on tokens) has one stage: its penultimate features, the input of its
    classifier (:func:`default_embedding`)."""
    stages = info.stages()
    if not stages:
        try:
            stages = [default_embedding(info)]
        except ConfigError:
            raise ConfigError("no spatial feature maps and no nn.Linear classifier found by probing; give the "
                              "layers explicitly (`kdkit inspect` lists them)") from None
    return stages if n is None else stages[-n:]


def pair_layers(s_info: ModelInfo, t_info: ModelInfo, s_layers: list[str] | None,
                t_layers: list[str] | None) -> tuple[list[str], list[str]]:
    """Layer pairs: explicit lists, or the last stages of each model (as many as the shallower has)."""
    if s_layers is None or t_layers is None:
        n = len(s_layers or t_layers or []) or min(len(default_stages(s_info)), len(default_stages(t_info)))
        s_layers = s_layers or default_stages(s_info, n)
        t_layers = t_layers or default_stages(t_info, n)
    if len(s_layers) != len(t_layers):
        raise ConfigError(f"student_layers ({len(s_layers)}) and teacher_layers ({len(t_layers)}) must pair up")
    for spec in s_layers:
        s_info.shape(spec)
    for spec in t_layers:
        t_info.shape(spec)
    return list(s_layers), list(t_layers)


@dataclass
class LayerPairsConfig(MethodConfig):
    student_layers: list[str] | None = None  # default: the last stages of each model, paired
    teacher_layers: list[str] | None = None


class LayerPairsMethod(Method):
    """A method that matches student/teacher layer pairs (explicit, or the stages found by probing).
    Subclasses build their helpers in ``build`` once ``student_specs``/``teacher_specs`` are set."""

    Config: ClassVar[type[MethodConfig]] = LayerPairsConfig
    uses_teacher_features = True
    relates_consecutive_layers: ClassVar[bool] = False  # needs at least two layers per model
    # why the method's formula needs [C, H, W] maps (None: any layer, [D] and [N, D] included)
    needs_maps: ClassVar[str | None] = None

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        if t_info is None:
            raise ConfigError(f"{self.name} needs a teacher")
        self.student_specs, self.teacher_specs = pair_layers(
            s_info, t_info, self.cfg.student_layers, self.cfg.teacher_layers)
        if self.needs_maps:
            for who, info, specs in (("student", s_info, self.student_specs), ("teacher", t_info, self.teacher_specs)):
                for spec in specs:
                    if len(info.shape(spec)) != 3:
                        raise ConfigError(f"{self.name} needs [C, H, W] feature maps ({self.needs_maps}); the {who}'s "
                                          f"'{spec}' gives {list(info.shape(spec))} per sample")
        if self.relates_consecutive_layers and len(self.student_specs) < 2:
            raise ConfigError(f"{self.name} needs at least two layers per model (it relates consecutive layers)")
        self.build(s_info, t_info)

    def build(self, s_info: ModelInfo, t_info: ModelInfo) -> None:
        """Create trainable helpers from the probed shapes of the chosen layers."""


@dataclass
class EmbeddingConfig(MethodConfig):
    student_layer: str | None = None  # default: the penultimate features (input of the classifier)
    teacher_layer: str | None = None


class EmbeddingMethod(Method):
    """A method on one student and one teacher embedding (default: each model's penultimate features)."""

    Config: ClassVar[type[MethodConfig]] = EmbeddingConfig
    uses_teacher_features = True

    def setup(self, s_info: ModelInfo, t_info: ModelInfo | None) -> None:
        if t_info is None:
            raise ConfigError(f"{self.name} needs a teacher")
        self.student_specs = [self.cfg.student_layer or default_embedding(s_info)]
        self.teacher_specs = [self.cfg.teacher_layer or default_embedding(t_info)]

    def embeddings(self, out: Outputs) -> tuple[Tensor, Tensor]:
        return out.s_feats[self.student_specs[0]], out.t_feats[self.teacher_specs[0]]


def dense_pair(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Student and teacher maps ``[B, C, H, W]`` (dense logits or features) at one spatial size: the
    student's resized bilinearly to the teacher's where they differ. Other shapes are a ConfigError."""
    import torch.nn.functional as F

    if s.dim() != 4 or t.dim() != 4:
        raise ConfigError(f"a dense distillation method needs [batch, channels, height, width] maps; got student "
                          f"{list(s.shape)} and teacher {list(t.shape)} (a segmentation dataset with task: "
                          "segmentation, or feature layers with spatial maps)")
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    return s, t
