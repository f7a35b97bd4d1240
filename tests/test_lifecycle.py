"""The worker lifecycle in the store: the transition table, attempt/session fencing and
conditional appends: a contract run on the real SQLite recorder and on PostgreSQL.

The property test throws random interleavings of worker events (any type, any attempt,
this session or another) at one bead and checks every append against the table written
out below by hand: an applied event moved the worker exactly as the table says, a refused
one wrote nothing, a stale one was recorded but moved nothing, and at the end a rebuild
gives the same projections as the appends did.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm_pool.errors import IllegalTransitionError, VersionConflictError
from swarm_pool.store import Store
from swarm_pool.store.events import (
    WorkerCompleted,
    WorkerFailed,
    WorkerProgress,
    WorkerQueued,
    WorkerSpawned,
    parse_event,
)
from swarm_pool.store.lifecycle import TERMINAL, WorkerStatus
from tests.store_backends import OnPostgres, OnSQLite, StoreBackend, StoreFixtures

E = "bd-cafe01"
B = f"{E}.1"

# The table as the README states it, written independently of lifecycle.py:
# (event, status before or None) -> status after, within the worker's attempt.
SAME_ATTEMPT: dict[tuple[str, str | None], str] = {
    ("worker_queued", "pending"): "pending",
    ("worker_queued", "dispatching"): "pending",
    ("worker_session_created", "pending"): "dispatching",
    ("worker_spawned", "pending"): "running",
    ("worker_spawned", "dispatching"): "running",
    **{("worker_progress", s): "running" for s in ("dispatching", "running", "blocked")},
    ("worker_progress", "needs_review"): "running",
    **{("worker_blocked", s): "blocked" for s in ("dispatching", "running", "blocked")},
    **{
        (f"worker_completed:{c}", s): t
        for s in ("dispatching", "running", "blocked", "needs_review")
        for c, t in (("success", "completed"), ("failed", "failed"), ("blocked", "blocked"))
    },
    ("worker_needs_review", "running"): "needs_review",
    **{("worker_failed", s): "failed" for s in ("pending", "dispatching", "running", "blocked")},
}
# ... and the events that start the next attempt (attempt = current + 1).
NEXT_ATTEMPT: dict[tuple[str, str | None], str] = {
    **{("worker_queued", s): "pending" for s in (None, "completed", "needs_review", "failed")},
    ("worker_retried", "failed"): "pending",
    **{("worker_spawned", s): "running" for s in (None, "completed", "needs_review", "failed")},
    # A hand-run agent's reports on a bead without a worker.
    ("worker_progress", None): "running",
    ("worker_blocked", None): "blocked",
    **{
        (f"worker_completed:{c}", None): t
        for c, t in (("success", "completed"), ("failed", "failed"), ("blocked", "blocked"))
    },
}

_SESSIONS = itertools.count(1)
KINDS = [
    "worker_queued",
    "worker_retried",
    "worker_session_created",
    "worker_spawned",
    "worker_progress",
    "worker_blocked",
    "worker_completed:success",
    "worker_completed:failed",
    "worker_completed:blocked",
    "worker_needs_review",
    "worker_failed",
]


def _event(kind: str, attempt: int, session: str | None) -> Any:
    etype, _, status = kind.partition(":")
    data: dict[str, Any] = {"type": etype, "bead_id": B, "epic_id": E, "attempt": attempt}
    if session is not None:
        data["session_id"] = session
    if etype == "worker_completed":
        data["status"] = status
    elif etype == "worker_progress":
        data["progress_percent"] = 50
    elif etype == "worker_failed":
        data["error"] = "boom"
    elif etype == "worker_blocked":
        data["kind"] = "permission"
    return parse_event(data)


# One step: which event, which attempt relative to the current one, which session.
any_step = st.tuples(
    st.sampled_from(KINDS),
    st.sampled_from([-1, 0, 0, 0, 1, 1, 2]),
    st.sampled_from(["own"] * 4 + ["other", "none"]),
)


def _legal_steps(status: str | None) -> list[tuple[str, int, str]]:
    """Steps the hand table allows from ``status`` (to reach deep states often)."""
    same = [(k, 0, "own") for (k, s), _ in SAME_ATTEMPT.items() if s == status and status]
    nxt = [(k, 1, "own") for (k, s), _ in NEXT_ATTEMPT.items() if s == status]
    return same + nxt


def _random_interleavings(backend: StoreBackend, data: st.DataObject) -> None:
    root = backend.new_project()
    with backend.open(backend.new_url(root), root) as store:
        for _ in range(data.draw(st.integers(1, 40), label="length")):
            current = store.workers.get(B)
            legal = _legal_steps(current.status if current else None)
            if legal and data.draw(st.integers(0, 3), label="steer"):
                one = data.draw(st.sampled_from(legal), label="legal step")
            else:
                one = data.draw(any_step, label="any step")
            _check_steps(store, [one])
        incremental = store.projections_snapshot()
        store.rebuild()
        assert store.projections_snapshot() == incremental


def _interleavings_test(examples: int) -> Any:
    """The property test with its own number of examples (a fresh store each)."""

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(data=st.data())
    def test_random_interleavings_follow_the_table(
        self: Any, backend: StoreBackend, data: st.DataObject
    ) -> None:
        _random_interleavings(backend, data)

    return test_random_interleavings_follow_the_table


def _check_steps(store: Store, steps: list[tuple[str, int, str]]) -> None:
    for kind, offset, which in steps:
        before = store.workers.get(B)
        attempt_now = before.attempt if before else 1
        attempt = max(1, attempt_now + offset)
        etype = kind.partition(":")[0]
        if etype in ("worker_spawned", "worker_session_created") and which != "own":
            session: str | None = f"ses-{next(_SESSIONS)}"
        elif which == "own" and before is not None and before.session_id:
            session = before.session_id
        elif which == "none":
            session = None
        else:
            session = f"ses-{next(_SESSIONS)}"
        if etype in ("worker_spawned", "worker_session_created") and session is None:
            session = f"ses-{next(_SESSIONS)}"
        seq = store.last_seq()
        n_stale = len(store.workers.stale(B))
        try:
            store.append(_event(kind, attempt, session))
        except IllegalTransitionError:
            assert store.last_seq() == seq, "a refused event was written"
            assert store.workers.get(B) == before
            _assert_forbidden(before, kind, attempt, session)
            assert before is None or not _is_stale(before, etype, attempt, session)
            continue
        after = store.workers.get(B)
        assert after is not None
        assert store.last_seq() == seq + 1
        if len(store.workers.stale(B)) == n_stale + 1:
            assert after == before, "a stale event moved the worker"
            assert before is not None and _is_stale(before, etype, attempt, session)
            continue
        prev = before.status if before else None
        table = NEXT_ATTEMPT if before is None or attempt == before.attempt + 1 else SAME_ATTEMPT
        assert (kind, prev) in table, f"{kind} applied from {prev} (attempt {attempt})"
        assert after.status == table[(kind, prev)]
        assert after.attempt == attempt
        assert after.version == (before.version if before else 0) + 1
        assert WorkerStatus(after.status)  # one vocabulary
        if after.status in ("dispatching", "running", "blocked") and after.spawned_at:
            assert after.session_id, "a pool's worker in flight without its session"


def _is_stale(before: Any, etype: str, attempt: int, session: str | None) -> bool:
    if attempt < before.attempt:
        return True
    if attempt != before.attempt or session is None or before.session_id is None:
        return False
    if etype == "worker_spawned":
        own = session == before.session_id
        return (before.status == "dispatching" and not own) or (
            before.status not in ("pending", "dispatching") and own
        )
    if etype in ("worker_session_created", "worker_queued"):
        return False
    return session != before.session_id


def _assert_forbidden(before: Any, kind: str, attempt: int, session: str | None) -> None:
    if before is None:
        assert (kind, None) not in NEXT_ATTEMPT
        return
    if attempt == before.attempt + 1:
        assert (kind, before.status) not in NEXT_ATTEMPT
    elif attempt == before.attempt:
        assert (kind, before.status) not in SAME_ATTEMPT
    else:
        assert attempt > before.attempt + 1


class LifecycleContract(StoreFixtures):
    def test_stale_session_of_the_current_attempt_is_recorded_not_applied(
        self, store: Store
    ) -> None:
        store.append(WorkerSpawned(bead_id=B, epic_id=E, session_id="s1"))
        store.append(WorkerCompleted(bead_id=B, epic_id=E, session_id="s-other"))
        assert store.workers.get(B).status == "running"  # type: ignore[union-attr]
        assert [r["session_id"] for r in store.workers.stale(B)] == ["s-other"]

    def test_conditional_append_refuses_a_stale_version(self, store: Store) -> None:
        store.append(WorkerQueued(bead_id=B, epic_id=E), expect={B: 0})
        read = store.workers.get(B)
        assert read is not None and read.version == 1
        store.append(WorkerSpawned(bead_id=B, epic_id=E, session_id="s1"), expect={B: 1})
        seq = store.last_seq()
        # A caller that read version 1 (before the spawn) loses: nothing written.
        with pytest.raises(VersionConflictError) as info:
            store.append_many(
                [WorkerProgress(bead_id=B, epic_id=E, session_id="s1", progress_percent=5)],
                expect={B: 1},
            )
        assert (info.value.expected, info.value.actual) == (1, 2)
        assert store.last_seq() == seq
        with pytest.raises(VersionConflictError):
            store.append(WorkerQueued(bead_id=f"{E}.2", epic_id=E), expect={f"{E}.2": 3})

    def test_racing_conditional_appends_exactly_one_wins(
        self, backend: StoreBackend, url: str, root: Path
    ) -> None:
        """Completion and a timeout's failure, each from its own connection (on
        PostgreSQL one over TCP, one over the socket), both read the same version:
        whichever commits first wins, the other gets a conflict."""
        hosts = backend.host_urls(url)
        with backend.open(url, root) as store:
            store.append(WorkerSpawned(bead_id=B, epic_id=E, session_id="s1"))
            version = store.workers.get(B).version  # type: ignore[union-attr]
        barrier = threading.Barrier(2)
        results: dict[str, str] = {}

        def attempt(name: str, event: Any, host: str) -> None:
            with backend.open(host, root) as own:
                barrier.wait()
                try:
                    own.append(event, expect={B: version})
                    results[name] = "won"
                except VersionConflictError:
                    results[name] = "conflict"

        threads = [
            threading.Thread(
                target=attempt,
                args=("complete", WorkerCompleted(bead_id=B, epic_id=E), hosts[0]),
            ),
            threading.Thread(
                target=attempt,
                args=("fail", WorkerFailed(bead_id=B, epic_id=E, error="timeout"), hosts[1]),
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results.values()) == ["conflict", "won"]
        with backend.open(url, root) as store:
            final = store.workers.get(B)
            assert final is not None and final.status in TERMINAL
            winner = "complete" if results["complete"] == "won" else "fail"
            assert final.status == ("completed" if winner == "complete" else "failed")
            assert len(store.read(types=["worker_completed", "worker_failed"])) == 1


class TestLifecycleOnSQLite(OnSQLite, LifecycleContract):
    test_random_interleavings_follow_the_table = _interleavings_test(200)


class TestLifecycleOnPostgres(OnPostgres, LifecycleContract):
    # A fresh schema per example costs more on a server: fewer examples, same table.
    test_random_interleavings_follow_the_table = _interleavings_test(30)
