"""The git room on real git repositories: create, changes, commit, merge, conflicts, removal."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from swarm_pool.errors import DirtyWorktreeError, GitError, MergeConflictError
from swarm_pool.git import Repo, branch_name
from swarm_pool.git.lock import GitLock
from tests.support import git, init_repo

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return init_repo(
        tmp_path / "proj",
        {"README.md": "hello\n", "shared.txt": "line 1\nline 2\n"},
        user="Test User",
        message="initial",
    )


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file of the working tree outside .git and .swarm, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] not in (".git", ".swarm")
    }


def test_create_is_idempotent_and_swarm_dir_is_ignored(repo: Path) -> None:
    wt = Repo(repo)
    info = wt.worktrees.create("bd-abc123.1")
    assert info.created
    assert info.path == repo / ".swarm" / "worktrees" / "bd-abc123.1"
    assert info.branch == "swarm/bd-abc123.1"
    assert info.base == "main"
    assert git(info.path, "symbolic-ref", "--short", "HEAD") == "swarm/bd-abc123.1"
    assert info.head == git(repo, "rev-parse", "main")
    (info.path / "partial.py").write_text("x = 1\n")

    again = Repo(repo).worktrees.create("bd-abc123.1")
    assert not again.created
    assert (again.path, again.branch, again.head) == (info.path, info.branch, info.head)
    assert (again.path / "partial.py").read_text() == "x = 1\n"  # a retry keeps the work
    assert (repo / ".swarm" / ".gitignore").read_text() == "*\n"
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert [i.bead_id for i in wt.worktrees.list_worktrees()] == ["bd-abc123.1"]


def test_changed_files_counts_committed_uncommitted_and_untracked(repo: Path) -> None:
    wt = Repo(repo)
    info = wt.worktrees.create("bd-x.1")
    (info.path / "pkg").mkdir()
    (info.path / "pkg" / "a.py").write_text("a = 1\n")
    git(info.path, "add", "pkg/a.py")
    git(info.path, "commit", "-q", "-m", "worker commit")
    (info.path / "README.md").write_text("changed\n")  # tracked, uncommitted
    (info.path / "pkg" / "new.py").write_text("")  # untracked
    (info.path / "ignored.log").write_text("")
    (info.path / ".gitignore").write_text("*.log\n")  # untracked, ignores ignored.log
    # Work on the base after the fork is not the worker's change.
    (repo / "base_only.txt").write_text("b\n")
    git(repo, "add", "base_only.txt")
    git(repo, "commit", "-q", "-m", "base moves on")

    expected = [".gitignore", "README.md", "pkg/a.py", "pkg/new.py"]
    assert wt.diffs.changed_files("bd-x.1") == expected
    assert wt.diffs.changed_files(info.path, "main") == expected
    assert wt.diffs.uncommitted_files("bd-x.1") == [".gitignore", "README.md", "pkg/new.py"]


def test_commit_all_commits_as_swarm_pool_and_returns_none_when_clean(repo: Path) -> None:
    wt = Repo(repo)
    info = wt.worktrees.create("bd-c.1")
    assert wt.worktrees.commit_all("bd-c.1", "nothing") is None
    (info.path / "out.txt").write_text("done\n")
    (info.path / "README.md").unlink()
    sha = wt.worktrees.commit_all("bd-c.1", "bd-c.1: worker output")
    assert sha == git(info.path, "rev-parse", "HEAD")
    assert git(info.path, "log", "-1", "--format=%an <%ae>|%s") == (
        "swarm-pool <swarm-pool@localhost>|bd-c.1: worker output"
    )
    assert wt.diffs.uncommitted_files("bd-c.1") == []
    diff = wt.diffs.diff("bd-c.1")
    assert diff.files == ["README.md", "out.txt"]
    assert "out.txt" in diff.stat and "+done" in diff.patch
    assert not diff.truncated and diff.uncommitted == []
    assert wt.diffs.diff("bd-c.1", max_patch=10).truncated


def test_parallel_creates_from_threads(repo: Path) -> None:
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        wt = Repo(repo)  # separate objects must exclude each other too
        barrier.wait()
        try:
            wt.worktrees.create(f"bd-t.{i}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    listed = git(repo, "worktree", "list", "--porcelain")
    for i in range(6):
        assert f"branch refs/heads/swarm/bd-t.{i}" in listed
        assert (repo / ".swarm" / "worktrees" / f"bd-t.{i}" / "README.md").exists()


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from swarm_pool.errors import GitError
    from swarm_pool.git import Repo

    root, go, timeout, *beads = sys.argv[1:]
    wt = Repo(Path(root), lock_timeout=float(timeout))
    while not Path(go).exists():  # start together
        time.sleep(0.005)
    try:
        for bead in beads:
            wt.worktrees.create(bead)
    except GitError as e:
        print(e)
        sys.exit(3)
    """
)


def spawn_child(repo: Path, go: Path, timeout: float, *beads: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(repo), str(go), str(timeout), *beads],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_parallel_creates_from_processes(repo: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [spawn_child(repo, go, 60, f"bd-p{i}.1", f"bd-p{i}.2") for i in range(3)]
    go.write_text("")
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    listed = git(repo, "worktree", "list", "--porcelain")
    for i in range(3):
        for j in (1, 2):
            assert f"branch refs/heads/swarm/bd-p{i}.{j}" in listed


def test_git_lock_excludes_another_process(repo: Path, tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.write_text("")
    lock = GitLock(repo / ".swarm" / "git.lock")
    Repo(repo)  # creates .swarm/
    with lock.hold():
        child = spawn_child(repo, go, 0.5, "bd-l.1")
        out = child.communicate(timeout=60)[0]
        assert child.returncode == 3, out
        assert "timed out" in out
    child = spawn_child(repo, go, 30, "bd-l.1")
    assert child.communicate(timeout=60)[0] == ""
    assert child.returncode == 0


def test_merge_updates_base_branch_and_main_working_tree(repo: Path) -> None:
    wt = Repo(repo)
    info = wt.worktrees.create("bd-m.1")
    (info.path / "feature.py").write_text("FEATURE = True\n")
    (repo / "local_note.txt").write_text("user's untracked file\n")  # unrelated: kept
    wt.worktrees.commit_all("bd-m.1", "feature")
    before = git(repo, "rev-parse", "HEAD")

    result = wt.merger.merge("bd-m.1")
    assert result.previous == before
    assert result.files == ["feature.py"]
    assert not result.up_to_date
    assert git(repo, "rev-parse", "HEAD") == result.commit == git(repo, "rev-parse", "main")
    parents = git(repo, "log", "-1", "--format=%P").split()
    assert parents == [before, git(repo, "rev-parse", "swarm/bd-m.1")]
    assert "swarm/bd-m.1" in git(repo, "log", "-1", "--format=%s")
    assert git(repo, "log", "-1", "--format=%an") == "Test User"  # the repo's own identity
    assert (repo / "feature.py").read_text() == "FEATURE = True\n"  # working tree follows
    assert (repo / "local_note.txt").exists()
    assert git(repo, "status", "--porcelain") == "?? local_note.txt"
    assert wt.worktrees.get("bd-m.1") is not None and wt.worktrees.get("bd-m.1").merged  # type: ignore[union-attr]

    again = wt.merger.merge("bd-m.1")
    assert again.up_to_date and again.commit == result.commit


def test_merge_into_branch_not_checked_out(repo: Path) -> None:
    git(repo, "branch", "release")
    wt = Repo(repo)
    info = wt.worktrees.create("bd-r.1", base="release")
    assert info.base == "release"
    (info.path / "r.txt").write_text("r\n")
    wt.worktrees.commit_all("bd-r.1", "r")
    main_before = git(repo, "rev-parse", "main")
    files_before = snapshot(repo)

    result = wt.merger.merge("bd-r.1")  # base remembered from create
    assert result.base == "release"
    assert git(repo, "rev-parse", "release") == result.commit
    assert git(repo, "show", "release:r.txt") == "r"
    assert git(repo, "rev-parse", "main") == main_before
    assert snapshot(repo) == files_before


@pytest.mark.parametrize("merge_tree", [True, False], ids=["merge-tree", "merge-abort"])
def test_merge_conflict_leaves_base_untouched(repo: Path, merge_tree: bool) -> None:
    wt = Repo(repo)
    wt.merger._use_merge_tree = merge_tree  # False exercises the real merge + --abort path
    info = wt.worktrees.create("bd-k.1")
    (info.path / "shared.txt").write_text("worker's line 1\nline 2\n")
    (info.path / "other.txt").write_text("clean\n")
    wt.worktrees.commit_all("bd-k.1", "worker edits shared.txt")
    (repo / "shared.txt").write_text("base's line 1\nline 2\n")
    git(repo, "commit", "-q", "-am", "base edits shared.txt")
    (repo / "README.md").write_text("uncommitted local edit\n")  # not touched by the merge
    (repo / "scratch.txt").write_text("untracked\n")
    head = git(repo, "rev-parse", "HEAD")
    files = snapshot(repo)
    status = git(repo, "status", "--porcelain")

    with pytest.raises(MergeConflictError) as err:
        wt.merger.merge("bd-k.1")
    assert err.value.files == ["shared.txt"]
    assert err.value.branch == "swarm/bd-k.1" and err.value.base == "main"
    assert "shared.txt" in str(err.value)
    assert git(repo, "rev-parse", "HEAD") == head
    assert snapshot(repo) == files
    assert git(repo, "status", "--porcelain") == status
    assert not (repo / ".git" / "MERGE_HEAD").exists()
    assert not wt.worktrees.get("bd-k.1").merged  # type: ignore[union-attr]


def test_merge_refuses_local_changes_the_merge_would_touch(repo: Path) -> None:
    wt = Repo(repo)
    info = wt.worktrees.create("bd-d.1")
    (info.path / "README.md").write_text("worker\n")
    (info.path / "new.txt").write_text("worker\n")
    wt.worktrees.commit_all("bd-d.1", "w")
    (repo / "README.md").write_text("my precious local edit\n")
    (repo / "new.txt").write_text("my untracked file\n")
    head = git(repo, "rev-parse", "HEAD")

    with pytest.raises(DirtyWorktreeError) as err:
        wt.merger.merge("bd-d.1")
    assert err.value.files == ["README.md", "new.txt"]
    assert (repo / "README.md").read_text() == "my precious local edit\n"
    assert (repo / "new.txt").read_text() == "my untracked file\n"
    assert git(repo, "rev-parse", "HEAD") == head


def test_merge_refuses_staged_changes_in_the_base_checkout(repo: Path) -> None:
    wt = Repo(repo)
    info = wt.worktrees.create("bd-s.1")
    (info.path / "feature.txt").write_text("f\n")
    wt.worktrees.commit_all("bd-s.1", "f")
    (repo / "README.md").write_text("staged, unrelated\n")
    git(repo, "add", "README.md")
    head = git(repo, "rev-parse", "HEAD")
    with pytest.raises(DirtyWorktreeError, match="staged") as err:
        wt.merger.merge("bd-s.1")
    assert err.value.files == ["README.md"]
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "status", "--porcelain") == "M  README.md"
    git(repo, "commit", "-q", "-m", "user commits")
    assert wt.merger.merge("bd-s.1").files == ["feature.txt"]
    assert (repo / "feature.txt").exists()


def test_merge_refuses_uncommitted_work_in_the_worktree(repo: Path) -> None:
    wt = Repo(repo)
    info = wt.worktrees.create("bd-u.1")
    (info.path / "late.txt").write_text("not committed\n")
    with pytest.raises(DirtyWorktreeError, match=r"late\.txt"):
        wt.merger.merge("bd-u.1")
    assert git(repo, "rev-parse", "HEAD") == git(repo, "rev-parse", "swarm/bd-u.1")


def test_remove_refuses_dirty_worktree_and_keeps_unmerged_branch(repo: Path) -> None:
    wt = Repo(repo)
    info = wt.worktrees.create("bd-z.1")
    (info.path / "wip.txt").write_text("work in progress\n")
    with pytest.raises(DirtyWorktreeError) as err:
        wt.worktrees.remove("bd-z.1")
    assert err.value.files == ["wip.txt"]
    assert (info.path / "wip.txt").read_text() == "work in progress\n"

    wt.worktrees.commit_all("bd-z.1", "wip")
    assert wt.worktrees.remove("bd-z.1") is False  # unmerged branch kept: no commit is lost
    assert not info.path.exists()
    assert git(repo, "show", "swarm/bd-z.1:wip.txt") == "work in progress"
    # A later create reuses the surviving branch and its commits.
    again = wt.worktrees.create("bd-z.1")
    assert again.created and (again.path / "wip.txt").exists()

    (again.path / "README.md").write_text("dirty\n")
    assert wt.worktrees.remove("bd-z.1", force=True) is False
    assert not again.path.exists()


def test_cleanup_removes_only_merged_clean_worktrees(repo: Path) -> None:
    wt = Repo(repo)
    for bead in ("bd-e.1", "bd-e.2", "bd-e.3"):
        info = wt.worktrees.create(bead)
        (info.path / f"{bead}.txt").write_text(bead)
    wt.worktrees.commit_all("bd-e.1", "one")
    wt.merger.merge("bd-e.1")
    wt.worktrees.commit_all("bd-e.3", "three")
    wt.merger.merge("bd-e.3")
    (repo / ".swarm" / "worktrees" / "bd-e.3" / "after.txt").write_text("late\n")
    wt.worktrees.create("bd-e.4")  # fresh, no commits: "merged" in git terms, but not by us

    result = wt.worktrees.cleanup()
    assert result.removed == ["bd-e.1"]
    assert result.kept["bd-e.2"] == "not merged"
    assert result.kept["bd-e.3"].startswith("uncommitted changes: after.txt")
    assert result.kept["bd-e.4"] == "not merged"
    assert not (repo / ".swarm" / "worktrees" / "bd-e.1").exists()
    assert git(repo, "branch", "--list", "swarm/bd-e.1") == ""
    assert (repo / "bd-e.1.txt").exists()


def test_bad_inputs_raise_git_errors(repo: Path, tmp_path: Path) -> None:
    wt = Repo(repo)
    for bad in ("../x", "a/b", "bd..1", "", "x.lock", ".hidden"):
        with pytest.raises(GitError):
            branch_name(bad)
        with pytest.raises(GitError):
            wt.worktrees.create(bad)
    with pytest.raises(GitError, match="does not exist"):
        wt.worktrees.create("bd-n.1", base="nope")
    with pytest.raises(GitError, match="no worktree"):
        wt.diffs.changed_files("bd-none.1")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(GitError, match="not a git repository"):
        Repo(tmp_path / "elsewhere")
    with pytest.raises(GitError, match="top-level"):
        Repo(repo / ".swarm")
    git(repo, "checkout", "-q", "--detach")
    with pytest.raises(GitError, match="detached HEAD"):
        wt.worktrees.create("bd-n.2")
