"""Models that are not in kdkit's zoo, named in configs and on the command line like zoo models:

- ``package.module:Class`` — an ``nn.Module`` subclass of a module you opted in to (your recipe names it,
  or ``--plugin``), e.g. your own ``mynets.models:SmallNet``; a factory function is named by the name
  you registered it under (:func:`kdkit.register_model`), or as ``module:function`` once registered;
- ``timm:<name>`` — a model of the timm library, built with ``timm.create_model(<name>,
  pretrained=False, num_classes=..., in_chans=...)`` and architecture arguments only;
- ``hf:<model type>`` — a Hugging Face ``AutoModelForSequenceClassification`` built from a configuration
  of that type (``hf:bert``), its fields from ``model.kwargs``, with eager attention (:mod:`kdkit.models.text`);
  ``hf:<folder>`` (``hf:./teacher``) the one ``save_pretrained`` wrote there (safetensors weights only);
- ``torchvision:<name>`` — a torchvision classifier, built with ``torchvision.models.get_model(<name>,
  weights=None, num_classes=...)``; for data with other than 3 channels its stem (the first
  convolution taking 3 channels) is rebuilt for the data's channels, as timm's ``in_chans`` does.

A library model's weights come from ``checkpoint:`` (a plain ``state_dict`` or safetensors file, e.g.
torchvision's or timm's released weights saved to disk), never downloaded by kdkit. Loaded into a
1-channel stem, a 3-channel stem's weights are summed over their input channels: exactly the network
fed the grey image repeated on three channels (:func:`kdkit.engine.checkpoint.load_plain_weights`).

The trust model (docs/robustness.md): a recipe and ``--plugin`` are code the user chose to run; a
checkpoint, a stored config and every file kdkit reads are data. So

- :func:`resolve` never imports anything. It finds a name only in a known library (``timm:``) or in a
  module that was imported on the user's word in this process: ``--plugin MODULE`` / ``--plugin
  FILE.py`` (:func:`load_plugin`), a ``module:Class`` the user's own recipe names (:func:`use_names`,
  called by :func:`kdkit.load_config`), or :func:`trust_module` in Python;
- :func:`use_names` imports the module a recipe names, from installed packages and ``PYTHONPATH``, never
  from the working folder (a file there is code you did not name: pass it with ``--plugin``);
- the object found must be an ``nn.Module`` subclass, or a factory registered with ``register_model``,
  before anything is called (``os:system``, ``subprocess:run``, ``builtins:eval`` are refused);
- a known library's factory gets only arguments that shape an architecture: nothing that loads
  weights or files or reaches a hub (:data:`REFUSED_LIBRARY_ARGS`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from ..errors import ConfigError, first_line
from ..registry import suggest

_TRUSTED: set[str] = set()  # modules imported on the user's word in this process
LIBRARIES = ("timm", "torchvision", "hf")  # known model libraries: name prefix -> built by _create_library
# keyword arguments that load weights or files or reach a hub: a library factory never gets them
REFUSED_LIBRARY_ARGS = ("pretrained", "weights", "checkpoint", "path", "file", "url", "hub", "cache", "dir",
                        "download", "token", "revision", "remote")


def is_external(name: str) -> bool:
    return ":" in name


def carries_weights(name: str) -> bool:
    """Whether building ``name`` loads trained weights itself: ``hf:<folder>``, a model saved with
    ``save_pretrained`` (its weights need no ``checkpoint:``)."""
    from .hf import is_directory

    library, _, rest = name.partition(":")
    return library == "hf" and is_directory(rest)


def _split(name: str) -> tuple[str, str]:
    module, _, attr = name.partition(":")
    if not module or not attr or ":" in attr:
        raise ConfigError(f"model '{name}': expected 'package.module:Class' (or 'timm:<model name>', "
                          "'torchvision:<model name>')")
    return module, attr


def _trusted(module: str) -> bool:
    return any(module == t or module.startswith(t + ".") for t in _TRUSTED)


def trust_module(module: str) -> ModuleType:
    """Import ``module`` (as Python's ``import`` would) and let names of it be rebuilt from checkpoints:
    ``--plugin MODULE`` does this, and so may a Python user who wrote or checked the module."""
    mod = importlib.import_module(module)
    _TRUSTED.add(module)
    return mod


@contextlib.contextmanager
def _without_working_folder() -> Iterator[None]:
    """``sys.path`` without the working folder (``python -m`` puts it first) while a recipe's module is
    imported, unless ``PYTHONPATH`` names that folder on purpose."""
    cwd = os.path.realpath(os.getcwd())
    chosen = {os.path.realpath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    saved = list(sys.path)
    sys.path[:] = [p for p in saved if os.path.realpath(p or ".") != cwd or os.path.realpath(p or ".") in chosen]
    try:
        yield
    finally:
        sys.path[:] = saved


def use_names(names: Iterable[str], where: str = "config") -> None:
    """The user's recipe names these models: import the module of each ``module:Class`` name (installed
    or on ``PYTHONPATH``, not from the working folder) and trust it for this process."""
    for name in names:
        if not is_external(name) or name.partition(":")[0] in LIBRARIES:
            continue
        module, _ = _split(name)
        if module in sys.modules:
            _TRUSTED.add(module)
            continue
        try:
            with _without_working_folder():
                importlib.import_module(module)
        except ImportError as e:
            here = Path(os.getcwd(), *module.split(".")[:1])
            local = here.with_suffix(".py").is_file() or here.is_dir()
            hint = (f"; '{module}' is in the working folder, which kdkit does not import from unasked: pass "
                    f"--plugin {here.name}{'.py' if here.with_suffix('.py').is_file() else ''}" if local else
                    "; the module must be installed or on PYTHONPATH (or passed with --plugin FILE.py)")
            raise ConfigError(f"{where}: model '{name}': cannot import '{module}' ({type(e).__name__}: {e}){hint}"
                              ) from None
        except Exception as e:  # the module's own error while it is imported
            raise ConfigError(f"{where}: model '{name}': importing '{module}' failed ({type(e).__name__}: "
                              f"{e})") from None
        _TRUSTED.add(module)


def load_plugin(name: str) -> ModuleType:
    """``--plugin``: a Python file (``path/to/mynets.py``, importable afterwards as ``mynets``) or a module
    by name (installed, on ``PYTHONPATH``, or in the working folder: the user named it). Its top-level
    code registers what it adds (``@register_method`` and the like), and its ``module:Class`` names may
    be rebuilt from checkpoints."""
    path = Path(name)
    if path.suffix != ".py":
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:
            sys.path.append(cwd)  # searched last: never shadows an installed module
        try:
            return trust_module(name)
        finally:
            if added:
                sys.path.remove(cwd)
    if not path.is_file():
        raise ConfigError(f"--plugin {name}: no such file")
    key = path.stem
    loaded = sys.modules.get(key)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve():
            _TRUSTED.add(key)
            return loaded  # already imported (its registrations are in place)
        raise ConfigError(f"--plugin {name}: a module named '{key}' is imported already (from "
                          f"{getattr(loaded, '__file__', None) or 'built-in'}); rename the file")
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--plugin {name}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    _TRUSTED.add(key)
    return module


def resolve(name: str, registered: Callable[[Any], bool] = lambda obj: False) -> Callable[..., Any]:
    """The ``nn.Module`` class (or registered factory) that ``module:attr`` names, found without importing
    anything; a ConfigError that says what is refused and how to opt in."""
    module_name, attr = _split(name)
    if not _trusted(module_name) or module_name not in sys.modules:
        raise ConfigError(
            f"model '{name}': module '{module_name}' was not imported on your word in this command, and kdkit "
            f"imports no module a file names: name it in your recipe, or pass --plugin {module_name} (a file: "
            f"--plugin {module_name.replace('.', '/')}.py; Python: kdkit.trust_module('{module_name}'))")
    obj: Any = sys.modules[module_name]
    where = module_name
    for part in attr.split("."):
        if part.startswith("_") or not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(f"model '{name}': '{where}' has no '{part}'{suggest(part, names)}")
        obj, where = getattr(obj, part), f"{where}.{part}"
    if isinstance(obj, type) and issubclass(obj, nn.Module) or registered(obj):
        return obj
    kind = "class" if isinstance(obj, type) else "function" if callable(obj) else type(obj).__name__
    raise ConfigError(f"model '{name}': '{where}' is a {kind}, not an nn.Module subclass: kdkit creates "
                      "models only from nn.Module classes and from factories registered with "
                      "kdkit.register_model (name those by their registered name)")


def _accepts(fn: Callable[..., Any], arg: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return arg in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def library_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A known library's keyword arguments, refused when one would load weights or files or reach a hub."""
    bad = [k for k in kwargs if any(word in k.lower() for word in REFUSED_LIBRARY_ARGS)
           and not k.endswith(("_token_id", "_token_ids"))]  # a transformers config's ids (pad_token_id): numbers
    if bad:
        raise ConfigError(f"model '{name}': argument(s) {', '.join(sorted(bad))} refused: a library model gets "
                          "architecture arguments only; its weights come from the spec's checkpoint (a state dict "
                          "or safetensors file), never from a hub or a path kdkit is handed")
    return kwargs


def _import_library(name: str) -> ModuleType:
    library = name.partition(":")[0]
    try:
        return importlib.import_module(library)
    except ImportError as e:
        raise ConfigError(f"model '{name}': {library} is not installed or does not import here ({first_line(e)}); "
                          f"`make setup` installs the pinned {library} (docs/models.md)") from None


def adapt_stem(model: nn.Module, in_channels: int, name: str) -> nn.Module:
    """Rebuild the first ``Conv2d`` (in module order) that takes 3 channels, a torchvision model's stem, for
    ``in_channels``: a fresh weight of the new shape, everything else of the layer as it was."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3 and m.groups == 1:
            m.in_channels = in_channels
            m.weight = nn.Parameter(m.weight.new_empty(m.out_channels, in_channels, *m.kernel_size))
            m.reset_parameters()
            return model
    raise ConfigError(f"model '{name}': no 3-channel convolution found to adapt to {in_channels} input channel(s)")


def _create_library(name: str, num_classes: int, in_channels: int, kwargs: dict[str, Any]) -> Any:
    library, _, model_name = name.partition(":")
    kwargs = library_kwargs(name, kwargs)
    if library == "hf":  # in_channels: the vocabulary size (kdkit.models.text)
        from .hf import from_config_type, from_directory, is_directory

        build = from_directory if is_directory(model_name) else from_config_type
        return build(model_name, num_classes, in_channels, **kwargs)
    lib = _import_library(name)
    if library == "timm":
        try:
            return lib.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_channels,
                                    **kwargs)
        except RuntimeError as e:  # timm: "Unknown model (...)"
            raise ConfigError(f"model '{name}': {e}") from None
    try:
        model = lib.models.get_model(model_name, weights=None, num_classes=num_classes, **kwargs)
    except ValueError as e:  # torchvision: "Unknown model ..."
        names = lib.models.list_models()
        raise ConfigError(f"model '{name}': {first_line(e)}{suggest(model_name, names)}") from None
    return adapt_stem(model, in_channels, name) if in_channels != 3 else model


def create_external(name: str, num_classes: int, in_channels: int, registered: Callable[[Any], bool],
                    **kwargs: Any) -> nn.Module:
    """Create the model ``name`` names (resolved by :func:`resolve`: no import, checked before the call)."""
    if name.partition(":")[0] in LIBRARIES:
        model = _create_library(name, num_classes, in_channels, kwargs)
    else:
        factory = resolve(name, registered)
        extra = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
                 if k not in kwargs and _accepts(factory, k)}
        try:
            model = factory(**extra, **kwargs)
        except TypeError as e:
            raise ConfigError(f"model '{name}': {e} (set its arguments with model.kwargs)") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model '{name}' gave a {type(model).__name__}, not a torch.nn.Module")
    return model


__all__ = ["LIBRARIES", "adapt_stem", "carries_weights", "create_external", "is_external", "library_kwargs",
           "load_plugin", "resolve", "trust_module", "use_names"]
