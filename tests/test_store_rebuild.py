"""``rebuild`` replays the log into fresh projections equal to the incrementally kept ones,
after a randomized history (hypothesis) of hive, worker, reservation and mail operations;
a contract run on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm_pool.errors import SwarmPoolError
from swarm_pool.store import Store
from swarm_pool.store.events import BeadSpec
from tests.store_backends import OnPostgres, OnSQLite, StoreBackend, StoreFixtures

AGENTS = ["alice", "bob", "carol"]
PATTERNS = ["src/**", "src/a.py", "src/*.py", "docs/**", "docs/x.md", "lib/b.py", "**/*.md"]
WORKER_EVENTS = [
    "worker_spawned",
    "worker_progress",
    "worker_completed",
    "worker_failed",
    "worker_blocked",
    "worker_retried",
    "worker_queued",
    "worker_needs_review",
    "session_status",
    "session_error",
]

op = st.one_of(
    st.tuples(
        st.just("epic"),
        st.lists(st.lists(st.integers(1, 4), max_size=2), min_size=1, max_size=4),
    ),
    st.tuples(
        st.just("status"),
        st.integers(0, 20),
        st.sampled_from(["open", "in_progress", "blocked", "closed"]),
    ),
    st.tuples(
        st.just("worker"),
        st.integers(0, 20),
        st.sampled_from(WORKER_EVENTS),
        st.integers(1, 3),
        st.integers(0, 100),
        st.sampled_from(["success", "failed", "blocked"]),
    ),
    st.tuples(
        st.just("reserve"),
        st.sampled_from(AGENTS),
        st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3),
        st.booleans(),
        st.sampled_from([0.001, 60.0]),  # 1 ms: expired by the next write
    ),
    st.tuples(st.just("release"), st.sampled_from(AGENTS), st.sampled_from(PATTERNS)),
    st.tuples(st.just("release_all"), st.sampled_from(AGENTS)),
    st.tuples(st.just("renew"), st.sampled_from(AGENTS)),
    st.tuples(
        st.just("send"),
        st.sampled_from(AGENTS),
        st.lists(st.sampled_from([*AGENTS, "coordinator"]), min_size=1, max_size=3),
    ),
    st.tuples(st.just("read"), st.sampled_from(AGENTS), st.integers(0, 20), st.booleans()),
)


def _worker_event(
    kind: str, bead: str, epic: str, attempt: int, pct: int, status: str
) -> dict[str, Any]:
    base: dict[str, Any] = {"type": kind, "bead_id": bead, "epic_id": epic, "attempt": attempt}
    session = f"ses-{bead}-{attempt}"
    if kind == "worker_spawned":
        base.update(session_id=session, instance=f"i{attempt}", files=["src/**"])
    elif kind == "worker_progress":
        base.update(progress_percent=pct, message=f"at {pct}", files_touched=["src/a.py"])
    elif kind == "worker_completed":
        base.update(status=status, summary="s", files_touched=["a"], violations=["b"])
    elif kind == "worker_failed":
        base.update(error="boom")
    elif kind == "worker_blocked":
        base.update(reason="perm", kind="permission")
    elif kind == "worker_queued":
        base.update(worktree="/wt", files=["x"])
    elif kind == "session_status":
        return {"type": kind, "session_id": session, "instance": "i1", "status": status}
    elif kind == "session_error":
        return {
            "type": kind,
            "session_id": session,
            "instance": "i1",
            "error": "e",
            "bead_id": bead,
        }
    return base


def _run(store: Store, ops: list[tuple[Any, ...]]) -> None:
    cells: list[tuple[str, str]] = []
    messages: list[str] = []
    for o in ops:
        kind = o[0]
        try:
            if kind == "epic":
                specs = [
                    BeadSpec(title=f"t{n}", depends_on=[str(d) for d in deps if d < n + 1])
                    for n, deps in enumerate(o[1], 1)
                ]
                epic = store.hive.create_epic("e", specs)
                cells.extend((c.id, epic.id) for c in epic.cells)
            elif kind == "status" and cells:
                store.hive.set_status(cells[o[1] % len(cells)][0], o[2])
            elif kind == "worker" and cells:
                bead, epic = cells[o[1] % len(cells)]
                store.append(_worker_event(o[2], bead, epic, o[3], o[4], o[5]))
            elif kind == "reserve":
                store.reservations.reserve(o[1], o[2], exclusive=o[3], ttl_s=o[4])
            elif kind == "release":
                store.reservations.release(o[1], patterns=[o[2]])
            elif kind == "release_all":
                store.reservations.release(o[1])
            elif kind == "renew":
                store.reservations.renew(o[1], ttl_s=30)
            elif kind == "send":
                messages.append(store.mail.send(o[1], o[2], "subject", "body").id)
            elif kind == "read" and messages:
                message = messages[o[2] % len(messages)]
                if o[3]:
                    store.mail.ack(o[1], message)
                else:
                    store.mail.read(o[1], message)
        except SwarmPoolError:
            pass  # refused operations (not addressed to, cycles...) are part of the history
        if kind == "reserve" and o[4] < 1:
            time.sleep(0.002)  # let the 1 ms reservation expire


class RebuildContract(StoreFixtures):
    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(st.lists(op, min_size=1, max_size=40))
    def test_rebuilt_projections_equal_incremental_ones(
        self, backend: StoreBackend, ops: list[tuple[Any, ...]]
    ) -> None:
        root = backend.new_project()
        with backend.open(backend.new_url(root), root) as store:
            _run(store, ops)
            incremental = store.projections_snapshot()
            seq = store.last_seq()
            store.rebuild()
            assert store.projections_snapshot() == incremental
            assert store.last_seq() == seq  # rebuilding appends nothing

    def test_rebuild_repairs_damaged_projections(
        self, store: Store, backend: StoreBackend, url: str, root: Path
    ) -> None:
        epic = store.hive.create_epic("e", [BeadSpec(title="a")])
        bead = epic.cells[0].id
        store.append({"type": "worker_spawned", "bead_id": bead, "epic_id": epic.id})
        store.reservations.reserve("alice", ["src/**"])
        good = store.projections_snapshot()
        with backend.raw(url, root) as conn:
            conn.execute("DELETE FROM workers")
            conn.execute("UPDATE cells SET status = 'closed'")
            conn.execute(
                "INSERT INTO reservations (id, holder, pattern, exclusive, reason, created_at,"
                " expires_at, seq) VALUES ('rsv-x', 'mallory', '**', 1, '', 0, 9999999999999, 99)"
            )
        assert store.projections_snapshot() != good
        store.rebuild()
        assert store.projections_snapshot() == good
        assert store.workers.get(bead) is not None


class TestRebuildOnSQLite(OnSQLite, RebuildContract):
    pass


class TestRebuildOnPostgres(OnPostgres, RebuildContract):
    pass
