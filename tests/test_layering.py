"""The package's import graph has no cycles: every kdkit module can be understood (and imported) after
the modules it imports, never together with a module that imports it back. Function-level imports count
too: a local import is the usual way a cycle is hidden."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "kdkit"


def _module_name(path: Path) -> str:
    parts = ["kdkit", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                mod = _resolve(name, is_package, node.level, node.module) if node.level else (node.module or "")
                targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
                    break  # the most specific module named by this statement
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "kdkit.methods.base" in graph and graph["kdkit.build"]  # the walk found the package
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# Layers, bottom to top: a module may import its own layer and those below, never one above. A new module
# must be placed here (the test fails on a module it cannot place).
LAYERS = [
    ("foundations", ["kdkit.errors", "kdkit.registry", "kdkit.schema", "kdkit.validate", "kdkit.yamlio",
                     "kdkit.batch", "kdkit.atomic"]),
    ("tensors and models", ["kdkit.tasks", "kdkit.features", "kdkit.adapters", "kdkit.losses", "kdkit.models",
                            "kdkit.transforms", "kdkit.prune", "kdkit.lowrank", "kdkit.qat", "kdkit.binarize",
                            "kdkit.weight_share", "kdkit.distributed", "kdkit.specialist_combination"]),
    ("methods", ["kdkit.methods"]),
    ("run schema", ["kdkit.config"]),
    ("data", ["kdkit.data"]),
    ("engine", ["kdkit.engine"]),
    ("build", ["kdkit.build"]),
    ("pipelines", ["kdkit.pipeline", "kdkit.specialists", "kdkit.export", "kdkit.quantize", "kdkit.measure",
                   "kdkit.summary", "kdkit.sweep", "kdkit.condense",
                   "kdkit.synthesize", "kdkit.lifelong"]),
    ("front ends", ["kdkit.bench", "kdkit.demo", "kdkit.report", "kdkit.cli", "kdkit.__main__", "kdkit"]),
]


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and p.count(".") > depth:
                best, depth = i, p.count(".")
    assert best is not None, f"{module} is in no layer of tests/test_layering.py"
    return best


def test_no_module_imports_a_layer_above_its_own():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {n} ({LAYERS[layer_of(n)][0]})"
              for m, targets in import_graph().items() for n in targets if layer_of(n) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_each_folder_is_one_layer():
    """The folders show the order: every module of a sub-package sits in its package's layer, so that
    no folder holds a module that serves the layers below it."""
    mixed = {}
    for m in import_graph():
        parts = m.split(".")
        if len(parts) > 2:  # kdkit.<folder>.<module>
            package = ".".join(parts[:2])
            if layer_of(m) != layer_of(package):
                mixed[m] = f"{LAYERS[layer_of(m)][0]}, its folder {package}: {LAYERS[layer_of(package)][0]}"
    assert not mixed, mixed
    assert layer_of("kdkit.engine.checkpoint") == layer_of("kdkit.engine") > layer_of("kdkit.data")


def test_small_units():
    """No file of the package over 400 lines (docs: small units; split where the seams are)."""
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
