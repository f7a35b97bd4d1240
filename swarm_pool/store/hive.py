"""The hive: epics and their beads (a bead's row is a *cell*), dependencies, status, ``ready()``.

Room: store.

Owns the read and write side of epics and cells. ``create_epic`` checks everything
first (titles, dependency references, cycles, file patterns, which must stay inside the
project) and then writes the epic and all its cells in one transaction, so an epic is
never seen half made. Ids are ``bd-<short hash>`` for epics and ``<epic>.N`` for cells;
the hash grows by a character on the rare collision. ``ready()`` is one indexed query:
open cells none of whose dependencies is anything but closed.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from pydantic import ValidationError

from swarm_pool.errors import HiveError, NotFoundError
from swarm_pool.store.db import Row
from swarm_pool.store.events import (
    CELL_ID_RE,
    EPIC_ID_RE,
    BeadSpec,
    CellCreated,
    CellStatus,
    CellStatusChanged,
    EpicCreated,
)
from swarm_pool.store.recorder import Recorder
from swarm_pool.store.rows import RowView, json_list
from swarm_pool.store.schema import load_json
from swarm_pool.store.tx import Reader

STATUSES: tuple[str, ...] = get_args(CellStatus)


@dataclass(frozen=True)
class CellView(RowView):
    id: str
    epic_id: str
    title: str
    description: str
    files: list[str]
    depends_on: list[str]
    status: str
    script: list[dict[str, Any]] | None
    created_at: int
    updated_at: int

    DECODE = {
        "files": json_list,
        "depends_on": json_list,
        "script": load_json,
    }


@dataclass(frozen=True)
class EpicView:
    id: str
    title: str
    description: str
    created_at: int
    cells: list[CellView] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_epic_id(epic_id: str) -> str:
    if not isinstance(epic_id, str) or not EPIC_ID_RE.match(epic_id):
        raise HiveError(f"bad epic id {epic_id!r}: epic ids look like bd-<hash>")
    return epic_id


def check_cell_id(cell_id: str) -> str:
    if not isinstance(cell_id, str) or not CELL_ID_RE.match(cell_id):
        raise HiveError(f"bad bead id {cell_id!r}: bead ids look like bd-<hash>.N")
    return cell_id


def _cell_number(cell_id: str) -> int:
    return int(cell_id.rsplit(".", 1)[1])


def _sort_cells(rows: list[Row]) -> list[CellView]:
    cells = [CellView.from_row(r) for r in rows]
    return sorted(cells, key=lambda c: (c.epic_id, _cell_number(c.id)))


class Hive:
    def __init__(self, recorder: Recorder, normalize: Callable[[str], str]) -> None:
        self._rec = recorder
        self._normalize = normalize

    def create_epic(
        self,
        title: str,
        beads: Sequence[BeadSpec | dict[str, Any]],
        *,
        description: str = "",
    ) -> EpicView:
        """Create an epic and its cells atomically. ``depends_on`` entries are 1-based
        sibling indexes ("1") or full ids of existing cells; HiveError on an unknown
        dependency or a cycle, and nothing is written."""
        if not isinstance(title, str) or not title.strip():
            raise HiveError("an epic needs a title")
        specs = [self._spec(s, i) for i, s in enumerate(beads, 1)]
        internal, external = self._resolve_deps(specs)
        _check_cycles(internal)
        files = [[self._normalize(f) for f in s.files] for s in specs]
        with self._rec.writing() as w:
            for dep in sorted(external):
                if w.query_one("SELECT 1 AS x FROM cells WHERE id = ?", (dep,)) is None:
                    raise HiveError(f"unknown dependency {dep}: no such bead")
            epic_id = _new_epic_id(title, w)
            now = int(time.time() * 1000)
            w.append(
                EpicCreated(epic_id=epic_id, title=title, description=description, timestamp=now)
            )
            # Dependencies first: every cell_created names only cells that exist already.
            for n in _topo_order(internal):
                spec = specs[n - 1]
                deps = [f"{epic_id}.{d}" if isinstance(d, int) else d for d in _deps_of(spec)]
                w.append(
                    CellCreated(
                        cell_id=f"{epic_id}.{n}",
                        epic_id=epic_id,
                        title=spec.title,
                        description=spec.description,
                        files=files[n - 1],
                        depends_on=list(dict.fromkeys(deps)),
                        script=spec.script,
                        timestamp=now,
                    )
                )
            return self._epic(w, epic_id)

    @staticmethod
    def _spec(spec: BeadSpec | dict[str, Any], n: int) -> BeadSpec:
        if isinstance(spec, BeadSpec):
            return spec
        try:
            return BeadSpec.model_validate(spec)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"]) or "subtask"
            raise HiveError(f"subtask {n}: bad {loc}: {first['msg']}") from e

    @staticmethod
    def _resolve_deps(specs: list[BeadSpec]) -> tuple[dict[int, set[int]], set[str]]:
        internal: dict[int, set[int]] = {n: set() for n in range(1, len(specs) + 1)}
        external: set[str] = set()
        for n, spec in enumerate(specs, 1):
            for dep in spec.depends_on:
                dep = dep.strip()
                if dep.isdigit():
                    k = int(dep)
                    if not 1 <= k <= len(specs):
                        raise HiveError(
                            f"subtask {n} depends on subtask {k}, but there are {len(specs)}"
                        )
                    if k == n:
                        raise HiveError(f"dependency cycle: subtask {n} depends on itself")
                    internal[n].add(k)
                elif CELL_ID_RE.match(dep):
                    external.add(dep)
                else:
                    raise HiveError(
                        f"subtask {n}: bad dependency {dep!r}: use a subtask number or a bead id"
                    )
        return internal, external

    def epics(self) -> list[EpicView]:
        with self._rec.reading() as r:
            ids = [row["id"] for row in r.query("SELECT id FROM epics ORDER BY seq")]
            return [self._epic(r, i) for i in ids]

    def get_epic(self, epic_id: str) -> EpicView:
        check_epic_id(epic_id)
        with self._rec.reading() as r:
            return self._epic(r, epic_id)

    def _epic(self, r: Reader, epic_id: str) -> EpicView:
        row = r.query_one("SELECT * FROM epics WHERE id = ?", (epic_id,))
        if row is None:
            raise NotFoundError(f"epic {epic_id} does not exist")
        cells = _sort_cells(r.query("SELECT * FROM cells WHERE epic_id = ?", (epic_id,)))
        return EpicView(
            id=row["id"],
            title=row["title"],
            description=row["description"],
            created_at=row["created_at"],
            cells=cells,
        )

    def get_cell(self, cell_id: str) -> CellView:
        check_cell_id(cell_id)
        with self._rec.reading() as r:
            row = r.query_one("SELECT * FROM cells WHERE id = ?", (cell_id,))
        if row is None:
            raise NotFoundError(f"bead {cell_id} does not exist")
        return CellView.from_row(row)

    def cells(self, epic_id: str | None = None, status: str | None = None) -> list[CellView]:
        where, params = [], []
        if epic_id is not None:
            check_epic_id(epic_id)
            where.append("epic_id = ?")
            params.append(epic_id)
        if status is not None:
            _check_status(status)
            where.append("status = ?")
            params.append(status)
        sql = "SELECT * FROM cells" + (f" WHERE {' AND '.join(where)}" if where else "")
        with self._rec.reading() as r:
            return _sort_cells(r.query(sql, params))

    def set_status(self, cell_id: str, status: str, reason: str = "") -> int:
        check_cell_id(cell_id)
        _check_status(status)
        with self._rec.writing() as w:
            row = w.query_one("SELECT epic_id FROM cells WHERE id = ?", (cell_id,))
            if row is None:
                raise NotFoundError(f"bead {cell_id} does not exist")
            return w.append(
                CellStatusChanged(
                    cell_id=cell_id,
                    epic_id=row["epic_id"],
                    status=status,  # type: ignore[arg-type]
                    reason=reason,
                )
            )

    def ready(self, epic_id: str | None = None) -> list[CellView]:
        """Open cells whose dependencies are all closed."""
        sql = (
            "SELECT c.* FROM cells c WHERE c.status = 'open' AND NOT EXISTS ("
            " SELECT 1 FROM cell_deps d LEFT JOIN cells dc ON dc.id = d.depends_on"
            " WHERE d.cell_id = c.id AND (dc.status IS NULL OR dc.status != 'closed'))"
        )
        params: list[Any] = []
        if epic_id is not None:
            check_epic_id(epic_id)
            sql += " AND c.epic_id = ?"
            params.append(epic_id)
        with self._rec.reading() as r:
            return _sort_cells(r.query(sql, params))


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise HiveError(f"bad status {status!r}: one of {', '.join(STATUSES)}")


def _deps_of(spec: BeadSpec) -> list[int | str]:
    out: list[int | str] = []
    for dep in spec.depends_on:
        dep = dep.strip()
        out.append(int(dep) if dep.isdigit() else dep)
    return out


def _check_cycles(graph: dict[int, set[int]]) -> None:
    """HiveError naming one cycle, if the sibling dependency graph has any."""
    state: dict[int, int] = {}  # 1 = on the current path, 2 = done

    def visit(n: int, path: list[int]) -> None:
        state[n] = 1
        path.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = [*path[path.index(m) :], m]
                raise HiveError("dependency cycle: " + " -> ".join(f"subtask {k}" for k in cycle))
            if m not in state:
                visit(m, path)
        path.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])


def _topo_order(graph: dict[int, set[int]]) -> list[int]:
    """Subtask numbers with dependencies before dependents (graph is acyclic)."""
    order: list[int] = []
    done: set[int] = set()

    def visit(n: int) -> None:
        if n in done:
            return
        done.add(n)
        for m in sorted(graph[n]):
            visit(m)
        order.append(n)

    for n in sorted(graph):
        visit(n)
    return order


def _new_epic_id(title: str, r: Reader) -> str:
    digest = hashlib.sha256(
        f"{title}\0{time.time_ns()}\0{os.getpid()}".encode() + os.urandom(8)
    ).hexdigest()
    for length in range(6, len(digest) + 1):
        candidate = f"bd-{digest[:length]}"
        if r.query_one("SELECT 1 AS x FROM epics WHERE id = ?", (candidate,)) is None:
            return candidate
    raise HiveError("could not find a free epic id")  # pragma: no cover - 2^-256
