"""Capability tokens for the shared MCP server: who may call which tools.

Room: base.

A token is stateless: ``swp1.<role>.<directory, base64url>.<HMAC-SHA256(secret, role NUL
directory), base64url>``. The pool secret lives in the private state file (0600) and in
the MCP server child's environment, never in an instance's or an agent's. A worker token
names a session directory (a worktree, or a reused slot); the server resolves that
directory's current worker from the store on every call, so one token stays valid while
the directory holds bead after bead. A coordinator token names no directory. A worker's
token is written to its worktree's git dir (outside the work tree, so never committed and
never listed by ``git status``), where the per-directory relay reads it; the coordinator
token for sessions in the project root is in ``.swarm/`` (a sandboxed worker sees the
common ``.git`` but not ``.swarm``). Minting runs in the engine, verifying in the MCP
server, reading in the relay's twin, so the module imports only the stdlib, ``errors`` and
``paths``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from swarm_pool.errors import CapabilityError
from swarm_pool.paths import write_private

PREFIX = "swp1"
TOKEN_FILE = "swarm-mcp-token"
# In the project's .swarm/ (private; hidden from a sandboxed worker, unlike .git/), for
# coordinator sessions the pool's instances run in the project root.
COORDINATOR_TOKEN_FILE = "mcp-coordinator-token"
SECRET_ENV = "SWARM_POOL_MCP_SECRET"


class Role(StrEnum):
    WORKER = "worker"
    COORDINATOR = "coordinator"


@dataclass(frozen=True)
class Principal:
    """What a verified token grants: a role and, for a worker, its session directory."""

    role: Role
    directory: Path | None = None


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, role: Role, directory: str) -> bytes:
    msg = f"{role.value}\0{directory}".encode()
    return hmac.new(secret.encode(), msg, hashlib.sha256).digest()


def mint(secret: str, role: Role, directory: Path | None = None) -> str:
    if role is Role.WORKER and directory is None:
        raise ValueError("a worker token needs its directory")
    where = os.path.realpath(directory) if directory is not None else ""
    return ".".join((PREFIX, role.value, _b64(where.encode()), _b64(_mac(secret, role, where))))


def verify(secret: str, token: str) -> Principal:
    """The principal a token grants; CapabilityError if it is malformed or forged."""
    parts = token.strip().split(".")
    if len(parts) != 4 or parts[0] != PREFIX:
        raise CapabilityError("malformed capability token")
    try:
        role = Role(parts[1])
        where = _unb64(parts[2]).decode()
        mac = _unb64(parts[3])
    except (ValueError, binascii.Error, UnicodeDecodeError) as e:
        raise CapabilityError("malformed capability token") from e
    if not hmac.compare_digest(mac, _mac(secret, role, where)):
        raise CapabilityError("capability token refused: not signed by this pool")
    if role is Role.WORKER:
        if not where:
            raise CapabilityError("a worker token must name its directory")
        return Principal(role, Path(where))
    return Principal(role)


def git_dir(worktree: Path) -> Path | None:
    """The git dir of ``worktree`` (``.git`` itself, or where a linked worktree's points)."""
    dot_git = worktree / ".git"
    if dot_git.is_dir():
        return dot_git
    try:
        first = dot_git.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    if not first.startswith("gitdir:"):
        return None
    target = Path(first.removeprefix("gitdir:").strip())
    return target if target.is_absolute() else (worktree / target).resolve()


def _write_private(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except OSError:
        pass
    write_private(path, text)


def write_coordinator_token(secret: str, swarm_dir: Path) -> Path:
    """The coordinator token for sessions in the project root, in ``.swarm/`` (0600)."""
    path = swarm_dir / COORDINATOR_TOKEN_FILE
    _write_private(path, mint(secret, Role.COORDINATOR))
    return path


def write_worker_token(secret: str, worktree: Path) -> Path:
    """Write ``worktree``'s worker token into its git dir (0600); returns the file.

    Idempotent: a directory keeps one token for its whole life (a reused slot too).
    """
    found = git_dir(worktree)
    if found is None:
        raise CapabilityError(f"{worktree} is not a git worktree: nowhere to put its token")
    path = found / TOKEN_FILE
    _write_private(path, mint(secret, Role.WORKER, worktree))
    return path
