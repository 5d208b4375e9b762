"""``kdkit sweep --methods``: which method suits one teacher/student pair.

Each method gets its own search, with the same trial count, over its main weights and temperature (the
ranges below bracket the paper's default by about ten times each way); vanilla gets the same budget over
the learning rate and weight decay. The searches rank on validation; then the best configuration of each
trains over the final seeds and is measured on test (:func:`kdkit.sweep.final.final_runs`).

``offline`` is every offline method of the registry (those that learn from a fixed teacher), with its
preliminary stage where it has one; ``online`` is the cohort and branch schemes against independent
training (vanilla), each set up as in ``ONLINE_SETUPS``.

Preliminary stages, warm-ups and ramp-ups are given in epochs of the paper's CIFAR recipes (240 or 300);
they are scaled to the base recipe's epoch count (``stage_scale``) unless ``method_settings`` sets them.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import ConfigError

# method -> {setting: (kind, low, high)}; "epochs" in a bound means the base recipe's train.epochs
SPACES: dict[str, dict[str, tuple[str, Any, Any]]] = {
    "kd": {"temperature": ("log", 1, 16), "alpha": ("range", 0.1, 0.95)},
    "dkd": {"alpha": ("log", 0.25, 4), "beta": ("log", 1, 16), "temperature": ("log", 1, 8)},
    "dist": {"beta": ("log", 0.25, 8), "gamma": ("log", 0.25, 8), "temperature": ("log", 1, 8)},
    "logit_mse": {"weight": ("log", 0.1, 10), "ce_weight": ("range", 0.0, 1.0)},
    "fitnets": {"beta": ("log", 1, 1000)},
    "at": {"beta": ("log", 10, 10000)},
    "at_grad": {"beta": ("log", 0.1, 10)},
    "nst": {"beta": ("log", 1, 500)},
    "kdsvd": {"beta": ("log", 10, 3000)},
    "vid": {"beta": ("log", 0.1, 10)},
    "reviewkd": {"beta": ("log", 0.1, 10)},
    "cc": {"beta": ("log", 0.05, 50)},
    "irg": {"vertex_weight": ("log", 0.1, 10), "edge_weight": ("log", 0.1, 10),
            "transformation_weight": ("log", 0.1, 10)},
    "rkd": {"distance_weight": ("log", 2.5, 250), "angle_weight": ("log", 5, 500)},
    "pkt": {"beta": ("log", 1000, 100000)},
    "sp": {"gamma": ("log", 100, 30000)},
    "crd": {"beta": ("log", 0.1, 8), "temperature": ("log", 0.03, 0.3)},
    "ab": {"stage1_epochs": ("int", 1, "epochs/4"), "margin": ("log", 0.25, 4)},
    "fsp": {"stage1_epochs": ("int", 1, "epochs/4"), "beta": ("choice", 0.0, [0.0, 0.01, 0.1, 1.0])},
    "ft": {"stage1_epochs": ("int", 1, "epochs/4"), "beta": ("log", 50, 5000)},
    "mhgd": {"beta": ("log", 0.1, 100)},
    "hkd": {"init_weight": ("log", 10, 1000), "final_weight": ("log", 0.1, 10)},
    "ard": {"temperature": ("log", 1, 30), "alpha": ("range", 0.1, 1.0)},
    "adversarial_kd": {"adv_weight": ("log", 0.1, 10), "similarity_weight": ("log", 0.1, 10)},
    # segmentation
    "skd_pixel": {"weight": ("log", 1, 100), "temperature": ("log", 1, 8)},
    "skd_pair": {"weight": ("log", 0.1, 10)},
    "skd_holistic": {"weight": ("log", 0.01, 1)},
    "cwd": {"weight": ("log", 0.5, 50), "tau": ("log", 1, 8)},
    # detection
    "fgfi": {"weight": ("log", 0.001, 1)},
    "chen_od": {"weight": ("log", 0.1, 10), "temperature": ("log", 1, 8)},
    "fgd": {"weight": ("log", 1, 1000), "temperature": ("log", 0.25, 2)},
    "ld": {"weight": ("log", 0.025, 2.5), "temperature": ("log", 2, 20)},
    "det_kd": {"weight": ("log", 0.1, 10), "temperature": ("log", 1, 8)},
    # text classification
    "tinybert": {"hidden_weight": ("log", 0.1, 10), "attention_weight": ("log", 0.1, 10),
                 "temperature": ("log", 1, 8)},
    "minilm": {"weight": ("log", 0.1, 10)},
    "distilbert": {"temperature": ("log", 1, 8), "alpha": ("range", 0.1, 0.95), "cos_weight": ("log", 0.1, 10)},
    "pkd": {"beta": ("log", 10, 1000), "alpha": ("range", 0.1, 0.9), "temperature": ("log", 1, 20)},
    # online: the cohort's mutual term
    "dml": {"temperature": ("log", 1, 8), "weight": ("log", 0.25, 4)},
    "dcm": {"temperature": ("log", 1, 8), "weight": ("log", 0.25, 4)},
    "kdcl": {"temperature": ("log", 1, 8), "weight": ("log", 0.25, 4)},
    "one": {"temperature": ("log", 1, 8), "weight": ("log", 0.25, 4)},
    "okddip": {"temperature": ("log", 1, 8), "weight": ("log", 0.25, 4)},
    "cl": {"temperature": ("log", 1, 8), "beta": ("range", 0.1, 0.9)},
}

# online schemes: what each adds to a one-network recipe ("{model}" is the base recipe's model)
ONLINE_SETUPS: dict[str, dict[str, Any]] = {
    "dml": {"peers": ["{model}"]},
    "dcm": {"peers": ["{model}"]},
    "kdcl": {"peers": ["{model}"], "data": {"views": 2}},
    "one": {"model": {"name": "{model}", "transforms": [{"name": "branch", "n": 3, "gate": True}]}},
    "cl": {"model": {"name": "{model}", "transforms": [{"name": "branch", "n": [2, 2], "rescale": True}]}},
    "okddip": {"model": {"name": "{model}", "transforms": [{"name": "branch", "n": 4}]}},
}

# the paper recipes' length in epochs, against which preliminary stages, warm-ups and ramp-ups are scaled
PAPER_EPOCHS = {"stage1_epochs": 240, "warmup_epochs": 240, "rampup_epochs": 300}


def family_members(family: str, task: str = "classification") -> list[str]:
    """``offline``: the registry's methods that learn from a teacher (but not the online schemes);
    ``online``: the schemes of ``ONLINE_SETUPS`` that the registry has. Both start with vanilla, and hold
    the methods written for ``task`` (``Method.tasks``)."""
    from ..methods import METHODS

    names = [m for m in METHODS.names() if task in METHODS.get(m).tasks]
    if family == "offline":
        picked = [m for m in names if METHODS.get(m).needs_teacher and METHODS.get(m).family != "online"]
    else:
        picked = [m for m in names if m in ONLINE_SETUPS]
    return ["vanilla", *picked]


def resolve_methods(spec: Any, where: str = "--methods", task: str = "classification") -> list[str]:
    """``offline``, ``online``, a comma-separated string or a list of method names; vanilla is always in
    (the baseline every method is ranked against)."""
    from ..methods import METHODS

    if spec in ("offline", "online"):
        return family_members(spec, task)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else spec
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{where}: methods is offline, online, or method names (kd,dkd,... or a list), got {spec!r}")
    for n in names:
        if n not in METHODS:
            raise ConfigError(f"{where}: unknown method '{n}' (kdkit list methods)")
        if n != "vanilla" and n not in SPACES and not METHODS.get(n).Config.__dataclass_fields__.get("weight"):
            raise ConfigError(f"{where}: method '{n}' has no search space")
    return ["vanilla", *[n for n in dict.fromkeys(names) if n != "vanilla"]]


def _model_name(base: dict[str, Any]) -> str:
    model = base.get("model")
    return model.get("name") if isinstance(model, dict) else str(model)


def fill_model(obj: Any, model: str) -> Any:
    """``obj`` with "{model}" in its strings replaced by the model's name."""
    if isinstance(obj, str):
        return obj.format(model=model)
    if isinstance(obj, dict):
        return {k: fill_model(v, model) for k, v in obj.items()}
    if isinstance(obj, list):
        return [fill_model(v, model) for v in obj]
    return obj


def stage_scale(name: str, epochs: int) -> dict[str, int]:
    """The method's preliminary stage, warm-up or ramp-up, scaled from the paper's recipe to ``epochs``."""
    from ..methods import METHODS

    fields = METHODS.get(name).Config.__dataclass_fields__
    out = {}
    for key, paper in PAPER_EPOCHS.items():
        default = fields[key].default if key in fields else 0
        if isinstance(default, int) and default > 0:
            out[key] = max(1, round(default * epochs / paper))
    return out


def method_recipe(base: dict[str, Any], name: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The base (one teacher/student pair, or one network for the online schemes) trained with ``name``:
    its defaults, its stages scaled to the recipe, then ``settings``. A method that needs no teacher
    trains without one (and without ``train.teacher_cache``)."""
    from ..methods import METHODS

    recipe = json.loads(json.dumps(base))
    epochs = int((recipe.get("train") or {}).get("epochs", 10))
    entry = {"name": name, **(stage_scale(name, epochs) if name != "vanilla" else {}), **(settings or {})}
    recipe["method"] = [entry]
    if not METHODS.get(name).needs_teacher:
        recipe.pop("teacher", None)
        (recipe.get("train") or {}).pop("teacher_cache", None)
    elif "teacher" not in recipe:
        raise ConfigError(f"method {name} learns from a teacher: the base recipe has none")
    setup = fill_model(ONLINE_SETUPS.get(name, {}), _model_name(base))
    for key, value in setup.items():
        recipe[key] = {**(recipe.get(key) or {}), **value} if key == "data" else value
    return recipe


def method_space(base: dict[str, Any], name: str) -> dict[str, Any]:
    """The sweep file's ``space`` for ``name``: its main weights and temperature; vanilla's, the learning
    rate (a quarter to four times the base's) and the weight decay."""
    if name == "vanilla":
        lr = float((base.get("optim") or {}).get("lr", 0.05))
        return {"optim.lr": {"log": [lr / 4, lr * 4]}, "optim.weight_decay": {"log": [1e-5, 5e-3]}}
    epochs = int((base.get("train") or {}).get("epochs", 10))
    spec = SPACES.get(name) or {"weight": ("log", 0.1, 10)}
    space = {}
    for key, (kind, low, high) in spec.items():
        if kind == "choice":
            space[f"method.{name}.{key}"] = {"choice": high}
            continue
        if high == "epochs/4":
            high = max(low + 1, epochs // 4)
        space[f"method.{name}.{key}"] = {kind: [low, high]}
    return space
