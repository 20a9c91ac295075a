"""The package has layers: no import cycle between modules, nor between the subpackages and top-level
modules of ``oreo`` (counting imports inside functions too), so a reader can learn it bottom up."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "oreo"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The ``oreo`` modules ``path`` imports, anywhere in the file (``from oreo.tasks import grading``
    imports the module ``oreo.tasks.grading``; ``from oreo.tasks import make_task`` the package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("oreo")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("oreo") and not node.level:
            for a in node.names:
                found.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module)
    return found


def graph(unit) -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {unit(m) for m in imports(path, set(modules)) if m in modules}
        edges.setdefault(unit(name), set()).update(targets - {unit(name)})
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def subpackage(module: str) -> str:
    """``oreo.rollout.sampler`` → ``oreo.rollout``; top-level modules stand for themselves."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (PACKAGE / parts[1]).is_dir() else module


def test_no_module_import_cycle():
    assert cycles(graph(lambda m: m)) == []


def test_no_cycle_between_subpackages_and_top_level_modules():
    assert cycles(graph(subpackage)) == []


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
