"""Every error swarm-pool raises on purpose, in one hierarchy.

Core modules raise these; only the edges (``cli.py``, ``mcp_server.py``) turn them into
messages, exit codes or tool errors. Foreign errors are mapped at the boundary with
``raise Ours(...) from e``.

    SwarmPoolError
    ├── ConfigError                 bad config file, key, value or env override
    ├── BinaryNotFoundError         no opencode binary anywhere we look
    ├── ProjectError                project dir missing / unwritable
    ├── PortError
    │   ├── PortsExhaustedError     no free port left in the configured range
    │   └── PortInUseError          a port was taken between allocation and bind
    ├── ProcessError                a child could not be launched or stopped
    ├── InstanceError
    │   └── InstanceStartError      an instance never became ready
    ├── PoolError
    │   ├── PoolAlreadyRunningError
    │   ├── PoolNotRunningError
    │   └── UnknownInstanceError
    ├── OpenCodeError               an OpenCode HTTP call failed or answered badly
    ├── StoreError
    │   ├── StoreUnavailableError   the store's server cannot be reached (retry later)
    │   ├── MigrationError
    │   ├── EventValidationError    unknown type / missing or bad field
    │   └── NotFoundError           unknown epic, cell, message or reservation
    ├── HiveError                   cycle, unknown dependency, bad id
    ├── ReservationError
    │   └── PathEscapeError         a path or pattern leaves the project
    ├── MailError
    ├── GitError
    │   ├── DirtyWorktreeError      refusing to remove uncommitted work
    │   └── MergeConflictError
    ├── WorkerError
    │   ├── DependencyBlockedError
    │   └── DuplicateSpawnError
    ├── PlanError                   bad plan file
    └── ScriptError                 bad scripted-model script
"""

from __future__ import annotations

from collections.abc import Sequence


class SwarmPoolError(Exception):
    """Base class of every error swarm-pool raises on purpose."""


class ConfigError(SwarmPoolError):
    pass


class BinaryNotFoundError(SwarmPoolError):
    pass


class ProjectError(SwarmPoolError):
    pass


class PortError(SwarmPoolError):
    pass


class PortsExhaustedError(PortError):
    pass


class PortInUseError(PortError):
    pass


class ProcessError(SwarmPoolError):
    pass


class InstanceError(SwarmPoolError):
    pass


class InstanceStartError(InstanceError):
    pass


class PoolError(SwarmPoolError):
    pass


class PoolAlreadyRunningError(PoolError):
    pass


class PoolNotRunningError(PoolError):
    pass


class UnknownInstanceError(PoolError):
    pass


class OpenCodeError(SwarmPoolError):
    pass


class StoreError(SwarmPoolError):
    pass


class StoreUnavailableError(StoreError):
    """The store's database server refused or dropped the connection: nothing was
    written by the call that raised this, unless it was a commit whose answer was lost."""


class MigrationError(StoreError):
    pass


class EventValidationError(StoreError):
    pass


class NotFoundError(StoreError):
    pass


class HiveError(SwarmPoolError):
    pass


class ReservationError(SwarmPoolError):
    pass


class PathEscapeError(ReservationError):
    pass


class MailError(SwarmPoolError):
    pass


class GitError(SwarmPoolError):
    pass


class DirtyWorktreeError(GitError):
    """Refused because uncommitted work would be lost; ``files`` lists it."""

    def __init__(self, message: str, *, files: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.files = list(files)


class MergeConflictError(GitError):
    """A merge would conflict; it was aborted and ``files`` lists the conflicting paths."""

    def __init__(
        self, message: str, *, files: Sequence[str] = (), branch: str = "", base: str = ""
    ) -> None:
        super().__init__(message)
        self.files = list(files)
        self.branch = branch
        self.base = base


class WorkerError(SwarmPoolError):
    pass


class DependencyBlockedError(WorkerError):
    """A dependency of the bead is not closed yet; ``blocked_by`` lists them."""

    def __init__(self, message: str, *, blocked_by: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.blocked_by = list(blocked_by)


class DuplicateSpawnError(WorkerError):
    pass


class PlanError(SwarmPoolError):
    pass


class ScriptError(SwarmPoolError):
    pass
