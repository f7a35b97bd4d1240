"""What a bead changed: its diff against the base, the files it touched, its content tree.

Room: git. ``Diffs`` reads a bead's checkout (its own worktree or its slot) and never
writes it: the files uncommitted there, the files changed since the merge-base with the
base branch (committed or not), the diff a merge would bring (``DiffInfo``, the patch cut
at a size), and the tree id of everything in the checkout, which review records so that
merge can refuse work that changed after the review approved it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from swarm_pool.git.results import DiffInfo
from swarm_pool.git.worktrees import Worktrees


class Diffs:
    """Read-only views of the beads' checkouts against their base branches."""

    def __init__(self, worktrees: Worktrees) -> None:
        self.worktrees = worktrees
        self.runner = worktrees.runner
        self.branches = worktrees.branches

    def uncommitted_files(self, target: str | Path) -> list[str]:
        """Tracked changes (staged or not) plus untracked, not ignored, files of a bead's
        checkout or of the checkout at a path."""
        cwd, _ = self.worktrees.resolve(target)
        return self.runner.uncommitted_files(cwd)

    def changed_files(self, target: str | Path, base: str | None = None) -> list[str]:
        """Paths changed since the merge-base with ``base``: committed, uncommitted, new."""
        cwd, bead = self.worktrees.resolve(target)
        if bead:
            base_name = self.branches.base_of(bead, base)
        else:
            base_name = self.runner.check_branch(base or self.runner.default_base())
        run = self.runner.run
        merge_base = run("merge-base", f"refs/heads/{base_name}", "HEAD", cwd=cwd).stdout.strip()
        committed = run(
            "diff", "--name-only", "--no-renames", "-z", merge_base, "HEAD", cwd=cwd
        ).z()
        return sorted({*committed, *self.runner.uncommitted_files(cwd)})

    def content_tree(self, bead_id: str) -> str:
        """The tree id of everything in the bead's worktree, uncommitted and untracked
        (not ignored) files included, computed in a throwaway index: the worktree, its
        index and its refs are left as they are."""
        cwd, _ = self.worktrees.resolve(bead_id)
        with tempfile.TemporaryDirectory(prefix="swarm-pool-tree-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.runner.run("read-tree", "HEAD", cwd=cwd, env=env)
            self.runner.run("add", "--all", cwd=cwd, env=env)
            return self.runner.run("write-tree", cwd=cwd, env=env).stdout.strip()

    def diff(self, bead_id: str, base: str | None = None, *, max_patch: int = 200_000) -> DiffInfo:
        """What merging the bead's branch would bring, plus what is still uncommitted."""
        cwd, _ = self.worktrees.resolve(bead_id)
        base_name = self.branches.base_of(bead_id, base)
        head = self.runner.rev("HEAD", cwd) or ""
        run = self.runner.run
        merge_base = run("merge-base", f"refs/heads/{base_name}", head, cwd=cwd).stdout.strip()
        files = run("diff", "--name-only", "--no-renames", "-z", merge_base, head, cwd=cwd).z()
        stat = run("diff", "--stat", merge_base, head, cwd=cwd).stdout.rstrip()
        patch = run("diff", merge_base, head, cwd=cwd).stdout
        truncated = len(patch) > max_patch
        if truncated:
            patch = patch[:max_patch] + f"\n[... patch truncated at {max_patch} chars]\n"
        return DiffInfo(
            bead_id=bead_id,
            base=base_name,
            merge_base=merge_base,
            head=head,
            files=sorted(files),
            uncommitted=self.runner.uncommitted_files(cwd),
            stat=stat,
            patch=patch,
            truncated=truncated,
        )
