"""Dedicated routing: one fresh instance per worker, started for it, stopped after merge.

Placeholder until the supervisor can add and remove a named instance at runtime.
"""

from __future__ import annotations

from swarm_pool.errors import WorkerError
from swarm_pool.swarm.context import SwarmContext


def request_instance(ctx: SwarmContext, bead_id: str) -> str:
    raise WorkerError("dedicated routing is not available yet")


def release_instance(ctx: SwarmContext, bead_id: str) -> None:
    return None
