"""Warm worktree slots: checkouts kept per instance and moved from bead to bead.

Room: git. ``Slots`` makes a slot (``open``, detached at the base ahead of any bead),
moves it to a bead's branch (``reset``), and removes it (``remove``), never losing
uncommitted work. Which slot holds which bead is the store's record, and the store gives
a slot to one bead at a time; so only the writes to the repository's shared state
(adding or pruning a worktree, the config, deleting the previous bead's branch) hold the
git lock, and a slot's own listing, checks, cleaning and checkout run outside it, where
parallel dispatches do not queue behind each other's git processes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from swarm_pool import faults
from swarm_pool.errors import GitError
from swarm_pool.git.branches import BRANCH_PREFIX, branch_name
from swarm_pool.git.worktrees import WorktreeEntry, Worktrees

# What OpenCode itself writes into a directory's .opencode/ (its own .gitignore, which
# ignores the rest, then a background install of its plugin package), kept by a slot
# reset: removing it while that install still writes left package.json and
# package-lock.json untracked, without the .gitignore, for the next bead to commit.
OPENCODE_INSTALL = (
    "**/.opencode/.gitignore",
    "**/.opencode/node_modules/",
    "**/.opencode/package.json",
    "**/.opencode/package-lock.json",
    "**/.opencode/bun.lock",
)


class Slots:
    """The warm slot checkouts of one project repository."""

    def __init__(self, worktrees: Worktrees) -> None:
        self.worktrees = worktrees
        self.runner = worktrees.runner
        self.branches = worktrees.branches

    def reset(
        self, path: Path, bead_id: str, base: str | None = None, *, keep_ignored: bool = False
    ) -> Path:
        """Put slot ``path`` on branch ``swarm/<bead>``, creating the slot if needed.

        A slot already on the bead's branch is left as it is (a retry continues the
        attempt's work). Otherwise the slot must be clean (DirtyWorktreeError names the
        files: uncommitted work is never reset); it then checks out the bead's branch
        (made from ``base`` if new) and loses everything of the previous bead: tracked
        changes, untracked files and, unless ``keep_ignored``, ignored ones (build
        caches; what OpenCode writes in ``.opencode/``, ``OPENCODE_INSTALL``, stays).
        The previous bead's branch is deleted if it was merged and nothing came after.
        Measured in a wave of 16 warm workers, a reset with all seven of its git
        processes under the lock took 0.3-0.55 s, most of it waiting for the lock: hence
        the lock for the shared writes only.
        """
        branch = branch_name(bead_id)
        path = path.resolve()
        listing, entry = self._registered(path, base)
        if entry is not None and entry.branch == branch:
            return path
        elsewhere = next((w.path for w in listing if w.branch == branch and not w.prunable), None)
        if elsewhere is not None:
            raise GitError(f"branch {branch} is already checked out at {elsewhere}")
        # The project's branch, from the same listing (its first record).
        project_branch = listing[0].branch if listing else None
        if entry is None:
            # Added just now: its own index and files, nothing of a previous bead.
            self._check_out_added(path)
        else:
            self._clean(path, keep_ignored=keep_ignored)
        base_name = self._check_out_branch(path, branch, base, project_branch)
        self._settle(branch, base_name, None if entry is None else entry.branch)
        return path

    def _registered(
        self, path: Path, base: str | None
    ) -> tuple[list[WorktreeEntry], WorktreeEntry | None]:
        """git's listing and the slot's live record in it; the record is None when the
        slot was not there and has just been added (its files not checked out yet)."""
        # The store gives a slot to one bead at a time, so nothing else changes its record
        # in the registry: read without the lock, which only adding or pruning takes (and
        # then reads again under it).
        listing = self.worktrees.entries()
        entry = next((w for w in listing if w.path == path), None)
        if entry is not None and not entry.prunable and path.is_dir():
            return listing, entry
        with self.runner.lock.hold():
            listing = self.worktrees.entries()
            entry = next((w for w in listing if w.path == path), None)
            if entry is not None and (entry.prunable or not path.is_dir()):
                self.runner.run("worktree", "prune")
                entry = None
            if entry is None:
                self._add(path, base)
        return listing, entry

    def _clean(self, path: Path, *, keep_ignored: bool) -> None:
        """Refuse a dirty slot, and remove what is left of the previous bead."""
        self.runner.require_clean(path, f"slot {path}", "not resetting it")
        # What is left of the previous bead is untracked (or ignored) files: cleaned
        # before the checkout, so a clean that fails (OpenCode may still be writing in
        # the directory's .opencode/) leaves the slot on its old branch, not on this
        # bead's branch in a slot the store does not give this bead.
        faults.point("worktree.before_clean")
        keep = [] if keep_ignored else [a for p in OPENCODE_INSTALL for a in ("-e", p)]
        self.runner.run("clean", "-ffdq" if keep_ignored else "-ffdxq", *keep, cwd=path)

    def _check_out_branch(
        self, path: Path, branch: str, base: str | None, project_branch: str | None
    ) -> str | None:
        """Check out ``branch`` in the slot, made from the base if new; the base to record
        for it (None: an existing branch keeps the one it has)."""
        # The checkout writes the slot's own HEAD, index and files, and creates only this
        # bead's branch (git locks that one ref; --no-track keeps the shared config out of
        # it): no lock, so parallel dispatches do not queue behind each other's checkout.
        if self.runner.rev(f"refs/heads/{branch}") is not None:
            # Commits of an earlier attempt survive on the branch: continue from them.
            self.runner.run("checkout", "--force", "--quiet", branch, cwd=path)
            return base
        if base:
            base_name = self.runner.check_branch(base)
        elif project_branch is not None:
            base_name = project_branch
        else:
            raise GitError(
                f"{self.runner.root} has a detached HEAD; name the base branch explicitly"
            )
        args = ("checkout", "--force", "--quiet", "--no-track", "-b", branch, base_name)
        self.runner.run(*args, cwd=path)
        return base_name

    def _settle(self, branch: str, base: str | None, previous: str | None) -> None:
        """Record the branch's base and drop the previous bead's branch if it is merged:
        the shared config and the previous branch's ref, so under the lock."""
        marker = None
        if previous is not None and previous.startswith(BRANCH_PREFIX):
            marker = self.branches.merged_marker(previous)
        with self.runner.lock.hold():
            if base:
                self.branches.set_base(branch, base)
            if previous is not None and marker is not None:
                # Git lets a branch be checked out in one worktree only, and it was here.
                # A branch that cannot be deleted now stays; cleanup tries again.
                with contextlib.suppress(GitError):
                    self.branches.drop_if_merged(previous, marker)

    def open(self, path: Path, base: str | None = None) -> bool:
        """Make slot ``path`` ahead of any bead: detached at ``base`` (default: the
        project's branch), checked out and clean. False, and nothing done, if a worktree
        is there already."""
        path = path.resolve()
        with self.runner.lock.hold():
            if self.worktrees.live(path) is not None:
                return False
            self._add(path, base)
        self._check_out_added(path)
        return True

    def _add(self, path: Path, base: str | None) -> None:
        """Register slot ``path``, detached at ``base``, without its files (under the
        lock: only the registry and the slot's HEAD; its files are checked out outside
        it, as that is most of the time in a big repository, and parallel dispatches
        making new slots would queue behind it)."""
        if path.exists() and any(path.iterdir()):
            raise GitError(f"{path} exists but is not a git worktree; move it away")
        path.parent.mkdir(parents=True, exist_ok=True)
        start = self.runner.check_branch(base) if base else self.runner.default_base()
        self.runner.run("worktree", "add", "--detach", "--no-checkout", str(path), start)

    def _check_out_added(self, path: Path) -> None:
        """Check out the files of a slot ``_add`` registered (outside the lock)."""
        try:
            self.runner.run("reset", "--hard", "--quiet", cwd=path)
        except GitError:
            # Made just now, it holds nobody's work: gone, not left half checked out.
            with contextlib.suppress(GitError), self.runner.lock.hold():
                self.runner.run("worktree", "remove", "--force", str(path))
            raise

    def remove(self, path: Path) -> None:
        """Remove a slot's worktree (its branch stays); DirtyWorktreeError if it holds
        uncommitted work."""
        path = path.resolve()
        with self.runner.lock.hold():
            if self.worktrees.live(path) is None:
                return
            self.runner.require_clean(path, f"slot {path}", "not removing it")
            self.runner.run("worktree", "remove", "--force", str(path))
