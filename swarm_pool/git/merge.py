"""Merging a bead's branch into its base, three ways, under the git lock.

Room: git. ``Merger.merge`` brings ``swarm/<bead>`` into its base branch with a
``--no-ff`` merge commit and marks the branch merged. Where the base is checked out (the
project's own checkout, usually) it runs ``git merge`` there, so the files follow, and
refuses local changes the merge would touch; where it is checked out nowhere it merges in
memory (``git merge-tree --write-tree``, git >= 2.38) and moves the base ref with a
compare-and-swap; a branch already in its base is only marked. A conflict changes
nothing (the in-memory merge finds it before any checkout is touched, a real merge is
aborted) and raises ``MergeConflictError`` naming the files.
"""

from __future__ import annotations

from pathlib import Path

from swarm_pool.errors import DirtyWorktreeError, GitError, MergeConflictError
from swarm_pool.git.branches import branch_name
from swarm_pool.git.results import MergeResult
from swarm_pool.git.runner import last_line
from swarm_pool.git.worktrees import Worktrees

# `git merge-tree --write-tree` (a merge without touching any working tree) needs 2.38.
_MERGE_TREE_VERSION = (2, 38)


def _conflict(branch: str, base: str, files: list[str]) -> MergeConflictError:
    return MergeConflictError(
        f"merging {branch} into {base} conflicts in: {', '.join(files)}",
        files=files,
        branch=branch,
        base=base,
    )


class Merger:
    """Merges the beads' branches into their bases."""

    def __init__(self, worktrees: Worktrees) -> None:
        self.worktrees = worktrees
        self.runner = worktrees.runner
        self.branches = worktrees.branches
        self._use_merge_tree: bool | None = None

    def merge(
        self,
        bead_id: str,
        base: str | None = None,
        *,
        message: str | None = None,
        require_clean: bool = True,
    ) -> MergeResult:
        """Merge ``swarm/<bead>`` into its base (--no-ff) under the git lock.

        On a conflict nothing is changed (HEAD, index and files of the base's checkout
        stay as they were) and MergeConflictError names the conflicting files. With
        ``require_clean`` uncommitted work in the bead's worktree is refused
        (DirtyWorktreeError) rather than silently left behind.
        """
        branch = branch_name(bead_id)
        run = self.runner.run
        with self.runner.lock.hold():
            base_name = self.branches.base_of(bead_id, base)
            tip = self.runner.rev(f"refs/heads/{branch}")
            if tip is None:
                raise GitError(f"branch {branch} does not exist")
            path = self.worktrees.locate(bead_id)
            if require_clean and path.is_dir() and self.worktrees.find(path) is not None:
                refusal = "commit them before merging"
                self.runner.require_clean(path, f"worktree of {bead_id}", refusal)
            previous = self.runner.rev(f"refs/heads/{base_name}") or ""
            if self.runner.is_ancestor(tip, previous):
                # Nothing to bring in; still mark it done, so cleanup may remove it.
                self.branches.mark_merged(branch, tip)
                return MergeResult(bead_id, branch, base_name, previous, previous, [], True)
            merge_base = run("merge-base", previous, tip).stdout.strip()
            files = sorted(run("diff", "--name-only", "--no-renames", "-z", merge_base, tip).z())
            text = message or f"Merge {branch} into {base_name} (swarm-pool bead {bead_id})"
            tree: str | None = None
            if self._merge_tree_supported():
                tree = self._merge_tree(branch, base_name, previous, tip)
            checkout = self.worktrees.checkout_of(base_name)
            if checkout is not None:
                commit = self._merge_in_checkout(checkout, branch, base_name, files, text)
            elif tree is not None:
                commit = self._merge_detached(tree, base_name, previous, tip, text)
            else:
                raise GitError(
                    f"base branch {base_name} is not checked out anywhere, and merging "
                    f"without a checkout needs git >= 2.38 (found {self.runner.version()})"
                )
            self.branches.mark_merged(branch, tip)
            return MergeResult(bead_id, branch, base_name, commit, previous, files)

    def _merge_tree_supported(self) -> bool:
        if self._use_merge_tree is None:
            self._use_merge_tree = self.runner.version()[:2] >= _MERGE_TREE_VERSION
        return self._use_merge_tree

    def _merge_tree(self, branch: str, base: str, previous: str, tip: str) -> str:
        """Merge in memory only; the resulting tree, or MergeConflictError."""
        out = self.runner.run(
            "merge-tree",
            "--write-tree",
            "--name-only",
            "--no-messages",
            previous,
            tip,
            ok=(0, 1),
        )
        lines = out.stdout.split("\n")
        if out.status == 1:
            raise _conflict(branch, base, sorted({ln for ln in lines[1:] if ln.strip()}))
        return lines[0].strip()

    def _merge_in_checkout(
        self, checkout: Path, branch: str, base: str, files: list[str], message: str
    ) -> str:
        """``git merge`` where the base is checked out, so its files follow the branch."""
        self._require_mergeable(checkout, branch, files)
        out = self.runner.run(
            "merge",
            "--no-ff",
            "--no-verify",
            "--no-edit",
            "-m",
            message,
            branch,
            cwd=checkout,
            ok=(0, 1, 2, 128),
            env=self.runner.identity_env(checkout),
        )
        if out.status != 0:
            conflicts = self.runner.run(
                "diff", "--name-only", "--diff-filter=U", "-z", cwd=checkout, ok=(0, 1, 128)
            ).z()
            if self.runner.rev("MERGE_HEAD", checkout) is not None:
                self.runner.run("merge", "--abort", cwd=checkout)
            if conflicts:
                raise _conflict(branch, base, sorted(conflicts))
            detail = last_line(out.stderr) or last_line(out.stdout)
            raise GitError(f"git merge of {branch} into {base} failed in {checkout}: {detail}")
        head = self.runner.rev("HEAD", checkout)
        if head is None:
            raise GitError(f"merge in {checkout} left no HEAD")
        return head

    def _require_mergeable(self, checkout: Path, branch: str, files: list[str]) -> None:
        """GitError or DirtyWorktreeError unless ``git merge`` may run in ``checkout``
        without touching anybody's uncommitted work."""
        if self.runner.rev("MERGE_HEAD", checkout) is not None:
            raise GitError(f"{checkout} is in the middle of a merge; finish or abort it first")
        # git merge refuses any staged change (even to an unrelated file), with a message
        # that blames the wrong files; say what is wrong instead.
        staged = self.runner.run(
            "diff", "--cached", "--name-only", "--no-renames", "-z", cwd=checkout
        ).z()
        if staged:
            raise DirtyWorktreeError(
                f"{checkout} has staged, uncommitted changes ({', '.join(sorted(staged)[:10])}); "
                f"commit or unstage them before merging {branch}",
                files=sorted(staged),
            )
        touched = sorted(set(self.runner.uncommitted_files(checkout)) & set(files))
        if touched:
            raise DirtyWorktreeError(
                f"{checkout} has local changes to files the merge of {branch} would touch "
                f"({', '.join(touched[:10])}); commit or move them first",
                files=touched,
            )

    def _merge_detached(self, tree: str, base: str, previous: str, tip: str, message: str) -> str:
        """Commit the merged tree and move the (not checked out) base ref atomically."""
        commit = self.runner.run(
            "commit-tree",
            tree,
            "-p",
            previous,
            "-p",
            tip,
            "-m",
            message,
            env=self.runner.identity_env(self.runner.root),
        ).stdout.strip()
        # The old value makes update-ref a compare-and-swap against anything outside us.
        ref = f"refs/heads/{base}"
        self.runner.run("update-ref", "-m", message, ref, commit, previous)
        return commit
