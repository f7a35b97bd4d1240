"""The code's shape, held as tests: rooms and arrows (``scripts/check_imports.py``), sizes,
and docstrings that name only files that exist.

Sizes: no module over 500 lines, no function over 80 lines or with more than 7 parameters
(``self``/``cls`` not counted; click commands exempt, since each option is a parameter).
A size that is kept on purpose goes in ``KEPT`` with the reason, so a new one fails here.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "swarm_pool"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_PARAMS = 7

# "module:qualname" -> why it stays as it is.
KEPT: dict[str, str] = {}

_PY_REF = re.compile(r"[\w./-]*\w\.py\b")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _load_check_imports() -> object:
    spec = importlib.util.spec_from_file_location(
        "check_imports", ROOT / "scripts/check_imports.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_upward_import_and_no_cycle() -> None:
    check = _load_check_imports()
    assert check.check(PACKAGE) == []  # type: ignore[attr-defined]


def test_the_import_check_catches_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    # The check must be able to fail: a package with both faults.
    pkg = tmp_path / "swarm_pool"
    (pkg / "store").mkdir(parents=True)
    (pkg / "pool").mkdir()
    (pkg / "__init__.py").write_text('"""x"""\n')
    (pkg / "store/__init__.py").write_text('"""x"""\n')
    (pkg / "pool/__init__.py").write_text('"""x"""\n')
    (pkg / "store/a.py").write_text("def f() -> None:\n    from swarm_pool.pool import b\n")
    (pkg / "pool/b.py").write_text("from swarm_pool.store import a\n")
    (pkg / "swarm").mkdir()
    (pkg / "swarm/__init__.py").write_text('"""x"""\n')
    (pkg / "swarm/stray.py").write_text('"""x"""\n')
    check = _load_check_imports()
    problems = check.check(pkg)  # type: ignore[attr-defined]
    assert any("upward import of pool.b from store.a" in p for p in problems), problems
    assert any("swarm.stray is in no room of SWARM_LAYERS" in p for p in problems), problems
    assert any(p.startswith("import cycle: pool.b -> store.a") for p in problems), problems


def _functions(tree: ast.AST) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((prefix + child.name, child))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return found


def _is_click_command(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        ".command" in ast.unparse(d) or ".group" in ast.unparse(d) for d in fn.decorator_list
    )


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    if names and names[0].arg in ("self", "cls"):
        count -= 1
    return count


def _size_problems() -> list[str]:
    problems: list[str] = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES and rel not in KEPT:
            problems.append(f"{rel}: {lines} lines")
        for qualname, fn in _functions(ast.parse(text)):
            key = f"{rel}:{qualname}"
            if key in KEPT or _is_click_command(fn):
                continue
            length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if length > MAX_FUNCTION_LINES:
                problems.append(f"{key}: {length} lines")
            if _params(fn) > MAX_PARAMS:
                problems.append(f"{key}: {_params(fn)} parameters")
    return problems


def test_sizes() -> None:
    assert _size_problems() == []


def test_kept_sizes_are_still_there() -> None:
    # A KEPT entry whose module or function no longer exists is stale: drop it.
    for key in KEPT:
        rel, _, qualname = key.partition(":")
        path = ROOT / rel
        assert path.is_file(), key
        if qualname:
            names = {q for q, _ in _functions(ast.parse(path.read_text()))}
            assert qualname in names, key


def _docstrings(tree: ast.Module) -> list[tuple[str, str]]:
    out = [("<module>", ast.get_docstring(tree) or "")]
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.append((node.name, ast.get_docstring(node) or ""))
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_module_docstring_names_only_files_that_exist(path: Path) -> None:
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree) or ""
    assert doc, f"{path} has no module docstring"
    assert "Room: " in doc, f"{path}'s docstring does not name its room"
    missing = []
    for where, doc in _docstrings(tree):
        for ref in _PY_REF.findall(doc):
            places = [path.parent / ref, PACKAGE / ref, ROOT / ref, path.parent.parent / ref]
            if not any(p.is_file() for p in places):
                missing.append(f"{where}: {ref}")
    assert missing == [], f"{path.relative_to(ROOT)} names files that do not exist"
