#!/usr/bin/env python3
"""Prove the package's arrows point down: no module imports a room above its own, and no
import cycle anywhere, counting every import (module level, function level and
``TYPE_CHECKING``), so a cycle cannot hide inside a function.

The rooms, bottom first, are ``LAYERS``; a room may import its own room and any below it.
Rooms on one line are siblings and may not import each other. ``swarm`` has rooms of its
own (``SWARM_LAYERS``). Run by ``scripts/test``; prints each offending import and exits 1.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "swarm_pool"

# Bottom first. Each entry is a tuple of sibling rooms (module or package prefixes).
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "errors"),
    ("faults",),
    ("paths",),
    ("tokens",),
    ("config",),
    ("protocol",),
    ("model",),
    ("store",),
    ("opencode",),
    ("git",),
    ("pool",),
    ("swarm",),
    ("mcp", "gateway", "view"),
    ("daemon", "mcp_server", "scripted_model"),
    ("cli",),
    ("__main__",),
]
SWARM_LAYERS: list[tuple[str, ...]] = [
    ("swarm.__init__", "swarm.pool_view", "swarm.engine_state"),
    ("swarm.context",),
    ("swarm.worker",),
    ("swarm.engine",),
    ("swarm.status",),
    ("swarm.plans",),
]


def module_names(root: Path) -> dict[str, Path]:
    """Every module under ``root``, keyed by its dotted name relative to the package (a
    package's ``__init__`` keeps the ``.__init__`` suffix so it is a module of its own)."""
    mods: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        mods[".".join(rel.parts)] = path
    return mods


def _resolve(mods: dict[str, Path], target: str) -> str | None:
    """The module a dotted import target lands in (a package means its ``__init__``)."""
    if target in mods:
        return target
    if f"{target}.__init__" in mods:
        return f"{target}.__init__"
    return None


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a package module in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    here = name.split(".")[:-1]  # the package this module lives in
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = here[: len(here) - (node.level - 1)]
                base = ".".join([PACKAGE, *base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            rel = target.removeprefix(PACKAGE).removeprefix(".") or "__init__"
            mod = _resolve(mods, rel)
            if mod is None and "." in rel:
                continue  # `from pkg import name`: the name is not a module; base is listed
            if mod is not None and mod != name:
                found.append((node.lineno, mod))
    # `from a.b import c` lists both a.b.c (when a module) and a.b; keep a.b only if no
    # submodule of it was named on that line, so a package's __init__ is not a false edge.
    by_line: dict[int, set[str]] = {}
    for line, mod in found:
        by_line.setdefault(line, set()).add(mod)
    out: list[tuple[int, str]] = []
    for line, named in by_line.items():
        for mod in sorted(named):
            if mod == "__init__" and len(named) > 1:
                continue  # `from swarm_pool import faults`: the module, not the package
            pkg = mod.removesuffix(".__init__")
            if mod.endswith(".__init__") and any(
                t != mod and t.startswith(pkg + ".") for t in named
            ):
                continue
            out.append((line, mod))
    return out


def _rank(name: str, layers: list[tuple[str, ...]]) -> tuple[int, str] | None:
    for rank, rooms in enumerate(layers):
        for room in rooms:
            if name == room or name.startswith(room + "."):
                return rank, room
    return None


def check(root: Path) -> list[str]:
    mods = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in mods}
    problems: list[str] = []
    for name, path in mods.items():
        for line, target in imports_of(name, path, mods):
            graph[name].add(target)
            for layers in (LAYERS, SWARM_LAYERS):
                src, dst = _rank(name, layers), _rank(target, layers)
                if src is None or dst is None or src[1] == dst[1]:
                    continue
                if dst[0] >= src[0]:
                    how = "upward" if dst[0] > src[0] else "sideways"
                    problems.append(f"{path}:{line}: {how} import of {target} from {name}")
    for name in mods:
        if _rank(name, LAYERS) is None:
            problems.append(f"{mods[name]}: {name} is in no room of LAYERS")
        elif name.startswith("swarm.") and _rank(name, SWARM_LAYERS) is None:
            problems.append(f"{mods[name]}: {name} is in no room of SWARM_LAYERS")
    for cycle in _cycles(graph):
        problems.append("import cycle: " + " -> ".join([*cycle, cycle[0]]))
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def main() -> int:
    root = Path(__file__).resolve().parent.parent / PACKAGE
    problems = check(root)
    for line in problems:
        print(line)
    if problems:
        print(f"check_imports: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
