"""The store backends the conformance suite runs on, and the mixins that pick one.

Every store test is written once in an abstract ``*Contract`` class (eventsourcing's
``RecorderTestCase`` pattern) against a ``backend`` fixture; each test module then
subclasses the contract once per backend with ``OnSQLite`` or ``OnPostgres``, so the
same tests prove that both stores mean the same thing. A ``StoreBackend`` makes fresh
stores (a project folder each; on PostgreSQL a schema each, on the session's
throw-away server), opens more connections to one of them (as other processes or
other "hosts" would), and reaches under the store for the tests that tamper with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from swarm_pool.paths import ProjectPaths
from swarm_pool.store import Store
from swarm_pool.store.core import open_url
from swarm_pool.store.postgres import LOCK_CLASS, lock_key
from tests.pg_server import ScratchPostgres


class StoreBackend(ABC):
    name: str

    def __init__(self, base: Path) -> None:
        self.base = base
        self.urls: list[str] = []

    def new_project(self) -> Path:
        root = self.base / f"proj-{uuid.uuid4().hex[:8]}"
        (root / "src" / "auth").mkdir(parents=True)
        ProjectPaths(root).ensure()
        return root

    @abstractmethod
    def new_url(self, root: Path) -> str:
        """The URL of a fresh, empty store for the project at ``root``."""

    def host_urls(self, url: str) -> list[str]:
        """Two ways in to the same store, as two hosts would have (one for SQLite)."""
        return [url, url]

    def open(self, url: str, root: Path, **settings: Any) -> Store:
        from swarm_pool.config import StoreSection

        return open_url(url, project_root=root, settings=StoreSection(url=url, **settings))

    @abstractmethod
    def raw(self, url: str, root: Path) -> contextlib.AbstractContextManager[Any]:
        """A connection under the store (autocommit) with ``execute(sql)``."""

    @abstractmethod
    def hold_write_lock(self, url: str, root: Path) -> contextlib.AbstractContextManager[None]:
        """Hold the store's write lock as another writer would, for the duration."""

    def cli_args(self, url: str) -> list[str]:
        """What the CLI needs besides ``--project`` to find this store."""
        return ["--store", url] if url else []

    def cleanup(self) -> None:
        """Drop what ``new_url`` made outside the test's temp folder."""
        self.urls.clear()


class SQLiteBackend(StoreBackend):
    name = "sqlite"

    def new_url(self, root: Path) -> str:
        return ""  # the project's own .swarm/swarm.db

    @contextlib.contextmanager
    def raw(self, url: str, root: Path) -> Iterator[Any]:
        conn = sqlite3.connect(ProjectPaths(root).db, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def hold_write_lock(self, url: str, root: Path) -> Iterator[None]:
        fd = os.open(ProjectPaths(root).db.with_name("swarm.db.lock"), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class PostgresBackend(StoreBackend):
    name = "postgresql"

    def __init__(self, base: Path, server: ScratchPostgres) -> None:
        super().__init__(base)
        self.server = server
        self.schemas: dict[str, str] = {}

    def new_url(self, root: Path) -> str:
        schema = self.server.new_schema()
        url = self.server.url(via="tcp", schema=schema)
        self.schemas[url] = schema
        self.urls.append(url)
        return url

    def host_urls(self, url: str) -> list[str]:
        schema = self.schemas[url]
        return [url, self.server.url(via="socket", schema=schema)]

    @contextlib.contextmanager
    def raw(self, url: str, root: Path) -> Iterator[Any]:
        with psycopg.connect(url, autocommit=True) as conn:
            yield conn

    @contextlib.contextmanager
    def hold_write_lock(self, url: str, root: Path) -> Iterator[None]:
        key = lock_key(self.schemas[url])
        with psycopg.connect(url) as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, key))
            yield
            conn.rollback()

    def cleanup(self) -> None:
        super().cleanup()
        for schema in self.schemas.values():
            with contextlib.suppress(psycopg.Error):
                self.server.drop_schema(schema)


class OnSQLite:
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[StoreBackend]:
        b = SQLiteBackend(tmp_path)
        yield b
        b.cleanup()


class OnPostgres:
    @pytest.fixture
    def backend(self, tmp_path: Path, pg_server: ScratchPostgres) -> Iterator[StoreBackend]:
        b = PostgresBackend(tmp_path, pg_server)
        yield b
        b.cleanup()


class StoreFixtures:
    """A fresh ``store`` (and its ``url`` and ``root``) on the class's backend."""

    @pytest.fixture
    def root(self, backend: StoreBackend) -> Path:
        return backend.new_project()

    @pytest.fixture
    def url(self, backend: StoreBackend, root: Path) -> str:
        return backend.new_url(root)

    @pytest.fixture
    def store(self, backend: StoreBackend, url: str, root: Path) -> Iterator[Store]:
        with backend.open(url, root) as s:
            yield s
