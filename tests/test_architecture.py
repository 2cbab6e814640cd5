"""The architecture holds: no import cycle inside core/ (function-level imports included), every stage imports
only the stages below it and the engine never imports streamlit (the import-linter contracts in pyproject.toml),
and no module grows past what one job needs.
"""
from __future__ import annotations

import glob
import os
import sys

import grimp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 450


def cycles(adjacency: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in adjacency.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(adjacency):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_the_cycle_finder_finds_a_cycle_and_nothing_else():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_core():
    graph = grimp.build_graph("core", include_external_packages=False)
    adjacency = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert cycles(adjacency) == []


def test_stages_import_only_the_stages_below_them():
    from importlinter.cli import lint_imports

    cwd = os.getcwd()
    os.chdir(ROOT)  # pyproject.toml holds the contracts
    try:
        assert lint_imports(no_cache=True, no_logo=True) == 0, "run `lint-imports` to see the broken contract"
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("folder", ["core", "pages"])
def test_no_module_outgrows_one_job(folder):
    sizes = {path: sum(1 for _ in open(path, encoding="utf-8"))
             for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)}
    too_big = {os.path.relpath(p, ROOT): n for p, n in sizes.items() if n > MAX_LINES}
    assert not too_big, f"split these along their jobs (over {MAX_LINES} lines): {too_big}"
