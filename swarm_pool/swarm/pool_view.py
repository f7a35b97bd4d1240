"""The worker engine's window on the pool: which instances exist, and starting/stopping it.

Room: swarm.

It owns the translation from the supervisor's state file (``pool/state.py``) to the
router's ``InstanceView``s (ready or not, draining, dedicated to a bead, with the
instance's own password), the shared MCP server's token secret, and the few pool
operations ``run`` needs: make sure a pool runs (starting one through the pool's own
start path when none does) and stop the pool it started. Instances dedicated to one
worker are named ``dw-<bead>`` (dots become underscores).
"""

from __future__ import annotations

from pathlib import Path

from swarm_pool.config import Config
from swarm_pool.errors import PoolError, PoolNotRunningError
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool import api as pool_api
from swarm_pool.pool.router import InstanceView
from swarm_pool.pool.state import PoolPhase, read_state, read_state_quietly
from swarm_pool.tokens import write_worker_token

DEDICATED_PREFIX = "dw-"


def dedicated_name(bead_id: str) -> str:
    return DEDICATED_PREFIX + bead_id.replace(".", "_")


def dedicated_bead(name: str) -> str | None:
    if not name.startswith(DEDICATED_PREFIX):
        return None
    return name[len(DEDICATED_PREFIX) :].replace("_", ".")


def mcp_secret(paths: ProjectPaths) -> str:
    """The shared MCP server's token secret from the private state file ("" if none)."""
    state = read_state_quietly(paths.state_file)
    return state.mcp_secret if state is not None else ""


def grant_token(paths: ProjectPaths, config: Config, worktree: str) -> None:
    """Give ``worktree`` its capability token for the shared MCP server, before OpenCode
    opens the directory (its relay reads the token from the worktree's git dir)."""
    oc = config.opencode
    if not (oc.mcp_enabled and oc.mcp == "shared"):
        return
    secret = mcp_secret(paths)
    if secret:
        write_worker_token(secret, Path(worktree))


def read_instances(paths: ProjectPaths, *, require_running: bool = False) -> list[InstanceView]:
    """The pool's opencode instances as the supervisor last recorded them.

    An empty list when no pool state exists (or it cannot be read right now), unless
    ``require_running``, which raises PoolNotRunningError instead.
    """
    try:
        state = read_state(paths.state_file)
    except PoolError:
        if require_running:
            raise
        return []
    if state is None or (require_running and not state.supervisor_alive()):
        if require_running:
            raise PoolNotRunningError(
                f"no pool is running for {paths.root}; start one with `swarm-pool start`"
            )
        return []
    slots = []
    for rec in state.opencode():
        if rec.url is None:
            continue
        slots.append(
            InstanceView(
                name=rec.name,
                url=rec.url,
                state=rec.state,
                password=rec.password,
                draining=rec.draining,
                dedicated_to=dedicated_bead(rec.name),
                pid=rec.pid,
                restarted_at=tuple(rec.restarted_at),
            )
        )
    return slots


def pool_owner(paths: ProjectPaths) -> tuple[str | None, int | None]:
    """``(phase, supervisor pid)`` from the state file; ``(None, None)`` if unreadable."""
    state = read_state_quietly(paths.state_file)
    if state is None:
        return None, None
    return state.phase, state.supervisor.pid if state.supervisor else None


def pool_running(paths: ProjectPaths) -> bool:
    state = read_state_quietly(paths.state_file)
    return state is not None and state.supervisor_alive() and state.phase == PoolPhase.RUNNING


def ensure_pool(
    paths: ProjectPaths,
    config: Config,
    *,
    size: int | None = None,
    config_path: Path | None = None,
) -> bool:
    """Start a pool unless one runs; True if this call started it."""
    if pool_running(paths):
        return False
    pool_api.start_pool(paths, config, size=size, config_path=config_path)
    return True


def stop_pool(paths: ProjectPaths, config: Config) -> None:
    pool_api.stop_pool(paths, config)
