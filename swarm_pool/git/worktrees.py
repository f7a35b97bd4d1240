"""The beads' own worktrees, and git's registry of every worktree.

Room: git. ``Worktrees`` reads ``git worktree list`` (which checkout is where, on which
branch, and which records are stale) and owns the worktrees made for one bead each:
branch ``swarm/<bead>`` checked out in ``.swarm/worktrees/<bead>``, made idempotently (a
retried worker reuses the same checkout), its leftovers committed, removed without ever
losing uncommitted work or unmerged commits, and cleaned up once merged. A bead's
checkout is wherever git has its branch checked out (``locate``): its own worktree, or a
warm slot that ``Slots.reset`` moved to its branch (which slot belongs to which bead is
the store's record). Every write to the repository's shared files holds the git lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from swarm_pool.errors import DirtyWorktreeError, GitError
from swarm_pool.git.branches import BRANCH_PREFIX, Branches, branch_name
from swarm_pool.git.results import CleanupResult, WorktreeInfo
from swarm_pool.git.runner import SWARM_IDENTITY, Runner


@dataclass(frozen=True)
class WorktreeEntry:
    """One record of ``git worktree list``."""

    path: Path
    head: str
    branch: str | None  # "swarm/bd-x", None when detached
    prunable: bool


class Worktrees:
    """The worktrees of one project repository, and the beads' own among them."""

    def __init__(self, runner: Runner, branches: Branches, directory: Path) -> None:
        self.runner = runner
        self.branches = branches
        self.dir = directory.resolve()

    # --- git's registry -----------------------------------------------------------

    def entries(self) -> list[WorktreeEntry]:
        """Every worktree git has registered, the project's own checkout first."""
        out = self.runner.run("worktree", "list", "--porcelain", "-z")
        found: list[WorktreeEntry] = []
        rec: dict[str, str] = {}
        # -z: fields end in NUL, records end in an empty field.
        for item in [*out.stdout.split("\0"), ""]:
            if item:
                key, _, value = item.partition(" ")
                rec[key] = value
                continue
            if "worktree" in rec:
                branch = rec.get("branch")
                found.append(
                    WorktreeEntry(
                        path=Path(rec["worktree"]).resolve(),
                        head=rec.get("HEAD", ""),
                        branch=branch.removeprefix("refs/heads/") if branch else None,
                        prunable="prunable" in rec,
                    )
                )
            rec = {}
        return found

    def find(self, path: Path) -> WorktreeEntry | None:
        resolved = path.resolve()
        return next((w for w in self.entries() if w.path == resolved), None)

    def live(self, path: Path) -> WorktreeEntry | None:
        """The worktree registered at ``path`` if it is really there; a stale
        registration (prunable, or its folder gone) is pruned and None returned."""
        entry = self.find(path)
        if entry is not None and (entry.prunable or not path.is_dir()):
            self.runner.run("worktree", "prune")
            return None
        return entry

    def checkout_of(self, branch: str) -> Path | None:
        """The working tree (main or linked) that has ``branch`` checked out, if any."""
        for w in self.entries():
            if w.branch == branch and not w.prunable:
                return w.path
        return None

    # --- where a bead is ------------------------------------------------------------

    def path_for(self, bead_id: str) -> Path:
        """The bead's own worktree folder (whether it exists or not)."""
        branch_name(bead_id)  # validates the id before it becomes a path
        return self.dir / bead_id

    def locate(self, bead_id: str) -> Path:
        """Where the bead's branch is checked out (a slot, or its own worktree); its own
        worktree's path when it is checked out nowhere."""
        own = self.path_for(bead_id)
        found = self.checkout_of(branch_name(bead_id))
        if found is not None and found != self.runner.root:
            return found
        return own

    def resolve(self, target: str | Path) -> tuple[Path, str | None]:
        """``(checkout, bead)`` for a bead id (GitError when it has no checkout) or a
        path (``bead`` is then None)."""
        if isinstance(target, Path):
            return target.resolve(), None
        path = self.locate(target)
        if not path.is_dir():
            raise GitError(f"no worktree for {target} at {path}")
        return path, target

    # --- a bead's own worktree ------------------------------------------------------

    def create(self, bead_id: str, base: str | None = None) -> WorktreeInfo:
        """Branch ``swarm/<bead>`` from ``base`` in its own worktree; reuse it if it exists."""
        branch = branch_name(bead_id)
        path = self.path_for(bead_id)
        with self.runner.lock.hold():
            entry = self.live(path)
            if entry is not None:
                if entry.branch != branch:
                    raise GitError(f"{path} is a worktree on {entry.branch}, not {branch}")
                return self._info(bead_id, entry, created=False)
            if path.exists():
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
                else:
                    raise GitError(f"{path} exists but is not a git worktree; move it away")
            base_name = self.runner.check_branch(base) if base else self.runner.default_base()
            self.dir.mkdir(parents=True, exist_ok=True)
            if self.runner.rev(f"refs/heads/{branch}") is not None:
                # An earlier worktree was removed but its branch (and commits) survived.
                elsewhere = self.checkout_of(branch)
                if elsewhere is not None:
                    raise GitError(f"branch {branch} is already checked out at {elsewhere}")
                self.runner.run("worktree", "add", str(path), branch)
                if base:
                    self.branches.set_base(branch, base_name)
            else:
                self.runner.run("worktree", "add", "-b", branch, str(path), base_name)
                self.branches.set_base(branch, base_name)
            entry = self.find(path)
            if entry is None:
                raise GitError(f"git worktree add did not register {path}")
            return self._info(bead_id, entry, created=True)

    def get(self, bead_id: str) -> WorktreeInfo | None:
        entry = self.find(self.locate(bead_id))
        if entry is None or entry.prunable:
            return None
        return self._info(bead_id, entry, created=False)

    def list_worktrees(self) -> list[WorktreeInfo]:
        """Every live worktree of ours (a ``swarm/*`` branch under the worktrees dir)."""
        found = []
        for w in self.entries():
            if w.prunable or w.path.parent != self.dir or not w.branch:
                continue
            if w.branch == BRANCH_PREFIX + w.path.name:
                found.append(self._info(w.path.name, w, created=False))
        return found

    def _info(self, bead_id: str, entry: WorktreeEntry, *, created: bool) -> WorktreeInfo:
        branch = branch_name(bead_id)
        return WorktreeInfo(
            bead_id=bead_id,
            path=entry.path,
            branch=branch,
            # Never raises: a listing must survive a base branch that was deleted since.
            base=self.branches.recorded_base(bead_id) or self.runner.current_branch() or "",
            head=self.runner.rev("HEAD", entry.path) or entry.head,
            created=created,
            merged=self.branches.is_merged(branch, self.branches.merged_marker(branch)),
        )

    def head(self, bead_id: str) -> str:
        """The commit checked out in the bead's worktree (the tip of ``swarm/<bead>``)."""
        cwd, _ = self.resolve(bead_id)
        head = self.runner.rev("HEAD", cwd)
        if head is None:
            raise GitError(f"the worktree of {bead_id} has no HEAD")
        return head

    def commit_all(self, bead_id: str, message: str) -> str | None:
        """Commit everything uncommitted in the bead's worktree; None if there was nothing."""
        cwd, _ = self.resolve(bead_id)
        with self.runner.lock.hold():
            self.runner.run("add", "--all", cwd=cwd)
            staged = self.runner.run("diff", "--cached", "--quiet", cwd=cwd, ok=(0, 1))
            if staged.status == 0:
                return None
            # The swarm commits for the worker: its own identity, no hooks or signing,
            # because a hook or a pinentry prompt would stall an unattended run.
            args = ("-c", "commit.gpgsign=false", "commit", "--quiet", "--no-verify")
            self.runner.run(*args, "-m", message, cwd=cwd, env=SWARM_IDENTITY)
            head = self.runner.rev("HEAD", cwd)
            if head is None:
                raise GitError(f"commit in {cwd} left no HEAD")
            return head

    # --- removal --------------------------------------------------------------------

    def remove(self, bead_id: str, *, force: bool = False, delete_branch: bool = True) -> bool:
        """Remove the bead's worktree; DirtyWorktreeError if it holds uncommitted work.

        ``force`` discards uncommitted work. The branch is deleted only when its commits
        are all in its base branch, so committed work is never lost. Returns whether the
        branch was deleted.
        """
        branch = branch_name(bead_id)
        path = self.path_for(bead_id)
        with self.runner.lock.hold():
            entry = self.find(path)
            if entry is not None and not entry.prunable and path.is_dir():
                if not force:
                    self.runner.require_clean(path, f"worktree of {bead_id}", "not removing it")
                args = ["worktree", "remove", *(["--force"] if force else []), str(path)]
                self.runner.run(*args)
            elif entry is not None:
                self.runner.run("worktree", "prune")
            elif path.exists():
                raise GitError(f"{path} is not a registered worktree; not touching it")
            if not delete_branch:
                return False
            return self._delete_if_in_base(bead_id, branch)

    def _delete_if_in_base(self, bead_id: str, branch: str) -> bool:
        """Delete the bead's branch (under the lock) if all its commits are in its base."""
        tip = self.runner.rev(f"refs/heads/{branch}")
        if tip is None or self.checkout_of(branch) is not None:
            # Checked out elsewhere (a slot): git would refuse, and the slot is
            # reset to another branch when it is next taken.
            return False
        base = self.branches.recorded_base(bead_id) or self.runner.current_branch()
        if base is None or self.runner.rev(f"refs/heads/{base}") is None:
            return False
        if not self.runner.is_ancestor(tip, f"refs/heads/{base}"):
            return False
        # -D: we just proved the branch is merged into *its* base, which `-d`
        # (merged into HEAD) cannot see when another branch is checked out.
        self.runner.run("branch", "-D", branch)
        return True

    def cleanup(self) -> CleanupResult:
        """Remove the worktrees (and branches) we merged; keep anything else, saying why."""
        removed: list[str] = []
        kept: dict[str, str] = {}
        with self.runner.lock.hold():
            for info in self.list_worktrees():
                if not info.merged:
                    kept[info.bead_id] = "not merged"
                    continue
                try:
                    self.remove(info.bead_id)
                except DirtyWorktreeError as e:
                    kept[info.bead_id] = f"uncommitted changes: {', '.join(e.files[:10])}"
                    continue
                removed.append(info.bead_id)
        return CleanupResult(removed=removed, kept=kept)
