"""The review events: review and merge outcomes (review completed, worktree
merged, merge conflict).

Room: store.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from swarm_pool.store.events.base import BaseEvent


class ReviewCompleted(BaseEvent):
    type: Literal["review_completed"] = "review_completed"
    bead_id: str
    epic_id: str
    approved: bool
    files_touched: list[str] = Field(default_factory=list)
    outside_owned: list[str] = Field(default_factory=list)
    diffstat: str = ""
    verification: dict[str, Any] | None = None
    notes: str = ""
    # What was reviewed: the branch's head commit and the tree of the worktree's whole
    # content (uncommitted work included). A merge needs an approving review of both.
    head_commit: str = ""
    tree: str = ""


class WorktreeMerged(BaseEvent):
    type: Literal["worktree_merged"] = "worktree_merged"
    bead_id: str
    epic_id: str
    branch: str
    base_branch: str
    commit: str


class MergeConflict(BaseEvent):
    type: Literal["merge_conflict"] = "merge_conflict"
    bead_id: str
    epic_id: str
    branch: str
    base_branch: str
    files: list[str] = Field(default_factory=list)
