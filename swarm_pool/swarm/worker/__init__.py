"""Async workers: the public surface of a worker's life up to its completion.

A worker is spawned without waiting (``spawn``), dispatched by the engine onto an
instance (``dispatch``), failed and retried (``failure``), and unblocked by a human's
answer (``answer``); its prompt spec lives on disk (``spec``). Watching lives in
``watch``/``engine``, the views in ``status``, review and merge in ``review``. This module
re-exports what callers use, so they need not know the split.
"""

from __future__ import annotations

from swarm_pool.swarm.worker.answer import answer
from swarm_pool.swarm.worker.dispatch import dispatch, start_session
from swarm_pool.swarm.worker.failure import fail, retries_used
from swarm_pool.swarm.worker.spawn import (
    IN_FLIGHT_STATUSES,
    LIVE_STATUSES,
    SpawnResult,
    spawn_async,
)
from swarm_pool.swarm.worker.spec import PromptSpec, load_spec, save_spec

__all__ = [
    "IN_FLIGHT_STATUSES",
    "LIVE_STATUSES",
    "PromptSpec",
    "SpawnResult",
    "answer",
    "dispatch",
    "fail",
    "load_spec",
    "retries_used",
    "save_spec",
    "spawn_async",
    "start_session",
]
