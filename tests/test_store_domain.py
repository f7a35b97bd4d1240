"""Hive, reservations, mail and the workers projection: a contract run on a real SQLite
store and on a real PostgreSQL one."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm_pool.errors import (
    HiveError,
    IllegalTransitionError,
    MailError,
    NotFoundError,
    PathEscapeError,
)
from swarm_pool.store import Store
from swarm_pool.store.events import (
    BeadSpec,
    SessionStatus,
    WorkerBlocked,
    WorkerCompleted,
    WorkerFailed,
    WorkerNeedsReview,
    WorkerProgress,
    WorkerQueued,
    WorkerRetried,
    WorkerSpawned,
)
from swarm_pool.store.globs import patterns_overlap
from tests.store_backends import OnPostgres, OnSQLite, StoreBackend, StoreFixtures
from tests.support import wait_for

E = "bd-feed01"
B = f"{E}.1"

_POOL = [
    "src/a.py",
    "src/a.pyc",
    "src/a/b.py",
    "src/a/**",
    "src/**",
    "src/*.py",
    "src/*/b.py",
    "srcx/a.py",
    "s*/a.py",
    "**/b.py",
    "**",
    "lib/**",
    "lib/src/a.py",
    "src/[ab].py",
]


class DomainContract(StoreFixtures):
    # --- hive -----------------------------------------------------------------------------

    def test_create_epic_ids_deps_and_ready(self, store: Store) -> None:
        epic = store.hive.create_epic(
            "Auth rewrite",
            [
                BeadSpec(title="models", files=["src/models.py"]),
                BeadSpec(title="api", depends_on=["1"], files=["src/auth"]),
                {"title": "docs", "depends_on": ["1", "2"], "script": [{"say": "hi"}]},
            ],
            description="why",
        )
        assert re.fullmatch(r"bd-[0-9a-f]{6}", epic.id)
        assert [c.id for c in epic.cells] == [f"{epic.id}.{n}" for n in (1, 2, 3)]
        c1, c2, c3 = epic.cells
        assert c2.depends_on == [c1.id]
        assert c3.depends_on == [c1.id, c2.id]
        assert c2.files == ["src/auth/**"]  # an existing directory covers its contents
        assert c3.script == [{"say": "hi"}]
        assert {c.status for c in epic.cells} == {"open"}
        assert store.hive.get_epic(epic.id) == epic
        assert store.hive.epics() == [epic]

        assert [c.id for c in store.hive.ready(epic.id)] == [c1.id]
        store.hive.set_status(c1.id, "in_progress")
        assert store.hive.ready(epic.id) == []
        store.hive.set_status(c1.id, "closed", reason="merged")
        assert [c.id for c in store.hive.ready()] == [c2.id]
        store.hive.set_status(c2.id, "closed")
        assert [c.id for c in store.hive.ready(epic.id)] == [c3.id]
        assert [c.id for c in store.hive.cells(epic.id, status="closed")] == [c1.id, c2.id]
        assert store.hive.get_cell(c1.id).status == "closed"

    def test_dependency_on_a_cell_of_another_epic(self, store: Store) -> None:
        first = store.hive.create_epic("base", [BeadSpec(title="a")])
        second = store.hive.create_epic(
            "next", [BeadSpec(title="b", depends_on=[first.cells[0].id])]
        )
        assert second.cells[0].depends_on == [first.cells[0].id]
        assert store.hive.ready(second.id) == []
        store.hive.set_status(first.cells[0].id, "closed")
        assert [c.id for c in store.hive.ready(second.id)] == [second.cells[0].id]

    def test_dependency_cycles_and_unknown_dependencies_are_rejected(self, store: Store) -> None:
        cases = [
            (
                [
                    BeadSpec(title="a", depends_on=["2"]),
                    BeadSpec(title="b", depends_on=["1"]),
                ],
                "cycle",
            ),
            ([BeadSpec(title="a", depends_on=["1"])], "cycle"),
            (
                [
                    BeadSpec(title="a", depends_on=["3"]),
                    BeadSpec(title="b", depends_on=["1"]),
                    BeadSpec(title="c", depends_on=["2"]),
                ],
                "cycle",
            ),
            ([BeadSpec(title="a", depends_on=["5"])], "there are 1"),
            ([BeadSpec(title="a", depends_on=["bd-zzzzzz.1"])], "unknown dependency"),
            ([BeadSpec(title="a", depends_on=["nonsense"])], "bad dependency"),
        ]
        for subtasks, message in cases:
            with pytest.raises(HiveError, match=message):
                store.hive.create_epic("x", subtasks)
        assert store.last_seq() == 0

    def test_hive_lookups(self, store: Store) -> None:
        with pytest.raises(NotFoundError, match=r"bead bd-abcdef\.9 does not exist"):
            store.hive.get_cell("bd-abcdef.9")
        with pytest.raises(NotFoundError, match="epic bd-abcdef does not exist"):
            store.hive.get_epic("bd-abcdef")
        with pytest.raises(NotFoundError):
            store.hive.set_status("bd-abcdef.1", "closed")
        epic = store.hive.create_epic("x", [BeadSpec(title="a")])
        with pytest.raises(HiveError, match="bad status"):
            store.hive.set_status(epic.cells[0].id, "done")

    # --- reservations ---------------------------------------------------------------------

    def test_reserve_conflicts_both_ways_and_names_the_holder(self, store: Store) -> None:
        r = store.reservations
        assert r.reserve("alice", ["src/auth/login.py"]).granted
        denied = r.reserve("bob", ["src/**"])  # the broad request hits the narrow holding
        assert not denied.granted
        assert denied.conflicts[0].holder == "alice"
        assert denied.conflicts[0].pattern == "src/auth/login.py"
        assert denied.conflicts[0].requested == "src/**"
        assert r.reserve("carol", ["docs/**"]).granted
        denied = r.reserve("bob", ["docs/*.md"])  # the narrow request hits the broad holding
        assert denied.holders == ["carol"]
        conflicts = store.read(types=["file_conflict"])
        assert len(conflicts) == 2
        assert conflicts[0].to_dict()["conflicts"] == [
            {"holder": "alice", "pattern": "src/auth/login.py", "requested": "src/**"}
        ]

    def test_reserve_is_all_or_nothing(self, store: Store) -> None:
        r = store.reservations
        assert r.reserve("alice", ["src/a.py"]).granted
        result = r.reserve("bob", ["lib/x.py", "src/*.py", "tests/**"])
        assert not result.granted and result.reservations == []
        assert [v.holder for v in r.active()] == ["alice"]
        assert r.active("bob") == []

    def test_shared_reservations(self, store: Store) -> None:
        r = store.reservations
        assert r.reserve("alice", ["src/a.py"], exclusive=False).granted
        assert r.reserve("bob", ["src/*.py"], exclusive=False).granted  # readers share
        assert not r.reserve("carol", ["src/a.py"]).granted  # a writer waits for them
        assert r.reserve("carol", ["src/b/**"]).granted
        assert not r.reserve("dave", ["src/b/x.py"], exclusive=False).granted

    def test_same_holder_may_overlap_itself_and_re_reserve_renews(self, store: Store) -> None:
        r = store.reservations
        first = r.reserve("alice", ["src/**"], ttl_s=60).reservations[0]
        again = r.reserve("alice", ["src/**", "src/a.py"], ttl_s=600)
        assert again.granted
        assert again.reservations[0].id == first.id
        assert again.reservations[0].expires_at > first.expires_at
        assert len(r.active("alice")) == 2

    def test_release_by_id_pattern_and_all(self, store: Store) -> None:
        r = store.reservations
        granted = r.reserve("alice", ["a.py", "b.py", "c.py", "d.py"]).reservations
        assert [v.pattern for v in r.release("alice", ids=[granted[0].id])] == ["a.py"]
        assert [v.pattern for v in r.release("alice", patterns=["./b.py"])] == ["b.py"]
        assert r.release("bob") == []  # nothing held, nothing released
        assert r.release("bob", ids=[granted[2].id]) == []  # not bob's to release
        assert sorted(v.pattern for v in r.release("alice")) == ["c.py", "d.py"]
        assert r.active() == []
        assert r.reserve("bob", ["*.py"]).granted
        assert len(store.read(types=["file_released"])) == 4

    def test_renew(self, store: Store) -> None:
        r = store.reservations
        granted = r.reserve("alice", ["a.py", "b.py"], ttl_s=60).reservations
        renewed = r.renew("alice", ttl_s=3600, ids=[granted[1].id])
        assert [v.id for v in renewed] == [granted[1].id]
        assert renewed[0].expires_at > granted[1].expires_at
        assert {v.id: v.expires_at for v in r.active()}[granted[1].id] == renewed[0].expires_at
        assert len(r.renew("alice", ttl_s=10)) == 2
        with pytest.raises(NotFoundError, match="not held by bob"):
            r.renew("bob", ttl_s=10, ids=[granted[0].id])

    def test_ttl_expires_lazily(self, store: Store) -> None:
        r = store.reservations
        assert r.reserve("alice", ["src/**"], ttl_s=0.05).granted
        assert not r.reserve("bob", ["src/a.py"]).granted
        wait_for(lambda: r.active() == [], timeout=5)
        assert r.reserve("bob", ["src/a.py"]).granted
        released = store.read(types=["file_released"])
        assert [e.to_dict()["reason"] for e in released] == ["expired"]
        assert [v.holder for v in r.active()] == ["bob"]
        with pytest.raises(NotFoundError):  # an expired reservation cannot be renewed
            r.renew("alice", ttl_s=60, ids=[released[0].to_dict()["reservation_id"]])

    def test_normalize(self, store: Store, tmp_path: Path) -> None:
        root = store.project_root
        n = store.reservations.normalize
        assert n("src/a.py") == "src/a.py"
        assert n("./src//a.py") == "src/a.py"
        assert n("src/x/../a.py") == "src/a.py"
        assert n(f"{root}/src/a.py") == "src/a.py"
        assert n(str(root)) == "**"
        assert n(".") == "**"
        assert n("src/auth") == "src/auth/**"  # an existing directory
        assert n("newdir/") == "newdir/**"
        assert n("src/**") == "src/**"
        for bad in ("../x.py", "src/../../x.py", "/etc/passwd", f"{root}/../x", "src/*/../../x"):
            with pytest.raises(PathEscapeError):
                n(bad)
        outside = tmp_path / "outside"
        outside.mkdir()
        os.symlink(outside, root / "link")
        with pytest.raises(PathEscapeError, match="symlink"):
            n("link/secret.txt")

    # --- mail -----------------------------------------------------------------------------

    def test_mail_send_inbox_read_ack(self, store: Store) -> None:
        m = store.mail
        first = m.send("coordinator", ["w1", "w2"], "start", "go", ack_required=True)
        second = m.send("w2", ["w1"], "question", importance="high", thread_id=first.id)
        inbox = m.inbox("w1")
        assert [x.id for x in inbox] == [second.id, first.id]  # newest first
        assert inbox[1].to == ["w1", "w2"] and inbox[1].ack_required
        assert [x.id for x in m.inbox("w1", unread_only=True, limit=1)] == [second.id]
        read = m.read("w1", first.id)
        assert read.read_at is not None and read.acked_at is None
        assert m.read("w1", first.id).read_at == read.read_at  # reading twice records nothing
        assert [x.id for x in m.inbox("w1", unread_only=True)] == [second.id]
        assert m.inbox("w2", unread_only=True)[0].read_at is None  # per recipient
        acked = m.ack("w2", first.id)
        assert acked.acked_at is not None and acked.read_at is not None
        assert [x.id for x in m.thread(first.id)] == [first.id, second.id]
        assert len(store.read(types=["message_read"])) == 1
        assert len(store.read(types=["message_acked"])) == 1
        with pytest.raises(MailError, match="not addressed"):
            m.read("w3", first.id)
        with pytest.raises(NotFoundError):
            m.ack("w1", "msg-nope")
        with pytest.raises(MailError, match="importance"):
            m.send("a", ["b"], "s", importance="meh")
        with pytest.raises(MailError, match="recipient"):
            m.send("a", [], "s")

    # --- workers --------------------------------------------------------------------------

    def test_worker_lifecycle(self, store: Store) -> None:
        w = store.workers
        assert w.get(B) is None
        store.append(WorkerQueued(bead_id=B, epic_id=E, worktree="/wt", files=["src/**"]))
        assert w.get(B).status == "pending"  # type: ignore[union-attr]
        store.append(
            WorkerSpawned(
                bead_id=B, epic_id=E, session_id="s1", instance="i1", worktree="/wt", files=["a"]
            )
        )
        view = w.get(B)
        assert view is not None
        assert (view.status, view.session_id, view.instance, view.files) == (
            "running",
            "s1",
            "i1",
            ["a"],
        )
        store.append(SessionStatus(session_id="s1", instance="i1", status="busy"))
        store.append(WorkerProgress(bead_id=B, epic_id=E, progress_percent=40, message="half"))
        view = w.get(B)
        assert view is not None
        assert (view.session_status, view.progress_percent, view.last_message) == (
            "busy",
            40,
            "half",
        )
        store.append(
            WorkerBlocked(bead_id=B, epic_id=E, reason="permission bash", kind="permission")
        )
        assert w.get(B).status == "blocked"  # type: ignore[union-attr]
        store.append(WorkerProgress(bead_id=B, epic_id=E, progress_percent=60))
        assert w.get(B).status == "running"  # type: ignore[union-attr]
        store.append(
            WorkerCompleted(
                bead_id=B, epic_id=E, summary="done", files_touched=["a"], duration_ms=1234
            )
        )
        view = w.get(B)
        assert view is not None
        assert (view.status, view.summary, view.duration_ms, view.progress_percent) == (
            "completed",
            "done",
            1234,
            100,
        )
        # A late progress report must not turn finished work back into "running": refused,
        # and nothing is written.
        seq = store.last_seq()
        with pytest.raises(IllegalTransitionError):
            store.append(WorkerProgress(bead_id=B, epic_id=E, progress_percent=90))
        assert w.get(B).status == "completed"  # type: ignore[union-attr]
        assert store.last_seq() == seq
        assert [v.bead_id for v in w.list(epic_id=E)] == [B]
        assert w.list(epic_id="bd-other1") == []

    def test_worker_failure_retry_and_stale_events(self, store: Store) -> None:
        w = store.workers
        store.append(WorkerSpawned(bead_id=B, epic_id=E, session_id="s1"))
        store.append(WorkerFailed(bead_id=B, epic_id=E, error="instance died"))
        assert w.get(B).status == "failed"  # type: ignore[union-attr]
        store.append(WorkerRetried(bead_id=B, epic_id=E, attempt=2, reason="instance died"))
        view = w.get(B)
        assert view is not None
        assert (view.status, view.attempt, view.error) == ("pending", 2, None)
        store.append(WorkerSpawned(bead_id=B, epic_id=E, attempt=2, session_id="s2"))
        # The old session going idle, or a late event of attempt 1, changes nothing: the
        # event is recorded as stale.
        store.append(SessionStatus(session_id="s1", instance="i1", status="idle", bead_id=B))
        store.append(WorkerCompleted(bead_id=B, epic_id=E, attempt=1, status="failed"))
        view = w.get(B)
        assert view is not None
        assert (view.status, view.session_id, view.session_status) == ("running", "s2", None)
        assert [(r["type"], r["attempt"]) for r in w.stale(B)] == [("worker_completed", 1)]
        store.append(WorkerCompleted(bead_id=B, epic_id=E, attempt=2, status="blocked", error="?"))
        assert w.get(B).status == "blocked"  # type: ignore[union-attr]
        store.append(WorkerSpawned(bead_id=f"{E}.2", epic_id=E, session_id="s3"))
        store.append(WorkerNeedsReview(bead_id=f"{E}.2", epic_id=E, reason="idle"))
        assert w.get(f"{E}.2").status == "needs_review"  # type: ignore[union-attr]
        assert [v.status for v in w.list(epic_id=E)] == ["blocked", "needs_review"]

    # The conflict check reads only candidate rows (by literal head); it must find exactly
    # what comparing the request with every holding would.
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(
        held=st.lists(st.sampled_from(_POOL), min_size=1, max_size=6, unique=True),
        wanted=st.lists(st.sampled_from(_POOL), min_size=1, max_size=2, unique=True),
    )
    def test_conflicts_equal_brute_force(
        self, backend: StoreBackend, held: list[str], wanted: list[str]
    ) -> None:
        root = backend.new_project()
        with backend.open(backend.new_url(root), root) as store:
            for n, pattern in enumerate(held):
                store.reservations.reserve(f"h{n}", [pattern])  # may be refused: fine
            holdings = [(v.holder, v.pattern) for v in store.reservations.active()]
            result = store.reservations.reserve("me", wanted)
            expected = {(h, p, w) for h, p in holdings for w in wanted if patterns_overlap(p, w)}
            found = {(c.holder, c.pattern, c.requested) for c in result.conflicts}
            assert found == expected
            assert result.granted is (not expected)


class TestDomainOnSQLite(OnSQLite, DomainContract):
    pass


class TestDomainOnPostgres(OnPostgres, DomainContract):
    pass
