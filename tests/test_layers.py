"""The house's shape: imports only point down the layers of DESIGN.md, and never in a circle.

Read from the source with ``ast``, so imports inside functions count too (they used to hide
the cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

import transferkit

ROOT = Path(transferkit.__file__).parent

# Bottom to top. A module may import from its own layer's packages or any lower layer.
LAYERS = [
    {"transferkit", "_version", "errors", "_io", "_outputs", "config", "metrics", "labels"},
    {"data"},
    {"backbones"},
    {"train"},
    {"adapt", "pretrain", "select", "recommend"},
    {"artifact"},
    {"classifier"},
    {"evaluate", "reuse"},
    {"workflows"},
    {"cli", "__main__"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ("transferkit", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(importer, imported module, line) for every transferkit import, at any depth."""
    edges = []
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    edges.append((name, full if full in modules else target, node.lineno))
            elif isinstance(node, ast.Import):
                edges += [(name, a.name, node.lineno) for a in node.names]
    return [e for e in edges if e[1] == "transferkit" or e[1].startswith("transferkit.")]


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    assert part in RANK, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return RANK[part]


def test_every_import_points_down():
    modules = _modules()
    climbing = [f"{a} (line {line}) imports {b}" for a, b, line in _imports(modules)
                if _layer(b) > _layer(a)]
    assert not climbing, "imports that climb a layer:\n" + "\n".join(climbing)


def test_no_import_cycles():
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for a, b, _ in _imports(modules):
        if b in graph and b != a and not a.startswith(b + "."):  # a package's own parent
            graph[a].add(b)
    # Tarjan's strongly connected components: any component of two or more is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_modules_stay_short():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400]
    assert not long, "modules over 400 lines (split them by what they do):\n" + "\n".join(long)
