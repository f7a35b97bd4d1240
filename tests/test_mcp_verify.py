"""``swarm_complete``'s verification pieces on their own: real git, real shell."""

from __future__ import annotations

import time
from pathlib import Path

import psutil

from swarm_pool.mcp.verify import CheckCommand, compare, owned_by, run_check, verify
from tests.support import git, init_repo, wait_for


def _repo(root: Path) -> Path:
    return init_repo(root, {"a.txt": "a\n"})


def test_owned_by_uses_the_reservation_glob_dialect() -> None:
    assert owned_by("src/a.py", ["src/*.py"])
    assert not owned_by("src/sub/a.py", ["src/*.py"])
    assert owned_by("src/sub/a.py", ["src/**"])
    assert owned_by("src/sub/a.py", ["src/sub"])  # an owned directory covers its contents
    assert owned_by("docs/b.md", ["src/**", "docs/{a,b}.md"])
    assert not owned_by("docs/c.md", ["src/**", "docs/{a,b}.md"])
    assert not owned_by("x.py", [])


def test_compare_real_claimed_owned() -> None:
    outside, unreported, unchanged = compare(
        ["src/a.py", "src/x.py", "b.txt"], ["src/a.py", "gone.py"], ["src/a.py", "gone.py"]
    )
    assert outside == ["b.txt", "src/x.py"]
    assert unreported == ["b.txt", "src/x.py"]
    assert unchanged == ["gone.py"]


def test_verify_sees_committed_uncommitted_untracked_and_deleted(tmp_path: Path) -> None:
    root = _repo(tmp_path / "r")
    wt = root / ".swarm" / "worktrees" / "bd-abc123.1"
    wt.parent.mkdir(parents=True)
    git(root, "worktree", "add", "-q", "-b", "swarm/bd-abc123.1", str(wt))
    (wt / "committed.txt").write_text("c\n")
    git(wt, "add", "committed.txt")
    git(wt, "commit", "-q", "-m", "c")
    (wt / "a.txt").unlink()
    (wt / "new dir").mkdir()
    (wt / "new dir" / "untracked ü.txt").write_text("u\n")
    # The base moving on after the fork does not count as the worker's change.
    (root / "later.txt").write_text("l\n")
    git(root, "add", "later.txt")
    git(root, "commit", "-q", "-m", "later")
    res = verify(
        worktree=wt,
        project_root=root,
        bead_id="bd-abc123.1",
        base_branch="",
        claimed=["committed.txt", "a.txt"],
        owned=["*.txt"],
        check=CheckCommand("", 10),
    )
    assert res.git_error is None
    assert res.base == "main"
    assert res.changed == ["a.txt", "committed.txt", "new dir/untracked ü.txt"]
    assert res.outside_owned == ["new dir/untracked ü.txt"]
    assert res.unreported == ["new dir/untracked ü.txt"]
    assert res.unchanged == []
    assert res.check is None


def test_run_check_records_exit_code_and_tail(tmp_path: Path) -> None:
    res = run_check("for i in $(seq 1 3000); do echo line-$i; done; exit 2", tmp_path, 30)
    assert res["exit_code"] == 2 and res["passed"] is False and res["timed_out"] is False
    assert res["output_tail"].rstrip().endswith("line-3000")
    assert "line-1\n" not in res["output_tail"]  # only the tail is kept
    ok = run_check("pwd", tmp_path, 30)
    assert ok["passed"] is True and ok["output_tail"].strip() == str(tmp_path)


def test_run_check_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    started = time.monotonic()
    res = run_check(f"sleep 60 & echo $! > {marker}; wait", tmp_path, 0.5)
    assert time.monotonic() - started < 10
    assert res["timed_out"] is True and res["passed"] is False and res["exit_code"] is None
    pid = int(marker.read_text())

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    # SIGKILL went to the whole group; at load the kernel may take a moment to end it.
    wait_for(gone, timeout=5)


def test_verify_without_a_worktree_still_runs_the_check(tmp_path: Path) -> None:
    root = _repo(tmp_path / "r")
    res = verify(
        worktree=None,
        project_root=root,
        bead_id="bd-abc123.1",
        base_branch="",
        claimed=["a.txt"],
        owned=["a.txt"],
        check=CheckCommand("exit 0", 10),
    )
    assert res.git_error == "no worktree to verify"
    assert res.check is not None and res.check["passed"]
    assert res.violations() == []
