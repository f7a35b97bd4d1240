"""The gateway's view of the pool: which instances exist, which are ready, and how to
reach them.

Room: gateway.

It owns the reading of the private state file ``.swarm/pool.json`` (reread when it
changes, every ``state_poll_s``), which is where the gateway gets each instance's
password and its own: never from its environment, which an agent could read. It also
owns the one shared ``httpx.AsyncClient`` (kept-alive connections to every instance,
``trust_env`` off so no proxy variable reroutes loopback traffic).
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from pathlib import Path

import httpx

from swarm_pool.errors import PoolError
from swarm_pool.opencode.client import USERNAME
from swarm_pool.pool.state import InstanceState, PoolState, read_state

log = logging.getLogger("swarm_pool.gateway")


def basic_auth(password: str, username: str = USERNAME) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"Basic {token}"


@dataclass(frozen=True)
class Upstream:
    """One opencode instance as the gateway sees it."""

    name: str
    url: str
    state: str
    draining: bool = False
    auth: str = ""  # this instance's own Basic credentials

    @property
    def ready(self) -> bool:
        return self.state == InstanceState.READY


class PoolView:
    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file
        self.instances: dict[str, Upstream] = {}
        self.gateway_auth = ""  # what clients must send to the gateway
        self.generation = 0  # bumped on every change of the instance set
        self._mtime: int | None = None
        self.client = httpx.AsyncClient(
            trust_env=False,
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128),
        )

    def refresh(self) -> bool:
        """Reread the state file if it changed; True when something changed."""
        try:
            mtime = self.state_file.stat().st_mtime_ns
        except FileNotFoundError:
            return False
        if mtime == self._mtime:
            return False
        try:
            state = read_state(self.state_file)
        except PoolError as e:
            log.warning("cannot read the pool state: %s", e)
            return False
        if state is None:
            return False
        self._mtime = mtime
        return self.apply(state)

    def apply(self, state: PoolState) -> bool:
        instances = {
            rec.name: Upstream(rec.name, rec.url, rec.state, rec.draining, basic_auth(rec.password))
            for rec in state.opencode()
            if rec.url is not None
        }
        gateway_auth = basic_auth(state.gateway_password) if state.gateway_password else ""
        changed = (instances, gateway_auth) != (self.instances, self.gateway_auth)
        if changed:
            self.instances = instances
            self.gateway_auth = gateway_auth
            self.generation += 1
        return changed

    def ready(self) -> list[Upstream]:
        return [u for u in self.instances.values() if u.ready]

    async def close(self) -> None:
        await self.client.aclose()
