"""A realistic swarm history, written through the store API, for the view tests.

One epic of six tasks on two instances: a success, an idle-without-complete (needs
review), a failure on an instance that died then a successful retry elsewhere, a
running worker, a worker that completed with status failed, and one blocked on a
permission; reservations (one of them refused: a conflict), a review and a merge, and
resource samples. Timestamps are ``base + offset`` so the metrics can be computed by
hand (see ``EXPECTED``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm_pool.paths import ProjectPaths
from swarm_pool.store import open_project_store
from swarm_pool.store.events import BeadSpec, now_ms

TASKS = [
    ("login form", ["src/login.py"]),
    ("session store", ["src/session.py"]),
    ("password hashing", ["src/hash.py"]),
    ("api routes", ["src/api/**"]),
    ("rate limiter", ["src/limit.py"]),
    ("docs", ["docs/auth.md"]),
]

# By hand from the events below (see the module docstring of swarm_pool.view.metrics):
# attempt durations 20000 (.1), 30000 (.2 needs review, no duration: 32000-2000),
# 7000 (.3 attempt 1 failed: 10000-3000), 29500 (.3 attempt 2: 40500-11000),
# 19000 (.5, given) -> sorted 7000 19000 20000 29500 30000: p50 20000,
# p95 = 29500 + 0.8 * 500 = 29900.
# idle->detected: .1 0 (completed while busy), .2 2000, .3a1 0 (failed while busy),
# .3a2 500, .5 1000 -> 0 0 500 1000 2000: p50 500, p95 1000 + 0.8 * 1000 = 1800, max 2000.
# outcomes: .1 success, .2 needs review, .3 success (attempt 2), .5 failed; .4 running,
# .6 blocked -> 4 finished, 2 succeeded: success rate 0.5; 1 retry; 6 workers, 7 attempts.
EXPECTED_EPIC = {
    "workers": 6,
    "attempts": 7,
    "finished": 4,
    "succeeded": 2,
    "failed": 1,
    "blocked": 0,
    "needs_review": 1,
    "success_rate": 0.5,
    "retries": 1,
    "retries_task": 1,
    "retries_infra": 0,
    "duration_samples": 5,
    "duration_p50_ms": 20000.0,
    "duration_p95_ms": 29900.0,
    "idle_samples": 5,
    "idle_to_detected_p50_ms": 500.0,
    "idle_to_detected_p95_ms": 1800.0,
    "idle_to_detected_max_ms": 2000.0,
}
# oc-1 served .1 .3(attempt 2) .4 .5 .6; oc-2 served .2 .3(attempt 1) and restarted once.
EXPECTED_INSTANCES = {
    "oc-1": {"restarts": 0, "exits": 0, "sessions_served": 5, "rss_samples": 2},
    "oc-2": {"restarts": 1, "exits": 1, "sessions_served": 2, "rss_samples": 1},
}
SAMPLED_PEAK = {"oc-1": 420.5, "oc-2": 350.0}
SAMPLED_MEAN_CPU = {"oc-1": 21.0, "oc-2": 6.0}


@dataclass(frozen=True)
class History:
    epic_id: str
    cells: list[str]
    base: int
    last_seq: int


def build_history(root: Path) -> History:
    paths = ProjectPaths(root)
    base = now_ms() - 600_000
    with open_project_store(paths) as store:
        epic = store.hive.create_epic(
            "Add authentication",
            [BeadSpec(title=t, files=f) for t, f in TASKS],
            description="login, sessions, hashing",
        )
        e = epic.id
        c = [cell.id for cell in epic.cells]

        def at(offset: int, **data: Any) -> dict[str, Any]:
            return {"timestamp": base + offset, **data}

        def spawn(off: int, i: int, inst: str, sid: str, attempt: int = 1) -> dict[str, Any]:
            return at(
                off,
                type="worker_spawned",
                bead_id=c[i],
                epic_id=e,
                session_id=sid,
                attempt=attempt,
                instance=inst,
                agent_name=f"agent-{i + 1}",
                worktree=str(root / ".swarm" / "worktrees" / c[i]),
                files=TASKS[i][1],
            )

        def status(off: int, i: int, inst: str, sid: str, st: str) -> dict[str, Any]:
            return at(
                off,
                type="session_status",
                session_id=sid,
                instance=inst,
                status=st,
                bead_id=c[i],
                epic_id=e,
            )

        events: list[dict[str, Any]] = [
            at(0, type="pool_started", supervisor_pid=4242, size=2),
            at(10, type="instance_started", instance="oc-1", pid=5001, port=4101),
            at(20, type="instance_started", instance="oc-2", pid=5002, port=4102),
            at(900, type="instance_ready", instance="oc-1", pid=5001, port=4101, startup_ms=890),
            at(950, type="instance_ready", instance="oc-2", pid=5002, port=4102, startup_ms=930),
            spawn(1000, 0, "oc-1", "ses_1"),
            status(1500, 0, "oc-1", "ses_1", "busy"),
            spawn(2000, 1, "oc-2", "ses_2"),
            status(2500, 1, "oc-2", "ses_2", "busy"),
            spawn(3000, 2, "oc-2", "ses_3"),
            status(3500, 2, "oc-2", "ses_3", "busy"),
            spawn(4000, 3, "oc-1", "ses_4"),
            status(4500, 3, "oc-1", "ses_4", "busy"),
            spawn(5000, 4, "oc-1", "ses_5"),
            status(5500, 4, "oc-1", "ses_5", "busy"),
            at(
                5600,
                type="worker_progress",
                bead_id=c[0],
                epic_id=e,
                session_id="ses_1",
                progress_percent=50,
                message="form renders",
            ),
            spawn(6000, 5, "oc-1", "ses_6"),
            at(
                7000,
                type="worker_blocked",
                bead_id=c[5],
                epic_id=e,
                session_id="ses_6",
                reason="permission: bash rm -rf build",
                kind="permission",
                request_id="per_1",
                instance="oc-1",
            ),
            at(
                8000,
                type="worker_progress",
                bead_id=c[3],
                epic_id=e,
                session_id="ses_4",
                progress_percent=30,
                message="writing route tests",
            ),
            at(
                9000,
                type="instance_exited",
                instance="oc-2",
                pid=5002,
                port=4102,
                signal=9,
                reason="killed by SIGKILL",
            ),
            at(
                10000,
                type="worker_failed",
                bead_id=c[2],
                epic_id=e,
                session_id="ses_3",
                error="instance oc-2 exited while the worker was running",
                reason="instance_exited",
            ),
            at(
                10001,
                type="worker_retried",
                bead_id=c[2],
                epic_id=e,
                attempt=2,
                reason="instance_exited",
            ),
            at(
                10500,
                type="instance_restarted",
                instance="oc-2",
                pid=5003,
                port=4102,
                restarts=1,
                reason="killed by SIGKILL",
                backoff_s=0.5,
            ),
            spawn(11000, 2, "oc-1", "ses_3b", attempt=2),
            status(11500, 2, "oc-1", "ses_3b", "busy"),
            at(12000, type="instance_ready", instance="oc-2", pid=5003, port=4102),
            at(
                15000,
                type="instance_stats",
                instance="oc-1",
                pid=5001,
                rss_mb=310.0,
                cpu_percent=12.0,
            ),
            at(
                15000,
                type="instance_stats",
                instance="oc-2",
                pid=5003,
                rss_mb=350.0,
                cpu_percent=6.0,
            ),
            at(
                21000,
                type="worker_completed",
                bead_id=c[0],
                epic_id=e,
                session_id="ses_1",
                status="success",
                summary="login form with validation",
                files_touched=["src/login.py"],
                duration_ms=20000,
            ),
            status(21500, 0, "oc-1", "ses_1", "idle"),
            status(24000, 4, "oc-1", "ses_5", "idle"),
            at(
                25000,
                type="worker_completed",
                bead_id=c[4],
                epic_id=e,
                session_id="ses_5",
                status="failed",
                summary="limiter written",
                error="tests fail: test_burst",
                duration_ms=19000,
            ),
            at(
                26000,
                type="review_completed",
                bead_id=c[0],
                epic_id=e,
                approved=True,
                files_touched=["src/login.py"],
            ),
            at(
                27000,
                type="worktree_merged",
                bead_id=c[0],
                epic_id=e,
                branch=f"swarm/{c[0]}",
                base_branch="main",
                commit="abc1234",
            ),
            status(30000, 1, "oc-2", "ses_2", "idle"),
            at(
                32000,
                type="worker_needs_review",
                bead_id=c[1],
                epic_id=e,
                session_id="ses_2",
                instance="oc-2",
                reason="the session went idle without swarm_complete",
            ),
            at(
                35000,
                type="instance_stats",
                instance="oc-1",
                pid=5001,
                rss_mb=420.5,
                cpu_percent=30.0,
            ),
            status(40000, 2, "oc-1", "ses_3b", "idle"),
            at(
                40500,
                type="worker_completed",
                bead_id=c[2],
                epic_id=e,
                session_id="ses_3b",
                attempt=2,
                status="success",
                summary="bcrypt hashing",
                files_touched=["src/hash.py"],
            ),
        ]
        store.append_many(events)
        granted = store.reservations.reserve(
            "agent-4", ["src/api/**", "tests/test_api.py"], bead_id=c[3], epic_id=e, ttl_s=1800
        )
        assert granted.granted
        refused = store.reservations.reserve(
            "agent-6", ["src/api/routes.py"], bead_id=c[5], epic_id=e
        )
        assert not refused.granted
        store.reservations.reserve("agent-6", ["docs/auth.md"], bead_id=c[5], epic_id=e, ttl_s=600)
        return History(epic_id=e, cells=c, base=base, last_seq=store.last_seq())
