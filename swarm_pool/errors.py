"""Every error swarm-pool raises on purpose, in one hierarchy.

Room: base (the bottom: imports nothing of the package). Core modules raise these; only
the edges (``cli/``, ``mcp/``) turn them into messages, exit codes or tool errors.
Foreign errors are mapped at the boundary with ``raise Ours(...) from e``.

    SwarmPoolError
    ├── ConfigError                 bad config file, key, value or env override
    ├── BinaryNotFoundError         no opencode binary anywhere we look
    ├── OpenCodeVersionError        a binary of neither OpenCode line, or not the one asked
    ├── ProjectError                project dir missing / unwritable
    ├── PortError
    │   ├── PortsExhaustedError     no free port left in the configured range
    │   └── PortInUseError          a port was taken between allocation and bind
    ├── ProcessError                a child could not be launched or stopped
    ├── SandboxError                workers.sandbox is on but bubblewrap is missing/broken
    ├── InstanceError
    │   ├── InstanceStartError      an instance never became ready
    │   └── IllegalInstanceTransitionError  the instance state table forbids a move (a bug)
    ├── PoolError
    │   ├── PoolAlreadyRunningError
    │   ├── PoolNotRunningError
    │   │   ├── EngineNotRunningError  the pool runs, its worker engine does not
    │   │   └── SupervisorLostError    `run`'s supervisor died and none came back in time
    │   ├── EngineStartError        the worker engine cannot start (the daemon exits)
    │   └── UnknownInstanceError
    ├── OpenCodeError               an OpenCode HTTP call failed or answered badly
    │   ├── OpenCodeNotSentError    never reached the server (connect refused, pool slot
    │   │                           gone): nothing happened, another instance may take it
    │   ├── OpenCodeUnknownOutcomeError  sent, then no answer (read timeout, cut off):
    │   │                           it may have happened; look before acting again
    │   └── OpenCodeStatusError     the server answered with an error status
    ├── GatewayError                the gateway cannot serve a request
    │   └── InstanceUnavailableError  the instance it needs is not ready: retry later
    ├── StoreError
    │   ├── StoreUnavailableError   the store's server cannot be reached (retry later)
    │   ├── StoreCorruptError       the store file is damaged (not a database, truncated)
    │   ├── MigrationError
    │   ├── EventValidationError    unknown type / missing or bad field
    │   ├── NotFoundError           unknown epic, cell, message or reservation
    │   │   └── TranscriptNotFoundError  no transcript saved for that bead (or attempt)
    │   ├── WorkerStateError        a worker event the lifecycle refuses (nothing written)
    │   │   ├── IllegalTransitionError  the transition table forbids it
    │   │   └── VersionConflictError    the bead changed since the caller read it
    │   └── SlotConflictError       a worktree slot changed since the caller read it (or is
    │                               busy with another bead): read the slots again
    ├── HiveError                   cycle, unknown dependency, bad id
    ├── ReservationError
    │   └── PathEscapeError         a path or pattern leaves the project
    ├── MailError
    ├── GitError
    │   ├── DirtyWorktreeError      refusing to remove uncommitted work
    │   ├── MergeConflictError
    │   └── RemoteMovedError        the shared remote's base moved during a merge (push
    │                               refused): fetch and merge again
    ├── WorkerError
    │   ├── DependencyBlockedError
    │   ├── DuplicateSpawnError
    │   └── ReviewRequiredError     merge refused: no approving review of the branch head
    ├── CapabilityError             an MCP capability token is missing, malformed or forged
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


class OpenCodeVersionError(SwarmPoolError):
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


class SandboxError(SwarmPoolError):
    pass


class InstanceError(SwarmPoolError):
    pass


class InstanceStartError(InstanceError):
    pass


class IllegalInstanceTransitionError(InstanceError):
    pass


class PoolError(SwarmPoolError):
    pass


class PoolAlreadyRunningError(PoolError):
    pass


class PoolNotRunningError(PoolError):
    pass


class EngineNotRunningError(PoolNotRunningError):
    """The pool runs but its worker engine does not: queued work would never start."""


class SupervisorLostError(PoolNotRunningError):
    """``run``'s supervisor died and no supervisor served the pool again in time."""


class EngineStartError(PoolError):
    """The worker engine cannot start, so the daemon refuses to run the pool."""


class UnknownInstanceError(PoolError):
    pass


class OpenCodeError(SwarmPoolError):
    pass


class OpenCodeNotSentError(OpenCodeError):
    """The request never reached the server (httpx's ConnectError and kin)."""


class OpenCodeUnknownOutcomeError(OpenCodeError):
    """The request was sent but no answer came back (httpx's ReadTimeout and kin)."""


class OpenCodeStatusError(OpenCodeError):
    """The server answered with an error status (httpx's HTTPStatusError)."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class GatewayError(SwarmPoolError):
    pass


class InstanceUnavailableError(GatewayError):
    """The instance a request must go to is restarting (or none is ready): the caller
    should retry after ``retry_after_s``."""

    def __init__(self, message: str, *, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class StoreError(SwarmPoolError):
    pass


class StoreUnavailableError(StoreError):
    """The store's database server refused or dropped the connection: nothing was
    written by the call that raised this, unless it was a commit whose answer was lost."""


class StoreCorruptError(StoreError):
    """The store file is not a database or is damaged; nothing can use it as it is."""


class MigrationError(StoreError):
    pass


class EventValidationError(StoreError):
    pass


class NotFoundError(StoreError):
    pass


class WorkerStateError(StoreError):
    """A worker event refused by the lifecycle; its whole transaction wrote nothing."""

    def __init__(self, message: str, *, bead_id: str) -> None:
        super().__init__(message)
        self.bead_id = bead_id


class IllegalTransitionError(WorkerStateError):
    """The transition table forbids this event in the worker's current status."""

    def __init__(self, message: str, *, bead_id: str, current: str | None, event_type: str) -> None:
        super().__init__(message, bead_id=bead_id)
        self.current = current
        self.event_type = event_type


class VersionConflictError(WorkerStateError):
    """The bead's worker changed since the caller read it: re-read and decide again
    (eventsourcing's RecordConflictError)."""

    def __init__(self, message: str, *, bead_id: str, expected: int, actual: int) -> None:
        super().__init__(message, bead_id=bead_id)
        self.expected = expected
        self.actual = actual


class SlotConflictError(StoreError):
    """Another process took (or changed) the worktree slot since it was read: read the
    slots again and pick another."""

    def __init__(self, message: str, *, slot: str) -> None:
        super().__init__(message)
        self.slot = slot


class TranscriptNotFoundError(NotFoundError):
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


class RemoteMovedError(GitError):
    """The shared remote's base branch moved while we merged (the push was refused); our
    merge stays local only. Merging again fetches the new base first."""


class WorkerError(SwarmPoolError):
    pass


class DependencyBlockedError(WorkerError):
    """A dependency of the bead is not closed yet; ``blocked_by`` lists them."""

    def __init__(self, message: str, *, blocked_by: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.blocked_by = list(blocked_by)


class DuplicateSpawnError(WorkerError):
    pass


class ReviewRequiredError(WorkerError):
    """A merge was refused: no approving ``review_completed`` for the branch's head."""


class PlanError(SwarmPoolError):
    pass


class ScriptError(SwarmPoolError):
    pass


class CapabilityError(SwarmPoolError):
    """An MCP capability token is missing, malformed or not signed by this pool."""
