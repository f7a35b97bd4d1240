"""A bead's branch: its name, its base, and the mark that we merged it.

Room: git. A bead's work lives on branch ``swarm/<bead>`` (``branch_name`` checks that the
id is usable as a path and a ref). ``Branches`` keeps what a branch needs beyond its
commits in the repository config, so a merge or a cleanup needs no other state: the base
it was made from (``branch.swarm/<bead>.swarmbase``) and the commit we merged it at
(``branch.swarm/<bead>.swarmmerged``). A branch whose tip is still that commit is merged
and nothing came after, so deleting it loses no work.
"""

from __future__ import annotations

import re

from swarm_pool.errors import GitError
from swarm_pool.git.runner import Runner

BRANCH_PREFIX = "swarm/"
_BASE_KEY = "swarmbase"
_MERGED_KEY = "swarmmerged"
_BEAD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def branch_name(bead_id: str) -> str:
    """The branch of a bead's worktree; GitError if the id is unusable as a path or ref."""
    if not _BEAD_RE.match(bead_id) or ".." in bead_id or bead_id.endswith((".", ".lock")):
        raise GitError(f"bad bead id for a worktree: {bead_id!r}")
    return BRANCH_PREFIX + bead_id


class Branches:
    """The bases and merge marks of the beads' branches, kept in the repository config."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def recorded_base(self, bead_id: str) -> str | None:
        """The base recorded when the bead's branch was made, if any."""
        return self.runner.config_get(f"branch.{branch_name(bead_id)}.{_BASE_KEY}")

    def set_base(self, branch: str, base: str) -> None:
        """Record ``branch``'s base (the caller holds the git lock)."""
        self.runner.config_set(f"branch.{branch}.{_BASE_KEY}", base)

    def base_of(self, bead_id: str, base: str | None = None) -> str:
        """``base`` if given, else the base recorded at create, else the project's branch."""
        if base:
            return self.runner.check_branch(base)
        return self.runner.check_branch(self.recorded_base(bead_id) or self.runner.default_base())

    def merged_marker(self, branch: str) -> str | None:
        """The commit we merged ``branch`` at, if we did."""
        return self.runner.config_get(f"branch.{branch}.{_MERGED_KEY}")

    def mark_merged(self, branch: str, tip: str) -> None:
        """Record that ``branch`` was merged at ``tip`` (the caller holds the git lock)."""
        self.runner.config_set(f"branch.{branch}.{_MERGED_KEY}", tip)

    def is_merged(self, branch: str, marker: str | None) -> bool:
        """Whether ``branch`` is still at its merge ``marker``: merged, nothing after."""
        return marker is not None and self.runner.rev(f"refs/heads/{branch}") == marker

    def drop_if_merged(self, branch: str, marker: str | None = None) -> bool:
        """Delete ``branch`` (checked out nowhere; under the lock) if we merged it and
        nothing came after: committed work is never lost. ``marker``: its merge marker,
        if the caller read it already."""
        if marker is None:
            marker = self.merged_marker(branch)
        if not self.is_merged(branch, marker):
            return False
        self.runner.run("branch", "-D", branch)
        return True
