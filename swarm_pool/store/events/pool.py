"""The pool events: the pool's and its instances' lifecycle events (started,
ready, unhealthy, exited, restarted, fatal, stopped, resource samples) and
``RestartCause``.

Room: store.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field

from swarm_pool.store.events.base import BaseEvent


class PoolStarted(BaseEvent):
    type: Literal["pool_started"] = "pool_started"
    supervisor_pid: int
    size: int


class PoolStopped(BaseEvent):
    type: Literal["pool_stopped"] = "pool_stopped"
    supervisor_pid: int
    reason: str = ""


class InstanceEvent(BaseEvent):
    instance: str
    pid: int | None = None
    port: int | None = None


class InstanceStarted(InstanceEvent):
    type: Literal["instance_started"] = "instance_started"


class InstanceReady(InstanceEvent):
    type: Literal["instance_ready"] = "instance_ready"
    startup_ms: int | None = None


class InstanceUnhealthy(InstanceEvent):
    type: Literal["instance_unhealthy"] = "instance_unhealthy"
    reason: str = ""


class InstanceExited(InstanceEvent):
    type: Literal["instance_exited"] = "instance_exited"
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""


class RestartCause(StrEnum):
    """Why the supervisor restarted an instance (``instance_restarted.cause``)."""

    EXITED = "exited"  # the process died
    UNHEALTHY = "unhealthy"  # no answer and no event for the no-progress window
    MEMORY = "memory"  # over supervisor.max_rss_mb
    START_TIMEOUT = "start_timeout"  # never became ready
    ERROR = "error"  # the supervisor could not check or launch it
    MANUAL = "manual"  # `swarm-pool restart`


class InstanceRestarted(InstanceEvent):
    type: Literal["instance_restarted"] = "instance_restarted"
    restarts: int = 0
    reason: str = ""
    cause: RestartCause | None = None
    backoff_s: float = 0.0


class InstanceFatal(InstanceEvent):
    type: Literal["instance_fatal"] = "instance_fatal"
    reason: str = ""


class InstanceStopped(InstanceEvent):
    type: Literal["instance_stopped"] = "instance_stopped"


class InstanceStats(InstanceEvent):
    """A resource sample of an instance's process tree, kept for ``metrics`` (peak RSS,
    mean CPU across restarts)."""

    type: Literal["instance_stats"] = "instance_stats"
    rss_mb: float = Field(ge=0)
    cpu_percent: float | None = Field(None, ge=0)
