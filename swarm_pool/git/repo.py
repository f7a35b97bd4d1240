"""The project's repository as the swarm uses it: one runner and the parts built on it.

Room: git. ``Repo`` is where the git room is put together, and only that: one ``Runner``
(with its lock) shared by ``branches`` (bases and merge marks), ``worktrees`` (git's
registry and the beads' own worktrees), ``slots`` (warm checkouts), ``diffs`` (what a
bead changed) and ``merger`` (the merge into the base). Callers reach the part they need,
e.g. ``repo.merger.merge(bead)``; git commands of their own go through ``repo.runner``.
"""

from __future__ import annotations

from pathlib import Path

from swarm_pool.git.branches import Branches
from swarm_pool.git.diff import Diffs
from swarm_pool.git.merge import Merger
from swarm_pool.git.runner import Runner
from swarm_pool.git.slots import Slots
from swarm_pool.git.worktrees import Worktrees
from swarm_pool.paths import ProjectPaths


class Repo:
    """One project repository (its top-level folder) and the swarm's git parts on it."""

    def __init__(
        self,
        project_root: Path,
        worktrees_dir: Path | None = None,
        *,
        lock_timeout: float = 120.0,
        command_timeout: float = 300.0,
    ) -> None:
        self.runner = Runner(
            project_root, lock_timeout=lock_timeout, command_timeout=command_timeout
        )
        self.branches = Branches(self.runner)
        self.worktrees = Worktrees(
            self.runner, self.branches, worktrees_dir or self.runner.paths.worktrees_dir
        )
        self.slots = Slots(self.worktrees)
        self.diffs = Diffs(self.worktrees)
        self.merger = Merger(self.worktrees)

    @classmethod
    def for_project(cls, paths: ProjectPaths) -> Repo:
        """The repository of a project, its bead worktrees where the project keeps them."""
        return cls(paths.root, paths.worktrees_dir)
