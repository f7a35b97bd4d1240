"""Completion racing a timeout, in both orders, and a stale attempt's completion: the
real MCP server process (``swarm_complete``), the real engine-side ``fail``, one real
SQLite store and git worktree. The interleavings are forced with fault points, never
hoped for: whoever commits first wins, the other is dropped cleanly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from swarm_pool import faults
from swarm_pool.config import Config
from swarm_pool.store import Store
from swarm_pool.store.events import WorkerQueued, WorkerSessionCreated, WorkerSpawned
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker.failure import FailOutcome, Failure, fail
from tests.support import wait_for
from tests.test_mcp_server import Project, call, make_project, mcp_session


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "proj")


@pytest.fixture
def store(project: Project) -> Iterator[Store]:
    with project.store() as s:
        yield s


def start_worker(store: Store, project: Project, bead: str, attempt: int, session: str) -> Path:
    """A worker of ``attempt`` running in the bead's worktree, as the dispatcher records it."""
    wt = project.worktree(bead)
    common: dict[str, Any] = {"bead_id": bead, "epic_id": project.epic_id, "attempt": attempt}
    if store.workers.get(bead) is None or attempt == 1:
        store.append(WorkerQueued(**common, worktree=str(wt), files=["src/a.py"]))
    store.append(
        WorkerSessionCreated(**common, session_id=session, instance="i1", worktree=str(wt))
    )
    store.append(
        WorkerSpawned(
            **common,
            session_id=session,
            instance="i1",
            worktree=str(wt),
            agent_name=f"worker-{bead}",
            files=["src/a.py"],
        )
    )
    if store.hive.get_cell(bead).status != "in_progress":
        store.hive.set_status(bead, "in_progress")
    (wt / "src").mkdir(exist_ok=True)
    (wt / "src" / "a.py").write_text("done = True\n")
    return wt


async def reserve_and_complete(
    wt: Path, project: Project, bead: str, attempt: int, **env: str
) -> tuple[bool, Any]:
    async with mcp_session(wt, project.root, **env) as session:
        err, got = await call(session, "swarmmail_reserve", {"paths": ["src/a.py"]})
        assert not err, got
        return await call(
            session,
            "swarm_complete",
            {
                "bead_id": bead,
                "summary": "wrote a",
                "files_touched": ["src/a.py"],
                "attempt": attempt,
            },
        )


def ctx_for(project: Project, store: Store) -> SwarmContext:
    return SwarmContext(paths=project.paths, config=Config(), store=store, instances_fn=list)


@pytest.mark.parametrize("point", ["fail.before_record", "store.before_conditional_append"])
def test_completion_landing_during_a_timeout_stays_completed(
    project: Project, store: Store, point: str
) -> None:
    """The timeout read the worker running; the completion commits before the timeout's
    failure does (during its abort, or between its read and its conditional append)."""
    bead = project.beads[0]
    wt = start_worker(store, project, bead, 1, "ses_1")
    outcomes: list[tuple[bool, Any]] = []

    def complete_now() -> None:
        if not outcomes:  # once: the hook also fires on the timeout's retried append
            outcomes.append(anyio.run(reserve_and_complete, wt, project, bead, 1))

    ctx = ctx_for(project, store)
    with faults.inject(point, complete_now):
        got = fail(ctx, bead, Failure("timeout", "timeout"), retry=False)
    assert got == FailOutcome.IGNORED
    err, done = outcomes[0]
    assert not err and done["accepted"] and done["released"] == ["src/a.py"]
    worker = store.workers.get(bead)
    assert worker is not None and worker.status == "completed"
    assert store.hive.get_cell(bead).status == "closed"
    assert store.read(types=["worker_failed"], bead_id=bead) == []


def test_timeout_landing_during_a_completion_wins_and_the_completion_is_dropped(
    project: Project, store: Store, tmp_path: Path
) -> None:
    """The completion verified the work; the timeout commits before it records: the
    worker stays failed, the bead blocked, the files released, no completion written."""
    bead = project.beads[0]
    wt = start_worker(store, project, bead, 1, "ses_1")
    reached, go = tmp_path / "reached", tmp_path / "go"
    result: list[tuple[bool, Any]] = []

    async def race() -> None:
        async def completion() -> None:
            result.append(
                await reserve_and_complete(
                    wt,
                    project,
                    bead,
                    1,
                    SWARM_POOL_FAULTS=f"complete.before_record=mark:{reached}+wait:{go}",
                )
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(completion)
            await anyio.to_thread.run_sync(lambda: wait_for(reached.exists, 60))
            outcome = await anyio.to_thread.run_sync(
                lambda: fail(
                    ctx_for(project, store), bead, Failure("timeout", "timeout"), retry=False
                )
            )
            assert outcome == FailOutcome.FAILED
            go.touch()

    anyio.run(race)
    err, text = result[0]
    assert err and "failed" in text and "nothing recorded" in text
    worker = store.workers.get(bead)
    assert worker is not None and worker.status == "failed"
    assert store.hive.get_cell(bead).status == "blocked"
    assert store.read(types=["worker_completed"], bead_id=bead) == []
    assert store.reservations.active() == []  # released with the final failure


def test_a_stale_attempts_completion_does_not_close_the_newer_attempt(
    project: Project, store: Store
) -> None:
    bead = project.beads[0]
    start_worker(store, project, bead, 1, "ses_1")
    ctx = ctx_for(project, store)
    assert fail(ctx, bead, Failure("instance died", "instance_exited")) == FailOutcome.RETRIED
    wt = start_worker(store, project, bead, 2, "ses_2")
    err, done = anyio.run(reserve_and_complete, wt, project, bead, 1)
    assert not err and done["stale"] and not done["accepted"]
    worker = store.workers.get(bead)
    assert worker is not None
    assert (worker.status, worker.attempt, worker.session_id) == ("running", 2, "ses_2")
    assert store.hive.get_cell(bead).status == "in_progress"
    assert [r.pattern for r in store.reservations.active()] == ["src/a.py"]  # still held
    stale = store.workers.stale(bead)
    assert [(r["type"], r["attempt"]) for r in stale] == [("worker_completed", 1)]
