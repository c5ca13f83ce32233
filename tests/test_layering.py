"""The package's layers: no import circle between vitkit's modules, and the model below the tools built on it."""

import ast
from pathlib import Path

import vitkit

SRC = Path(vitkit.__file__).parent


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, lazy: bool) -> set[str]:
    """vitkit modules imported by ``path``: at module level, or anywhere (``lazy``) including inside functions."""
    tree = ast.parse(path.read_text())
    mod = _module(path)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    nodes = ast.walk(tree) if lazy else tree.body
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("vitkit"):
                out.add(name)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vitkit")}
    return out


def _graph(lazy: bool) -> dict[str, set[str]]:
    files = {_module(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        deps = set()
        for name in _imports(path, lazy):
            while name and name not in files:  # 'vitkit.weights.api.load' style names: the module part
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != mod:
                deps.add(name)
        graph[mod] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if m.endswith("__init__") or m == "vitkit":
                continue  # a package's __init__ re-exports its modules: importing it is not a layer edge
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if not state.get(m) and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if not state.get(n) and (c := visit(n)):
            return c
    return None


def test_no_import_circle_between_modules():
    graph = {m: {d for d in deps if not (d in graph_pkgs)} for m, deps in _graph(lazy=True).items()}
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


graph_pkgs = {_module(p) for p in SRC.rglob("__init__.py")}


def test_model_and_layers_import_no_tool_built_on_them():
    above = ("vitkit.inference", "vitkit.weights", "vitkit.train", "vitkit.cli", "vitkit.explain", "vitkit.export",
             "vitkit.bench")
    for mod, deps in _graph(lazy=True).items():
        if mod.startswith(("vitkit.models", "vitkit.layers", "vitkit.config", "vitkit.data")):
            bad = sorted(d for d in deps if d.startswith(above))
            assert not bad, f"{mod} imports {bad}"


def test_the_circle_finder_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
