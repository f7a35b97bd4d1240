"""The coordinator's tools over MCP: decompose, spawn, watch, review, merge.

Room: mcp.

An LLM coordinator in an OpenCode session runs the whole swarm flow with these:
``hive_create_epic`` and ``hive_query`` (the plan), ``swarm_spawn_async`` (a worker per
subtask, returns at once), ``swarm_poll_workers`` / ``swarm_await_workers`` (their state;
await returns as soon as nothing is running or queued), ``swarm_review`` and
``swarm_worktree_merge``. Each is a thin layer over ``swarm_pool.swarm`` (the same calls
the CLI makes) with strict pydantic arguments; errors become tool errors the agent can
read (``DependencyBlockedError`` names the blocking beads).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from swarm_pool.config import Config, load_config
from swarm_pool.mcp.registry import ToolSpec
from swarm_pool.mcp.runtime import Runtime
from swarm_pool.mcp.schemas import ToolArgs
from swarm_pool.paths import ProjectPaths
from swarm_pool.store import Store
from swarm_pool.store.events import BeadSpec
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.status import await_workers, poll
from swarm_pool.swarm.worker import SpawnRequest, spawn_async
from swarm_pool.swarm.worker.review import merge, review

MAX_AWAIT_S = 600.0


def _context(store: Store) -> SwarmContext:
    config: Config = load_config(None, project_root=store.project_root)
    return SwarmContext(paths=ProjectPaths(store.project_root), config=config, store=store)


class BeadArg(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str = Field(min_length=1, description="Short title of the subtask.")
    description: str = Field("", description="What the worker must do.")
    files: list[str] = Field(default_factory=list, description="Files/globs the worker owns.")
    depends_on: list[str] = Field(
        default_factory=list,
        description="Subtasks that must finish first: 1-based index ('1') or a bead id.",
    )
    script: list[dict[str, Any]] | None = Field(
        None, description="Scripted-model steps (offline demos and tests only)."
    )


class CreateEpicArgs(ToolArgs):
    title: str = Field(min_length=1, description="The epic's title.")
    description: str = Field("", description="Shared context for every worker.")
    subtasks: list[BeadArg] = Field(min_length=1, max_length=100)


class QueryArgs(ToolArgs):
    epic_id: str = Field("", description="An epic id: its subtasks (default: every epic).")
    bead_id: str = Field("", description="One bead (subtask) id.")
    ready_only: bool = Field(False, description="Only subtasks whose dependencies are closed.")


class SpawnArgs(ToolArgs):
    bead_id: str = Field(min_length=1, description="The subtask to start a worker for.")
    epic_id: str = Field("", description="Its epic (checked).")
    title: str = Field("", description="Default: the subtask's title.")
    description: str = Field("", description="Default: the subtask's description.")
    files: list[str] = Field(default_factory=list, description="Default: the subtask's files.")
    dependencies: list[str] = Field(default_factory=list, description="Extra dependencies.")
    shared_context: str = Field("", description="Context every worker of the epic shares.")
    routing: str = Field("", description="'least_busy' (default) or 'dedicated'.")


class PollArgs(ToolArgs):
    epic_id: str = Field("", description="The epic (default: every worker).")


class AwaitArgs(ToolArgs):
    epic_id: str = Field("", description="The epic (default: every worker).")
    timeout_s: float = Field(120.0, gt=0, le=MAX_AWAIT_S, description="Give up after this.")


class BeadArgs(ToolArgs):
    bead_id: str = Field(min_length=1, description="The subtask whose worker is finished.")


class MergeArgs(BeadArgs):
    base: str = Field("", description="Base branch (default: the worktree's base).")


async def hive_create_epic(rt: Runtime, args: CreateEpicArgs) -> dict[str, Any]:
    specs = [BeadSpec(**s.model_dump()) for s in args.subtasks]

    def run(store: Store) -> dict[str, Any]:
        epic = store.hive.create_epic(args.title, specs, description=args.description)
        return {
            "epic_id": epic.id,
            "title": epic.title,
            "subtasks": [
                {"bead_id": c.id, "title": c.title, "files": c.files, "depends_on": c.depends_on}
                for c in epic.cells
            ],
        }

    return await rt.in_store(run)


def _cell(c: Any) -> dict[str, Any]:
    return {
        "bead_id": c.id,
        "epic_id": c.epic_id,
        "title": c.title,
        "status": c.status,
        "files": c.files,
        "depends_on": c.depends_on,
    }


async def hive_query(rt: Runtime, args: QueryArgs) -> dict[str, Any]:
    def run(store: Store) -> dict[str, Any]:
        if args.bead_id:
            return {"subtasks": [_cell(store.hive.get_cell(args.bead_id))]}
        if args.ready_only:
            return {"subtasks": [_cell(c) for c in store.hive.ready(args.epic_id or None)]}
        if args.epic_id:
            epic = store.hive.get_epic(args.epic_id)
            return {
                "epic_id": epic.id,
                "title": epic.title,
                "subtasks": [_cell(c) for c in epic.cells],
            }
        return {
            "epics": [
                {"epic_id": e.id, "title": e.title, "subtasks": len(e.cells)}
                for e in store.hive.epics()
            ]
        }

    return await rt.in_store(run)


async def swarm_spawn_async(rt: Runtime, args: SpawnArgs) -> dict[str, Any]:
    request = SpawnRequest(
        args.bead_id,
        epic_id=args.epic_id or None,
        title=args.title or None,
        description=args.description or None,
        files=args.files or None,
        dependencies=args.dependencies,
        shared_context=args.shared_context,
        routing=args.routing or None,
    )

    def run(store: Store) -> dict[str, Any]:
        return spawn_async(_context(store), request).to_dict()

    return await rt.in_store(run)


async def swarm_poll_workers(rt: Runtime, args: PollArgs) -> dict[str, Any]:
    return await rt.in_store(lambda store: poll(_context(store), args.epic_id or None).to_dict())


async def swarm_await_workers(rt: Runtime, args: AwaitArgs) -> dict[str, Any]:
    # The store is thread-safe; waiting on a side thread keeps the store thread free.
    store = await rt.in_store(lambda s: s)
    result = await rt.in_thread(
        lambda: await_workers(_context(store), args.epic_id or None, args.timeout_s)
    )
    return result.to_dict()


async def swarm_review(rt: Runtime, args: BeadArgs) -> dict[str, Any]:
    store = await rt.in_store(lambda s: s)
    return (await rt.in_thread(lambda: review(_context(store), args.bead_id))).to_dict()


async def swarm_worktree_merge(rt: Runtime, args: MergeArgs) -> dict[str, Any]:
    store = await rt.in_store(lambda s: s)
    outcome = await rt.in_thread(
        lambda: merge(_context(store), args.bead_id, base=args.base or None)
    )
    return outcome.to_dict()


COORDINATOR_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "hive_create_epic",
        "Create an epic and its subtasks in one go. Returns the epic id and each "
        "subtask's bead id. depends_on uses 1-based subtask indexes or bead ids.",
        CreateEpicArgs,
        hive_create_epic,
    ),
    ToolSpec(
        "hive_query",
        "List epics, one epic's subtasks with their status, one bead, or only the ready "
        "subtasks (dependencies closed).",
        QueryArgs,
        hive_query,
    ),
    ToolSpec(
        "swarm_spawn_async",
        "Start a worker for a subtask in its own git worktree on a pool instance and "
        "return at once (never waits). Refused while a dependency is not closed.",
        SpawnArgs,
        swarm_spawn_async,
    ),
    ToolSpec(
        "swarm_poll_workers",
        "The workers of an epic grouped as completed, completed_needs_review, "
        "in_progress, pending, blocked and failed, with progress and last message.",
        PollArgs,
        swarm_poll_workers,
    ),
    ToolSpec(
        "swarm_await_workers",
        "Wait until no worker of the epic is running or queued (or the timeout), then "
        "return the same groups as swarm_poll_workers.",
        AwaitArgs,
        swarm_await_workers,
    ),
    ToolSpec(
        "swarm_review",
        "Review a finished worker: its diff against the base branch, files touched "
        "outside its owned patterns, verification result, reservations.",
        BeadArgs,
        swarm_review,
    ),
    ToolSpec(
        "swarm_worktree_merge",
        "Merge a finished worker's branch into the base branch. On a conflict nothing "
        "changes and the error names the conflicting files.",
        MergeArgs,
        swarm_worktree_merge,
    ),
)
