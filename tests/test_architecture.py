"""The package's shape, checked from its source: no import cycle, a small top level, short functions,
one place that asks for the backend. These read the AST, so they hold for code no test runs."""

from __future__ import annotations

import ast
import pathlib

import jlstm

ROOT = pathlib.Path(jlstm.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """Every jlstm module that ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "jlstm":
                found.add(t)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_counting_function_level_imports():
    mods = _modules()
    graph = {n: _imports(n, p, set(mods)) for n, p in mods.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cells_import_no_solver_and_generic_code_names_no_cell():
    mods = _modules()
    for name, path in mods.items():
        deps = _imports(name, path, set(mods))
        if name.startswith("jlstm.cells"):
            assert not {d for d in deps if d.startswith(("jlstm.newton", "jlstm.strategies", "jlstm._scan"))}, name
        if name.startswith(("jlstm.strategies", "jlstm.newton", "jlstm.core", "jlstm._scan", "jlstm.layers")):
            assert not {d for d in deps if d.startswith("jlstm.cells")}, (name, deps)


def test_at_most_twelve_modules_at_the_top_level():
    top = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(top) <= 12, top


def test_every_function_is_at_most_60_lines():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_only_the_plan_asks_for_the_backend():
    askers = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if "default_backend()" in p.read_text())
    assert askers == ["core/plan.py"], askers
