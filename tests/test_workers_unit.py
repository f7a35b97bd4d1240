"""Workers over a real store and real git, with instances faked by httpx.MockTransport.

The real-OpenCode behaviour is proven in ``test_workers_e2e.py``; here the corner cases
run fast: dependency and duplicate refusals, routing and queueing, dispatch, failure and
retry, the engine's decisions (instance gone, session error, timeout, confirmed idle),
poll groups and BLOCKED mail, await woken by a store change, answer, review and merge.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from swarm_pool import faults
from swarm_pool.config import Config
from swarm_pool.errors import (
    DependencyBlockedError,
    DuplicateSpawnError,
    MergeConflictError,
    NotFoundError,
    PoolNotRunningError,
    ReviewRequiredError,
    SupervisorLostError,
    WorkerError,
)
from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.router import InstanceView
from swarm_pool.protocol import find_contract
from swarm_pool.store import Store, WorkerView, open_project_store
from swarm_pool.store.events import (
    BeadSpec,
    FailureCause,
    InstanceExited,
    SessionError,
    SessionStatus,
    WorkerBlocked,
    WorkerCompleted,
    WorkerProgress,
    now_ms,
)
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.engine.loop import Engine, EngineSettings
from swarm_pool.swarm.plans.runner import SupervisorWatch, TaskState, TaskStatus
from swarm_pool.swarm.status import await_workers, poll
from swarm_pool.swarm.worker import SpawnRequest, answer, fail, load_spec, spawn_async
from swarm_pool.swarm.worker.checkout import acquire
from swarm_pool.swarm.worker.failure import AttemptTarget, FailOutcome, Failure, infra_backoff_until
from swarm_pool.swarm.worker.prompt import prompt_hash
from swarm_pool.swarm.worker.review import merge, review
from swarm_pool.view.metrics import epic_metrics
from tests.support import git, init_repo, wait_for


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "proj", {"README.md": "hello\n"})


class FakePool:
    """Instances as the router sees them plus a fake OpenCode HTTP API for each."""

    def __init__(self, names: list[str]) -> None:
        self.views = {
            n: InstanceView(n, f"http://{n}.test", "ready", "pw", pid=100 + i)
            for i, n in enumerate(names)
        }
        self.lock = threading.Lock()
        self.sessions: dict[str, dict[str, Any]] = {}  # id -> {instance, directory, prompts}
        self.status: dict[str, dict[str, Any]] = {}  # id -> status entry (absent = idle)
        self.calls: list[tuple[str, str, str]] = []  # (instance, method, path)
        self.down: set[str] = set()
        # Instances that create the session, then never answer (outcome unknown).
        self.create_times_out: set[str] = set()
        # (instance, directory) of every GET /session?directory=: OpenCode sets each up.
        self.directories_opened: set[tuple[str, str | None]] = set()
        # (instance, directory) of each directory set up ahead of a session (min_slots).
        self.opened_ahead: list[tuple[str, str | None]] = []

    def set(self, name: str, **kw: Any) -> None:
        old = self.views[name]
        self.views[name] = InstanceView(**{**old.__dict__, **kw})

    def instances(self) -> list[InstanceView]:
        return list(self.views.values())

    def client(self, inst: InstanceView) -> OpenCodeClient:
        def handler(request: httpx.Request) -> httpx.Response:
            return self.handle(inst.name, request)

        return OpenCodeClient(inst.url, inst.password, transport=httpx.MockTransport(handler))

    def handle(self, name: str, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        with self.lock:
            self.calls.append((name, request.method, path))
            if name in self.down:
                raise httpx.ConnectError("connection refused")
            if path == "/global/health":
                return httpx.Response(200, json={"healthy": True, "version": "x"})
            if path == "/session" and request.method == "POST":
                sid = f"ses_{len(self.sessions) + 1}"
                self.sessions[sid] = {
                    "instance": name,
                    "directory": request.url.params.get("directory"),
                    "title": json.loads(request.content or b"{}").get("title", ""),
                    "created": int(time.time() * 1000),
                    "prompts": [],
                    "messages": [],
                }
                if name in self.create_times_out:
                    raise httpx.ReadTimeout("no answer")
                return httpx.Response(200, json={"id": sid})
            if path in ("/session", "/experimental/session") and request.method == "GET":
                directory = request.url.params.get("directory")
                if path == "/session":
                    self.directories_opened.add((name, directory))
                return httpx.Response(
                    200,
                    json=[
                        {
                            "id": sid,
                            "directory": x["directory"],
                            "title": x["title"],
                            "time": {"created": x["created"], "updated": x["created"]},
                        }
                        for sid, x in self.sessions.items()
                        if x["instance"] == name
                        and not x.get("deleted")
                        and (directory is None or x["directory"] == directory)
                    ],
                )
            if path == "/session/status":
                return httpx.Response(200, json=self.status)
            if path == "/mcp" and request.method == "GET":
                self.opened_ahead.append((name, request.url.params.get("directory")))
                return httpx.Response(200, json={})
            if path in ("/path", "/config", "/agent", "/experimental/tool/ids"):
                return httpx.Response(200, json={})
            parts = path.strip("/").split("/")
            if parts[0] == "session" and len(parts) >= 2:
                sid = parts[1]
                sess = self.sessions.get(sid)
                if sess is None:
                    return httpx.Response(404)
                if parts[-1] == "prompt_async":
                    sess["prompts"].append(json.loads(request.content)["parts"][0]["text"])
                    self.status[sid] = {"type": "busy"}
                    return httpx.Response(204)
                if parts[-1] == "message":
                    prompted = [{"info": {"role": "user"}, "parts": []}] if sess["prompts"] else []
                    return httpx.Response(200, json=sess["messages"] or prompted)
                if parts[-1] == "abort":
                    self.status.pop(sid, None)
                    return httpx.Response(200, json=True)
                if sess.get("deleted"):
                    return httpx.Response(404)
                if request.method == "DELETE":
                    sess["deleted"] = True
                    return httpx.Response(200, json=True)
            if path == "/instance/dispose":
                return httpx.Response(200, json=True)
            if path.startswith(("/permission/", "/question/")):
                return httpx.Response(200, json=True)
        return httpx.Response(404)

    def finish(self, sid: str) -> None:
        """The session ran to its end (idle, last assistant message complete)."""
        with self.lock:
            self.status.pop(sid, None)
            self.sessions[sid]["messages"] = [
                {"info": {"role": "user", "time": {"created": 1}}, "parts": []},
                {"info": {"role": "assistant", "time": {"created": 2, "completed": 3}}},
            ]


@pytest.fixture
def pool() -> FakePool:
    return FakePool(["i1", "i2"])


@pytest.fixture
def store(repo: Path) -> Iterator[Store]:
    s = open_project_store(ProjectPaths(repo))
    yield s
    s.close()


def make_ctx(repo: Path, store: Store, pool: FakePool, **workers: Any) -> SwarmContext:
    config = Config()
    config.pool.max_sessions_per_instance = 1
    # The engine is ticked by hand here: an infra retry is dispatched on the next tick
    # (the backoff has its own test, which sets it).
    config.workers.infra_retry_backoff_s = 0.0
    for key, value in workers.items():
        setattr(config.workers, key, value)
    return SwarmContext(
        paths=ProjectPaths(repo),
        config=config,
        store=store,
        instances_fn=pool.instances,
        client_fn=pool.client,
    )


@pytest.fixture
def ctx(repo: Path, store: Store, pool: FakePool) -> SwarmContext:
    return make_ctx(repo, store, pool)


def engine_for(ctx: SwarmContext, pool: FakePool) -> Engine:
    """An engine driven by hand (tick) over the test's store and fake instances."""
    engine = Engine(
        ctx.paths,
        ctx.config,
        instances_fn=pool.instances,
        client_fn=pool.client,
        open_store=lambda: ctx.store,
        settings=EngineSettings(watch=False, recheck_s=3600),
    )
    engine._ctx = ctx
    engine.tick(wait=True)  # learn the instances' pids
    return engine


@pytest.fixture
def engine(ctx: SwarmContext, pool: FakePool) -> Iterator[Engine]:
    e = engine_for(ctx, pool)
    yield e
    e._pool.shutdown(wait=True)


def spawn(ctx: SwarmContext, engine: Engine, bead: str, **kw: Any) -> WorkerView:
    """spawn_async, then one engine pass to dispatch it; the worker as the store has it."""
    result = spawn_async(ctx, SpawnRequest(bead, **kw))
    assert result.status == "pending" and result.session_id == ""
    engine.tick(wait=True)
    w = ctx.store.workers.get(bead)
    assert w is not None
    return w


def epic(ctx: SwarmContext, *tasks: BeadSpec) -> list[str]:
    created = ctx.store.hive.create_epic("e", list(tasks))
    return [c.id for c in created.cells]


def complete(ctx: SwarmContext, bead: str) -> None:
    w = ctx.store.workers.get(bead)
    assert w is not None
    ctx.store.append(
        WorkerCompleted(bead_id=bead, epic_id=w.epic_id, session_id=w.session_id, attempt=w.attempt)
    )
    ctx.store.hive.set_status(bead, "closed", reason="done")


def test_spawn_queues_at_once_and_the_engine_starts_the_session(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    (bead,) = epic(ctx, BeadSpec(title="write a", files=["a.txt"]))
    started = time.perf_counter()
    result = spawn_async(ctx, SpawnRequest(bead, shared_context="the shared context"))
    assert time.perf_counter() - started < 2.0
    assert result.status == "pending" and result.attempt == 1
    assert not pool.sessions  # spawn never talks to an instance itself
    # Warm slots (the default): the directory is the chosen instance's, known at dispatch.
    assert result.worktree == ""
    assert ctx.store.hive.get_cell(bead).status == "in_progress"
    assert [w.bead_id for w in poll(ctx).groups["pending"]] == [bead]
    engine.tick(wait=True)
    w = ctx.store.workers.get(bead)
    assert w is not None and w.status == "running" and w.session_id
    wt = Path(w.worktree)
    assert wt == ctx.paths.slots_dir.resolve() / w.instance / "0" and wt.is_dir()
    assert git(wt, "rev-parse", "--abbrev-ref", "HEAD") == f"swarm/{bead}"
    sess = pool.sessions[w.session_id]
    assert sess["directory"] == str(wt) and sess["instance"] == w.instance
    (prompt,) = sess["prompts"]
    contract = find_contract(prompt)
    assert contract is not None and contract.bead_id == bead and contract.files == ["a.txt"]
    assert "the shared context" in prompt
    spawned = ctx.store.read(types=["worker_spawned"], bead_id=bead)[-1].event
    # The prompt sent names the slot, which the spawn (and its hash) could not know.
    assert getattr(spawned, "prompt_hash", "") == prompt_hash(prompt) != ""
    assert result.prompt_hash != ""


def test_dependencies_and_duplicates_are_refused(ctx: SwarmContext, engine: Engine) -> None:
    a, b = epic(ctx, BeadSpec(title="a", files=["a"]), BeadSpec(title="b", depends_on=["1"]))
    with pytest.raises(DependencyBlockedError) as info:
        spawn_async(ctx, b)
    assert info.value.blocked_by == [a]
    assert ctx.store.workers.get(b) is None
    spawn_async(ctx, a)
    with pytest.raises(DuplicateSpawnError):
        spawn_async(ctx, a)  # pending is live
    engine.tick(wait=True)
    with pytest.raises(DuplicateSpawnError):
        spawn_async(ctx, a)  # so is running
    complete(ctx, a)
    assert spawn(ctx, engine, b).status == "running"


def test_no_running_pool_is_refused(ctx: SwarmContext, pool: FakePool) -> None:
    (a,) = epic(ctx, BeadSpec(title="a"))
    pool.views.clear()
    with pytest.raises(PoolNotRunningError):
        spawn_async(ctx, a)
    assert ctx.store.workers.get(a) is None


def test_full_pool_queues_until_a_slot_frees(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    beads = epic(ctx, *(BeadSpec(title=f"t{i}", files=[f"f{i}"]) for i in range(3)))
    for b in beads:
        spawn_async(ctx, b)
    engine.tick(wait=True)
    ws = [ctx.store.workers.get(b) for b in beads]
    # The engine dispatches on a thread pool, so which bead waits is not fixed.
    assert sorted(w.status for w in ws if w) == ["pending", "running", "running"]
    running = [w for w in ws if w and w.status == "running"]
    [waiting] = [w.bead_id for w in ws if w and w.status == "pending"]
    assert {w.instance for w in running} == {"i1", "i2"}
    groups = poll(ctx).groups
    assert [w.bead_id for w in groups["pending"]] == [waiting]
    assert len(groups["in_progress"]) == 2
    engine.tick(wait=True)
    assert ctx.store.workers.get(waiting).status == "pending"  # type: ignore[union-attr]
    complete(ctx, running[0].bead_id)
    engine.tick(wait=True)
    w = ctx.store.workers.get(waiting)
    assert w is not None and w.status == "running" and w.instance == running[0].instance


def test_draining_instance_gets_no_new_work(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    pool.set("i1", draining=True)
    (a,) = epic(ctx, BeadSpec(title="a"))
    assert spawn(ctx, engine, a).instance == "i2"


def test_dead_instance_at_dispatch_time_falls_over(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    pool.down.add("i1")
    (a,) = epic(ctx, BeadSpec(title="a"))
    assert spawn(ctx, engine, a).instance == "i2"


def test_fail_retries_elsewhere_then_gives_up(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    (a,) = epic(ctx, BeadSpec(title="a", files=["a"]))
    first = spawn(ctx, engine, a)
    assert fail(ctx, a, Failure("boom", "instance_exited")) == FailOutcome.RETRIED
    assert ctx.store.workers.get(a).status == "pending"  # type: ignore[union-attr]
    engine.tick(wait=True)
    w = ctx.store.workers.get(a)
    assert w is not None and w.status == "running" and w.attempt == 2
    assert w.instance != first.instance and w.worktree == first.worktree
    prompt = pool.sessions[w.session_id]["prompts"][0]  # type: ignore[index]
    assert "attempt 2" in prompt and "interrupted (instance_exited)" in prompt
    contract = find_contract(prompt)
    assert contract is not None and contract.attempt == 2
    types = [e.type for e in ctx.store.read(bead_id=a) if e.type.startswith("worker_")]
    assert types == [
        "worker_queued",
        "worker_session_created",
        "worker_spawned",
        "worker_failed",
        "worker_retried",
        "worker_queued",
        "worker_session_created",
        "worker_spawned",
    ]
    # a stale report about the first session changes nothing
    assert (
        fail(ctx, a, Failure("late", "x"), target=AttemptTarget(session_id=first.session_id))
        == FailOutcome.IGNORED
    )
    assert fail(ctx, a, Failure("boom again", "session_error")) == FailOutcome.FAILED
    assert ctx.store.workers.get(a).status == "failed"  # type: ignore[union-attr]
    assert ctx.store.hive.get_cell(a).status == "blocked"
    groups = poll(ctx).groups
    assert [x.bead_id for x in groups["failed"]] == [a]
    # what the prompt is built from is kept for later retries, as of the first attempt
    assert load_spec(ctx, a).contract.attempt == 1


def test_engine_fails_workers_of_an_exited_instance(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    a, b = epic(ctx, BeadSpec(title="a"), BeadSpec(title="b"))
    wa, wb = spawn(ctx, engine, a), spawn(ctx, engine, b)
    assert {wa.instance, wb.instance} == {"i1", "i2"}
    victim = wa.instance
    # the supervisor records the death and restarts it with a new pid
    ctx.store.append(InstanceExited(instance=victim, pid=1, signal=9))
    pool.set(victim, pid=999)
    engine.tick(wait=True)
    engine.tick(wait=True)
    wa2 = ctx.store.workers.get(a)
    assert wa2 is not None and wa2.attempt == 2 and wa2.status == "running"
    failed = ctx.store.read(types=["worker_failed"], bead_id=a)
    assert getattr(failed[-1].event, "reason", "") == "instance_exited"
    assert getattr(failed[-1].event, "cause", "") == FailureCause.INFRA
    wb2 = ctx.store.workers.get(b)
    assert wb2 is not None and wb2.attempt == 1 and wb2.status == "running"


def test_engine_detects_a_dead_state_without_events(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    (a,) = epic(ctx, BeadSpec(title="a"))
    w = spawn(ctx, engine, a)
    pool.set(w.instance, state="backoff")
    engine.tick(wait=True)
    w2 = ctx.store.workers.get(a)
    assert w2 is not None and w2.attempt == 2


def test_engine_session_error_and_timeout(repo: Path, store: Store, pool: FakePool) -> None:
    ctx = make_ctx(repo, store, pool, max_retries=0, timeout_s=0.5)
    engine = engine_for(ctx, pool)
    a, b = epic(ctx, BeadSpec(title="a"), BeadSpec(title="b"))
    wa, wb = spawn(ctx, engine, a), spawn(ctx, engine, b)
    ctx.store.append(
        SessionError(
            session_id=wa.session_id or "",
            instance=wa.instance,
            error="APIError: 500",
            bead_id=a,
            epic_id=wa.epic_id,
        )
    )
    engine.tick(wait=True)
    wa2 = ctx.store.workers.get(a)
    assert wa2 is not None and wa2.status == "failed" and "500" in (wa2.error or "")
    time.sleep(0.6)  # past the (tiny) timeout on purpose
    engine.tick(wait=True)
    wb2 = ctx.store.workers.get(b)
    assert wb2 is not None and wb2.status == "failed"
    reason = getattr(ctx.store.read(types=["worker_failed"], bead_id=b)[-1].event, "reason", "")
    assert reason == "timeout"
    assert (wb.instance, "POST", f"/session/{wb.session_id}/abort") in pool.calls


def test_per_spawn_timeout(ctx: SwarmContext, pool: FakePool, engine: Engine) -> None:
    (a,) = epic(ctx, BeadSpec(title="a"))
    spawn(ctx, engine, a, timeout_s=0.3)
    time.sleep(0.4)
    engine.tick(wait=True)
    assert ctx.store.workers.get(a).status == "failed"  # type: ignore[union-attr]


def test_time_blocked_on_a_human_does_not_count_towards_the_timeout(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    a, b = epic(ctx, BeadSpec(title="a"), BeadSpec(title="b"))
    wa = spawn(ctx, engine, a, timeout_s=3.0)
    wb = spawn(ctx, engine, b, timeout_s=3.0)
    # a waits for a permission for a while, then resumes; b just runs.
    ctx.store.append(
        WorkerBlocked(
            bead_id=a,
            epic_id=wa.epic_id,
            session_id=wa.session_id,
            reason="permission asked: bash",
            kind="permission",
            request_id="per_1",
        )
    )
    time.sleep(3.2)  # longer than the timeout, nearly all of it blocked for a
    engine.tick(wait=True)
    assert ctx.store.workers.get(a).status == "blocked"  # type: ignore[union-attr]
    assert ctx.store.workers.get(b).status == "failed"  # type: ignore[union-attr]
    ctx.store.append(
        WorkerProgress(bead_id=a, epic_id=wa.epic_id, session_id=wa.session_id, progress_percent=10)
    )
    engine.tick(wait=True)
    resumed = ctx.store.workers.get(a)
    assert resumed is not None and resumed.status == "running"
    assert resumed.blocked_ms >= 3200 and resumed.running_ms(now_ms()) < 3000

    def timed_out() -> bool:
        engine.tick(wait=True)
        return ctx.store.workers.get(a).status == "failed"  # type: ignore[union-attr]

    wait_for(timed_out, 20, interval=0.2)  # once its running time passes the limit
    assert getattr(ctx.store.read(types=["worker_failed"], bead_id=a)[-1].event, "reason", "") == (
        "timeout"
    )
    assert wb.bead_id == b


def test_engine_needs_all_signals_before_needs_review(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    (a,) = epic(ctx, BeadSpec(title="a"))
    w = spawn(ctx, engine, a)
    sid = w.session_id or ""
    ctx.store.append(
        SessionStatus(
            session_id=sid, instance=w.instance, status="idle", bead_id=a, epic_id=w.epic_id
        )
    )
    engine.tick(wait=True)  # SSE says idle but the server still lists it busy: not believed
    assert ctx.store.workers.get(a).status == "running"  # type: ignore[union-attr]
    pool.finish(sid)
    engine.tick(wait=True)
    assert [x.bead_id for x in poll(ctx).groups["completed_needs_review"]] == [a]


def test_completion_wins_over_idle(ctx: SwarmContext, pool: FakePool, engine: Engine) -> None:
    (a,) = epic(ctx, BeadSpec(title="a"))
    w = spawn(ctx, engine, a)
    sid = w.session_id or ""
    complete(ctx, a)
    pool.finish(sid)
    ctx.store.append(
        SessionStatus(
            session_id=sid, instance=w.instance, status="idle", bead_id=a, epic_id=w.epic_id
        )
    )
    engine.tick(wait=True)
    assert [x.bead_id for x in poll(ctx).groups["completed"]] == [a]


def test_blocked_mail_and_permission_show_in_poll(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    a, b = epic(ctx, BeadSpec(title="a"), BeadSpec(title="b"))
    wa, wb = spawn(ctx, engine, a), spawn(ctx, engine, b)
    ctx.store.mail.send(
        f"worker-{a}", ["coordinator"], "BLOCKED: need the schema", bead_id=a, epic_id=wa.epic_id
    )
    ctx.store.append(
        WorkerBlocked(
            bead_id=b,
            epic_id=wb.epic_id,
            session_id=wb.session_id,
            reason="permission asked: bash",
            kind="permission",
            request_id="per_1",
            instance=wb.instance,
        )
    )
    groups = poll(ctx, wa.epic_id).groups
    blocked = {w.bead_id: w.blocked_reason for w in groups["blocked"]}
    assert set(blocked) == {a, b}
    assert "BLOCKED" in blocked[a] and "bash" in blocked[b]
    with pytest.raises(WorkerError):
        answer(ctx, b, text="an answer to a permission")
    out = answer(ctx, b, reply="once")
    assert out.request_id == "per_1"
    assert (wb.instance, "POST", "/permission/per_1/reply") in pool.calls
    assert ctx.store.workers.get(b).status == "running"  # type: ignore[union-attr]
    with pytest.raises(WorkerError):
        answer(ctx, b, reply="once")  # not blocked any more


def test_await_wakes_on_a_store_change(ctx: SwarmContext, engine: Engine) -> None:
    (a,) = epic(ctx, BeadSpec(title="a"))
    w = spawn(ctx, engine, a)
    timed = await_workers(ctx, w.epic_id, 0.3)
    assert timed.timed_out and timed.active == 1

    def finish_later() -> None:
        time.sleep(0.5)
        s = open_project_store(ctx.paths)  # another connection, as another process would
        try:
            s.append(WorkerCompleted(bead_id=a, epic_id=w.epic_id, session_id=w.session_id))
        finally:
            s.close()

    t = threading.Thread(target=finish_later)
    started = time.monotonic()
    t.start()
    result = await_workers(ctx, w.epic_id, 30)
    elapsed = time.monotonic() - started
    t.join()
    assert not result.timed_out and result.counts["completed"] == 1
    assert elapsed < 2.0


def test_review_and_merge(ctx: SwarmContext, repo: Path, pool: FakePool, engine: Engine) -> None:
    a, b = epic(ctx, BeadSpec(title="a", files=["src/a.txt"]), BeadSpec(title="b", files=["b.txt"]))
    wa, wb = spawn(ctx, engine, a), spawn(ctx, engine, b)
    (Path(wa.worktree) / "src").mkdir()
    (Path(wa.worktree) / "src" / "a.txt").write_text("A\n")
    complete(ctx, a)
    verdict = review(ctx, a)
    assert verdict.approved and verdict.files_touched == ["src/a.txt"]
    assert verdict.uncommitted == ["src/a.txt"]
    outcome = merge(ctx, a)
    assert outcome.leftovers_commit and outcome.files == ["src/a.txt"]
    assert (repo / "src" / "a.txt").read_text() == "A\n"
    assert outcome.session_released and pool.sessions[wa.session_id or ""].get("deleted")
    # A warm slot's directory stays served (not disposed), and is free for the next bead.
    assert (wa.instance, "POST", "/instance/dispose") not in pool.calls
    held = ctx.store.slots.holding(a)
    assert held is not None and held.state == "free" and held.path == wa.worktree
    assert [w.bead_id for w in poll(ctx).groups["completed"] if w.merged] == [a]
    # b writes outside its files: the review says so and does not approve
    (Path(wb.worktree) / "b.txt").write_text("B\n")
    (Path(wb.worktree) / "README.md").write_text("changed\n")
    complete(ctx, b)
    verdict = review(ctx, b)
    assert not verdict.approved and verdict.outside_owned == ["README.md"]
    event = ctx.store.read(types=["review_completed"], bead_id=b)[-1].event
    assert getattr(event, "approved", True) is False
    with pytest.raises(NotFoundError):
        merge(ctx, epic(ctx, BeadSpec(title="c"))[0])  # no worker: nothing to merge


def test_merge_conflict_leaves_the_base_untouched(
    ctx: SwarmContext, repo: Path, engine: Engine
) -> None:
    a, b = epic(
        ctx,
        BeadSpec(title="a", files=["README.md"]),
        BeadSpec(title="b", files=["README.md"]),
    )
    wa, wb = spawn(ctx, engine, a), spawn(ctx, engine, b)
    Path(wa.worktree, "README.md").write_text("from a\n")
    Path(wb.worktree, "README.md").write_text("from b\n")
    complete(ctx, a)
    complete(ctx, b)
    assert review(ctx, a).approved and review(ctx, b).approved
    merge(ctx, a)
    head = git(repo, "rev-parse", "HEAD")
    with pytest.raises(MergeConflictError):
        merge(ctx, b)
    assert git(repo, "rev-parse", "HEAD") == head
    assert (repo / "README.md").read_text() == "from a\n"
    assert git(repo, "status", "--porcelain") == ""
    conflict = ctx.store.read(types=["merge_conflict"], bead_id=b)
    assert conflict and getattr(conflict[-1].event, "files", []) == ["README.md"]


def base_bytes(repo: Path) -> dict[str, bytes]:
    """Every file of the base checkout (not .git, not .swarm), its branch and commit, and
    its status."""
    files = {
        str(f.relative_to(repo)): f.read_bytes()
        for f in sorted(repo.rglob("*"))
        if f.is_file() and f.relative_to(repo).parts[0] not in (".git", ".swarm")
    }
    files["<HEAD>"] = git(repo, "symbolic-ref", "HEAD").encode()
    files["<base>"] = git(repo, "rev-parse", "HEAD").encode()
    files["<status>"] = git(repo, "status", "--porcelain").encode()
    return files


def test_merge_needs_an_approving_review_of_the_current_head(
    ctx: SwarmContext, repo: Path, engine: Engine
) -> None:
    a, b = epic(ctx, BeadSpec(title="a", files=["a.txt"]), BeadSpec(title="b", files=["b.txt"]))
    wa, wb = spawn(ctx, engine, a), spawn(ctx, engine, b)
    Path(wa.worktree, "a.txt").write_text("A\n")
    complete(ctx, a)
    before = base_bytes(repo)
    # Unreviewed: refused, naming the missing review, and nothing changed anywhere.
    with pytest.raises(ReviewRequiredError, match=rf"no review_completed for swarm/{a}"):
        merge(ctx, a)
    assert base_bytes(repo) == before
    assert git(Path(wa.worktree), "status", "--porcelain") == "?? a.txt"  # not committed
    # Rejected (a file outside what b owns): refused too.
    Path(wb.worktree, "b.txt").write_text("B\n")
    Path(wb.worktree, "README.md").write_text("changed\n")
    complete(ctx, b)
    assert not review(ctx, b).approved
    with pytest.raises(ReviewRequiredError, match="last review rejected"):
        merge(ctx, b)
    assert base_bytes(repo) == before
    # Approved, then the work changes (uncommitted, then committed): the approval no
    # longer covers it.
    assert review(ctx, a).approved
    Path(wa.worktree, "a.txt").write_text("A, edited after the review\n")
    with pytest.raises(ReviewRequiredError, match="the approving review saw"):
        merge(ctx, a)
    git(Path(wa.worktree), "add", "a.txt")
    git(Path(wa.worktree), "commit", "-qm", "sneaky")
    with pytest.raises(ReviewRequiredError, match="the approving review saw"):
        merge(ctx, a)
    assert base_bytes(repo) == before
    assert not ctx.store.read(types=["worktree_merged"])
    # Reviewed again, as it is now: merged.
    assert review(ctx, a).approved
    outcome = merge(ctx, a)
    assert (repo / "a.txt").read_text() == "A, edited after the review\n"
    assert outcome.files == ["a.txt"]


INFRA = FailureCause.INFRA


def test_infra_failures_do_not_use_max_retries(repo: Path, store: Store, pool: FakePool) -> None:
    ctx = make_ctx(repo, store, pool, max_retries=0)
    engine = engine_for(ctx, pool)
    try:
        (a,) = epic(ctx, BeadSpec(title="a", files=["a"]))
        spawn(ctx, engine, a)
        for _ in range(3):  # three instance deaths in a row: each one retried
            assert (
                fail(ctx, a, Failure("gone", "instance_exited", cause=INFRA)) == FailOutcome.RETRIED
            )
            engine.tick(wait=True)
            w = ctx.store.workers.get(a)
            assert w is not None and w.status == "running"
        assert w.attempt == 4
        causes = [
            getattr(e.event, "cause", None)
            for e in ctx.store.read(bead_id=a)
            if e.type in ("worker_failed", "worker_retried")
        ]
        assert causes == [INFRA] * 6
        info = poll(ctx).groups["in_progress"][0]
        assert (info.retries_task, info.retries_infra) == (0, 3)
        (m,) = epic_metrics(ctx.store.read())
        assert (m.retries, m.retries_task, m.retries_infra) == (3, 0, 3)
        # The task's own failure still meets max_retries = 0.
        assert fail(ctx, a, Failure("boom", "session_error")) == FailOutcome.FAILED
        failed = ctx.store.read(types=["worker_failed"], bead_id=a)
        assert getattr(failed[-1].event, "cause", None) == FailureCause.TASK
    finally:
        engine._pool.shutdown(wait=True)


def test_infra_retries_are_bounded_by_their_window(
    repo: Path, store: Store, pool: FakePool
) -> None:
    ctx = make_ctx(repo, store, pool, max_retries=5, infra_retry_window_s=0.0)
    engine = engine_for(ctx, pool)
    try:
        (a,) = epic(ctx, BeadSpec(title="a", files=["a"]))
        spawn(ctx, engine, a)
        # The first infra failure opens the window; with a window of 0 s the next one
        # is past it, and max_retries (5 left) does not rescue it.
        assert fail(ctx, a, Failure("gone", "instance_exited", cause=INFRA)) == FailOutcome.RETRIED
        engine.tick(wait=True)
        assert fail(ctx, a, Failure("gone", "instance_exited", cause=INFRA)) == FailOutcome.FAILED
        assert ctx.store.hive.get_cell(a).status == "blocked"
    finally:
        engine._pool.shutdown(wait=True)


def test_infra_retry_waits_its_backoff_before_dispatch(
    repo: Path, store: Store, pool: FakePool
) -> None:
    ctx = make_ctx(repo, store, pool)
    engine = engine_for(ctx, pool)
    try:
        (a,) = epic(ctx, BeadSpec(title="a", files=["a"]))
        spawn(ctx, engine, a)
        ctx.config.workers.infra_retry_backoff_s = 3600.0
        ctx.config.workers.infra_retry_backoff_max_s = 7200.0
        assert fail(ctx, a, Failure("gone", "instance_exited", cause=INFRA)) == FailOutcome.RETRIED
        retried = ctx.store.read(types=["worker_retried"], bead_id=a)[-1]
        assert infra_backoff_until(ctx, a) == retried.timestamp + 3600 * 1000
        engine.tick(wait=True)
        engine.tick(wait=True)
        w = ctx.store.workers.get(a)
        assert w is not None and w.status == "pending" and w.attempt == 2
        # the second in a row doubles, up to the cap
        ctx.config.workers.infra_retry_backoff_s = 0.0
        engine.tick(wait=True)
        assert fail(ctx, a, Failure("gone", "instance_exited", cause=INFRA)) == FailOutcome.RETRIED
        ctx.config.workers.infra_retry_backoff_s = 3600.0
        retried = ctx.store.read(types=["worker_retried"], bead_id=a)[-1]
        assert infra_backoff_until(ctx, a) == retried.timestamp + 7200 * 1000
        # a task retry is not delayed
        ctx.config.workers.infra_retry_backoff_s = 0.0
        engine.tick(wait=True)
        ctx.config.workers.infra_retry_backoff_s = 3600.0
        assert fail(ctx, a, Failure("boom", "session_error")) == FailOutcome.RETRIED
        assert infra_backoff_until(ctx, a) is None
        engine.tick(wait=True)
        w = ctx.store.workers.get(a)
        assert w is not None and w.status == "running" and w.attempt == 4
    finally:
        engine._pool.shutdown(wait=True)


def test_a_restarted_instance_is_reconciled_and_its_unrecorded_session_deleted(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    (a,) = epic(ctx, BeadSpec(title="a", files=["a"]))
    w = spawn(ctx, engine, a)
    # What a kill between a session's creation and its record leaves on the instance:
    # a session in the worker's worktree that the store never heard of.
    leaked = pool.client(pool.views[w.instance]).create_session(directory=w.worktree)["id"]
    engine.tick(wait=True)
    assert not pool.sessions[leaked].get("deleted")  # no restart yet: nothing to reconcile
    pool.set(w.instance, pid=999)  # the supervisor restarted it
    engine.tick(wait=True)
    engine.tick(wait=True)
    assert pool.sessions[leaked].get("deleted")
    known = {getattr(e.event, "session_id", "") for e in ctx.store.read(bead_id=a)}
    assert w.session_id in known and leaked not in known


def test_await_with_stall_check_returns_when_nothing_can_dispatch(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    (a,) = epic(ctx, BeadSpec(title="a"))
    spawn_async(ctx, a)  # queued; no engine pass
    saved, pool.views = pool.views, {}  # no instance: nothing would dispatch it
    try:
        result = await_workers(ctx, None, 30, stall_check=True)
        assert result.stalled and not result.timed_out and result.active == 1
        assert await_workers(ctx, None, 0.1).stalled == ""  # without the check: a timeout
    finally:
        pool.views = saved
    assert await_workers(ctx, None, 0.1, stall_check=True).stalled == ""


def test_supervisor_watch_waits_bounded_then_carries_on(ctx: SwarmContext, pool: FakePool) -> None:
    lines: list[str] = []
    watch = SupervisorWatch(ctx.paths, ctx.config, lines.append, poll_s=0.05)
    watch.wait_until_served(ctx)  # served: says nothing
    assert lines == []
    saved, pool.views = pool.views, {}
    ctx.config.workers.supervisor_wait_s = 0.2
    with pytest.raises(SupervisorLostError):
        watch.wait_until_served(ctx)
    assert len(lines) == 1 and "supervisor is gone" in lines[0]
    ctx.config.workers.supervisor_wait_s = 60.0
    timer = threading.Timer(0.3, lambda: setattr(pool, "views", saved))
    timer.start()
    try:
        watch.wait_until_served(ctx)
    finally:
        timer.cancel()
    assert "carries on" in lines[-1]


# --- unknown outcomes, crashes between intent and prompt ------------------------------


def live_sessions(pool: FakePool, worktree: str) -> list[str]:
    return [
        sid
        for sid, x in pool.sessions.items()
        if x["directory"] == worktree and not x.get("deleted")
    ]


def test_unknown_outcome_of_session_create_is_looked_up_not_failed_over(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    (a,) = epic(ctx, BeadSpec(title="a"))
    pool.set("i2", state="starting")  # only i1 takes work
    pool.create_times_out.add("i1")
    w = spawn(ctx, engine, a)
    # The session was created but its answer never came: found by listing and deleted;
    # nothing was tried elsewhere, and the worker waits in the queue.
    assert w.status == "pending" and live_sessions(pool, w.worktree) == []
    assert [c for c in pool.calls if c[1] == "POST" and c[2] == "/session"] == [
        ("i1", "POST", "/session")
    ]
    pool.create_times_out.clear()
    engine.tick(wait=True)
    w2 = ctx.store.workers.get(a)
    assert w2 is not None and w2.status == "running"
    assert live_sessions(pool, w2.worktree) == [w2.session_id]


def test_connect_refused_fails_over_to_another_instance(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    (a,) = epic(ctx, BeadSpec(title="a"))
    pool.down.add("i1")
    w = spawn(ctx, engine, a, routing="least_busy")
    assert w.status == "running" and w.instance == "i2"


def test_restarted_engine_prompts_the_intent_that_never_was(
    ctx: SwarmContext, pool: FakePool, engine: Engine
) -> None:
    """A dispatcher died between recording its session and prompting it; the next
    engine prompts that very session, and also removes a session in a queued worker's
    worktree that nobody recorded (the same crash, one step earlier)."""
    a, b = epic(ctx, BeadSpec(title="a"), BeadSpec(title="b"))
    with faults.inject("dispatch.before_prompt", _crash), pytest.raises(_Crash):
        from swarm_pool.swarm.worker.dispatch import dispatch

        spawn_async(ctx, a)
        dispatch(ctx, a)
    wa = ctx.store.workers.get(a)
    assert wa is not None and wa.status == "dispatching" and wa.session_id
    assert pool.sessions[wa.session_id]["prompts"] == []
    spawn_async(ctx, b)
    # The dispatcher of b took its slot and created a session, then died unrecorded.
    where = str(acquire(ctx, "i2", b, 1))
    orphan = pool.client(pool.views["i2"]).create_session(where, title="lost")["id"]
    fresh = engine_for(ctx, pool)  # a new engine: reconciles on its first pass
    try:
        fresh.tick(wait=True)
    finally:
        fresh._pool.shutdown(wait=True)
    wa = ctx.store.workers.get(a)
    assert wa is not None and wa.status == "running"
    assert live_sessions(pool, wa.worktree) == [wa.session_id]
    assert len(pool.sessions[wa.session_id]["prompts"]) == 1
    assert pool.sessions[orphan].get("deleted")
    wb = ctx.store.workers.get(b)
    assert wb is not None and live_sessions(pool, wb.worktree) == [wb.session_id]


class _Crash(BaseException):
    """Stands for the dispatcher's process dying at the fault point."""


def _crash() -> None:
    raise _Crash


def test_review_rejects_a_symlink_leaving_the_worktree(
    ctx: SwarmContext, repo: Path, engine: Engine
) -> None:
    (a,) = epic(ctx, BeadSpec(title="a", files=["a.txt", "link"]))
    wa = spawn(ctx, engine, a)
    Path(wa.worktree, "a.txt").write_text("A\n")
    Path(wa.worktree, "link").symlink_to(repo / ".swarm" / "pool.json")
    complete(ctx, a)
    verdict = review(ctx, a)
    assert not verdict.approved
    assert "symlinks leaving the worktree: link" in verdict.problems


def test_the_engine_sweeps_sessions_unknown_to_the_store_after_a_grace(
    repo: Path, store: Store, pool: FakePool
) -> None:
    ctx = make_ctx(repo, store, pool, session_sweep_s=0.01, intent_grace_s=60.0)
    engine = engine_for(ctx, pool)
    try:
        (a,) = epic(ctx, BeadSpec(title="a", files=["a"]))
        w = spawn(ctx, engine, a)
        complete(ctx, a)  # no longer live: the restart reconciliation would not look
        client = pool.client(pool.views[w.instance])
        old = client.create_session(directory=w.worktree)["id"]
        fresh = client.create_session(directory=w.worktree)["id"]
        pool.sessions[old]["created"] -= 61_000  # a creation whose answer was lost long ago
        engine._jobs.swept = 0.0
        engine.tick(wait=True)
        assert engine._jobs.sweep is not None
        engine._jobs.sweep.result(timeout=30)
        assert pool.sessions[old].get("deleted")
        # Younger than the grace: it may be a dispatch about to record it.
        assert not pool.sessions[fresh].get("deleted")
        assert not pool.sessions[w.session_id].get("deleted")  # known to the store
        # The sweep lists each instance's sessions at once: it opens no worktree there.
        assert pool.directories_opened == set()
    finally:
        engine._pool.shutdown(wait=True)


def test_a_plan_task_moves_only_along_its_transitions() -> None:
    task = TaskState(1, "t", bead_id="bd-x.1")
    assert task.state == "waiting" and not task.state.final
    with pytest.raises(RuntimeError, match="no move from waiting to merged"):
        task.move(TaskStatus.MERGED)
    task.move(TaskStatus.SPAWNED)
    task.move(TaskStatus.REJECTED, "review failed")
    assert task.state.final and task.note == "review failed"
    with pytest.raises(RuntimeError, match="no move from rejected to spawned"):
        task.move(TaskStatus.SPAWNED)  # a final outcome is never left
    # The summary's JSON keeps the plain names.
    assert json.loads(json.dumps(task.to_dict()))["state"] == "rejected"


def test_the_engine_opens_min_slots_on_active_instances_once_per_process(
    repo: Path, store: Store
) -> None:
    pool = FakePool(["i1", "i2", "i3"])
    ctx = make_ctx(repo, store, pool, min_slots=2)
    ctx.config.pool.max_sessions_per_instance = 2
    ctx.config.pool.active_instances = 2
    engine = engine_for(ctx, pool)
    try:
        # i3 is overflow: it gets work only when i1 and i2 are full, so no idle slots.
        assert [(s.slot, s.state) for s in store.slots.list()] == [
            ("i1/0", "free"),
            ("i1/1", "free"),
            ("i2/0", "free"),
            ("i2/1", "free"),
        ]
        slots_dir = ctx.paths.slots_dir.resolve()
        assert sorted(pool.opened_ahead) == [
            (name, str(slots_dir / name / n)) for name in ("i1", "i2") for n in ("0", "1")
        ]
        pool.opened_ahead.clear()
        engine.tick(wait=True)
        assert pool.opened_ahead == []  # once per instance process
        pool.set("i1", pid=999)  # restarted: its directories are cold again
        engine.tick(wait=True)
        assert sorted(pool.opened_ahead) == [("i1", str(slots_dir / "i1" / n)) for n in "01"]
        pool.opened_ahead.clear()
        pool.set("i2", state="stopped")  # i3 takes its place among the active ones
        engine.tick(wait=True)
        assert sorted(pool.opened_ahead) == [("i3", str(slots_dir / "i3" / n)) for n in "01"]
        assert len(store.slots.list()) == 6
    finally:
        engine.stop()
