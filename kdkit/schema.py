"""Generic validation of dataclasses from plain data (YAML mappings), and back.

:func:`from_dict` checks each key against the dataclass fields and each value against the field's type
annotation, so a misspelled key or a string where a number belongs is an error that names the key (and
the closest valid one). It is written here rather than taken from a validation library because the checks
needed are small (scalars, lists, optionals, literals, nested dataclasses) and the error messages (with a
close-match suggestion and a dotted path) matter most. This module knows nothing of kdkit's run schema
(``config.py``) or of methods: both build on it.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from .errors import ConfigError
from .registry import suggest

INT_MIN, INT_MAX = -(2**63), 2**63 - 1  # integers must fit in 64 bits (torch, numpy and seeds take them)
MAX_STRING = 4096  # longest string value accepted (paths included)

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3


def short(value: Any) -> str:
    """A bounded ``repr`` for error messages: long strings, huge numbers and deep or large structures are
    cut (``...``), so a message stays one short line whatever the input."""
    return _REPR.repr(value)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it (ints are widened to float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {short(value)} matches none of {tp}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = suggest(str(value)[:60], [str(c) for c in choices])
            raise ConfigError(f"{where}: {short(value)} is not one of {list(choices)}{hint}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {short(value)}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {short(value)}")
        _, vt = typing.get_args(tp) or (str, Any)
        return {str(k): _convert(v, vt, f"{where}.{_key(k)}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {short(value)}")
        if isinstance(value, int) and not INT_MIN <= value <= INT_MAX or not math.isfinite(float(value)):
            raise ConfigError(f"{where}: {short(value)} is out of range (a finite number is expected)")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {short(value)}")
        if not INT_MIN <= value <= INT_MAX:
            raise ConfigError(f"{where}: {short(value)} is out of range (integers must fit in 64 bits)")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {short(value)}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {short(value)}")
        if len(value) > MAX_STRING:
            raise ConfigError(f"{where}: a string of {len(value)} characters (at most {MAX_STRING}): "
                              f"{short(value)}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrongly typed values."""
    name = where or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: expected a mapping, got {short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown key '{_join(where, _key(key))}'{suggest(_key(key), list(fields))}"
                f" (valid keys: {', '.join(fields)})"
            )
        kwargs[key] = _convert(value, hints[key], _join(where, key))
    missing = [
        k
        for k, f in fields.items()
        if k not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{name}: missing required key(s) {', '.join(_join(where, m) for m in missing)}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{name}: {e}") from None


def _key(key: Any) -> str:
    """A mapping key as it may appear in a message (long or odd keys cut)."""
    return key if isinstance(key, str) and len(key) <= 60 else short(key)


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def to_dict(obj: Any, name_of: Callable[[Any], str | None] = lambda obj: None) -> Any:
    """Plain-data view of a config (dataclasses become dicts), suitable for YAML and checkpoints.
    ``name_of(dataclass_obj)`` may give a name to put first as ``name`` (a method config's registered
    name, so that the mapping validates back)."""
    if dataclasses.is_dataclass(obj):
        out = {f.name: to_dict(getattr(obj, f.name), name_of) for f in dataclasses.fields(obj)}
        name = name_of(obj)
        return {"name": name, **out} if name else out
    if isinstance(obj, list | tuple):
        return [to_dict(v, name_of) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v, name_of) for k, v in obj.items()}
    return obj
