"""Bad input gets a clear error and writes nothing: not an event, not a projection row
(a contract run on SQLite and on PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from swarm_pool.errors import (
    EventValidationError,
    HiveError,
    MailError,
    NotFoundError,
    PathEscapeError,
    ReservationError,
    SwarmPoolError,
)
from swarm_pool.store import Store
from swarm_pool.store.events import BeadSpec, CellCreated, InstanceReady
from tests.store_backends import OnPostgres, OnSQLite, StoreFixtures

EPIC = "bd-c0ffee"


CASES: list[tuple[str, Callable[[Store], Any], type[SwarmPoolError], str]] = [
    (
        "unknown event type",
        lambda s: s.append({"type": "worker_exploded", "bead_id": "x"}),
        EventValidationError,
        "unknown event type 'worker_exploded'",
    ),
    (
        "no type at all",
        lambda s: s.append({"bead_id": "x"}),
        EventValidationError,
        "missing field 'type'",
    ),
    (
        "missing field",
        lambda s: s.append({"type": "worker_spawned", "epic_id": EPIC}),
        EventValidationError,
        "bead_id: Field required",
    ),
    (
        "wrong field type",
        lambda s: s.append(
            {"type": "worker_progress", "bead_id": "b", "epic_id": EPIC, "progress_percent": 101}
        ),
        EventValidationError,
        "progress_percent",
    ),
    (
        "unknown field",
        lambda s: s.append({"type": "instance_ready", "instance": "i", "colour": "red"}),
        EventValidationError,
        "colour",
    ),
    (
        "bad epic id in an event",
        lambda s: s.append({"type": "worker_spawned", "bead_id": "b", "epic_id": "epic one"}),
        EventValidationError,
        "bad epic id 'epic one'",
    ),
    (
        "one bad event in a batch",
        lambda s: s.append_many(
            [InstanceReady(instance="i1"), {"type": "nope"}, InstanceReady(instance="i2")]
        ),
        EventValidationError,
        "unknown event type 'nope'",
    ),
    (
        "cell of an unknown epic (the projection refuses, the append rolls back)",
        lambda s: s.append_many(
            [
                InstanceReady(instance="i1"),
                CellCreated(cell_id="bd-0000aa.1", epic_id="bd-0000aa", title="t"),
            ]
        ),
        NotFoundError,
        "epic bd-0000aa does not exist",
    ),
    (
        "status of an unknown cell",
        lambda s: s.append(
            {
                "type": "cell_status_changed",
                "cell_id": "bd-0000aa.1",
                "epic_id": "bd-0000aa",
                "status": "closed",
            }
        ),
        NotFoundError,
        "bead bd-0000aa.1 does not exist",
    ),
    (
        "bad epic id in get_epic",
        lambda s: s.hive.get_epic("my-epic"),
        HiveError,
        "bad epic id 'my-epic'",
    ),
    (
        "bad epic id in ready",
        lambda s: s.hive.ready("BD-1"),
        HiveError,
        "bad epic id",
    ),
    (
        "bad bead id in set_status",
        lambda s: s.hive.set_status("bd-x", "closed"),
        HiveError,
        "bad bead id",
    ),
    (
        "bad epic id in reserve",
        lambda s: s.reservations.reserve("bob", ["lib/**"], epic_id="nope"),
        ReservationError,
        "bad epic id 'nope'",
    ),
    (
        "bad epic id in mail",
        lambda s: s.mail.send("a", ["b"], "s", epic_id="nope"),
        MailError,
        "bad epic id",
    ),
    (
        "escaping path with ..",
        lambda s: s.reservations.reserve("bob", ["lib/x.py", "../other/x.py"]),
        PathEscapeError,
        "leaves the project",
    ),
    (
        "absolute path outside the project",
        lambda s: s.reservations.reserve("bob", ["/etc/passwd"]),
        PathEscapeError,
        "outside the project",
    ),
    (
        "escaping file in an epic's subtask",
        lambda s: s.hive.create_epic("e", [BeadSpec(title="a", files=["../../etc/x"])]),
        PathEscapeError,
        "leaves the project",
    ),
    (
        "negative ttl",
        lambda s: s.reservations.reserve("bob", ["lib/**"], ttl_s=-5),
        ReservationError,
        "ttl_s must be a positive",
    ),
    (
        "zero ttl",
        lambda s: s.reservations.reserve("bob", ["lib/**"], ttl_s=0),
        ReservationError,
        "ttl_s must be a positive",
    ),
    (
        "negative ttl on renew",
        lambda s: s.reservations.renew("alice", ttl_s=-1),
        ReservationError,
        "ttl_s must be a positive",
    ),
    (
        "no patterns",
        lambda s: s.reservations.reserve("bob", []),
        ReservationError,
        "at least one",
    ),
    (
        "no holder",
        lambda s: s.reservations.reserve(" ", ["lib/**"]),
        ReservationError,
        "holder",
    ),
    (
        "epic without a title",
        lambda s: s.hive.create_epic("", [BeadSpec(title="a")]),
        HiveError,
        "title",
    ),
    (
        "subtask without a title",
        lambda s: s.hive.create_epic("e", [{"title": ""}]),
        HiveError,
        "subtask 1: bad title",
    ),
]


class BadInputContract(StoreFixtures):
    @pytest.fixture
    def seeded(self, store: Store) -> Store:
        store.hive.create_epic("seed", [BeadSpec(title="a")])
        store.reservations.reserve("alice", ["src/**"])
        return store

    @pytest.mark.parametrize(("name", "call", "error", "message"), CASES, ids=[c[0] for c in CASES])
    def test_bad_input_writes_nothing(
        self,
        seeded: Store,
        name: str,
        call: Callable[[Store], Any],
        error: type[SwarmPoolError],
        message: str,
    ) -> None:
        store = seeded
        seq = store.last_seq()
        before = store.projections_snapshot()
        with pytest.raises(error, match=re.escape(message)):
            call(store)
        assert store.last_seq() == seq
        assert store.projections_snapshot() == before
        assert store.check()["seq_gap_free"]
        # The store still works after refusing.
        assert store.append(InstanceReady(instance="after")) == seq + 1


class TestBadInputOnSQLite(OnSQLite, BadInputContract):
    pass


class TestBadInputOnPostgres(OnPostgres, BadInputContract):
    pass
