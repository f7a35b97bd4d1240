"""What the git room hands back: a worktree, a diff, a merge, a cleanup.

Room: git. Plain frozen dataclasses, so a caller can read them without the modules that
make them (``worktrees.py``, ``diff.py``, ``merge.py``); each prints itself as JSON for
the CLI and the MCP tools (``to_dict``, paths as strings).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast


class _Record:
    def to_dict(self) -> dict[str, Any]:
        # Every subclass is a dataclass, which mypy cannot tell from this base.
        fields = asdict(cast(Any, self))
        return {k: str(v) if isinstance(v, Path) else v for k, v in fields.items()}


@dataclass(frozen=True)
class WorktreeInfo(_Record):
    bead_id: str
    path: Path
    branch: str
    base: str
    head: str
    created: bool = False  # False when an existing worktree was returned
    merged: bool = False  # merged by us and no commits since


@dataclass(frozen=True)
class DiffInfo(_Record):
    """The branch's committed work since its merge-base with the base branch."""

    bead_id: str
    base: str
    merge_base: str
    head: str
    files: list[str]  # committed on the branch since the merge-base (what a merge brings)
    uncommitted: list[str]  # changed or untracked in the worktree, not committed yet
    stat: str
    patch: str
    truncated: bool


@dataclass(frozen=True)
class MergeResult(_Record):
    bead_id: str
    branch: str
    base: str
    commit: str  # the base branch's head after the merge
    previous: str  # the base branch's head before it
    files: list[str]
    up_to_date: bool = False  # nothing to merge; the base was left alone


@dataclass(frozen=True)
class CleanupResult(_Record):
    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # bead -> why it was kept
