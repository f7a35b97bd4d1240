"""Where sessions live and where new ones go: the gateway's session map in memory.

Room: gateway.

It owns five maps, all fed from what the gateway sees: session -> instance (loaded from
the store's ``session_instances`` at start, extended by every session the gateway
creates or learns from an instance's events), directory -> home instance (the instance
of the newest session in that directory, so a directory's sessions stay together and
OpenCode's per-directory state is not duplicated), directory -> every instance holding a
session of it (whom ``GET /session/status`` must cover), the busy sessions of each instance
(from ``session.status`` events, for the router), and permission/question request ->
instance (from ``permission.asked``/``question.asked``). ``place_new`` asks the pool's
router (ready, not draining, least busy, under the session cap; among the instances
serving the fewest directories) when a directory has no ready home. No I/O here: the
caller persists what ``learn`` reports as new.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from urllib.parse import unquote

from swarm_pool.errors import InstanceUnavailableError
from swarm_pool.gateway.upstreams import Upstream
from swarm_pool.pool.router import InstanceView, RouteRequest, choose_instance


def resolve_directory(raw: str | None, default: str) -> str:
    """The directory a request is about, resolved the way OpenCode resolves it (the
    ``directory`` query or ``x-opencode-directory`` header, percent-decoded because the
    SDK encodes the header, else the server's cwd)."""
    return os.path.abspath(unquote(raw)) if raw else default


class Placement:
    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self.owner: dict[str, str] = {}
        self.directory_of: dict[str, str] = {}
        self.home: dict[str, str] = {}
        # directory -> every instance known to hold a session of it (never shrinks:
        # at worst one needless status fetch)
        self.instances_in: dict[str, set[str]] = {}
        self.busy: dict[str, set[str]] = {}
        self.requests: dict[str, str] = {}

    def learn(self, session_id: str, instance: str, directory: str = "") -> bool:
        """Record a session; True when that changed the map (the caller persists it)."""
        changed = self.owner.get(session_id) != instance or (
            bool(directory) and self.directory_of.get(session_id) != directory
        )
        self.owner[session_id] = instance
        if directory:
            self.directory_of[session_id] = directory
            self.home[directory] = instance
            self.instances_in.setdefault(directory, set()).add(instance)
        return changed

    def forget_instance_busy(self, instance: str) -> None:
        self.busy.pop(instance, None)

    def set_status(self, instance: str, session_id: str, status: str) -> None:
        busy = self.busy.setdefault(instance, set())
        if status == "idle":
            busy.discard(session_id)
        else:
            busy.add(session_id)

    def busy_counts(self) -> dict[str, int]:
        return {name: len(ids) for name, ids in self.busy.items()}

    def place_new(self, directory: str, instances: Iterable[Upstream]) -> Upstream:
        """The instance a new session in ``directory`` goes to."""
        ups = {u.name: u for u in instances}
        home = ups.get(self.home.get(directory, ""))
        if home is not None and home.ready and not home.draining:
            return home
        views = [InstanceView(u.name, u.url, u.state, draining=u.draining) for u in ups.values()]
        busy = self.busy_counts()
        # Each directory costs an instance memory of its own: prefer the instances that
        # serve the fewest directories, then the router's least busy among them.
        homes = {name: 0 for name in ups}
        for name in self.home.values():
            if name in homes:
                homes[name] += 1
        ready = [u.name for u in ups.values() if u.ready and not u.draining]
        fewest = min((homes[n] for n in ready), default=0)
        crowded = {n for n in ready if homes[n] > fewest}
        chosen = choose_instance(views, busy, RouteRequest(self.max_sessions, avoid=crowded))
        if chosen is None:
            # Every instance is at its session cap: an interactive client would rather
            # queue inside OpenCode than get an error, so take the least busy anyway.
            chosen = choose_instance(views, busy, RouteRequest(1 << 30, avoid=crowded))
        if chosen is None:
            raise InstanceUnavailableError("no instance of the pool is ready")
        return ups[chosen.name]

    def home_of(self, directory: str, instances: Iterable[Upstream]) -> Upstream:
        """The instance for a directory-scoped request (its home, else a new home)."""
        chosen = self.place_new(directory, instances)
        self.home[directory] = chosen.name
        return chosen
