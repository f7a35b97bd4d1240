"""The state one MCP server process keeps between tool calls.

Room: mcp.

It owns the store connection (opened lazily, so the server starts and lists its tools
even before a project exists, and a missing store is a readable tool error), the thread
that every store call runs on (SQLite connections stay on one thread, and the event loop
never blocks on a file lock), and the caller's identity once ``swarmmail_init`` set it.
The shared server (``http.py``) serves many callers from one process: ``bound`` gives a
per-call view that shares the store and its thread, with the identity its capability
token grants. A worker's identity is then fixed: the current worker of the token's
directory, resolved from the store on every call (a reused directory holds bead after
bead), never what the agent says.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from swarm_pool.mcp.identity import (
    Identity,
    IdentityError,
    default_agent_name,
    identity_from_cwd,
    identity_from_directory,
    slot_bead,
)
from swarm_pool.store import Store, find_project_store
from swarm_pool.tokens import Principal, Role

T = TypeVar("T")

StoreOpener = Callable[[Path], Store]


class Runtime:
    def __init__(self, cwd: Path | None = None, opener: StoreOpener = find_project_store):
        self.cwd = (cwd or Path.cwd()).resolve()
        self._opener = opener
        self._store: Store | None = None
        self._registered: Identity | None = None
        # One thread for every store call: the store's connection is used by it alone.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="swarm-store")
        # The process-wide runtime a ``bound`` view shares its store and thread with.
        self._host = self
        self.principal: Principal | None = None

    def bound(self, principal: Principal) -> Runtime:
        """A view for one caller of the shared server (same store, same store thread)."""
        view = copy.copy(self)  # shares the executor; the store is reached through _host
        view._host = self._host
        view.principal = principal
        return view

    @property
    def fixed(self) -> bool:
        """True when the identity comes from a worker token, whatever the agent says."""
        return self.principal is not None and self.principal.role is Role.WORKER

    # --- threads --------------------------------------------------------------------

    async def in_store(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the store thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._get_store()))

    async def in_thread(self, fn: Callable[[], T]) -> T:
        """Run slow work that does not touch the store (git, the check command)."""
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=False)

    def _get_store(self) -> Store:
        host = self._host
        if host._store is None:
            host._store = host._opener(host.cwd)
        return host._store

    def close(self) -> None:
        if self._host is not self:
            return
        self._executor.shutdown(wait=True)
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None

    # --- identity (store thread only) -----------------------------------------------

    def register(self, identity: Identity) -> None:
        if self.fixed:
            return  # a worker's identity is its token's, on every call
        # The host keeps it: a coordinator's calls over HTTP each get a new view.
        self._host._registered = identity.with_registered()

    def identity(self, store: Store) -> Identity | None:
        """A worker token's identity; else the registered one, else the cwd's, else None."""
        principal = self.principal
        if principal is not None and principal.role is Role.WORKER:
            assert principal.directory is not None
            return identity_from_directory(store, principal.directory)
        registered = self._host._registered
        if registered is not None:
            # A warm slot serves one bead after another with this same (stdio) process:
            # a registration made for the slot's previous bead lapses with it.
            now = slot_bead(store, self.cwd)
            if now is None or now == registered.bead_id:
                return registered
            self._host._registered = None
        if principal is not None:
            return None  # the shared server's cwd says nothing about its caller
        return identity_from_cwd(store, self.cwd)

    def require_identity(self, store: Store) -> Identity:
        found = self.identity(store)
        if found is None:
            raise IdentityError(
                f"unknown caller: this MCP server runs outside any worktree ({self.cwd}); "
                "call swarmmail_init with agent_name (and bead_id) first"
            )
        return found

    def identity_for_bead(self, store: Store, bead_id: str) -> Identity:
        """The caller acting on ``bead_id``; IdentityError if it works on another bead."""
        cell = store.hive.get_cell(bead_id)  # NotFoundError: "bead ... does not exist"
        found = self.require_identity(store) if self.fixed else self.identity(store)
        if found is None:
            return Identity(
                agent=default_agent_name(bead_id), bead_id=bead_id, epic_id=cell.epic_id
            )
        if found.bead_id is not None and found.bead_id != bead_id:
            raise IdentityError(
                f"you are {found.agent}, registered for bead {found.bead_id}, "
                f"not for bead {bead_id}"
            )
        if found.bead_id is None:
            return Identity(
                agent=found.agent,
                bead_id=bead_id,
                epic_id=cell.epic_id,
                worktree=found.worktree,
                registered=found.registered,
            )
        return found
