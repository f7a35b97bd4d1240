"""The public surface of a worker's life, from spawn to its end.

Room: swarm.worker.

A worker is spawned without waiting (``spawn``), dispatched by the engine onto an
instance (``dispatch``), in a warm slot (``checkout``) or its own worktree, failed and
retried (``failure``), unblocked by a human's answer (``answer``), reviewed and merged
(``review``); what ends its work is one bundle of events (``finish``), and its prompt
spec lives on disk (``spec``). This module re-exports what callers use, so they need
not know the split; the status sets are ``store.lifecycle``'s, not re-exported here.
"""

from __future__ import annotations

from swarm_pool.swarm.worker.answer import answer
from swarm_pool.swarm.worker.dispatch import SessionRequest, dispatch, start_session
from swarm_pool.swarm.worker.failure import (
    AttemptTarget,
    FailOutcome,
    Failure,
    fail,
    retries_used,
)
from swarm_pool.swarm.worker.spawn import SpawnRequest, SpawnResult, SpawnStatus, spawn_async
from swarm_pool.swarm.worker.spec import PromptSpec, load_spec, save_spec

__all__ = [
    "AttemptTarget",
    "FailOutcome",
    "Failure",
    "PromptSpec",
    "SessionRequest",
    "SpawnRequest",
    "SpawnResult",
    "SpawnStatus",
    "answer",
    "dispatch",
    "fail",
    "load_spec",
    "retries_used",
    "save_spec",
    "spawn_async",
    "start_session",
]
