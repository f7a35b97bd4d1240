"""Who is calling: the agent name, bead and epic behind this MCP process.

Room: mcp.

With ``[opencode] mcp = "local"`` OpenCode starts one MCP process per session directory
with that directory as its cwd, so a process started in ``<root>/.swarm/worktrees/<bead>``
serves that bead's worker; ``swarmmail_init`` can state the identity explicitly (and
must, outside a worktree); otherwise it is derived from the cwd. On the shared server a
worker token names a directory, and ``identity_from_directory`` finds the worker that
directory holds now in the store (the workers projection's ``worktree``), whatever the
path is called. This module also maps the paths an agent passes
(relative, or absolute inside its worktree) to project-relative ones.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from swarm_pool.errors import NotFoundError, PathEscapeError, SwarmPoolError
from swarm_pool.paths import ProjectPaths
from swarm_pool.store import Store
from swarm_pool.store.events import SlotState


class IdentityError(SwarmPoolError):
    """The caller's identity is unknown or does not match the request."""


def default_agent_name(bead_id: str) -> str:
    return f"worker-{bead_id}"


@dataclass(frozen=True)
class Identity:
    agent: str
    bead_id: str | None = None
    epic_id: str | None = None
    worktree: Path | None = None
    # True once swarmmail_init registered it (an agent_registered event exists).
    registered: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_name": self.agent,
            "bead_id": self.bead_id,
            "epic_id": self.epic_id,
            "worktree": str(self.worktree) if self.worktree else None,
            "registered": self.registered,
        }

    def with_registered(self) -> Identity:
        return replace(self, registered=True)


def worktree_of(cwd: Path, project_root: Path) -> tuple[str, Path] | None:
    """``(bead_id, worktree_dir)`` when ``cwd`` lies in one of the project's worktrees."""
    worktrees = ProjectPaths(project_root.resolve()).worktrees_dir
    try:
        rel = cwd.resolve().relative_to(worktrees)
    except ValueError:
        return None
    if not rel.parts:
        return None
    return rel.parts[0], worktrees / rel.parts[0]


def _slot_of(store: Store, cwd: Path) -> tuple[str, Path] | None:
    """``(bead_id, slot_dir)`` when ``cwd`` lies in a warm worktree slot
    (``.swarm/slots/<instance>/<n>``): the bead is the one the store has in that slot
    now, read on every call, because one MCP process serves a slot's successive beads."""
    slots = ProjectPaths(store.project_root.resolve()).slots_dir.resolve()
    try:
        rel = cwd.resolve().relative_to(slots)
    except ValueError:
        return None
    if len(rel.parts) < 2:
        return None
    path = slots / rel.parts[0] / rel.parts[1]
    held = store.slots.at_path(str(path))
    if held is None or held.state != SlotState.BUSY or not held.bead_id:
        raise IdentityError(f"this MCP server runs in slot {path}, which holds no bead now")
    return held.bead_id, path


def slot_bead(store: Store, cwd: Path) -> str | None:
    """The bead in the slot ``cwd`` lies in; None outside slots or in an idle slot."""
    try:
        found = _slot_of(store, cwd)
    except IdentityError:
        return None
    return found[0] if found else None


def identity_from_cwd(store: Store, cwd: Path) -> Identity | None:
    """The identity implied by the worktree ``cwd`` is in; None outside any worktree."""
    found = worktree_of(cwd, store.project_root) or _slot_of(store, cwd)
    if found is None:
        return None
    bead_id, worktree = found
    try:
        cell = store.hive.get_cell(bead_id)
    except NotFoundError as e:
        raise IdentityError(
            f"this MCP server runs in worktree {worktree}, but bead {bead_id} does not exist"
        ) from e
    return Identity(
        agent=default_agent_name(bead_id),
        bead_id=bead_id,
        epic_id=cell.epic_id,
        worktree=worktree,
    )


def identity_from_directory(store: Store, directory: Path) -> Identity:
    """The identity of the worker ``directory`` holds now; IdentityError when none does."""
    worker = store.workers.in_directory(str(directory))
    if worker is None:
        raise IdentityError(f"no worker of this pool works in {directory}")
    return Identity(
        agent=worker.agent_name or default_agent_name(worker.bead_id),
        bead_id=worker.bead_id,
        epic_id=worker.epic_id,
        worktree=directory,
    )


def to_project_path(raw: str, store: Store, worktree: Path | None) -> str:
    """A path or pattern as the agent gave it -> normalized, relative to the project root.

    Absolute paths inside the caller's worktree are taken relative to the worktree, since
    a worktree mirrors the project's layout. Anything leaving the project raises
    PathEscapeError.
    """
    value = raw.strip()
    if value.startswith("/") and worktree is not None:
        path = PurePosixPath(os.path.normpath(value))
        for base in (worktree, worktree.resolve()):
            if path == PurePosixPath(base):
                value = ""
                break
            if path.is_relative_to(PurePosixPath(base)):
                value = path.relative_to(PurePosixPath(base)).as_posix()
                break
    try:
        return store.reservations.normalize(value)
    except PathEscapeError as e:
        raise PathEscapeError(f"pattern escapes the project: {raw} ({e})") from e
