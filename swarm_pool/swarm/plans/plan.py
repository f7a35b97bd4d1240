"""Plan files: an epic and its tasks in TOML, checked before anything
starts.

Room: swarm.plans.

A plan holds ``[epic]`` (title, description, shared_context), ``[[tasks]]`` (a short
local ``id``, title, description, owned ``files``, ``depends_on`` local ids, optional
``read_only`` and ``success_criteria``, and an optional inline ``script`` for the
scripted model) and optional ``[pool]`` hints (size, routing). This module owns parsing
(``load_plan``), the checks that reject a bad plan with one clear line (duplicate ids,
unknown dependencies, cycles, and two tasks that may run at the same time owning
overlapping files), the topological order, and the mapping to the store's
``BeadSpec`` list, whose dependencies are 1-based task indexes.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarm_pool.errors import PlanError, ScriptError
from swarm_pool.model.scripts import parse_inline
from swarm_pool.store.events import BeadSpec
from swarm_pool.store.globs import has_magic, patterns_overlap


class _Model(BaseModel):
    # Strict: TOML values are typed, so "2" is not a size and 1 is not a title.
    model_config = ConfigDict(extra="forbid", strict=True)


class PlanEpic(_Model):
    title: str = Field(min_length=1)
    description: str = ""
    shared_context: str = ""


class PlanTask(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    title: str = Field(min_length=1)
    description: str = ""
    # A worker may only write what it owns: a task that owns nothing cannot finish.
    files: list[str] = Field(min_length=1, description="owned patterns")
    read_only: list[str] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list, description="local task ids")
    success_criteria: list[str] = Field(default_factory=list)
    # Steps for the scripted model, kept as plain tables: the model validates them.
    script: list[dict[str, Any]] | None = None


class PlanPool(_Model):
    size: int | None = Field(None, ge=1, le=64)
    routing: Literal["least_busy", "dedicated"] | None = None


class Plan(_Model):
    epic: PlanEpic
    tasks: list[PlanTask] = Field(min_length=1)
    pool: PlanPool = Field(default_factory=PlanPool)

    # --- convenience views ----------------------------------------------------------

    @property
    def title(self) -> str:
        return self.epic.title

    @property
    def shared_context(self) -> str:
        return self.epic.shared_context

    def task(self, task_id: str) -> PlanTask:
        for t in self.tasks:
            if t.id == task_id:
                return t
        raise PlanError(f"plan has no task {task_id!r}")

    def index_of(self, task_id: str) -> int:
        """1-based position of the task: its cell is ``<epic>.<index>`` in the store."""
        for i, t in enumerate(self.tasks, start=1):
            if t.id == task_id:
                return i
        raise PlanError(f"plan has no task {task_id!r}")

    # --- checks ---------------------------------------------------------------------

    def validate(self) -> Plan:  # type: ignore[override]
        """Reject a plan that cannot run as given; PlanError naming the culprits."""
        seen: dict[str, int] = {}
        for i, t in enumerate(self.tasks, start=1):
            if t.id in seen:
                raise PlanError(f"duplicate task id {t.id!r} (tasks {seen[t.id]} and {i})")
            seen[t.id] = i
        for t in self.tasks:
            for dep in t.depends_on:
                if dep not in seen:
                    raise PlanError(f"task {t.id!r} depends on unknown task {dep!r}")
            for pattern in [*t.files, *t.read_only]:
                _check_pattern(t.id, pattern)
            if t.script is not None:
                _check_script(t.id, t.script)
        cycle = self._find_cycle()
        if cycle:
            raise PlanError(f"dependency cycle: {' -> '.join(cycle)}")
        self._check_overlaps()
        return self

    def _graph(self) -> dict[str, list[str]]:
        return {t.id: list(dict.fromkeys(t.depends_on)) for t in self.tasks}

    def _find_cycle(self) -> list[str] | None:
        graph = self._graph()
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        path: list[str] = []

        def visit(node: str) -> list[str] | None:
            state[node] = 1
            path.append(node)
            for dep in graph.get(node, []):
                if state.get(dep) == 1:
                    return [*path[path.index(dep) :], dep]
                if dep not in state:
                    found = visit(dep)
                    if found:
                        return found
            path.pop()
            state[node] = 2
            return None

        for t in self.tasks:
            if t.id not in state:
                found = visit(t.id)
                if found:
                    return found
        return None

    def ancestors(self, task_id: str) -> set[str]:
        """Every task that must finish before ``task_id`` (transitively)."""
        graph = self._graph()
        seen: set[str] = set()
        stack = list(graph.get(task_id, []))
        while stack:
            dep = stack.pop()
            if dep not in seen:
                seen.add(dep)
                stack.extend(graph.get(dep, []))
        return seen

    def _check_overlaps(self) -> None:
        before = {t.id: self.ancestors(t.id) for t in self.tasks}
        for i, a in enumerate(self.tasks):
            for b in self.tasks[i + 1 :]:
                if a.id in before[b.id] or b.id in before[a.id]:
                    continue  # ordered by dependencies: they never run at the same time
                for pa in a.files:
                    for pb in b.files:
                        if _owned_overlap(pa, pb):
                            raise PlanError(
                                f"tasks {a.id!r} and {b.id!r} may run in parallel but both "
                                f"own files matching {pa!r} / {pb!r}; add a dependency "
                                "or split the files"
                            )

    # --- order and mapping ----------------------------------------------------------

    def topo_order(self) -> list[str]:
        """Task ids, dependencies first; ties keep the plan's order."""
        graph = self._graph()
        done: set[str] = set()
        order: list[str] = []
        remaining = [t.id for t in self.tasks]
        while remaining:
            ready = [tid for tid in remaining if all(d in done for d in graph[tid])]
            if not ready:
                raise PlanError(f"dependency cycle among: {', '.join(remaining)}")
            for tid in ready:
                done.add(tid)
                order.append(tid)
            remaining = [tid for tid in remaining if tid not in done]
        return order

    def waves(self) -> list[list[str]]:
        """Task ids grouped by depth: each wave needs only the waves before it."""
        graph = self._graph()
        depth: dict[str, int] = {}
        for tid in self.topo_order():
            depth[tid] = 1 + max((depth[d] for d in graph[tid]), default=-1)
        waves: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
        for t in self.tasks:
            waves[depth[t.id]].append(t.id)
        return waves

    def to_beads(self) -> list[BeadSpec]:
        """The plan's tasks as the store's beads, in plan order, dependencies as 1-based
        indexes."""
        index = {t.id: i for i, t in enumerate(self.tasks, start=1)}
        specs = []
        for t in self.tasks:
            try:
                deps = [str(index[d]) for d in dict.fromkeys(t.depends_on)]
            except KeyError as e:
                raise PlanError(f"task {t.id!r} depends on unknown task {e.args[0]!r}") from e
            specs.append(
                BeadSpec(
                    title=t.title,
                    description=t.description,
                    files=list(t.files),
                    depends_on=deps,
                    script=t.script,
                )
            )
        return specs


def _check_pattern(task_id: str, pattern: str) -> None:
    if not pattern.strip():
        raise PlanError(f"task {task_id!r} has an empty file pattern")
    if pattern.startswith("/") or ".." in PurePosixPath(pattern).parts or "\\" in pattern:
        raise PlanError(
            f"task {task_id!r}: file pattern {pattern!r} must be relative to the project "
            "and stay inside it (no leading /, no .., forward slashes only)"
        )


def _check_script(task_id: str, steps: list[dict[str, Any]]) -> None:
    # The scripted model would only reject a bad step mid-run, inside a worker.
    try:
        parse_inline(steps, where=f"script of task {task_id!r}")
    except ScriptError as e:
        raise PlanError(str(e)) from e


def _forms(pattern: str) -> list[str]:
    """A pattern plus, for a literal or ``dir/``, everything under it as a directory.

    Reservations turn an existing directory into ``dir/**`` when they are taken, so a
    plain name may turn out to own a whole tree: assume it does.
    """
    p = pattern.strip()
    p = p[2:] if p.startswith("./") else p
    if p.endswith("/"):
        return [p.rstrip("/") + "/**"]
    return [p, p + "/**"] if not has_magic(p) else [p]


def _owned_overlap(a: str, b: str) -> bool:
    return any(patterns_overlap(x, y) for x in _forms(a) for y in _forms(b))


def parse_plan(data: Mapping[str, Any], *, source: str = "plan", validate: bool = True) -> Plan:
    """A Plan from already-parsed TOML data; PlanError with one line on bad input."""
    try:
        plan = Plan.model_validate(dict(data))
    except ValidationError as e:
        raise PlanError(f"{source}: {_first_error(e)}") from e
    if validate:
        try:
            plan.validate()
        except PlanError as e:
            raise PlanError(f"{source}: {e}") from e
    return plan


def load_plan(path: Path, *, validate: bool = True) -> Plan:
    """Read and check a plan file; PlanError (one line) if it is unreadable or bad."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PlanError(
            f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})"
        ) from e
    except OSError as e:
        raise PlanError(f"cannot read plan {path}: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise PlanError(f"{path}: invalid TOML: {e}") from e
    return parse_plan(data, source=str(path), validate=validate)


def _first_error(e: ValidationError) -> str:
    errors = e.errors()
    if not errors:
        return str(e)
    first = errors[0]
    loc = _loc(first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {first.get('msg', 'invalid')}{more}"


def _loc(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "plan"
