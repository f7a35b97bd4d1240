"""Git: the runner, bead branches, worktrees and slots, diff and merge.

Room: git, above the store and OpenCode, below the pool and the swarm; it knows nothing
about instances or the event store. ``Repo`` (``repo.py``) puts the parts together:
``Runner`` (``runner.py``) runs git with the pool's environment under ``GitLock``
(``lock.py``); ``Branches`` (``branches.py``) keeps each bead branch's base and merge
mark; ``Worktrees`` (``worktrees.py``), ``Slots`` (``slots.py``), ``Diffs``
(``diff.py``) and ``Merger`` (``merge.py``) do the work; what they return is in
``results.py``.
"""

from swarm_pool.git.branches import BRANCH_PREFIX, Branches, branch_name
from swarm_pool.git.diff import Diffs
from swarm_pool.git.lock import GitLock
from swarm_pool.git.merge import Merger
from swarm_pool.git.repo import Repo
from swarm_pool.git.results import CleanupResult, DiffInfo, MergeResult, WorktreeInfo
from swarm_pool.git.runner import Runner
from swarm_pool.git.slots import OPENCODE_INSTALL, Slots
from swarm_pool.git.worktrees import Worktrees

__all__ = [
    "BRANCH_PREFIX",
    "OPENCODE_INSTALL",
    "Branches",
    "CleanupResult",
    "DiffInfo",
    "Diffs",
    "GitLock",
    "MergeResult",
    "Merger",
    "Repo",
    "Runner",
    "Slots",
    "WorktreeInfo",
    "Worktrees",
    "branch_name",
]
