"""``RowView``: the base of the read-side views the facades return (a cell,
a worker, a reservation, a message, a slot, a host).

Room: store.

Owns the two things every view did alike: ``to_dict`` (the dataclass as a dict) and
``from_row`` (a projection row to the view, field by field by name, each field's column
decoded by the view's ``DECODE``: JSON lists and objects kept as text, 0/1 flags as
bools). A view is a frozen dataclass that subclasses it and says only what differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Self, cast

from swarm_pool.store.db import Row
from swarm_pool.store.schema import load_json


def json_list(text: str | None) -> list[Any]:
    """A JSON list column ([] for NULL; a new list each time, never a shared default)."""
    value: list[Any] = load_json(text, [])
    return value


class RowView:
    """A view read from one projection row."""

    # Field -> how its column's value becomes the field's (absent: taken as it is).
    DECODE: ClassVar[Mapping[str, Callable[[Any], Any]]] = {}
    # Field -> its column, where the names differ.
    COLUMNS: ClassVar[Mapping[str, str]] = {}
    # Fields whose column a query may leave out (then None).
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(cast(Any, self))

    @classmethod
    def from_row(cls, row: Row) -> Self:
        values: dict[str, Any] = {}
        for name, column, optional, decode in _plan(cls):
            raw = row.get(column) if optional else row[column]
            values[name] = raw if decode is None else decode(raw)
        return cls(**values)


_Step = tuple[str, str, bool, Callable[[Any], Any] | None]


_PLANS: dict[type[RowView], tuple[_Step, ...]] = {}


def _plan(cls: type[RowView]) -> tuple[_Step, ...]:
    # Worked out once per view class: every list of workers, each engine and dashboard
    # tick, builds a view per row, and walking the fields each time doubled its cost.
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = tuple(
            (
                f.name,
                cls.COLUMNS.get(f.name, f.name),
                f.name in cls.OPTIONAL,
                cls.DECODE.get(f.name),
            )
            for f in dataclasses.fields(cast(Any, cls))
        )
    return plan
