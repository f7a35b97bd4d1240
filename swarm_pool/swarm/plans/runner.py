"""``swarm-pool run PLAN.toml``: a plan, end to end, over the pool.

Room: swarm.plans.

``Runner`` owns the orchestration of one plan: it validates the plan before starting
anything, starts the pool if none runs (and stops it afterwards unless asked to keep
it), creates the epic, spawns every ready task at once and each further task as soon
as all of its dependencies are merged (so its worktree branches from a base that holds
them), reviews and merges every finished worker, and gives up on a task whose worker
failed for good or whose review or merge failed. Progress is driven by store changes
(``wait_for_change``), shown live on a TTY by the caller's display; the summary says which tasks
were merged, and the run is ``ok`` only when all of them were. ``RunOptions`` holds how
one run goes (timeout, pool size, whether to keep or restart the pool, where progress
lines and the live table go); the table is a ``RunDisplay`` the caller brings
(``view/plan_table.py`` at the CLI), so this room draws nothing.

The run outlives its supervisor (``SupervisorWatch``): when work waits to be dispatched
or runs and no supervisor with a live worker engine serves the pool, it says so (a
``notify`` line, stderr at the CLI), keeps reviewing and merging what is finished, and
waits up to ``workers.supervisor_wait_s`` for a supervisor to serve the pool again
(with ``restart_pool`` it starts one itself), then carries on where it was.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from swarm_pool.config import Config
from swarm_pool.errors import (
    DuplicateSpawnError,
    GitError,
    PlanError,
    PoolNotRunningError,
    SupervisorLostError,
    SwarmPoolError,
    WorkerError,
)
from swarm_pool.paths import ProjectPaths
from swarm_pool.store import open_project_store
from swarm_pool.store.events import BeadSpec
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.plans.plan import Plan, load_plan
from swarm_pool.swarm.pool_view import ensure_pool, stop_pool
from swarm_pool.swarm.status import PollResult, poll
from swarm_pool.swarm.worker import SpawnRequest, spawn_async
from swarm_pool.swarm.worker.review import cleanup, merge, review


class TaskStatus(StrEnum):
    """Where a plan's task is in the run: waiting for its dependencies, spawned (its
    worker runs), or one of the final outcomes."""

    WAITING = "waiting"
    SPAWNED = "spawned"
    MERGED = "merged"
    FAILED = "failed"  # its worker failed for good, it could not spawn, or a dependency
    REJECTED = "rejected"  # its review did not approve
    CONFLICT = "conflict"  # its merge failed

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({TaskStatus.MERGED, TaskStatus.FAILED, TaskStatus.REJECTED, TaskStatus.CONFLICT})
# The only moves a task makes; a final outcome is never left.
_NEXT: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.WAITING: frozenset({TaskStatus.SPAWNED, TaskStatus.FAILED}),
    TaskStatus.SPAWNED: _FINAL,
}


@dataclass
class TaskState:
    index: int
    title: str
    bead_id: str = ""
    state: TaskStatus = TaskStatus.WAITING
    attempt: int = 0
    instance: str = ""
    note: str = ""
    spawned_at: float | None = None
    merged_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def move(self, to: TaskStatus, note: str = "") -> None:
        """Change state along ``_NEXT`` (a bug otherwise: the runner alone moves tasks)."""
        if to not in _NEXT.get(self.state, frozenset()):
            raise RuntimeError(f"task {self.bead_id}: no move from {self.state} to {to}")
        self.state = to
        if note:
            self.note = note


@dataclass
class RunSummary:
    epic_id: str
    tasks: list[TaskState]
    elapsed_s: float
    pool_started: bool
    timed_out: bool = False
    errors: list[str] = field(default_factory=list)
    sandbox: str = "off"  # WorkersSection.sandbox_label() of the config the run used

    @property
    def merged(self) -> int:
        return sum(1 for t in self.tasks if t.state == TaskStatus.MERGED)

    @property
    def ok(self) -> bool:
        return bool(self.tasks) and self.merged == len(self.tasks) and not self.timed_out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "epic_id": self.epic_id,
            "total": len(self.tasks),
            "merged": self.merged,
            "elapsed_s": round(self.elapsed_s, 3),
            "pool_started": self.pool_started,
            "timed_out": self.timed_out,
            "sandbox": self.sandbox,
            "errors": self.errors,
            "tasks": [t.to_dict() for t in self.tasks],
        }


Notify = Callable[[str], None]
OnUpdate = Callable[["Runner", PollResult | None], None]


@dataclass
class SupervisorWatch:
    """Waits, bounded, for a supervisor (and its worker engine) to serve the pool again;
    with ``restart`` it starts one itself (the pool's own start, which adopts the live
    instances)."""

    paths: ProjectPaths
    config: Config
    notify: Notify
    restart: bool = False
    size: int | None = None
    config_path: Path | None = None
    poll_s: float = 0.5

    def wait_until_served(self, ctx: SwarmContext) -> None:
        try:
            ctx.require_dispatcher("the run's workers")
            return
        except PoolNotRunningError as e:
            why = str(e)
        wait_s = self.config.workers.supervisor_wait_s
        hint = "starting one" if self.restart else "start one with `swarm-pool start`"
        self.notify(
            f"the pool's supervisor is gone ({why}); waiting up to {wait_s:g}s for a "
            f"supervisor to serve the pool again ({hint})"
        )
        if self.restart:
            ensure_pool(self.paths, self.config, size=self.size, config_path=self.config_path)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                ctx.require_dispatcher("the run's workers")
            except PoolNotRunningError as e:
                why = str(e)
            else:
                self.notify("a supervisor serves the pool again; the run carries on")
                return
            if time.monotonic() >= deadline:
                raise SupervisorLostError(
                    f"the pool's supervisor died and none served the pool again within "
                    f"{wait_s:g}s ({why}); start one with `swarm-pool start`, then "
                    "`swarm-pool await` the epic"
                )
            # A state file and a heartbeat file to re-read: nothing in the store to wake on.
            time.sleep(self.poll_s)


class Runner:
    """Runs one validated plan in a project whose pool is already up."""

    def __init__(
        self,
        ctx: SwarmContext,
        plan: Plan,
        *,
        on_update: OnUpdate | None = None,
        supervisor: SupervisorWatch | None = None,
    ) -> None:
        self.ctx = ctx
        self.title = plan.title
        self.shared_context = plan.shared_context
        self.beads: list[BeadSpec] = plan.to_beads()
        # Per task: spawn arguments the store's cells do not hold (read_only, criteria).
        self.extras: list[dict[str, Any]] = [
            {"read_only": list(t.read_only), "success_criteria": list(t.success_criteria)}
            for t in plan.tasks
        ]
        self.routing = plan.pool.routing
        self.on_update = on_update
        self.supervisor = supervisor
        self.epic_id = ""
        self.tasks = [TaskState(i + 1, s.title) for i, s in enumerate(self.beads)]
        self.errors: list[str] = []
        self._deps: dict[str, list[str]] = {}

    def create_epic(self) -> str:
        epic = self.ctx.store.hive.create_epic(
            self.title, self.beads, description=self.shared_context
        )
        self.epic_id = epic.id
        for task, cell in zip(self.tasks, epic.cells, strict=True):
            task.bead_id = cell.id
            self._deps[cell.id] = list(cell.depends_on)
        return epic.id

    def _merged(self) -> set[str]:
        return {t.bead_id for t in self.tasks if t.state == TaskStatus.MERGED}

    def _spawn_ready(self) -> None:
        merged = self._merged()
        for task in self.tasks:
            if task.state != TaskStatus.WAITING:
                continue
            deps = self._deps[task.bead_id]
            if any(self._task(d).state in _FINAL - {TaskStatus.MERGED} for d in deps):
                task.move(TaskStatus.FAILED, "a dependency was not merged")
                continue
            if not set(deps) <= merged:
                continue
            try:
                extra = self.extras[task.index - 1]
                request = SpawnRequest(
                    task.bead_id,
                    self.epic_id,
                    shared_context=self.shared_context,
                    routing=self.routing,
                    read_only=extra.get("read_only", ()),
                    success_criteria=extra.get("success_criteria", ()),
                )
                result = spawn_async(self.ctx, request)
            except DuplicateSpawnError:
                result = None
            except PoolNotRunningError:
                return  # no supervisor to dispatch it: the run waits for one (step)
            except WorkerError as e:
                task.move(TaskStatus.FAILED, str(e))
                continue
            task.move(TaskStatus.SPAWNED)
            task.spawned_at = time.time()
            if result is not None:
                task.attempt, task.instance = result.attempt, result.instance

    def _task(self, bead_id: str) -> TaskState:
        return next(t for t in self.tasks if t.bead_id == bead_id)

    def _settle(self, result: PollResult) -> None:
        """Review and merge finished workers; give up on failed ones."""
        for info in result.workers():
            task = self._task(info.bead_id)
            if task.state != TaskStatus.SPAWNED:
                continue
            task.attempt, task.instance = info.attempt, info.instance
            if info.group == "failed":
                task.move(TaskStatus.FAILED, info.error or info.last_message)
            elif info.group in ("completed", "completed_needs_review"):
                self._review_and_merge(task)

    def _review_and_merge(self, task: TaskState) -> None:
        try:
            verdict = review(self.ctx, task.bead_id)
        except SwarmPoolError as e:
            task.move(TaskStatus.REJECTED, f"review failed: {e}")
            return
        if not verdict.approved:
            task.move(TaskStatus.REJECTED, "; ".join(verdict.problems))
            return
        try:
            merge(self.ctx, task.bead_id)
        except GitError as e:
            task.move(TaskStatus.CONFLICT, str(e))
            return
        task.move(TaskStatus.MERGED)
        task.merged_at = time.time()

    def step(self) -> PollResult:
        self._spawn_ready()
        result = poll(self.ctx, self.epic_id)
        self._settle(result)
        # A merge may unlock dependents right away.
        self._spawn_ready()
        if self.supervisor is not None and self._needs_dispatcher(result):
            # Finished work was reviewed and merged above; the rest needs a supervisor.
            self.supervisor.wait_until_served(self.ctx)
        return result

    def _needs_dispatcher(self, result: PollResult) -> bool:
        return result.active > 0 or any(t.state == TaskStatus.WAITING for t in self.tasks)

    def done(self) -> bool:
        return all(t.state.final for t in self.tasks)

    def run(self, timeout: float) -> tuple[bool, float]:
        started = time.monotonic()
        if not self.epic_id:
            self.create_epic()
        seq = 0
        timed_out = False
        while True:
            result = self.step()
            if self.on_update is not None:
                self.on_update(self, result)
            if self.done():
                break
            remaining = timeout - (time.monotonic() - started)
            if remaining <= 0:
                timed_out = True
                break
            seq = self.ctx.store.wait_for_change(max(seq, result.seq), min(remaining, 1.0))
        return timed_out, time.monotonic() - started


# --- the `run` command ----------------------------------------------------------------


class RunDisplay(Protocol):
    """Where a run shows its tasks as they move (the CLI's live table)."""

    def update(self, runner: Runner, result: PollResult | None) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class RunOptions:
    """How one ``run`` goes; the defaults are the CLI's."""

    timeout: float = 1800.0
    size: int | None = None  # instances, if the pool must be started (else the plan's)
    keep_pool: bool = False  # leave a pool this run started running
    config_path: Path | None = None
    restart_pool: bool = False  # start a supervisor when the pool's dies
    notify: Notify | None = None  # progress lines (stderr at the CLI)
    display: RunDisplay | None = None  # closed when the run ends


def run_plan_file(
    paths: ProjectPaths,
    config: Config,
    plan_path: Path,
    options: RunOptions | None = None,
) -> RunSummary:
    """Run the plan at ``plan_path``: PlanError before anything starts if it is bad."""
    options = options or RunOptions()
    plan = load_plan(plan_path)
    if not plan.tasks:
        raise PlanError(f"plan {plan_path} has no tasks")
    # The store is opened (and so checked) before the pool starts: a damaged one must
    # not leave a pool running behind the error.
    store = open_project_store(paths, config)
    started_pool = False
    try:
        size = options.size or plan.pool.size
        started_pool = ensure_pool(paths, config, size=size, config_path=options.config_path)
        watch = SupervisorWatch(
            paths,
            config,
            options.notify or (lambda _: None),
            restart=options.restart_pool,
            size=size,
            config_path=options.config_path,
        )
        ctx = SwarmContext(paths=paths, config=config, store=store)
        return _run(ctx, plan, options, started_pool, watch)
    finally:
        store.close()
        if started_pool and not options.keep_pool:
            stop_pool(paths, config)


def _run(
    ctx: SwarmContext,
    plan: Plan,
    options: RunOptions,
    started_pool: bool,
    watch: SupervisorWatch,
) -> RunSummary:
    started = time.monotonic()
    display = options.display
    runner = Runner(ctx, plan, on_update=display.update if display else None, supervisor=watch)
    try:
        timed_out, _ = runner.run(options.timeout)
    finally:
        if display is not None:
            display.close()
    with contextlib.suppress(SwarmPoolError):
        cleanup(ctx)
    return RunSummary(
        epic_id=runner.epic_id,
        tasks=runner.tasks,
        elapsed_s=time.monotonic() - started,
        pool_started=started_pool,
        timed_out=timed_out,
        errors=runner.errors,
        sandbox=ctx.config.workers.sandbox_label(),
    )
