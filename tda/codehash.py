"""The code behind an artefact: a digest of every repository module a computation runs, comments and docstrings
not counted, so that a change to the code (not to its prose) recomputes what it computed.

A module's digest hashes its parsed syntax tree with the docstrings removed (comments never reach the tree).
A computation's code is the closure of its root modules (e.g. the method's module) under their imports of
modules in this repository, followed through relative and absolute imports, inside functions too. The C
source of the CNN kernels is hashed with its comments and white space removed. Parsing the ~50 modules of the
package takes a few hundredths of a second, once per process.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable

PACKAGE = Path(__file__).resolve().parent
REPO = PACKAGE.parent
_C_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def source_digest(text: str) -> str:
    """Digest of Python source by its syntax tree without docstrings: comments, blank lines and docstrings do not count."""
    tree = _strip_docstrings(ast.parse(text))
    return hashlib.sha256(ast.dump(tree, annotate_fields=False, include_attributes=False).encode()).hexdigest()[:16]


def c_digest(text: str) -> str:
    """Digest of C source without its comments, white space folded."""
    return hashlib.sha256(" ".join(_C_COMMENT.sub(" ", text).split()).encode()).hexdigest()[:16]


@lru_cache(maxsize=None)
def module_file(name: str) -> Path | None:
    """The source file of module `name` of this package (`tda...`), else None."""
    parts = name.split(".")
    if parts[0] != PACKAGE.name:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _root_file(name: str) -> Path | None:
    """The source file of a root module: one of this package, or any importable module (e.g. a method of your own)."""
    path = module_file(name)
    if path is not None:
        return path
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None) if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") else None


def _imports(name: str, path: Path, tree: ast.AST) -> set[str]:
    """Module names `name` imports anywhere in its body (relative imports resolved), candidates for the closure."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")[:len(pkg.split(".")) - (node.level - 1)] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m}


def _label(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


@lru_cache(maxsize=None)
def _parsed(name: str) -> tuple[str, str, frozenset[str]] | None:
    """(path relative to the repository, digest, imported modules of this package) of a module."""
    path = _root_file(name)
    if path is None:
        return None
    text = path.read_text()
    deps = frozenset(m for m in _imports(name, path, ast.parse(text)) if m != name and module_file(m) is not None)
    return _label(path), source_digest(text), deps


def code_digests(roots: Iterable[str]) -> dict[str, str]:
    """Path -> digest of every module the `roots` (module names) run, through their imports of this package."""
    seen, todo, out = set(), list(roots), {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        got = _parsed(name)
        if got is None:
            continue
        rel, dig, deps = got
        out[rel] = dig
        todo.extend(deps)
    return dict(sorted(out.items()))


def first_difference(recorded: dict, current: dict) -> str:
    """The first file whose digest differs (or that was added or removed), for a one-line reason."""
    for f in sorted(set(recorded) | set(current)):
        if recorded.get(f) != current.get(f):
            return f
    return "?"
