"""The worker lifecycle end to end, against crashes: a real pool (2 opencode instances +
the scripted model), real git, the engine in the supervisor daemon, as in production.

One pool serves the module. It is started with ``--config`` pointing at a file outside
the project's default places, so the check command reaches the MCP servers only if the
effective config path reaches every process. The supervisor is SIGKILLed at three
moments of a 6-task run (right after the spawns are queued; between a session's creation
and its prompt, made exact with a fault point; while merges happen) and started again:
every task is merged, none failed because of the crash, and each worktree had exactly
one prompted session (counted with OpenCode's own session list).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from swarm_pool.config import load_config
from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import read_state
from swarm_pool.store import open_project_store
from swarm_pool.store.events import BeadSpec, FailureCause
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.status import await_workers, poll
from swarm_pool.swarm.worker import spawn_async
from swarm_pool.swarm.worker.review import merge, review
from tests.pool_cli import cli, pool_processes
from tests.support import TEST_TAG_ENV, git, init_repo, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CONFIG = """
[pool]
size = 2
max_sessions_per_instance = 4
# A restarted instance's start-up is slow on a loaded machine; a start given up would
# fail the test for the machine's load, not for what it tests.
start_timeout_s = 120.0

[supervisor]
check_interval_s = 0.5
# Each worktree grows an instance by 60-100 MB; a memory-limit restart would fail work
# for a reason other than the crashes under test.
max_rss_mb = 0

[workers]
# max_retries stays at its default (1): instance kills are retried on the infra budget.
infra_retry_backoff_s = 0.5
timeout_s = 300.0
# Fails only in a worktree holding CHECK_FAILS (one test's worker writes it).
check_command = "test ! -e CHECK_FAILS"

[opencode.permission]
edit = "allow"
webfetch = "ask"
external_directory = "deny"
doom_loop = "deny"

[opencode.permission.bash]
"*" = "allow"
# Asked for (one test's worker runs it). Not webfetch: OpenCode 1.18.33 answers GET
# /permission with a 400 while a webfetch request is pending (its metadata.timeout is
# undefined), so no catch-up can list one.
"touch *" = "ask"
"""


@dataclass
class Pool:
    root: Path
    paths: ProjectPaths
    config_path: Path

    def ctx(self) -> SwarmContext:
        config = load_config(self.config_path, project_root=self.root)
        return SwarmContext(
            paths=self.paths, config=config, store=open_project_store(self.paths, config)
        )

    def start(self, env: dict[str, str] | None = None) -> None:
        out = cli(
            "start",
            "--json",
            "--config",
            str(self.config_path),
            project=self.root,
            env=env,
            session_scoped=True,
            timeout=240,
        )
        log = self.paths.supervisor_log
        assert out.returncode == 0, f"{out.stderr}\n{log.read_text() if log.exists() else ''}"

    def supervisor(self) -> psutil.Process:
        state = read_state(self.paths.state_file)
        assert state is not None and state.supervisor is not None
        proc = state.supervisor.ref.process()
        assert proc is not None
        return proc

    def kill_supervisor(self) -> None:
        proc = self.supervisor()
        os.kill(proc.pid, signal.SIGKILL)
        wait_for(lambda: not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE, 30)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    base = tmp_path_factory.mktemp("lifecycle-e2e")
    root = init_repo((base / "proj").resolve(), {"README.md": "project\n"})
    conf = base / "elsewhere.toml"  # not .swarm/pool.toml: only --config brings it
    conf.write_text(CONFIG)
    p = Pool(root, ProjectPaths(root).ensure(), conf)
    p.start()
    try:
        yield p
    finally:
        cli("stop", project=root, session_scoped=True, timeout=120)
        assert pool_processes(root) == []


@pytest.fixture
def ctx(pool: Pool) -> Iterator[SwarmContext]:
    c = pool.ctx()
    yield c
    c.store.close()


def script(
    *, delay_s: float = 0.0, fail_check: bool = False, answer_s: float = 0.0
) -> list[dict[str, Any]]:
    """The worker's steps; ``answer_s``: every answer of the model takes that long."""
    files = "{literal_files}"
    steps: list[dict[str, Any]] = [
        {"tool": "swarmmail_init", "args": {"bead_id": "{bead_id}"}},
        {"tool": "swarmmail_reserve", "args": {"paths": "{files}"}, "delay_s": delay_s},
        {
            "tool": "write",
            "each_file": True,
            "args": {"filePath": "{path}", "content": "# {file} by {bead_id} #{attempt}\n"},
        },
    ]
    if fail_check:
        steps.append(
            {"tool": "write", "args": {"filePath": "{worktree}/CHECK_FAILS", "content": "x\n"}}
        )
    steps.append(
        {
            "tool": "swarm_complete",
            "args": {
                "bead_id": "{bead_id}",
                "summary": "done",
                "files_touched": files,
                "attempt": "{attempt}",
            },
        }
    )
    for step in steps:
        step["delay_s"] = max(step.get("delay_s", 0.0), answer_s)
    return steps


def six_tasks(
    ctx: SwarmContext, name: str, delay_s: float = 1.0, answer_s: float = 0.0
) -> list[str]:
    epic = ctx.store.hive.create_epic(
        name,
        [
            BeadSpec(
                title=f"{name}{i}",
                files=[f"{name}/{i}.txt"],
                script=script(delay_s=delay_s, answer_s=answer_s),
            )
            for i in range(6)
        ],
    )
    return [c.id for c in epic.cells]


def prompted_sessions(ctx: SwarmContext, worktree: str) -> list[str]:
    """Sessions of ``worktree`` that got a prompt, on every instance (OpenCode's list)."""
    found = []
    wait_for(lambda: all(s.state == "ready" for s in ctx.instances()), 120)
    for slot in ctx.instances():
        client = OpenCodeClient(slot.url, slot.password, timeout=15)
        try:
            for s in client.sessions(directory=worktree):
                if s.get("directory") != worktree:
                    continue
                messages = client.messages(str(s["id"]), directory=worktree)
                if any(m.get("info", {}).get("role") == "user" for m in messages):
                    found.append(str(s["id"]))
        finally:
            client.close()
    return found


def assert_clean_run(ctx: SwarmContext, beads: list[str], epic_id: str) -> None:
    """Every task completed on its first attempt, one prompted session per worktree;
    then reviewed and merged."""
    result = await_workers(ctx, epic_id, 400)
    assert result.counts["completed"] == len(beads), result.to_dict()
    for bead in beads:
        w = ctx.store.workers.get(bead)
        assert w is not None and w.attempt == 1, w
        assert ctx.store.read(types=["worker_failed"], bead_id=bead) == []
        assert prompted_sessions(ctx, w.worktree) == [w.session_id]


def merge_all(ctx: SwarmContext, beads: list[str]) -> None:
    for bead in beads:
        assert review(ctx, bead).approved, bead
        merge(ctx, bead)


def test_supervisor_kill_9_right_after_the_spawns_are_queued(pool: Pool, ctx: SwarmContext) -> None:
    beads = six_tasks(ctx, "queued")
    for bead in beads:
        spawn_async(ctx, bead)
    pool.kill_supervisor()
    pool.start()
    epic_id = ctx.store.hive.get_cell(beads[0]).epic_id
    assert_clean_run(ctx, beads, epic_id)
    merge_all(ctx, beads)
    for i in range(6):
        assert git(pool.root, "cat-file", "-t", f"main:queued/{i}.txt") == "blob"


def test_supervisor_kill_9_between_session_creation_and_prompt(
    pool: Pool, ctx: SwarmContext
) -> None:
    """The next dispatch dies right after recording its session: the restarted engine
    prompts that session (the intent that never was) instead of starting a second."""
    go = pool.paths.swarm_dir / "intent-go"
    pool.kill_supervisor()
    # The dispatch waits at the point until every spawn is queued (a spawn needs a live
    # engine), then the daemon dies there.
    pool.start(env={"SWARM_POOL_FAULTS": f"dispatch.before_prompt=wait:{go}+kill"})
    daemon = pool.supervisor()
    beads = six_tasks(ctx, "intent")
    for bead in beads:
        spawn_async(ctx, bead)
    go.touch()
    wait_for(lambda: not daemon.is_running() or daemon.status() == psutil.STATUS_ZOMBIE, 120)
    intents = [w for w in ctx.store.workers.list() if w.status == "dispatching"]
    assert intents, "the fault point should have stopped a dispatch after its session"
    for w in intents:  # created, never prompted
        assert prompted_sessions(ctx, w.worktree) == []
    pool.start()
    epic_id = ctx.store.hive.get_cell(beads[0]).epic_id
    assert_clean_run(ctx, beads, epic_id)
    for w in intents:  # the very session recorded before the crash was the one prompted
        done = ctx.store.workers.get(w.bead_id)
        assert done is not None and done.session_id == w.session_id
        assert len(ctx.store.read(types=["worker_session_created"], bead_id=w.bead_id)) == 1
    merge_all(ctx, beads)


def test_supervisor_kill_9_while_merges_happen(pool: Pool, ctx: SwarmContext) -> None:
    beads = six_tasks(ctx, "merging", delay_s=0.0)
    for bead in beads:
        spawn_async(ctx, bead)
    epic_id = ctx.store.hive.get_cell(beads[0]).epic_id
    assert_clean_run(ctx, beads, epic_id)
    merge_all(ctx, beads[:2])
    pool.kill_supervisor()
    merge_all(ctx, beads[2:4])  # the coordinator keeps merging with no supervisor
    pool.start()
    merge_all(ctx, beads[4:])
    merged = {e.event.bead_id for e in ctx.store.read(types=["worktree_merged"], epic_id=epic_id)}  # type: ignore[union-attr]
    assert merged == set(beads)
    assert all(ctx.store.read(types=["worker_failed"], bead_id=b) == [] for b in beads)
    assert ctx.store.reservations.active() == []  # released with each merge
    assert ctx.store.check()["integrity"] == "ok"


def test_permission_pending_while_the_stream_is_down_still_blocks_and_answer_unblocks(
    pool: Pool, ctx: SwarmContext
) -> None:
    """Nobody listens (the supervisor, with its watchers, is dead) when the worker asks
    for a permission: the restarted watcher's catch-up still records worker_blocked."""
    touch = {"tool": "bash", "args": {"command": "touch ask/asked.txt", "description": "touch"}}
    steps = script()
    steps.insert(1, {**touch, "delay_s": 6.0})
    epic = ctx.store.hive.create_epic(
        "asks", [BeadSpec(title="asker", files=["ask/a.txt", "ask/asked.txt"], script=steps)]
    )
    bead = epic.cells[0].id
    spawn_async(ctx, bead)
    wait_for(lambda: ctx.store.read(types=["agent_registered"], bead_id=bead), 180)
    pool.kill_supervisor()  # before its 6 s delay ends, the permission is asked unseen
    w = ctx.store.workers.get(bead)
    assert w is not None and w.status == "running"
    slot = ctx.instance(w.instance)
    client = OpenCodeClient(slot.url, slot.password, timeout=15)
    try:
        wait_for(
            lambda: [
                p
                for p in client.permissions(directory=w.worktree)
                if p["sessionID"] == w.session_id
            ],
            120,
        )
    finally:
        client.close()
    assert ctx.store.workers.get(bead).status == "running"  # type: ignore[union-attr]
    pool.start()
    blocked = wait_for(
        lambda: (v := ctx.store.workers.get(bead)) is not None and v.status == "blocked" and v, 120
    )
    assert "bash" in (blocked.blocked_reason or "")
    assert len(ctx.store.read(types=["worker_blocked"], bead_id=bead)) == 1  # deduped
    out = cli("answer", bead, "--reply", "once", "--json", project=pool.root)
    assert out.returncode == 0, out.stderr
    result = await_workers(ctx, epic.id, 240)
    assert result.counts["completed"] == 1, result.to_dict()
    merge_all(ctx, [bead])


def test_config_check_runs_in_swarm_complete_and_a_failing_check_blocks_the_merge(
    pool: Pool, ctx: SwarmContext
) -> None:
    epic = ctx.store.hive.create_epic(
        "checked",
        [
            BeadSpec(title="passes", files=["chk/ok.txt"], script=script()),
            BeadSpec(
                title="fails", files=["chk/bad.txt", "CHECK_FAILS"], script=script(fail_check=True)
            ),
        ],
    )
    good, bad = (c.id for c in epic.cells)
    spawn_async(ctx, good)
    spawn_async(ctx, bad)
    await_workers(ctx, epic.id, 300)
    for bead, passed in ((good, True), (bad, False)):
        completed = ctx.store.read(types=["worker_completed"], bead_id=bead)[-1].event
        check = (completed.verification or {}).get("check")  # type: ignore[union-attr]
        assert isinstance(check, dict) and check["passed"] is passed, (bead, completed)
    assert ctx.store.workers.get(bad).status == "failed"  # type: ignore[union-attr]
    assert ctx.store.hive.get_cell(bad).status == "blocked"
    verdict = review(ctx, bad)
    assert not verdict.approved and "check command failed" in "; ".join(verdict.problems)
    out = cli(
        "merge", bad, "--json", project=pool.root, env={"SWARM_POOL_CONFIG": str(pool.config_path)}
    )
    assert out.returncode != 0
    assert ctx.store.read(types=["worktree_merged"], bead_id=bad) == []
    merge_all(ctx, [good])
    status = json.loads(cli("status", "--json", project=pool.root).stdout)
    assert status["engine"]["alive"] and status["engine"]["queue"] == 0


# The chaos test: instance kill -9s, 2 s apart, on the 2 instances, during a 6-task run
# with the model slowed to 1 s per answer (the runs by hand: LIFECYCLE_INSTANCE_KILLS).
INSTANCE_KILLS = int(os.environ.get("LIFECYCLE_INSTANCE_KILLS", "3"))
KILL_SPACING_S = 2.0


@pytest.mark.timeout(max(600, 150 * INSTANCE_KILLS))
def test_instance_kill_9s_lose_no_task_and_leak_no_session(pool: Pool, ctx: SwarmContext) -> None:
    beads = six_tasks(ctx, "chaos", delay_s=1.0, answer_s=1.0)
    epic_id = ctx.store.hive.get_cell(beads[0]).epic_id
    for bead in beads:
        spawn_async(ctx, bead)
    kills = 0
    while kills < INSTANCE_KILLS and kill_a_busy_instance(ctx, beads):
        kills += 1
        time.sleep(KILL_SPACING_S)  # the chaos's pacing, not a wait for a condition
    assert kills == INSTANCE_KILLS
    result = await_workers(ctx, epic_id, 420)  # under the test timeout: fail with the state
    assert result.counts["completed"] == len(beads), result.to_dict()
    merge_all(ctx, beads)
    for i in range(6):
        assert git(pool.root, "cat-file", "-t", f"main:chaos/{i}.txt") == "blob"
    # Each kill failed at least the worker it was chosen for; none of those failures
    # used up max_retries (1): they are infra retries, counted apart.
    retries = [(w.retries_task, w.retries_infra) for w in poll(ctx, epic_id).workers()]
    assert sum(t for t, _ in retries) == 0, retries
    assert sum(i for _, i in retries) >= INSTANCE_KILLS, retries
    causes = {
        getattr(s.event, "cause", None)
        for s in ctx.store.read(types=["worker_failed"], epic_id=epic_id)
    }
    assert causes == {FailureCause.INFRA}
    workers_json = json.loads(cli("workers", "--json", project=pool.root).stdout)
    assert sum(w["retries_infra"] for w in workers_json) >= INSTANCE_KILLS
    # No session on any instance that the store does not know (once every instance is
    # back and reconciled).
    wait_for(lambda: unknown_sessions(ctx) == [], 120, interval=1.0)
    report = ctx.store.check()
    assert report["integrity"] == "ok" and report["seq_gap_free"]
    rebuilt = ctx.store.projections_snapshot()
    ctx.store.rebuild()
    assert ctx.store.projections_snapshot() == rebuilt
    out = cli("db", "check", "--json", project=pool.root)
    assert out.returncode == 0, out.stdout + out.stderr


def unknown_sessions(ctx: SwarmContext) -> list[str]:
    """Sessions in the workers' worktrees, on every instance (its own HTTP API), that no
    ``worker_session_created`` in the store names."""
    known = {
        getattr(s.event, "session_id", "")
        for s in ctx.store.read(types=["worker_session_created", "worker_spawned"])
    }
    worktrees = {w.worktree for w in ctx.store.workers.list() if w.worktree}
    unknown = []
    for slot in ctx.instances():
        if slot.state != "ready":
            return ["(an instance is not ready yet)"]
        client = OpenCodeClient(slot.url, slot.password, timeout=15)
        try:
            for worktree in worktrees:
                for s in client.sessions(directory=worktree):
                    if s.get("directory") == worktree and s.get("id") not in known:
                        unknown.append(f"{slot.name}:{s.get('id')}")
        finally:
            client.close()
    return unknown


def kill_a_busy_instance(ctx: SwarmContext, beads: list[str]) -> bool:
    """SIGKILL a ready instance running one of ``beads`` mid-task (False: all done)."""

    def victim() -> Any:
        for bead in beads:
            w = ctx.store.workers.get(bead)
            if w is None or w.status != "running":
                continue
            if not ctx.store.read(types=["agent_registered"], bead_id=bead, after_seq=0):
                continue
            slot = next((s for s in ctx.instances() if s.name == w.instance), None)
            if slot is not None and slot.state == "ready" and psutil.pid_exists(slot.pid or 0):
                return slot
        if all(
            (w := ctx.store.workers.get(b)) is not None and w.status == "completed" for b in beads
        ):
            return "all done"
        return None

    slot = wait_for(victim, 300, interval=0.2)
    if slot == "all done":
        return False
    os.kill(slot.pid, signal.SIGKILL)
    return True


def toml_value(value: Any) -> str:
    """A script step as a TOML inline value (JSON strings and numbers are TOML too)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


@dataclass
class PlanRun:
    """A `run` of a small plan (tasks ``TITLE name``), as a client process of the pool."""

    title: str
    proc: subprocess.Popen[str]

    @classmethod
    def start(
        cls,
        pool: Pool,
        tmp_path: Path,
        title: str,
        tasks: dict[str, str],
        *options: str,
        outlives_test: bool = False,
    ) -> PlanRun:
        """``tasks`` maps a task id to its extra TOML lines (e.g. ``depends_on``)."""
        steps = toml_value(script(answer_s=1.0))
        plan = tmp_path / "plan.toml"
        plan.write_text(
            f'[epic]\ntitle = "{title}"\n\n'
            + "".join(
                f'[[tasks]]\nid = "{name}"\ntitle = "{title} {name}"\n'
                f'files = ["{title}/{name}.txt"]\n{extra}script = {steps}\n\n'
                for name, extra in tasks.items()
            )
        )
        args = ["run", str(plan), "--json", *options, "--config", str(pool.config_path)]
        env = dict(os.environ)
        if outlives_test:  # a supervisor it starts serves the module's pool after the test
            env.pop(TEST_TAG_ENV)
        proc = subprocess.Popen(
            [sys.executable, "-m", "swarm_pool", *args, "--project", str(pool.root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        return cls(title, proc)

    def queued_epic(self, ctx: SwarmContext) -> str:
        def find() -> str | None:
            for s in ctx.store.read(types=["worker_queued"]):
                cell = ctx.store.hive.get_cell(getattr(s.event, "bead_id", ""))
                if cell.title.startswith(f"{self.title} "):
                    return cell.epic_id
            return None

        epic_id: str = wait_for(find, 120, interval=0.1)
        return epic_id

    def finish(self, pool: Pool) -> tuple[str, dict[str, Any]]:
        """Its stderr and JSON summary, once it exited 0 with every task merged."""
        stdout, stderr = self.proc.communicate(timeout=400)
        assert self.proc.returncode == 0, stdout + stderr
        summary: dict[str, Any] = json.loads(stdout)
        assert summary["merged"] == summary["total"], summary
        for task in summary["tasks"]:
            name = task["title"].removeprefix(f"{self.title} ")
            assert git(pool.root, "cat-file", "-t", f"main:{self.title}/{name}.txt") == "blob"
        return stderr, summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def test_run_survives_its_supervisor_kill_9_and_await_refuses_to_wait_for_nothing(
    pool: Pool, ctx: SwarmContext, tmp_path: Path
) -> None:
    tasks = {"a": "", "b": "", "c": 'depends_on = ["a"]\n'}
    run = PlanRun.start(pool, tmp_path, "survivor", tasks)
    try:
        epic_id = run.queued_epic(ctx)
        pool.kill_supervisor()
        stalled = cli("await", epic_id, "--timeout", "60", project=pool.root)
        assert stalled.returncode == 3, stalled.stdout + stalled.stderr
        assert "start" in stalled.stderr and "Traceback" not in stalled.stderr
        pool.start()
        stderr, summary = run.finish(pool)
    finally:
        run.kill()
    assert summary["total"] == 3, summary
    assert "supervisor is gone" in stderr and "carries on" in stderr, stderr


def test_run_with_restart_pool_starts_a_supervisor_itself_after_a_kill_9(
    pool: Pool, ctx: SwarmContext, tmp_path: Path
) -> None:
    tasks = {"a": "", "b": ""}
    run = PlanRun.start(pool, tmp_path, "phoenix", tasks, "--restart-pool", outlives_test=True)
    try:
        epic_id = run.queued_epic(ctx)
        # With an engine running, a wait that runs out is a timeout (2), not a stall (3).
        waited = cli("await", epic_id, "--timeout", "0.1", project=pool.root)
        assert waited.returncode == 2, waited.stdout + waited.stderr
        old = pool.supervisor()
        pool.kill_supervisor()
        stderr, summary = run.finish(pool)
    finally:
        run.kill()
    assert summary["total"] == 2, summary
    assert "starting one" in stderr and "carries on" in stderr, stderr
    assert pool.supervisor().pid != old.pid  # the run's own start, still serving
