"""Metrics: the pure functions against hand computation, and ``metrics --json`` on a store
whose history was written through the store API (figures worked out in view_history)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from swarm_pool.store import StoredEvent
from swarm_pool.store.events import parse_event
from swarm_pool.view.metrics import (
    LiveStats,
    compute,
    epic_metrics,
    instance_metrics,
    percentile,
)
from tests.view_history import (
    EXPECTED_EPIC,
    EXPECTED_INSTANCES,
    SAMPLED_MEAN_CPU,
    SAMPLED_PEAK,
    build_history,
)

E = "bd-abc123"


def stored(events: list[dict[str, Any]]) -> list[StoredEvent]:
    out = []
    for seq, data in enumerate(events, start=1):
        ev = parse_event(data)
        out.append(StoredEvent(seq=seq, type=ev.type, timestamp=ev.timestamp, event=ev))
    return out


def spawn(ts: int, bead: str, sid: str, inst: str = "oc-1", attempt: int = 1) -> dict[str, Any]:
    return {
        "type": "worker_spawned",
        "timestamp": ts,
        "bead_id": bead,
        "epic_id": E,
        "session_id": sid,
        "instance": inst,
        "attempt": attempt,
    }


def status(ts: int, sid: str, st: str) -> dict[str, Any]:
    return {
        "type": "session_status",
        "timestamp": ts,
        "session_id": sid,
        "instance": "oc-1",
        "status": st,
    }


def done(ts: int, bead: str, sid: str, attempt: int = 1, **kw: Any) -> dict[str, Any]:
    return {
        "type": "worker_completed",
        "timestamp": ts,
        "bead_id": bead,
        "epic_id": E,
        "session_id": sid,
        "attempt": attempt,
        **kw,
    }


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile([], 0.5) is None
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    # pos = 10 * 0.95 = 9.5 -> 90 + 0.5 * (100 - 90)
    assert percentile(range(0, 101, 10), 0.95) == 95.0
    assert percentile([0, 1000, 2000], 0.95) == 1900.0
    assert percentile([5, 1, 3], 0.0) == 1 and percentile([5, 1, 3], 1.0) == 5


def test_durations_use_the_recorded_duration_else_the_timestamps() -> None:
    events = stored(
        [
            spawn(1000, f"{E}.1", "s1"),
            spawn(1000, f"{E}.2", "s2"),
            done(5000, f"{E}.1", "s1", duration_ms=3000),  # given wins over 4000
            {
                "type": "worker_failed",
                "timestamp": 9000,
                "bead_id": f"{E}.2",
                "epic_id": E,
                "session_id": "s2",
                "error": "x",
            },
        ]
    )
    [m] = epic_metrics(events)
    assert (m.duration_samples, m.duration_p50_ms) == (2, 5500.0)  # 3000 and 8000
    assert (m.finished, m.succeeded, m.failed, m.success_rate) == (2, 1, 1, 0.5)


def test_a_bead_being_retried_is_not_finished_and_retries_are_counted() -> None:
    events = stored(
        [
            spawn(0, f"{E}.1", "s1"),
            {
                "type": "worker_failed",
                "timestamp": 100,
                "bead_id": f"{E}.1",
                "epic_id": E,
                "session_id": "s1",
                "error": "instance died",
            },
            {
                "type": "worker_retried",
                "timestamp": 101,
                "bead_id": f"{E}.1",
                "epic_id": E,
                "attempt": 2,
            },
            spawn(200, f"{E}.1", "s1b", attempt=2),
        ]
    )
    [m] = epic_metrics(events)
    assert (m.workers, m.attempts, m.retries, m.finished, m.success_rate) == (1, 2, 1, 0, None)
    assert m.duration_samples == 1  # the failed first attempt still took 100 ms
    more = stored([*(s.event.model_dump() for s in events), done(900, f"{E}.1", "s1b", 2)])
    [m2] = epic_metrics(more)
    assert (m2.finished, m2.succeeded, m2.success_rate) == (1, 1, 1.0)


def test_idle_to_detected_measures_from_the_start_of_the_idle_stretch() -> None:
    events = stored(
        [
            # idle, busy again (an answered question), idle at 5000, detected at 5600
            spawn(0, f"{E}.1", "s1"),
            status(100, "s1", "busy"),
            status(1000, "s1", "idle"),
            status(2000, "s1", "busy"),
            status(5000, "s1", "idle"),
            {
                "type": "worker_needs_review",
                "timestamp": 5600,
                "bead_id": f"{E}.1",
                "epic_id": E,
                "session_id": "s1",
            },
            # swarm_complete while busy, idle afterwards: 0
            spawn(0, f"{E}.2", "s2"),
            status(100, "s2", "busy"),
            done(3000, f"{E}.2", "s2"),
            status(3100, "s2", "idle"),
            # no session status at all: no sample
            spawn(0, f"{E}.3", "s3"),
            done(3000, f"{E}.3", "s3"),
        ]
    )
    [m] = epic_metrics(events)
    assert m.idle_samples == 2
    assert m.idle_to_detected_max_ms == 600.0
    assert m.idle_to_detected_p50_ms == 300.0


def test_instance_metrics_merge_samples_and_live_figures() -> None:
    events = stored(
        [
            {"type": "instance_restarted", "instance": "oc-1", "restarts": 1},
            {"type": "instance_restarted", "instance": "oc-1", "restarts": 2},
            {"type": "instance_stats", "instance": "oc-1", "rss_mb": 400.0, "cpu_percent": 10.0},
            {"type": "instance_stats", "instance": "oc-1", "rss_mb": 500.0, "cpu_percent": 30.0},
            spawn(0, f"{E}.1", "s1", inst="oc-1"),
            spawn(0, f"{E}.2", "s2", inst="oc-2"),
            spawn(0, f"{E}.3", "s3", inst="oc-2"),
        ]
    )
    live = {
        "oc-1": LiveStats(rss_mb=300.0, peak_rss_mb=450.0, mean_cpu_percent=99.0),
        "oc-2": LiveStats(rss_mb=320.0, peak_rss_mb=640.0, mean_cpu_percent=4.0),
        "oc-3": LiveStats(rss_mb=310.0, peak_rss_mb=None, mean_cpu_percent=None),
    }
    by = {m.instance: m for m in instance_metrics(events, live)}
    one, two, three = by["oc-1"], by["oc-2"], by["oc-3"]
    assert (one.restarts, one.sessions_served, one.peak_rss_mb) == (2, 1, 500.0)
    assert (one.peak_rss_source, one.mean_cpu_percent, one.cpu_source) == (
        "samples+live",
        20.0,
        "samples",
    )
    assert (two.restarts, two.sessions_served, two.peak_rss_mb) == (0, 2, 640.0)
    assert (two.peak_rss_source, two.mean_cpu_percent, two.cpu_source) == ("live", 4.0, "live")
    # No high-water mark known: the current RSS is the best lower bound.
    assert (three.peak_rss_mb, three.mean_cpu_percent, three.cpu_source) == (310.0, None, None)


def test_compute_filters_epics() -> None:
    events = stored(
        [spawn(0, f"{E}.1", "s1"), {**spawn(0, "bd-zzz999.1", "s9"), "epic_id": "bd-zzz999"}]
    )
    assert [e["epic_id"] for e in compute(events)["epics"]] == [E, "bd-zzz999"]
    assert [e["epic_id"] for e in compute(events, epic_id=E)["epics"]] == [E]


def run_cli(*args: str, project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarm_pool", *args, "--project", str(project)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_metrics_json_matches_the_hand_computation(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    history = build_history(tmp_path)
    out = run_cli("metrics", "--json", project=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    [epic] = data["epics"]
    assert epic == {"epic_id": history.epic_id, **EXPECTED_EPIC}
    by = {i["instance"]: i for i in data["instances"]}
    assert set(by) == {"oc-1", "oc-2"}
    for name, expected in EXPECTED_INSTANCES.items():
        assert {k: by[name][k] for k in expected} == expected
        # No pool runs here, so only the recorded samples count.
        assert by[name]["peak_rss_mb"] == SAMPLED_PEAK[name]
        assert by[name]["mean_cpu_percent"] == SAMPLED_MEAN_CPU[name]
        assert by[name]["peak_rss_source"] == "samples"
    one = run_cli("metrics", "--json", "--epic", history.epic_id, project=tmp_path)
    assert json.loads(one.stdout)["epics"] == data["epics"]
    human = run_cli("metrics", project=tmp_path)
    assert human.returncode == 0, human.stderr
    assert history.epic_id in human.stdout and "2/4 (50%)" in human.stdout
    assert "20.0s" in human.stdout and "29.9s" in human.stdout


def test_metrics_errors_are_one_line(tmp_path: Path) -> None:
    out = run_cli("metrics", project=tmp_path)
    assert out.returncode == 1 and "no store" in out.stderr
    build_history(tmp_path)
    out = run_cli("metrics", "--epic", "bd-nope00", project=tmp_path)
    assert out.returncode == 1 and "bd-nope00" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
