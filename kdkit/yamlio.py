"""YAML in, bounded: the loader every config, recipe, pipeline file and run folder's ``config.yaml`` is read
with (size, alias expansion and nesting depth bounded; duplicate keys refused; YAML 1.2 floats), and the
``--set a.b=c`` overrides applied to the plain mapping it gives."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

MAX_YAML_BYTES = 1 << 20  # a config, recipe or pipeline file is small; anything larger is refused
MAX_YAML_NODES = 100_000  # nodes after alias expansion ("billion laughs" documents are refused)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose document is refused when its aliases would expand it past
    ``MAX_YAML_NODES`` nodes (checked on the composed graph, before anything is built from it)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None and key in seen:
                raise ConfigError(f"duplicate key '{str(key)[:60]}' (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}): which one is meant?")
            if key is not None:
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


# YAML 1.1 (PyYAML) reads ``3e-4`` and ``1e3`` as strings: its floats need a dot. YAML 1.2 and every
# person writing a learning rate read them as numbers, so this loader does too (integers stay integers).
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _check_expansion(root) -> None:
    sizes: dict[int, int] = {}  # expanded size of each node seen (aliases share node objects)
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        children = ([n for kv in node.value for n in kv] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise ConfigError(f"its aliases expand to more than {MAX_YAML_NODES:,} values "
                                  "(nested aliases, a 'billion laughs' document)")
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)


def parse_yaml(text: str, where: str) -> Any:
    """YAML text to plain data, bounded: size, alias expansion and nesting depth; errors name ``where``."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: {len(text):,} bytes is too large for a config (at most {MAX_YAML_BYTES:,})")
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(e).split())[:300]}") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to be a config") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {path.stat().st_size:,} bytes is too large for a config "
                          f"(at most {MAX_YAML_BYTES:,})")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as text ({type(e).__name__}: {e})") from None
    data = parse_yaml(text, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides (values parsed as YAML) to a plain config mapping, in place.

    In a list of methods, an entry is addressed by index or by name: ``method.kd.temperature=2``.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        try:
            value = parse_yaml(raw, f"--set {key}") if raw else None
        except ConfigError as e:
            if "invalid YAML" not in str(e):
                raise
            value = raw
        parts = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = _descend(node, part, parts[: i + 1])
        last = parts[-1]
        if not isinstance(node, dict | list):
            raise ConfigError(f"--set {key.strip()[:80]}: '{parts[-2]}' is a value ({str(node)[:40]}), not a "
                              "section with keys")
        if isinstance(node, list):
            node[_list_index(node, last, parts)] = value
        else:
            node[last] = value
    return data


def _descend(node: Any, part: str, path: list[str]) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, path)]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {'.'.join(path)}: '{path[-2]}' is a value ({str(node)[:40]}), not a section "
                          "with keys")
    child = node.get(part)
    if child is None:
        child = node[part] = {}
    elif isinstance(child, str) and part in ("method", "model"):
        child = node[part] = {"name": child}
    if part == "method" and isinstance(child, dict):
        return child  # a single method is addressed directly: method.temperature=2
    return child


def _list_index(node: list, part: str, path: list[str]) -> int:
    if part.isdigit() and int(part) < len(node):
        return int(part)
    names = [e.get("name") if isinstance(e, dict) else e for e in node]
    if part in names:
        return names.index(part)
    raise ConfigError(f"--set {'.'.join(path)}: no entry '{part}' (entries: {names})")
