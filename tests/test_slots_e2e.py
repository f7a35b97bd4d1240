"""Warm worktree slots end to end: a real pool (one opencode instance + the scripted
model), real git, the engine in the supervisor daemon.

With ``min_slots = 2`` the engine makes both slots as soon as the instance is ready, and
the instance opens them (their MCP relays run) before any bead. Two plans run one after
the other on the same pool. The first leaves behind what a reused slot must not show: an
ignored build file of a merged bead, and committed work of a bead that failed for good.
The second plan's agents then read, glob, grep and run bash in the very same directories
(no new slot, no new directory served) and see only their own branch. Their transcripts,
saved when their sessions are deleted after the merge, show those tool calls.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from swarm_pool.config import load_config
from swarm_pool.opencode.config import RELAY_PATH
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import read_state
from swarm_pool.store import open_project_store
from swarm_pool.store.events import BeadSpec
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.status import await_workers
from swarm_pool.swarm.worker import spawn_async
from swarm_pool.swarm.worker.review import merge, review
from tests.pool_cli import cli, running_pool
from tests.support import git, init_repo, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

POOL_TOML = """
[pool]
size = 1
max_sessions_per_instance = 2
start_timeout_s = 120.0

[supervisor]
check_interval_s = 0.5
health_timeout_s = 10.0
health_failures = 6

[workers]
max_retries = 0
timeout_s = 400.0
min_slots = 2

[opencode.permission]
edit = "allow"
bash = "allow"
webfetch = "deny"
external_directory = "deny"
doom_loop = "deny"
"""


def init() -> dict[str, Any]:
    return {"tool": "swarmmail_init", "args": {"bead_id": "{bead_id}"}}


def write(content: str) -> dict[str, Any]:
    return {"tool": "write", "each_file": True, "args": {"filePath": "{path}", "content": content}}


def bash(command: str) -> dict[str, Any]:
    return {"tool": "bash", "args": {"command": command, "description": "look around"}}


def complete() -> dict[str, Any]:
    args = {"bead_id": "{bead_id}", "summary": "done", "files_touched": "{literal_files}"}
    return {"tool": "swarm_complete", "args": args}


LOOK = "ls -a; ls -a build 2>&1; git log --format=%s -3 | cat; git status --short"


def looker() -> list[dict[str, Any]]:
    return [
        init(),
        {"tool": "glob", "args": {"pattern": "**/*", "path": "{worktree}"}},
        {"tool": "grep", "args": {"pattern": "secret-a2", "path": "{worktree}"}},
        {"tool": "read", "args": {"filePath": "{worktree}/a2-secret.txt"}},
        bash(LOOK),
        write("by {bead_id}\n"),
        complete(),
    ]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = init_repo(
        (tmp_path_factory.mktemp("slots-e2e") / "proj").resolve(),
        {"README.md": "project\n", ".gitignore": "build/\n"},
    )
    with running_pool(root, POOL_TOML):
        yield root


@pytest.fixture
def ctx(project: Path) -> Iterator[SwarmContext]:
    paths = ProjectPaths(project)
    config = load_config(None, project_root=project)
    store = open_project_store(paths, config)
    yield SwarmContext(paths=paths, config=config, store=store)
    store.close()


def run_epic(ctx: SwarmContext, title: str, tasks: list[BeadSpec]) -> list[str]:
    epic = ctx.store.hive.create_epic(title, tasks)
    beads = [c.id for c in epic.cells]
    for bead in beads:
        spawn_async(ctx, bead)
    result = await_workers(ctx, epic.id, 600)
    assert not result.timed_out, result.to_dict()
    return beads


def review_and_merge(ctx: SwarmContext, bead: str) -> None:
    verdict = review(ctx, bead)
    assert verdict.approved, verdict.to_dict()
    assert merge(ctx, bead).session_released


def session_dirs(ctx: SwarmContext, beads: list[str]) -> set[str]:
    return {
        getattr(s.event, "worktree", "")
        for b in beads
        for s in ctx.store.read(types=["worker_session_created"], bead_id=b)
    }


def slot_dirs(ctx: SwarmContext) -> set[Path]:
    return {p for p in ctx.paths.slots_dir.glob("*/*") if p.is_dir()}


def relay_dirs(ctx: SwarmContext) -> set[str]:
    """The directories the pool's instances have opened: each has its MCP relay."""
    state = read_state(ctx.paths.state_file)
    assert state is not None
    found = set()
    for rec in state.opencode():
        if rec.pid is None:
            continue
        for proc in psutil.Process(rec.pid).children(recursive=True):
            try:
                if str(RELAY_PATH) in " ".join(proc.cmdline()):
                    found.add(proc.cwd())
            except psutil.NoSuchProcess:
                continue
    return found


def test_a_second_plan_reuses_the_slots_and_sees_only_its_own_branch(ctx: SwarmContext) -> None:
    # Made and opened ahead of any bead (min_slots): free, and served by the instance.
    wait_for(lambda: [s.state for s in ctx.store.slots.list()] == ["free", "free"], timeout=60)
    ahead = slot_dirs(ctx)
    assert [p.name for p in sorted(ahead)] == ["0", "1"]
    wait_for(lambda: relay_dirs(ctx) >= {str(p) for p in ahead}, timeout=60)
    a1, a2 = run_epic(
        ctx,
        "first plan",
        [
            BeadSpec(
                title="a1 leaves an ignored build file",
                files=["a1.txt"],
                script=[
                    init(),
                    write("by {bead_id}\n"),
                    bash("mkdir -p build && echo old > build/cache-a1.o"),
                    complete(),
                ],
            ),
            BeadSpec(
                title="a2 commits a secret, then fails for good",
                files=["a2-secret.txt"],
                script=[
                    init(),
                    write("secret-a2\n"),
                    bash("git add -A && git commit -qm a2-commit"),
                    {"http_error": 400, "error_message": "a2 gives up"},
                ],
            ),
        ],
    )
    w1, w2 = ctx.store.workers.get(a1), ctx.store.workers.get(a2)
    assert w1 is not None and w1.status == "completed", w1
    assert w2 is not None and w2.status == "failed", w2
    review_and_merge(ctx, a1)
    first_slots = slot_dirs(ctx)
    assert first_slots == {Path(w1.worktree), Path(w2.worktree)} == ahead
    assert (Path(w1.worktree) / "build" / "cache-a1.o").is_file()
    assert git(ctx.paths.root, "show", f"swarm/{a2}:a2-secret.txt") == "secret-a2"
    assert {s.state for s in ctx.store.slots.list()} == {"free"}
    # The failed bead's session was deleted with its slot's release; its transcript kept.
    failed = cli("transcript", a2, "--json", project=ctx.paths.root)
    assert failed.returncode == 0, failed.stderr
    entries = json.loads(failed.stdout)["entries"]
    commands = [e["input"].get("command") for e in entries if e["kind"] == "tool"]
    assert "git add -A && git commit -qm a2-commit" in commands

    b1, b2 = run_epic(
        ctx,
        "second plan",
        [
            BeadSpec(title=f"b{i} looks around", files=[f"b{i}.txt"], script=looker())
            for i in (1, 2)
        ],
    )
    for bead in (b1, b2):
        w = ctx.store.workers.get(bead)
        assert w is not None and w.status == "completed", w
        review_and_merge(ctx, bead)
    # No new slot and no new directory served: the second plan ran in the first's.
    assert slot_dirs(ctx) == first_slots
    assert session_dirs(ctx, [b1, b2]) == {str(p) for p in first_slots}

    for bead in (b1, b2):
        out = cli("transcript", bead, "--json", project=ctx.paths.root)
        assert out.returncode == 0, out.stderr
        entries = json.loads(out.stdout)["entries"]
        tools = {e["tool"]: e for e in entries if e["kind"] == "tool"}
        assert {"glob", "grep", "read", "bash", "write"} <= set(tools), entries
        assert any(t.endswith("swarm_complete") for t in tools), entries
        assert tools["glob"]["status"] == tools["grep"]["status"] == "completed", entries
        globbed = tools["glob"]["output"]
        assert "README.md" in globbed and "a1.txt" in globbed  # the base, merged a1 in
        assert "a2-secret" not in globbed and "cache-a1" not in globbed
        assert "secret-a2" not in tools["grep"]["output"]
        assert tools["read"]["status"] == "error"
        listing = tools["bash"]["output"]
        assert "a2-secret" not in listing and "cache-a1" not in listing
        assert "a2-commit" not in listing  # nor the failed bead's history
        assert "a1.txt" in listing
        # The readable form names the same calls.
        text = cli("transcript", bead, project=ctx.paths.root)
        assert text.returncode == 0 and "[tool glob]" in text.stdout
