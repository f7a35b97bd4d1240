"""The state one MCP server process keeps between tool calls.

It owns the store connection (opened lazily, so the server starts and lists its tools
even before a project exists, and a missing store is a readable tool error), the thread
that every store call runs on (SQLite connections stay on one thread, and the event loop
never blocks on a file lock), and the caller's identity once ``swarmmail_init`` set it.
"""

from __future__ import annotations

import asyncio
import contextlib
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
    slot_bead,
)
from swarm_pool.store import Store, find_project_store

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

    # --- threads --------------------------------------------------------------------

    async def in_store(self, fn: Callable[[Store], T]) -> T:
        """Run ``fn(store)`` on the store thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._get_store()))

    async def in_thread(self, fn: Callable[[], T]) -> T:
        """Run slow work that does not touch the store (git, the check command)."""
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=False)

    def _get_store(self) -> Store:
        if self._store is None:
            self._store = self._opener(self.cwd)
        return self._store

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None

    # --- identity (store thread only) -----------------------------------------------

    def register(self, identity: Identity) -> None:
        self._registered = identity.with_registered()

    def identity(self, store: Store) -> Identity | None:
        """The registered identity, else the one implied by the cwd, else None."""
        if self._registered is not None:
            # A warm slot serves one bead after another with this same process: a
            # registration made for the slot's previous bead lapses with it.
            now = slot_bead(store, self.cwd)
            if now is None or now == self._registered.bead_id:
                return self._registered
            self._registered = None
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
        found = self.identity(store)
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
