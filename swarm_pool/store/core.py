"""The ``Store``: the one object users hold, and the ways to open it.

Room: store.

Owns the public surface of the store package: appending and reading events, waiting for
changes, rebuild and check, and the hive, reservations, mail and workers facades, all
over one recorder. The recorder is chosen by the store URL (``[store] url``, ``--store``,
``$SWARM_POOL_STORE__URL``): empty for the project's SQLite file, ``sqlite:///PATH``
for another SQLite file, ``postgresql://...`` for a PostgreSQL database shared by
several hosts. A ``Store`` is safe to share between the threads of a process (its
connection sits behind a lock) but not across ``fork``; every process opens its own.
``find_project_store`` is how a process started inside a worktree (the MCP server)
finds the project's store.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Unpack

from swarm_pool import faults
from swarm_pool.config import Config, StoreSection, load_config
from swarm_pool.errors import StoreError, VersionConflictError
from swarm_pool.paths import SWARM_DIR, ProjectPaths
from swarm_pool.store.dialect import Backend
from swarm_pool.store.events import BaseEvent, validate_event
from swarm_pool.store.hive import Hive
from swarm_pool.store.hosts import Hosts
from swarm_pool.store.mail import Mail
from swarm_pool.store.projections import dump
from swarm_pool.store.recorder import EventFilter, ReadFilters, Recorder, StoredEvent
from swarm_pool.store.reservations import Reservations
from swarm_pool.store.sessions import SessionMap
from swarm_pool.store.slots import Slots
from swarm_pool.store.sqlite import SQLiteRecorder
from swarm_pool.store.url import parse_store_url as parse_store_url  # the CLI's name
from swarm_pool.store.worker_projection import check_versions
from swarm_pool.store.workers import Workers, WorkerView

PROJECT_ENV = "SWARM_POOL_PROJECT"
DB_NAME = "swarm.db"


class Store:
    """The shared event store of one project. Use as a context manager, or ``close()``."""

    def __init__(self, recorder: Recorder, *, db_path: Path | None, project_root: Path) -> None:
        self.recorder = recorder
        # The SQLite file, or None when the store is on a database server.
        self.db_path = db_path
        self.project_root = project_root
        self.reservations = Reservations(recorder, project_root)
        self.hive = Hive(recorder, self.reservations.normalize)
        self.mail = Mail(recorder)
        self.workers = Workers(recorder)
        self.sessions = SessionMap(recorder)
        self.slots = Slots(recorder)
        self.hosts = Hosts(recorder)

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.recorder.location!r})"

    @property
    def location(self) -> str:
        """The SQLite path, or the server URL without its password."""
        return self.recorder.location

    def close(self) -> None:
        """Close (SQLite: after checkpointing the WAL into the DB file); idempotent."""
        self.recorder.close()

    # --- events -----------------------------------------------------------------------

    def append(
        self, event: BaseEvent | dict[str, Any], *, expect: Mapping[str, int] | None = None
    ) -> int:
        """Validate and record one event (and its projection changes); returns its seq.

        ``expect`` maps bead ids to the worker version the caller read (0: no worker):
        if any changed since, VersionConflictError and nothing is written. A worker
        event the lifecycle forbids raises IllegalTransitionError, also writing nothing.
        """
        if expect:
            return self.append_many([event], expect=expect)[0]
        return self.recorder.append_one(validate_event(event))

    def append_many(
        self,
        events: Sequence[BaseEvent | dict[str, Any]],
        *,
        expect: Mapping[str, int] | None = None,
    ) -> list[int]:
        """Record several events in one transaction: all of them or none (``expect`` as
        for ``append``, checked inside that transaction)."""
        checked = [validate_event(e) for e in events]
        if not checked:
            return []
        with self.recorder.writing() as w:
            if expect:
                check_versions(w, dict(expect))
            return [w.append(e) for e in checked]

    def change_worker(
        self,
        bead_id: str,
        build: Callable[[WorkerView | None], Sequence[BaseEvent] | None],
        *,
        tries: int = 8,
    ) -> list[int] | None:
        """Read the bead's worker, let ``build`` decide what to append given what it read
        (None or nothing: no change), and append that only if the worker is still at the
        version read; after a conflict, read again and let ``build`` decide again.

        Returns the seqs, or None when ``build`` chose to change nothing. Raises
        VersionConflictError after ``tries`` lost races in a row, and whatever the
        lifecycle raises for an illegal transition.
        """
        conflict: VersionConflictError | None = None
        for _ in range(tries):
            worker = self.workers.get(bead_id)
            events = build(worker)
            if not events:
                return None
            faults.point("store.before_conditional_append")
            try:
                return self.append_many(events, expect={bead_id: worker.version if worker else 0})
            except VersionConflictError as e:
                conflict = e
        assert conflict is not None
        raise conflict

    def read(self, **filters: Unpack[ReadFilters]) -> list[StoredEvent]:
        """The events an ``EventFilter`` of these keywords matches (see its fields)."""
        return self.recorder.events(EventFilter(**filters))

    def last_seq(self) -> int:
        return self.recorder.last_seq()

    def wait_for_change(self, after_seq: int, timeout: float) -> int:
        """Return as soon as ``last_seq() > after_seq``, or at the timeout; returns the
        current ``last_seq`` either way. SQLite polls; PostgreSQL waits on NOTIFY."""
        return self.recorder.wait_for_change(after_seq, timeout)

    # --- maintenance ------------------------------------------------------------------

    def rebuild(self) -> None:
        """Replay every event into fresh projections (one transaction)."""
        self.recorder.rebuild()

    def check(self) -> dict[str, Any]:
        """``{"integrity": "ok", "events": N, "by_type": {...}, ...}``."""
        return self.recorder.check()

    def projections_snapshot(self) -> dict[str, list[dict[str, Any]]]:
        """Every projection row (for comparing a rebuild with the live state)."""
        with self.recorder.reading() as r:
            return dump(r)


def open_store(
    db_path: Path,
    *,
    project_root: Path | None = None,
    busy_timeout_ms: int = 10000,
    lock_timeout_s: float = 30.0,
    lock_impl: str = "flock",
) -> Store:
    """Open (creating and migrating if needed) the store at ``db_path``. The project root
    defaults to the folder holding ``.swarm/``. ``lock_impl``: "flock" (a descriptor kept
    open, the default) or "filelock" (the filelock package; slower, for comparison)."""
    db_path = Path(db_path).absolute()
    root = (project_root or db_path.parent.parent).resolve()
    recorder = SQLiteRecorder(
        db_path,
        busy_timeout_ms=busy_timeout_ms,
        lock_timeout_s=lock_timeout_s,
        lock_impl=lock_impl,
    )
    return Store(recorder, db_path=db_path, project_root=root)


def open_url(url: str, *, project_root: Path, settings: StoreSection | None = None) -> Store:
    """Open (creating and migrating if needed) the store a URL names, for the project at
    ``project_root``; an empty URL is the project's own SQLite file."""
    cfg = settings or StoreSection()
    backend, target = parse_store_url(url)
    root = project_root.resolve()
    if backend is Backend.POSTGRESQL:
        # Only a PostgreSQL store pays for loading its driver.
        from swarm_pool.store.postgres import PostgresRecorder

        recorder = PostgresRecorder(
            target,
            lock_timeout_s=cfg.lock_timeout_s,
            connect_timeout_s=cfg.connect_timeout_s,
            synchronous_commit=cfg.synchronous_commit,
        )
        return Store(recorder, db_path=None, project_root=root)
    if not target:
        ProjectPaths(root).ensure()
        db = ProjectPaths(root).db
    else:
        db = Path(target).expanduser()
        db = db if db.is_absolute() else root / db
    return open_store(
        db,
        project_root=root,
        busy_timeout_ms=cfg.busy_timeout_ms,
        lock_timeout_s=cfg.lock_timeout_s,
    )


def project_store_exists(paths: ProjectPaths, config: Config | None = None) -> bool:
    """Whether the project's store has been created (always true for a server URL,
    whose existence only connecting can tell)."""
    backend, target = parse_store_url((config or Config()).store.url)
    if backend is Backend.POSTGRESQL:
        return True
    if not target:
        return paths.db.is_file()
    db = Path(target).expanduser()
    return (db if db.is_absolute() else paths.root / db).is_file()


def open_project_store(paths: ProjectPaths, config: Config | None = None) -> Store:
    """Open the project's store as the config's ``[store] url`` says (by default
    ``paths.db``, after ``paths.ensure()``)."""
    cfg = (config or Config()).store
    paths.ensure()
    return open_url(cfg.url, project_root=paths.root, settings=cfg)


def find_project_store(start: Path, *, config_path: Path | None = None) -> Store:
    """``$SWARM_POOL_PROJECT`` if set, else the first folder at or above ``start`` that
    holds ``.swarm/swarm.db`` (worktrees live under ``<root>/.swarm/worktrees/``).
    ``config_path``: the config file (default: the project's own, as ``load_config``)."""
    env = os.environ.get(PROJECT_ENV)
    if env:
        root = Path(env).expanduser().resolve()
        if not root.is_dir():
            raise StoreError(f"${PROJECT_ENV} points to {root}, which is not a directory")
        return _open_found(root, config_path)
    here = Path(start).expanduser().resolve()
    for folder in (here, *here.parents):
        if (folder / SWARM_DIR / DB_NAME).is_file():
            return _open_found(folder, config_path)
    raise StoreError(
        f"no swarm store found at or above {here}: no .swarm/{DB_NAME} there "
        f"(set ${PROJECT_ENV} to the project root)"
    )


def _open_found(root: Path, config_path: Path | None) -> Store:
    return open_project_store(ProjectPaths(root), load_config(config_path, project_root=root))
