"""The package's shape: rooms that import only downwards, no import cycles (imports inside functions included),
and small modules."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "tda"
MAX_LINES = 300


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return mods


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (relative and absolute imports)."""
    mods = _modules()
    graph = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                deps = subs if len(subs) == len(node.names) else [target, *subs]
            elif isinstance(node, ast.Import):
                deps = [a.name for a in node.names]
            else:
                continue
            graph[m].update(d for d in deps if d in mods and d != m)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert "tda.attribution" in graph and "tda.methods.base" in graph["tda.methods.loo"]
    assert cycles(graph) == []


#: room -> the rooms (package prefixes) its modules may import; docs/architecture.md draws the same picture
ROOMS = {
    "tda.engine": ("tda.engine",),
    "tda.kernels": ("tda.kernels", "tda.engine", "tda.models"),
    "tda.dispatch": ("tda.dispatch", "tda.kernels", "tda.engine", "tda.models"),
}
#: rooms the methods must not reach past the dispatcher
METHODS_MAY_NOT = ("tda.kernels",)


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go against the rooms: a lower room importing a higher one, or a method importing the kernels."""
    out = []
    for m, deps in graph.items():
        for room, allowed in ROOMS.items():
            if _in(m, room):
                out += [f"{m} -> {d}" for d in deps if d != "tda" and not any(_in(d, a) for a in allowed)]
        if _in(m, "tda.methods"):
            out += [f"{m} -> {d}" for d in deps if any(_in(d, r) for r in METHODS_MAY_NOT)]
    return sorted(out)


def test_the_room_checker_finds_planted_upward_imports():
    planted = {"tda.engine.hvp": {"tda.methods.base", "tda.engine.functional"},
               "tda.kernels.forward": {"tda.dispatch", "tda.kernels.blocks", "tda.models"},
               "tda.methods.ats": {"tda.kernels.ensemble", "tda.dispatch"},
               "tda.dispatch": {"tda.kernels.native", "tda.engine.memory"}}
    assert violations(planted) == ["tda.engine.hvp -> tda.methods.base", "tda.kernels.forward -> tda.dispatch",
                                   "tda.methods.ats -> tda.kernels.ensemble"]


def test_rooms_import_only_downwards():
    graph = import_graph()
    assert {"tda.engine.functional", "tda.kernels.native", "tda.dispatch"} <= set(graph)
    assert violations(graph) == []


def test_the_c_kernels_load_without_the_methods():
    """Importing the kernels' loader pulls in none of the methods, backends or configuration."""
    code = ("import sys, tda.kernels.native; "
            "print(sorted(m for m in sys.modules if m.startswith(('tda.methods', 'tda.backends', 'tda.config'))))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_modules_stay_small():
    big = {str(p.relative_to(REPO)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}
