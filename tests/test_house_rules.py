"""House rules, checked on the source with ast: small modules, no private names across modules,
a core that imports only jax and numpy."""

from __future__ import annotations

import ast
import io
import os
import tokenize

import pytest
from layout import core_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("jaxspec", "train", "experiments")
MAX_LINES = 400
CORE = core_modules()
FORBIDDEN_IN_CORE = {"flax", "optax", "tensorflow_datasets", "tqdm", "matplotlib"}


def project_files() -> dict[str, str]:
    """``{dotted module name: path}`` of every .py file of the project's packages."""
    out = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    if rel[-1] == "__init__":
                        rel = rel[:-1]
                    out[".".join(rel)] = path
    return out


FILES = project_files()


def parse(path: str) -> ast.Module:
    with open(path) as f:
        return ast.parse(f.read(), filename=path)


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def code_lines(path: str) -> int:
    """Lines that are not blank, not comments, and not inside a docstring."""
    with open(path) as f:
        source = f.read()
    tree = ast.parse(source)
    docstring_lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                docstring_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    code = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                        tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        code.update(range(tok.start[0], tok.end[0] + 1))
    return len(code - docstring_lines)


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` reads from."""
    if not node.level:
        return node.module or ""
    is_package = FILES.get(module, "").endswith("__init__.py")
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def is_project(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


def private_uses(module: str, tree: ast.Module) -> list[str]:
    """Private names of other project modules that ``module`` imports or reads."""
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if not is_project(a.name):
                    continue
                if any(is_private(p) for p in a.name.split(".")):
                    found.append(f"import {a.name}")
                if a.asname:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            if not is_project(source) or source == module:
                continue
            if any(is_private(p) for p in source.split(".")):
                found.append(f"from {source} import {', '.join(a.name for a in node.names)}")
            for a in node.names:
                if is_private(a.name):
                    found.append(f"from {source} import {a.name}")
                elif f"{source}.{a.name}" in FILES:
                    aliases[a.asname or a.name] = f"{source}.{a.name}"
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and is_private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in aliases
                and aliases[node.value.id] != module):
            found.append(f"{aliases[node.value.id]}.{node.attr}")
    return sorted(set(found))


def imported_modules(module: str, tree: ast.Module) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            out.add(source)
            out.update(f"{source}.{a.name}" for a in node.names
                       if f"{source}.{a.name}" in FILES)
    return out


def test_the_project_is_found():
    assert "jaxspec.lanczos" in FILES and any(m.startswith("experiments") for m in FILES)
    assert code_lines(FILES["jaxspec.hvp"]) < 20  # a short module, mostly docstrings


def test_no_module_over_400_lines_of_code():
    big = {m: n for m in sorted(FILES) if (n := code_lines(FILES[m])) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines of code: {big}"


def test_no_private_names_across_modules():
    bad = {m: uses for m in sorted(FILES) if (uses := private_uses(m, parse(FILES[m])))}
    assert not bad, f"private names used across modules: {bad}"


@pytest.mark.parametrize("name", CORE)
def test_core_imports_only_jax_and_numpy(name):
    """The core module and every project module it imports (transitively, by its import
    statements) import none of flax, optax, tensorflow_datasets, tqdm, matplotlib."""
    start = f"jaxspec.{name}"
    seen, todo, bad = set(), [start], []
    while todo:
        module = todo.pop()
        if module in seen or module not in FILES:
            continue
        seen.add(module)
        for imp in imported_modules(module, parse(FILES[module])):
            if imp.split(".")[0] in FORBIDDEN_IN_CORE:
                bad.append(f"{module} imports {imp}")
            elif is_project(imp) and imp not in seen:
                todo.append(imp)
    assert not bad, bad
