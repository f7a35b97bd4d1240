"""The pool's state file ``.swarm/pool.json``: what runs, where, and with which secret.

The supervisor writes it on every change; the CLI, the router, the gateway and the
dashboard read it. It holds the supervisor's pid and ``create_time``, the pool's process
tag, the gateway's own password, the shared MCP server's token secret, the control
socket, and for each child (opencode instances, the scripted model and the gateway) its
port, pid, ``create_time``, password (each instance has its own), state, restarts, start
time, last exit and whether it is draining. It is created with mode 0600 (it holds the
passwords) and replaced atomically (tmp + rename), so a reader never sees half a file.
Readers use ``read_state``. Room: pool. It also owns ``PoolPhase`` (the supervisor's
phase) and ``InstanceState``, the only spelling of a child's state, with the named sets
every caller derives from it (``SERVING``, ``RUNNING``, ``GONE``, ``TROUBLED``) and its
transition table (``check_transition``).

The table (state -> the states a child may move to from it; staying is always allowed):

- ``starting``: ready (the probe answered, or a live child was adopted), backoff, fatal,
  stopped;
- ``ready``: unhealthy, starting (a manual restart), backoff, fatal, stopped;
- ``unhealthy``: ready (healthy again), starting, backoff, fatal, stopped;
- ``backoff``: starting (the delayed relaunch), fatal, stopped;
- ``fatal``: starting (a manual restart), backoff (that restart failed), stopped;
- ``stopped``: nothing (the child's watcher is done).
"""

from __future__ import annotations

import json
import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swarm_pool.errors import IllegalInstanceTransitionError, PoolError
from swarm_pool.pool.process import ProcRef


class InstanceState(StrEnum):
    """A child's state; its value is what pool.json and the CLI's JSON carry."""

    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    BACKOFF = "backoff"
    FATAL = "fatal"
    STOPPED = "stopped"


_S = InstanceState
# Its process answered (an unhealthy one may just be busy): its sessions live on.
SERVING = frozenset({_S.READY, _S.UNHEALTHY})
# Its current run is launched and not given up on (uptime counts).
RUNNING = frozenset({_S.STARTING, *SERVING})
# Its process is gone or being replaced (a new run starting): sessions on it are lost.
GONE = frozenset(InstanceState) - SERVING
# Its record's ``reason`` says what went wrong.
TROUBLED = frozenset({_S.UNHEALTHY, _S.BACKOFF, _S.FATAL})
# Failing, stopping and a manual restart may happen in any state but stopped.
_ANYTIME = frozenset({_S.STARTING, _S.BACKOFF, _S.FATAL, _S.STOPPED})
TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    _S.STARTING: frozenset({_S.READY, _S.BACKOFF, _S.FATAL, _S.STOPPED}),
    _S.READY: _ANYTIME | {_S.UNHEALTHY},
    _S.UNHEALTHY: _ANYTIME | {_S.READY},
    _S.BACKOFF: _ANYTIME,
    _S.FATAL: _ANYTIME,
    _S.STOPPED: frozenset(),
}


def check_transition(old: InstanceState, new: InstanceState) -> None:
    """Raise IllegalInstanceTransitionError unless the table lets ``old`` become ``new``."""
    if old != new and new not in TRANSITIONS[old]:
        raise IllegalInstanceTransitionError(f"an instance cannot go from {old} to {new}")


ChildKind = Literal["opencode", "model", "gateway", "mcp"]


class PoolPhase(StrEnum):
    """Where the supervisor is in its life; its value is what pool.json carries."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


STATE_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ExitInfo(_Model):
    code: int | None = None
    signal: int | None = None
    reason: str = ""
    at: float = Field(default_factory=time.time)


class ErrorInfo(_Model):
    type: str
    message: str


class ChildRecord(_Model):
    name: str
    kind: ChildKind = "opencode"
    port: int | None = None
    pid: int | None = None
    create_time: float | None = None
    state: InstanceState = InstanceState.STARTING
    restarts: int = 0
    started_at: float | None = None  # wall clock of the current run's launch
    ready_at: float | None = None
    last_exit: ExitInfo | None = None
    draining: bool = False
    reason: str = ""  # why it is unhealthy, in backoff or fatal
    # Wall clock of its last sign of life (an answer or an event on its stream).
    last_sign_at: float | None = None
    # Wall clock of its restarts within the supervisor's flap window (for the router).
    restarted_at: list[float] = Field(default_factory=list)
    password: str = ""  # this instance's own HTTP Basic password ("" for the model)

    @property
    def url(self) -> str | None:
        if self.port is None:
            return None
        base = f"http://127.0.0.1:{self.port}"
        if self.kind == "mcp":
            return f"{base}/mcp"
        return f"{base}/v1" if self.kind == "model" else base

    @property
    def ref(self) -> ProcRef | None:
        if self.pid is None or self.create_time is None:
            return None
        return ProcRef(self.pid, self.create_time)


class SupervisorRecord(_Model):
    pid: int
    create_time: float

    @property
    def ref(self) -> ProcRef:
        return ProcRef(self.pid, self.create_time)


class PoolState(_Model):
    version: int = STATE_VERSION
    project_root: str
    phase: PoolPhase = PoolPhase.STARTING
    size: int = 0
    supervisor: SupervisorRecord | None = None
    # The value of POOL_TAG_ENV every process of this pool inherits ("" when unknown).
    tag: str = ""
    sandbox: str = "off"  # the workers' sandbox, as WorkersSection.sandbox_label() says
    # The gateway's own Basic-auth password (user opencode); empty without a gateway.
    gateway_password: str = ""
    # The shared MCP server's capability-token secret (tokens.py); empty without it.
    mcp_secret: str = ""
    socket: str | None = None
    model_url: str | None = None
    instances: list[ChildRecord] = Field(default_factory=list)
    error: ErrorInfo | None = None
    updated_at: float = Field(default_factory=time.time)

    def child(self, name: str) -> ChildRecord | None:
        for rec in self.instances:
            if rec.name == name:
                return rec
        return None

    def supervisor_alive(self) -> bool:
        return self.supervisor is not None and self.supervisor.ref.alive()

    def opencode(self) -> list[ChildRecord]:
        return [rec for rec in self.instances if rec.kind == "opencode"]

    def gateway(self) -> ChildRecord | None:
        return next((rec for rec in self.instances if rec.kind == "gateway"), None)


def read_state(path: Path) -> PoolState | None:
    """The state file's content, or None when there is none; PoolError if unreadable."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PoolError(f"cannot read pool state {path}: {e.strerror}") from e
    try:
        return PoolState.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as e:
        raise PoolError(f"pool state {path} is corrupt: {str(e).splitlines()[0]}") from e


def read_state_quietly(path: Path) -> PoolState | None:
    """The state file's content, or None when it is missing or unreadable (for readers
    that carry on without it: views, status checks)."""
    try:
        return read_state(path)
    except PoolError:
        return None


def write_state(path: Path, state: PoolState) -> None:
    """Replace the state file atomically; the file is 0600 from its first byte."""
    state.updated_at = time.time()
    data = state.model_dump_json(indent=2).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # in case an old tmp file had other bits
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise PoolError(f"cannot write pool state {path}: {e.strerror}") from e


def child_view(rec: ChildRecord, *, now: float | None = None) -> dict[str, Any]:
    """The JSON shape ``status`` prints for one child (live stats filled in by callers)."""
    now = time.time() if now is None else now
    uptime = None
    if rec.started_at is not None and rec.state in RUNNING:
        uptime = round(max(0.0, now - rec.started_at), 1)
    last_sign = None
    if rec.last_sign_at is not None and rec.state in SERVING:
        last_sign = round(max(0.0, now - rec.last_sign_at), 1)
    return {
        "name": rec.name,
        "kind": rec.kind,
        "url": rec.url,
        "port": rec.port,
        "pid": rec.pid,
        "state": rec.state,
        "restarts": rec.restarts,
        "uptime_s": uptime,
        "last_sign_s": last_sign,
        "rss_mb": None,
        "cpu_percent": None,
        "busy_sessions": None,
        "draining": rec.draining,
        "reason": rec.reason,
        "last_exit": rec.last_exit.model_dump() if rec.last_exit else None,
    }


def dump(state: PoolState) -> dict[str, Any]:
    return state.model_dump(mode="json")


# What leaves the supervisor over the control socket: never a password.
SECRET_FIELDS: dict[str, Any] = {
    "gateway_password": True,
    "mcp_secret": True,
    "instances": {"__all__": {"password"}},
}


def public_dump(state: PoolState) -> dict[str, Any]:
    return state.model_dump(mode="json", exclude=SECRET_FIELDS)
