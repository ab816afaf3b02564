"""The library's module graph has no cycles (top-level and function-level imports alike)."""
from __future__ import annotations

import ast
from pathlib import Path

import diskgnn

PACKAGE = Path(diskgnn.__file__).parent


def _module_files() -> dict[str, Path]:
    """Every module of the installed library (``diskgnn.x``, ``diskgnn.interop.y``, ``diskgnn.kernels.z``)."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.parts[0] in ("tools", "bench") or rel.name == "__init__":
            continue  # the command line and the benches sit on top of the library
        files["diskgnn." + ".".join(rel.parts)] = path
    import diskgnn.kernels
    for path in Path(diskgnn.kernels.__file__).parent.glob("*.py"):
        if path.stem != "__init__":
            files[f"diskgnn.kernels.{path.stem}"] = path
    return files


def import_graph() -> dict[str, set[str]]:
    files = _module_files()
    graph = {name: set() for name in files}
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diskgnn"):
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("diskgnn")]
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_module_graph_has_no_cycles():
    graph = import_graph()
    assert {"diskgnn.train", "diskgnn.distributed", "diskgnn.store", "diskgnn.packing", "diskgnn.loader"} <= set(graph)
    assert "diskgnn.loader" in graph["diskgnn.train"] and "diskgnn.store" in graph["diskgnn.packing"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
