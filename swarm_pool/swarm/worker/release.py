"""Releasing a worker's OpenCode session once its bead is merged or
failed for good.

Room: swarm.worker.

``release_session`` saves the session's transcript (``transcript.py``), deletes the
session, and disposes its directory on its instance unless the directory is a warm slot
(which stays served, so the next bead in it starts warm). A dedicated instance is stopped
instead. Review's merge and failure's final outcome both call it.
"""

from __future__ import annotations

import contextlib

from swarm_pool.errors import OpenCodeError, SwarmPoolError
from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.store.workers import WorkerView
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker import transcript
from swarm_pool.swarm.worker.checkout import is_slot_path
from swarm_pool.swarm.worker.dedicated import release_instance


def release_session(ctx: SwarmContext, bead_id: str) -> bool:
    """Save the worker's transcript, delete its session, and dispose its directory on
    its instance unless it is a warm slot.

    A slot's directory stays served (that is what keeps it warm: the next bead in it
    skips OpenCode's per-directory set-up), so an instance serves a bounded set of
    directories. A fresh worktree's directory will never be used again: disposing frees
    the instance's per-directory state (the MCP process among it); its RSS does not
    shrink, which the supervisor's memory-limit restart bounds. Dedicated instances are
    stopped instead. Best effort: False if the instance is unreachable.
    """
    worker = ctx.store.workers.get(bead_id)
    if worker is None or not worker.instance or not worker.session_id:
        return False
    if worker.host and worker.host != ctx.config.pool.host:
        return False  # its session is on another host's instance (names repeat there)
    done = False
    try:
        inst = ctx.instance(worker.instance)
    except SwarmPoolError:
        inst = None
    if inst is not None:
        client = ctx.client(inst)
        try:
            keep_transcript(ctx, client, worker)
            client.delete_session(worker.session_id, directory=worker.worktree or None)
            if worker.worktree and not is_slot_path(ctx, worker.worktree):
                client.dispose_directory(worker.worktree)
            done = True
        except OpenCodeError:
            done = False
        finally:
            client.close()
    if inst is not None and inst.dedicated_to == bead_id:
        with contextlib.suppress(SwarmPoolError):
            release_instance(ctx, bead_id)
    return done


def keep_transcript(ctx: SwarmContext, client: OpenCodeClient, worker: WorkerView) -> None:
    """Save the session's messages before it goes (OpenCodeError if they cannot be read:
    the session is then not deleted either)."""
    assert worker.session_id is not None
    messages = client.messages(worker.session_id, directory=worker.worktree or None)
    transcript.save(
        ctx.paths,
        bead_id=worker.bead_id,
        attempt=worker.attempt,
        session_id=worker.session_id,
        instance=worker.instance,
        worktree=worker.worktree,
        messages=messages,
    )
