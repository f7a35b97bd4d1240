"""The routing table: which kind of handling each OpenCode route gets.

Room: gateway.

It owns one decision per request, ``RoutingTable.match(method, path)``: the route (its
OpenAPI operation) and its ``RouteKind``. The routes come from ``routes.json``, which
``scripts/gateway_routes.py`` generates from OpenCode's own OpenAPI description, and are
classified by rule rather than by a hand-kept list: a ``{sessionID}`` in the path makes
a session route, a ``directory`` query parameter a directory route, and a short list of
named operations covers creation, listing, events, health and request replies. A path
the description does not know goes to any ready instance, which answers it as OpenCode
would (usually 404).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any


class RouteKind(enum.Enum):
    CREATE_SESSION = "create_session"  # the router's choice, with directory affinity
    SESSION = "session"  # the instance that owns the path's session
    REQUEST_REPLY = "request_reply"  # the instance that asked the permission/question
    MERGED_LIST = "merged_list"  # every ready instance, results merged
    SESSION_STATUS = "session_status"  # from the event-fed status board (gateway/status.py)
    EVENTS = "events"  # /event: merged SSE, filtered to one directory
    GLOBAL_EVENTS = "global_events"  # /global/event: merged SSE, every directory
    HEALTH = "health"  # aggregated over the ready instances
    DIRECTORY = "directory"  # the directory's home instance
    ANY = "any"  # any ready instance


# Operations whose handling is not implied by their parameters.
_BY_OPERATION: dict[str, RouteKind] = {
    "session.create": RouteKind.CREATE_SESSION,
    "session.list": RouteKind.MERGED_LIST,
    "session.status": RouteKind.SESSION_STATUS,
    "experimental.session.list": RouteKind.MERGED_LIST,
    "permission.list": RouteKind.MERGED_LIST,
    "question.list": RouteKind.MERGED_LIST,
    "event.subscribe": RouteKind.EVENTS,
    "global.event": RouteKind.GLOBAL_EVENTS,
    "global.health": RouteKind.HEALTH,
    "permission.reply": RouteKind.REQUEST_REPLY,
    "question.reply": RouteKind.REQUEST_REPLY,
    "question.reject": RouteKind.REQUEST_REPLY,
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # the OpenAPI template, e.g. /session/{sessionID}/message
    operation: str
    params: tuple[str, ...]
    kind: RouteKind
    pattern: re.Pattern[str] = field(compare=False, repr=False)

    @property
    def literal_segments(self) -> int:
        return sum(1 for seg in self.path.split("/") if seg and "{" not in seg and seg != "*")


def classify(operation: str, path: str, params: tuple[str, ...]) -> RouteKind:
    kind = _BY_OPERATION.get(operation)
    if kind is not None:
        return kind
    if "sessionID" in params or "{sessionID}" in path:
        return RouteKind.SESSION
    if "directory" in params:
        return RouteKind.DIRECTORY
    return RouteKind.ANY


def _compile(template: str) -> re.Pattern[str]:
    out = []
    for part in re.split(r"(\{[^}]+\}|\*)", template):
        if part == "*":
            out.append(".*")
        elif part.startswith("{") and part.endswith("}"):
            out.append(f"(?P<{part[1:-1]}>[^/]+)")
        else:
            out.append(re.escape(part))
    return re.compile("^" + "".join(out) + "$")


@dataclass(frozen=True)
class Match:
    route: Route | None  # None: a path the description does not know
    kind: RouteKind
    path_params: dict[str, str]


class RoutingTable:
    def __init__(self, routes: list[dict[str, Any]]) -> None:
        self.routes: list[Route] = []
        self._exact: dict[tuple[str, str], Route] = {}
        self._templated: dict[str, list[Route]] = {}
        for raw in routes:
            params = tuple(raw.get("params", ()))
            route = Route(
                method=raw["method"],
                path=raw["path"],
                operation=raw.get("operation", ""),
                params=params,
                kind=classify(raw.get("operation", ""), raw["path"], params),
                pattern=_compile(raw["path"]),
            )
            self.routes.append(route)
            if "{" in route.path or "*" in route.path:
                self._templated.setdefault(route.method, []).append(route)
            else:
                self._exact[(route.method, route.path)] = route
        for group in self._templated.values():
            # /session/status must win over /session/{sessionID}: most literal first.
            group.sort(key=lambda r: (-r.literal_segments, r.path))

    @classmethod
    def load(cls) -> RoutingTable:
        text = resources.files("swarm_pool.gateway").joinpath("routes.json").read_text()
        return cls(json.loads(text)["routes"])

    def match(self, method: str, path: str) -> Match:
        route = self._exact.get((method, path))
        if route is not None:
            return Match(route, route.kind, {})
        for route in self._templated.get(method, ()):
            m = route.pattern.match(path)
            if m is not None:
                return Match(route, route.kind, m.groupdict())
        return Match(None, RouteKind.ANY, {})

    def by_kind(self, kind: RouteKind) -> list[Route]:
        return [r for r in self.routes if r.kind is kind]
