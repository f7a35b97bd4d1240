"""``dashboard --once`` on a store with a realistic history: every panel, real values.

The pool side is a state file naming cheap stand-in processes (this test process as the
supervisor, two sleeping Python children as the instances), so psutil has real pids to
measure; the real-pool version is in test_view_pool.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import ChildRecord, PoolState, SupervisorRecord, write_state
from swarm_pool.store import open_project_store
from swarm_pool.store.events import BeadSpec
from swarm_pool.view.dashboard import events_panel, render
from swarm_pool.view.snapshot import Limits, SnapshotSource
from tests.view_history import History, build_history


@pytest.fixture
def standins() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(2)
    ]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def write_pool_state(root: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    me = psutil.Process()
    started = time.time() - 125
    children = [
        ChildRecord(
            name=f"oc-{i}",
            port=4101 + i,
            pid=p.pid,
            create_time=psutil.Process(p.pid).create_time(),
            state="ready",
            restarts=i - 1,
            started_at=started,
            ready_at=started + 2,
        )
        for i, p in enumerate(procs, start=1)
    ]
    state = PoolState(
        project_root=str(root),
        phase="running",
        size=len(children),
        supervisor=SupervisorRecord(pid=me.pid, create_time=me.create_time()),
        instances=children,
    )
    write_state(ProjectPaths(root).state_file, state)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    return tmp_path


def dashboard_once(project: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    out = subprocess.run(
        [sys.executable, "-m", "swarm_pool", "dashboard", "--once", "--project", str(project)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def row(text: str, *needles: str) -> str:
    """The one line of ``text`` holding every needle."""
    found = [line for line in text.splitlines() if all(n in line for n in needles)]
    assert len(found) == 1, f"{needles} in {len(found)} lines of:\n{text}"
    return found[0]


def cells(line: str) -> list[str]:
    return line.strip("│ ").split()


def test_once_shows_every_panel_with_real_values(
    project: Path, standins: list[subprocess.Popen[bytes]]
) -> None:
    history: History = build_history(project)
    write_pool_state(project, standins)
    text = dashboard_once(project)
    lines = text.splitlines()
    assert max(len(line) for line in lines) == 120  # fixed width without a TTY
    assert "\x1b[" not in text  # no colour codes in a pipe

    header = "\n".join(lines[:2])  # the fixed facts, then the supervisor and the path
    assert f"supervisor {os.getpid()} running" in lines[1]
    assert f"seq {history.last_seq}" in header

    # instances: name, state, port, pid, RSS, CPU, busy, restarts, uptime
    for i, proc in enumerate(standins, start=1):
        values = cells(row(text, f"oc-{i} ", "ready"))
        assert values[:4] == [f"oc-{i}", "ready", str(4101 + i), str(proc.pid)]
        rss, cpu = float(values[4]), float(values[5])
        assert 3 < rss < 200  # a sleeping Python
        assert 0 <= cpu < 50
        busy = "1" if i == 1 else "0"  # oc-1 runs .4, whose session is busy
        assert values[6:8] == [busy, str(i - 1)]
        assert re.fullmatch(r"2m0\ds", values[8])  # started 125 s ago

    # workers by epic: the epic line, then one row per bead, attention first
    c = history.cells
    assert re.search(
        rf"{history.epic_id}\s+Add authentication\s+2/6 done, 1 blocked, 1 needs review, "
        r"1 failed, 1 running",
        text,
    )
    running = row(text, f"│ {c[3]} ", "running")
    assert "30%" in running and "oc-1" in running and "writing route tests" in running
    assert re.search(r"\b9m5\ds\b|\b10m0\ds\b", running)  # spawned 596 s ago, still running
    blocked = row(text, f"│ {c[5]} ", "blocked")
    assert "permission: bash rm -rf build" in blocked
    failed = row(text, f"│ {c[4]} ", "failed")
    assert "tests fail: test_burst" in failed and " 19s " in failed
    review = row(text, f"│ {c[1]} ", "needs review")
    assert " 30s " in review and "oc-2" in review
    merged = row(text, f"│ {c[0]} ", "merged")
    assert "100%" in merged and " 20s " in merged and "login form with validation" in merged
    retried = row(text, f"│ {c[2]} ", "completed")
    assert cells(retried)[cells(retried).index("completed") + 3] == "2"  # attempt
    assert " 29s " in retried
    order = [text.index(f"{b} ") for b in (c[3], c[5], c[4], c[1], c[0])]
    assert order == sorted(order)

    # active reservations: holder, patterns, mode, bead, expires in
    res = row(text, "│ agent-4 ", "src/api/**")
    assert "tests/test_api.py" in res and "exclusive" in res and c[3] in res
    assert re.search(r"\b29m5\ds\b|\b30m00s\b", res)
    assert re.search(r"\b9m5\ds\b|\b10m00s\b", row(text, "│ agent-6 ", "docs/auth.md"))
    assert "active reservations (2)" in text
    assert "src/api/routes.py" not in row(text, "│ agent-6 ", "docs/auth.md")  # refused

    # last events: newest first, the conflict among them
    conflict = row(text, "file_conflict")
    assert "requested=src/api/routes.py" in conflict and "held: src/api/**" in conflict
    assert text.index(f" {history.last_seq} ") < text.index("file_conflict")


def test_failures_and_conflicts_are_highlighted(project: Path) -> None:
    build_history(project)
    with SnapshotSource(ProjectPaths(project)) as source:
        snap = source.take(Limits(events=40))
    levels = {e.type: e.level for e in snap.events}
    assert levels["file_conflict"] == "conflict"
    assert levels["worker_failed"] == "failure"
    assert levels["instance_exited"] == "failure"
    assert levels["worker_blocked"] == "warning"
    by_seq = {e.text: e.level for e in snap.events if e.type == "worker_completed"}
    assert sorted(by_seq.values()) == ["failure", "good", "good"]

    console = Console(width=120, force_terminal=True, color_system="standard")
    styles = {}
    for segment in console.render(events_panel(snap)):
        if segment.text.strip() in ("file_conflict", "worker_failed", "session_status"):
            styles[segment.text.strip()] = segment.style
    assert styles["file_conflict"] is not None and styles["file_conflict"].color is not None
    assert styles["file_conflict"].color.name == "magenta" and styles["file_conflict"].bold
    assert styles["worker_failed"] is not None and styles["worker_failed"].color is not None
    assert styles["worker_failed"].color.name == "red"
    plain = styles["session_status"]
    assert plain is None or plain.color is None


def test_frames_stay_bounded_however_many_workers(project: Path) -> None:
    paths = ProjectPaths(project)
    with open_project_store(paths) as store:
        epic = store.hive.create_epic("big", [BeadSpec(title=f"t{i}") for i in range(60)])
        store.append_many(
            [
                {
                    "type": "worker_spawned",
                    "bead_id": cell.id,
                    "epic_id": epic.id,
                    "session_id": f"s{i}",
                    "instance": "oc-1",
                }
                for i, cell in enumerate(epic.cells)
            ]
        )
    with SnapshotSource(paths) as source:
        snap = source.take(Limits.for_height(40))
    [block] = snap.epics
    assert block.total == 60
    assert 0 < len(block.workers) < 20 and block.hidden == 60 - len(block.workers)
    assert len(snap.events) <= 12
    console = Console(width=120, height=40, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(render(snap))
    text = console.export_text()
    assert f"... {block.hidden} more" in text
    assert len(text.splitlines()) <= 45


def test_once_without_a_store_or_pool(project: Path) -> None:
    text = dashboard_once(project)
    assert "no pool running" in text and "no store yet" in text
    assert not (project / ".swarm" / "swarm.db").exists()  # the dashboard only reads


def test_a_corrupt_pool_state_is_shown_and_the_rest_still_drawn(project: Path) -> None:
    history = build_history(project)
    ProjectPaths(project).state_file.write_text("{not json")
    text = dashboard_once(project)
    assert "pool: pool state" in text and "corrupt" in text
    assert f"{history.epic_id}  Add authentication" in text and "file_conflict" in text
