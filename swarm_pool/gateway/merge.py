"""Merging the answers of several instances into the one answer a client expects.

Room: gateway.

It owns one rule per list route: session lists (``GET /session``,
``/experimental/session``) are concatenated, deduplicated by id, sorted newest update
first as OpenCode sorts them, and cut to the request's ``limit``; ``GET
/session/status`` maps are united; permission and question lists are concatenated;
health is healthy when any instance is, with the version they report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _updated(item: Any) -> float:
    if isinstance(item, dict):
        t = item.get("time")
        if isinstance(t, dict):
            value = t.get("updated", t.get("created", 0))
            if isinstance(value, int | float):
                return float(value)
    return 0.0


def merge_lists(answers: Sequence[Any], *, limit: int | None = None, by_time: bool) -> list[Any]:
    seen: set[str] = set()
    out: list[Any] = []
    for answer in answers:
        if not isinstance(answer, list):
            continue
        for item in answer:
            key = item.get("id") if isinstance(item, dict) else None
            if isinstance(key, str):
                if key in seen:
                    continue
                seen.add(key)
            out.append(item)
    if by_time:
        out.sort(key=_updated, reverse=True)
    if limit is not None and limit >= 0:
        out = out[:limit]
    return out


def merge_maps(answers: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for answer in answers:
        if isinstance(answer, dict):
            out.update(answer)
    return out


def merge(operation: str, answers: Sequence[Any], limit: int | None) -> Any:
    if operation == "session.status":
        return merge_maps(answers)
    by_time = operation in ("session.list", "experimental.session.list")
    return merge_lists(answers, limit=limit, by_time=by_time)


def merge_health(answers: Sequence[Any]) -> dict[str, Any] | None:
    versions = [
        a.get("version")
        for a in answers
        if isinstance(a, dict) and a.get("healthy") is True and isinstance(a.get("version"), str)
    ]
    if not versions:
        return None
    return {"healthy": True, "version": versions[0]}
