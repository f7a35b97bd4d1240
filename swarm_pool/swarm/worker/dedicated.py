"""Dedicated routing: one fresh instance per worker, started for it,
stopped after merge.

Room: swarm.worker.

For running a worker in complete isolation (its own OpenCode process, event loop and
database). ``request_instance`` asks the supervisor, over its control socket, to add an
extra instance named ``dw-<bead>`` (outside the sized pool, so ``scale`` leaves it
alone) without waiting for it: the worker stays queued until that instance is ready,
and the engine then dispatches it there and nowhere else. ``release_instance`` removes
the instance once the worker is merged or has failed for good.
"""

from __future__ import annotations

import contextlib

from swarm_pool.errors import UnknownInstanceError
from swarm_pool.pool import control
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.pool_view import dedicated_name


def request_instance(ctx: SwarmContext, bead_id: str) -> str:
    """Ask for the bead's own instance (idempotent); its name."""
    name = dedicated_name(bead_id)
    if any(inst.name == name for inst in ctx.instances()):
        return name
    control.call(control.socket_path_for(ctx.paths), "add", name=name, wait=False)
    return name


def release_instance(ctx: SwarmContext, bead_id: str) -> None:
    """Stop the bead's own instance, if it still runs."""
    name = dedicated_name(bead_id)
    if not any(inst.name == name for inst in ctx.instances()):
        return
    with contextlib.suppress(UnknownInstanceError):  # already gone
        control.call(control.socket_path_for(ctx.paths), "remove", name=name, wait=False)
