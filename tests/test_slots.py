"""Warm worktree slots and transcripts over a real store and real git (no OpenCode).

What an agent in a reused slot sees is proven against the real binary in
``test_slots_e2e.py``; here the slot rules run fast: a reset leaves nothing of the
previous bead, a busy slot is not reused before its release, a dirty slot is never
reset, a clean that fails (forced with a fault hook) leaves the slot on its old
branch, a retry keeps its slot, two takers racing for one slot (forced with a fault
hook) end in two slots, and a rebuild reproduces the projection. Transcripts: saved
privately, read back, rendered, and a clear error when there is none.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from swarm_pool import faults
from swarm_pool.config import Config, load_config
from swarm_pool.errors import ConfigError, GitError, SlotConflictError, TranscriptNotFoundError
from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.router import InstanceView
from swarm_pool.store import Store, open_project_store
from swarm_pool.store.events import ReleaseReason, SlotTaken
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker import transcript
from swarm_pool.swarm.worker.checkout import acquire, cleanup, open_slots
from tests.pool_cli import cli
from tests.support import git, init_repo, wait_for


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(tmp_path / "proj", {"README.md": "hello\n", ".gitignore": "build/\n"})


@pytest.fixture
def store(repo: Path) -> Iterator[Store]:
    s = open_project_store(ProjectPaths(repo))
    yield s
    s.close()


@pytest.fixture
def ctx(repo: Path, store: Store) -> SwarmContext:
    return SwarmContext(paths=ProjectPaths(repo), config=Config(), store=store)


def release(ctx: SwarmContext, bead: str, reason: ReleaseReason = ReleaseReason.MERGED) -> None:
    events = ctx.store.slots.release_events(bead, reason)
    assert events, f"{bead} holds no busy slot"
    ctx.store.append_many(events)


def commit_file(where: Path, name: str, text: str, message: str) -> None:
    (where / name).write_text(text)
    git(where, "add", name)
    git(where, "commit", "-qm", message)


def swarm_branches(ctx: SwarmContext) -> list[str]:
    return git(ctx.paths.root, "branch", "--list", "swarm/*", "--format=%(refname:short)").split()


def slot_dirs(ctx: SwarmContext) -> list[Path]:
    return sorted(p for p in ctx.paths.slots_dir.glob("*/*") if p.is_dir())


def test_a_reset_slot_holds_nothing_of_the_previous_bead(ctx: SwarmContext) -> None:
    first = acquire(ctx, "i1", "bd-aaa.1", 1)
    assert first == ctx.paths.slots_dir.resolve() / "i1" / "0"
    assert git(first, "rev-parse", "--abbrev-ref", "HEAD") == "swarm/bd-aaa.1"
    commit_file(first, "committed.txt", "on the old branch\n", "old work")
    (first / "build").mkdir()
    (first / "build" / "cache.o").write_text("ignored build output\n")
    release(ctx, "bd-aaa.1")
    second = acquire(ctx, "i1", "bd-bbb.1", 1)
    assert second == first  # the same warm directory
    assert git(second, "rev-parse", "--abbrev-ref", "HEAD") == "swarm/bd-bbb.1"
    assert git(second, "rev-parse", "HEAD") == git(ctx.paths.root, "rev-parse", "main")
    assert sorted(p.name for p in second.iterdir()) == [".git", ".gitignore", "README.md"]
    # The old bead's committed work survives on its branch, only not in the slot.
    assert git(ctx.paths.root, "show", "swarm/bd-aaa.1:committed.txt") == "on the old branch"


def test_a_slot_moving_on_deletes_the_previous_branch_only_once_merged(
    ctx: SwarmContext,
) -> None:
    first = acquire(ctx, "i1", "bd-aaa.1", 1)
    commit_file(first, "a.txt", "merged work\n", "a")
    ctx.git.merger.merge("bd-aaa.1")
    release(ctx, "bd-aaa.1")
    acquire(ctx, "i1", "bd-bbb.1", 1)
    assert swarm_branches(ctx) == ["swarm/bd-bbb.1"]  # the merged branch went
    assert git(ctx.paths.root, "show", "main:a.txt") == "merged work"
    # A branch with commits after its merge is kept: that work is not in the base.
    commit_file(first, "b.txt", "merged\n", "b")
    ctx.git.merger.merge("bd-bbb.1")
    commit_file(first, "c.txt", "after the merge\n", "c")
    release(ctx, "bd-bbb.1")
    acquire(ctx, "i1", "bd-ccc.1", 1)
    assert git(ctx.paths.root, "show", "swarm/bd-bbb.1:c.txt") == "after the merge"


def test_a_warm_reset_checks_out_without_the_git_lock(ctx: SwarmContext) -> None:
    # Measured: with the checkout under the lock, a wave of 16 warm dispatches queued
    # there (0.3-0.55 s per reset). Only the shared config and the previous branch's
    # deletion wait for the lock now.
    first = acquire(ctx, "i1", "bd-aaa.1", 1)
    commit_file(first, "a.txt", "merged work\n", "a")
    ctx.git.merger.merge("bd-aaa.1")
    release(ctx, "bd-aaa.1")
    done: list[Path] = []
    with ctx.git.runner.lock.hold():  # another dispatch (or a merge) holds it
        taker = threading.Thread(target=lambda: done.append(acquire(ctx, "i1", "bd-bbb.1", 1)))
        taker.start()
        wait_for(
            lambda: git(first, "rev-parse", "--abbrev-ref", "HEAD") == "swarm/bd-bbb.1",
            timeout=30,
        )
        assert taker.is_alive() and not done  # waiting for the lock, for the config
        assert git(first, "status", "--short") == ""
        assert swarm_branches(ctx) == ["swarm/bd-aaa.1", "swarm/bd-bbb.1"]
    taker.join(30)
    assert done == [first]
    assert git(ctx.paths.root, "config", "branch.swarm/bd-bbb.1.swarmbase") == "main"
    assert swarm_branches(ctx) == ["swarm/bd-bbb.1"]  # the merged one went, under the lock


def test_a_failing_clean_leaves_the_slot_on_its_old_branch(ctx: SwarmContext) -> None:
    # Seen in a full run: git clean failed while OpenCode still wrote in the slot. Had
    # the slot already moved to the new bead's branch, that branch would stay checked
    # out in a slot the store marks dirty for the previous bead, and every later
    # dispatch of the bead would fail with "already checked out".
    first = acquire(ctx, "i1", "bd-aaa.1", 2)
    release(ctx, "bd-aaa.1")

    def clean_fails() -> None:
        # OpenCode writing in the directory as the clean runs: a file the clean missed.
        (first / "late.txt").write_text("written during the clean\n")
        raise GitError("git clean: Directory not empty")

    with faults.inject("worktree.before_clean", clean_fails), pytest.raises(GitError):
        acquire(ctx, "i1", "bd-bbb.1", 2)
    assert git(first, "rev-parse", "--abbrev-ref", "HEAD") == "swarm/bd-aaa.1"
    # The failed slot holds an untracked file, so it waits (dirty) and the next
    # dispatch takes a new slot, where the bead's branch is free to check out.
    second = acquire(ctx, "i1", "bd-bbb.1", 2)
    assert second != first
    assert git(second, "rev-parse", "--abbrev-ref", "HEAD") == "swarm/bd-bbb.1"


def test_a_reset_keeps_what_opencode_writes_in_dot_opencode(ctx: SwarmContext) -> None:
    # A project with its own .opencode/: OpenCode writes a .gitignore there, then installs
    # its plugin package in the background. Seen in a full run: a reset that removed them
    # while the install still ran left package.json untracked, and the next bead's
    # uncommitted work carried it into the review.
    root = ctx.paths.root
    (root / ".opencode").mkdir()
    (root / ".opencode" / "README.md").write_text("the project's own\n")
    git(root, "add", ".opencode")
    git(root, "commit", "-qm", "project config")
    first = acquire(ctx, "i1", "bd-aaa.1", 1)
    assert git(first, "status", "--porcelain") == ""  # a new slot: every file checked out
    assert (first / ".opencode" / "README.md").read_text() == "the project's own\n"
    dot = first / ".opencode"
    (dot / ".gitignore").write_text("node_modules\npackage.json\npackage-lock.json\n.gitignore")
    (dot / "node_modules" / "pkg").mkdir(parents=True)
    (dot / "package.json").write_text("{}\n")
    (first / "build").mkdir()
    (first / "build" / "cache.o").write_text("ignored build output\n")
    commit_file(first, "notes.txt", "the previous bead's\n", "work")
    release(ctx, "bd-aaa.1")
    assert acquire(ctx, "i1", "bd-bbb.1", 1) == first
    assert not (first / "build").exists() and not (first / "notes.txt").exists()
    assert (dot / ".gitignore").exists() and (dot / "node_modules" / "pkg").is_dir()
    # The install finishing after the reset writes files git still ignores.
    (dot / "package-lock.json").write_text("{}\n")
    assert ctx.git.diffs.uncommitted_files(first) == []


def test_ignored_build_caches_stay_only_if_the_config_allows(ctx: SwarmContext) -> None:
    ctx.config.workers.slot_keep_ignored = True
    first = acquire(ctx, "i1", "bd-aaa.1", 1)
    (first / "build").mkdir()
    (first / "build" / "cache.o").write_text("kept\n")
    commit_file(first, "untracked.txt", "goes\n", "work")
    release(ctx, "bd-aaa.1")
    second = acquire(ctx, "i1", "bd-bbb.1", 1)
    assert (second / "build" / "cache.o").read_text() == "kept\n"
    assert not (second / "untracked.txt").exists()


def test_a_busy_slot_is_not_reused_before_its_bead_is_released(ctx: SwarmContext) -> None:
    a = acquire(ctx, "i1", "bd-aaa.1", 1)
    # bd-aaa.1 finished but is neither merged, failed for good nor cleaned.
    b = acquire(ctx, "i1", "bd-bbb.1", 1)
    assert b != a and git(a, "rev-parse", "--abbrev-ref", "HEAD") == "swarm/bd-aaa.1"
    # Another instance's free slot is not this instance's to take.
    acquire(ctx, "i2", "bd-ccc.1", 1)
    release(ctx, "bd-ccc.1", ReleaseReason.FAILED)
    release(ctx, "bd-aaa.1")
    d = acquire(ctx, "i1", "bd-ddd.1", 1)
    assert d == a
    assert len(slot_dirs(ctx)) == 3
    states = {s.slot: (s.state, s.bead_id) for s in ctx.store.slots.list()}
    assert states == {
        "i1/0": ("busy", "bd-ddd.1"),
        "i1/1": ("busy", "bd-bbb.1"),
        "i2/0": ("free", "bd-ccc.1"),
    }


def test_a_dirty_slot_is_never_reset(ctx: SwarmContext) -> None:
    a = acquire(ctx, "i1", "bd-aaa.1", 1)
    (a / "README.md").write_text("edited, never committed\n")
    (a / "new.txt").write_text("untracked work\n")
    release(ctx, "bd-aaa.1", ReleaseReason.FAILED)
    b = acquire(ctx, "i1", "bd-bbb.1", 1)
    assert b != a
    assert (a / "README.md").read_text() == "edited, never committed\n"
    assert (a / "new.txt").read_text() == "untracked work\n"
    assert git(a, "rev-parse", "--abbrev-ref", "HEAD") == "swarm/bd-aaa.1"
    dirty = ctx.store.slots.get("i1/0")
    assert dirty is not None and dirty.state == "dirty" and dirty.bead_id == "bd-aaa.1"
    assert "README.md" in dirty.reason
    # Skipped again while dirty (checked before it is even taken) ...
    release(ctx, "bd-bbb.1")
    c = acquire(ctx, "i1", "bd-ccc.1", 1)
    assert c == b and (a / "new.txt").exists()
    # ... and reusable once someone dealt with the work.
    git(a, "checkout", "--", "README.md")
    (a / "new.txt").unlink()
    assert acquire(ctx, "i1", "bd-ddd.1", 1) == a


def test_a_retry_keeps_its_slot_and_its_work(ctx: SwarmContext) -> None:
    a = acquire(ctx, "i1", "bd-aaa.1", 1)
    (a / "half.txt").write_text("half done\n")
    # The retry may run on another instance; it continues in its own slot.
    assert acquire(ctx, "i2", "bd-aaa.1", 2) == a
    assert (a / "half.txt").read_text() == "half done\n"
    held = ctx.store.slots.holding("bd-aaa.1")
    assert held is not None and held.attempt == 2 and held.state == "busy"


def test_two_takers_racing_for_one_slot_end_in_two(ctx: SwarmContext) -> None:
    """The first taker reads the slots, then waits at the fault point until the second
    has taken the very slot it chose: its conditional take loses, and it reads again."""
    second_done = threading.Event()
    arrivals: list[str] = []

    def hook() -> None:
        name = threading.current_thread().name
        arrivals.append(name)
        if name == "first" and arrivals.count("first") == 1:
            second.start()
            assert second_done.wait(60)

    results: dict[str, Path] = {}

    def take(bead: str) -> None:
        results[threading.current_thread().name] = acquire(ctx, "i1", bead, 1)

    second = threading.Thread(target=lambda: (take("bd-bbb.1"), second_done.set()), name="second")
    with faults.inject("slots.before_take", hook):
        take_first = threading.Thread(target=take, args=("bd-aaa.1",), name="first")
        take_first.start()
        take_first.join(60)
        second.join(60)
    assert results["second"] == ctx.paths.slots_dir.resolve() / "i1" / "0"
    assert results["first"] == ctx.paths.slots_dir.resolve() / "i1" / "1"
    assert arrivals.count("first") == 2  # it lost once, read again, and took another
    assert git(results["first"], "rev-parse", "--abbrev-ref", "HEAD") == "swarm/bd-aaa.1"
    assert git(results["second"], "rev-parse", "--abbrev-ref", "HEAD") == "swarm/bd-bbb.1"
    taken = ctx.store.read(types=["slot_taken"])
    assert [(e.event.slot, e.event.bead_id) for e in taken] == [  # type: ignore[union-attr]
        ("i1/0", "bd-bbb.1"),
        ("i1/1", "bd-aaa.1"),
    ]


def test_the_projection_refuses_a_busy_slot_to_another_bead(ctx: SwarmContext) -> None:
    a = acquire(ctx, "i1", "bd-aaa.1", 1)
    before = ctx.store.last_seq()
    with pytest.raises(SlotConflictError):
        ctx.store.append(
            SlotTaken(slot="i1/0", instance="i1", path=str(a), bead_id="bd-bbb.1", attempt=1)
        )
    with pytest.raises(SlotConflictError):
        ctx.store.slots.take(
            "i1/0", instance="i1", path=str(a), bead_id="bd-aaa.1", attempt=2, expect_version=0
        )
    assert ctx.store.last_seq() == before


def test_rebuild_reproduces_the_slots(ctx: SwarmContext) -> None:
    acquire(ctx, "i1", "bd-aaa.1", 1)
    b = acquire(ctx, "i1", "bd-bbb.1", 1)
    (b / "x.txt").write_text("dirty\n")
    release(ctx, "bd-bbb.1", ReleaseReason.FAILED)
    acquire(ctx, "i1", "bd-ccc.1", 1)  # finds i1/1 dirty on the way, makes i1/2
    before = ctx.store.projections_snapshot()["slots"]
    assert [r["state"] for r in before] == ["busy", "dirty", "busy"]
    ctx.store.rebuild()
    assert ctx.store.projections_snapshot()["slots"] == before


def test_cleanup_trims_free_slots_beyond_the_limit_and_disposes_them(
    repo: Path, store: Store
) -> None:
    disposed: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        disposed.append((request.url.path, request.url.params.get("directory", "")))
        return httpx.Response(200, json=True)

    inst = InstanceView("i1", "http://i1.test", "ready", "pw", pid=1)
    config = Config()
    config.pool.max_sessions_per_instance = 2
    ctx = SwarmContext(
        paths=ProjectPaths(repo),
        config=config,
        store=store,
        instances_fn=lambda: [inst],
        client_fn=lambda i: OpenCodeClient(
            i.url, i.password, transport=httpx.MockTransport(handler)
        ),
    )
    paths = [acquire(ctx, "i1", f"bd-aaa.{n}", 1) for n in (1, 2, 3)]
    (paths[1] / "wip.txt").write_text("not committed\n")
    for n in (1, 2, 3):
        release(ctx, f"bd-aaa.{n}")
    result = cleanup(ctx)
    # Only i1/2 is beyond the limit (2 slots); i1/1 is dirty and kept, i1/0 stays warm.
    assert result.removed == ["i1/2"]
    assert not paths[2].exists() and paths[0].is_dir() and paths[1].is_dir()
    assert disposed == [("/instance/dispose", str(paths[2]))]
    assert [(s.slot, s.state) for s in ctx.store.slots.list()] == [
        ("i1/0", "free"),
        ("i1/1", "dirty"),
    ]
    assert "i1/1" in result.kept
    # A new slot may take the removed one's number again.
    again = acquire(ctx, "i1", "bd-bbb.1", 1)
    assert again == paths[0]


def opening_ctx(
    repo: Path, store: Store, min_slots: int, seen: list[tuple[str, str]]
) -> SwarmContext:
    """A context whose one instance (i1) answers every request, recording it."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.url.params.get("directory", "")))
        return httpx.Response(200, json={})

    inst = InstanceView("i1", "http://i1.test", "ready", "pw", pid=1)
    config = Config()
    config.pool.max_sessions_per_instance = 3
    config.workers.min_slots = min_slots
    return SwarmContext(
        paths=ProjectPaths(repo),
        config=config,
        store=store,
        instances_fn=lambda: [inst],
        client_fn=lambda i: OpenCodeClient(
            i.url, i.password, transport=httpx.MockTransport(handler)
        ),
    )


def test_min_slots_are_made_free_and_opened_on_their_instance(repo: Path, store: Store) -> None:
    seen: list[tuple[str, str]] = []
    ctx = opening_ctx(repo, store, 2, seen)
    assert open_slots(ctx, "i1") == ["i1/0", "i1/1"]
    made = slot_dirs(ctx)
    assert [p.name for p in made] == ["0", "1"]
    for path in made:
        # Checked out at the base, on no branch, clean: nothing for a bead to find.
        assert git(path, "rev-parse", "HEAD") == git(repo, "rev-parse", "main")
        assert git(path, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"
        assert sorted(p.name for p in path.iterdir()) == [".git", ".gitignore", "README.md"]
    assert [(s.slot, s.state, s.bead_id) for s in ctx.store.slots.list()] == [
        ("i1/0", "free", ""),
        ("i1/1", "free", ""),
    ]
    # The instance set up each directory before any session there.
    assert {d for _, d in seen} == {str(p) for p in made}
    assert {path for path, _ in seen} >= {"/path", "/mcp", "/experimental/tool/ids"}
    # A bead takes the first, with no new slot and no new directory.
    taken = acquire(ctx, "i1", "bd-aaa.1", 1)
    assert taken == made[0]
    assert git(taken, "rev-parse", "--abbrev-ref", "HEAD") == "swarm/bd-aaa.1"
    assert slot_dirs(ctx) == made


def test_opening_again_makes_nothing_and_reopens_the_free_slots(repo: Path, store: Store) -> None:
    seen: list[tuple[str, str]] = []
    ctx = opening_ctx(repo, store, 2, seen)
    open_slots(ctx, "i1")
    acquire(ctx, "i1", "bd-aaa.1", 1)
    before = ctx.store.last_seq()
    seen.clear()
    # As after the instance restarted: its directories are cold again; the busy one is
    # its bead's session's business.
    assert open_slots(ctx, "i1") == ["i1/1"]
    assert ctx.store.last_seq() == before
    assert {d for _, d in seen} == {str(ctx.paths.slots_dir.resolve() / "i1" / "1")}


def test_a_slot_left_opening_is_finished_and_never_taken_meanwhile(
    repo: Path, store: Store
) -> None:
    seen: list[tuple[str, str]] = []
    ctx = opening_ctx(repo, store, 1, seen)
    path = ctx.paths.slots_dir.resolve() / "i1" / "0"
    # The engine stopped right after recording the slot, before making its worktree.
    view = ctx.store.slots.open("i1/0", instance="i1", path=str(path))
    assert view.state == "opening"
    with pytest.raises(SlotConflictError):
        ctx.store.slots.open("i1/0", instance="i1", path=str(path))
    with pytest.raises(SlotConflictError):
        ctx.store.slots.take(
            "i1/0",
            instance="i1",
            path=str(path),
            bead_id="bd-aaa.1",
            attempt=1,
            expect_version=view.version,
        )
    # Cleanup leaves it alone, and a dispatch meanwhile makes its own slot.
    assert cleanup(ctx).to_dict() == {"released": [], "kept": {}, "removed": []}
    assert acquire(ctx, "i1", "bd-aaa.1", 1) == path.parent / "1"
    assert ctx.store.slots.get("i1/0").state == "opening"  # type: ignore[union-attr]
    assert open_slots(ctx, "i1") == ["i1/0"]
    assert path.is_dir() and ctx.store.slots.get("i1/0").state == "free"  # type: ignore[union-attr]
    snapshot = ctx.store.projections_snapshot()["slots"]
    ctx.store.rebuild()
    assert ctx.store.projections_snapshot()["slots"] == snapshot


def test_min_slots_beyond_the_session_limit_is_a_config_error(tmp_path: Path) -> None:
    conf = tmp_path / "pool.toml"
    conf.write_text("[pool]\nmax_sessions_per_instance = 2\n[workers]\nmin_slots = 3\n")
    with pytest.raises(ConfigError, match=r"min_slots 3 exceeds pool\.max_sessions_per_instance 2"):
        load_config(conf)


# --- transcripts ------------------------------------------------------------------------

MESSAGES = [
    {"info": {"role": "user"}, "parts": [{"type": "text", "text": "do bd-aaa.1"}]},
    {
        "info": {"role": "assistant"},
        "parts": [
            {"type": "step-start"},
            {"type": "text", "text": "Reading the file."},
            {
                "type": "tool",
                "tool": "read",
                "state": {"status": "completed", "input": {"filePath": "a.txt"}, "output": "A"},
            },
            {
                "type": "tool",
                "tool": "bash",
                "state": {"status": "error", "input": {"command": "false"}, "error": "exit 1"},
            },
        ],
    },
]


def test_a_transcript_is_saved_privately_and_read_back(ctx: SwarmContext) -> None:
    path = transcript.save(
        ctx.paths,
        bead_id="bd-aaa.1",
        attempt=1,
        session_id="ses_1",
        instance="i1",
        worktree="/w",
        messages=MESSAGES,
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(ctx.paths.transcripts_dir.stat().st_mode) == 0o700
    summary = transcript.summarize(transcript.load(ctx.paths, "bd-aaa.1"))
    assert summary["entries"] == [
        {"role": "user", "kind": "text", "text": "do bd-aaa.1"},
        {"role": "assistant", "kind": "text", "text": "Reading the file."},
        {
            "role": "assistant",
            "kind": "tool",
            "tool": "read",
            "status": "completed",
            "input": {"filePath": "a.txt"},
            "output": "A",
        },
        {
            "role": "assistant",
            "kind": "tool",
            "tool": "bash",
            "status": "error",
            "input": {"command": "false"},
            "error": "exit 1",
        },
    ]
    text = transcript.render(summary)
    assert "[tool read] completed" in text and '"filePath": "a.txt"' in text
    assert "[tool bash] error" in text and "exit 1" in text
    with pytest.raises(TranscriptNotFoundError, match="attempt 2"):
        transcript.load(ctx.paths, "bd-aaa.1", 2)
    with pytest.raises(TranscriptNotFoundError, match=r"no transcript saved for bd-bbb\.1"):
        transcript.load(ctx.paths, "bd-bbb.1")


def test_transcript_command_errors_clearly(ctx: SwarmContext) -> None:
    epic = ctx.store.hive.create_epic("e", [{"title": "t"}])
    bead = epic.cells[0].id
    unknown = cli("transcript", "bd-zzzzzz.1", project=ctx.paths.root)
    assert unknown.returncode == 1 and "bd-zzzzzz.1 does not exist" in unknown.stderr
    missing = cli("transcript", bead, project=ctx.paths.root)
    assert missing.returncode == 1 and f"no transcript saved for {bead}" in missing.stderr
    transcript.save(
        ctx.paths,
        bead_id=bead,
        attempt=1,
        session_id="ses_1",
        instance="i1",
        worktree="/w",
        messages=MESSAGES,
    )
    shown = cli("transcript", bead, "--json", project=ctx.paths.root)
    assert shown.returncode == 0, shown.stderr
    assert [e["kind"] for e in json.loads(shown.stdout)["entries"]] == [
        "text",
        "text",
        "tool",
        "tool",
    ]


def test_the_dashboard_shows_each_instances_slots() -> None:
    from rich.console import Console

    from swarm_pool.view.dashboard import instances_panel
    from swarm_pool.view.snapshot import InstanceRow, SlotRow, Snapshot

    row = InstanceRow("oc-1", "opencode", "ready", 4101, 10, 300.0, 1.0, 2, 0, 5.0)
    snap = Snapshot(
        project="/p",
        taken_at=0,
        supervisor={"pid": 1, "running": True},
        instances=[row, InstanceRow("oc-2", "opencode", "ready", 4102, 11, 1.0, 1.0, 0, 0, 5.0)],
        slots=[
            SlotRow("oc-1/0", "oc-1", "busy", "bd-aaa.1", "/s/0"),
            SlotRow("oc-1/1", "oc-1", "busy", "bd-aaa.2", "/s/1"),
            SlotRow("oc-1/2", "oc-1", "dirty", "bd-aaa.3", "/s/2"),
            SlotRow("oc-2/0", "oc-2", "free", "", "/t/0"),
        ],
    )
    console = Console(width=200, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(instances_panel(snap))
    lines = console.export_text().splitlines()
    assert any("oc-1" in ln and "2 busy, 1 dirty" in ln for ln in lines), lines
    assert any("oc-2" in ln and "1 free" in ln for ln in lines), lines
