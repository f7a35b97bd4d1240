"""The worker commands' plumbing (JSON shapes, exit codes, one-line errors) without a pool.

The commands against a real pool are exercised in ``test_workers_e2e.py`` (run, poll,
answer, merge) and ``test_workers_run.py``; here the store is filled by hand.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from swarm_pool.paths import ProjectPaths
from swarm_pool.store import open_project_store
from swarm_pool.store.events import (
    BeadSpec,
    WorkerCompleted,
    WorkerProgress,
    WorkerQueued,
    WorkerSpawned,
)
from tests.pool_cli import cli


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, str, list[str]]:
    root = tmp_path / "proj"
    root.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    with open_project_store(ProjectPaths(root)) as store:
        epic = store.hive.create_epic(
            "e", [BeadSpec(title=t, files=[f"{t}.txt"]) for t in ("a", "b", "c")]
        )
        a, b, c = (cell.id for cell in epic.cells)
        store.append_many(
            [
                WorkerSpawned(bead_id=a, epic_id=epic.id, session_id="ses_a", instance="oc-1"),
                WorkerProgress(bead_id=a, epic_id=epic.id, progress_percent=40, message="half"),
                WorkerSpawned(bead_id=b, epic_id=epic.id, session_id="ses_b", instance="oc-2"),
                WorkerCompleted(bead_id=b, epic_id=epic.id, session_id="ses_b", summary="ok"),
                WorkerQueued(bead_id=c, epic_id=epic.id, reason="pool full"),
            ]
        )
    return root.resolve(), epic.id, [a, b, c]


def test_poll_and_workers_json(project: tuple[Path, str, list[str]]) -> None:
    root, epic, (a, b, c) = project
    out = cli("poll", epic, "--json", project=root)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["counts"] == {
        "completed": 1,
        "completed_needs_review": 0,
        "in_progress": 1,
        "pending": 1,
        "blocked": 0,
        "failed": 0,
    }
    running = data["groups"]["in_progress"][0]
    assert running["bead_id"] == a and running["progress_percent"] == 40
    assert running["last_message"] == "half" and running["instance"] == "oc-1"
    assert running["attempt"] == 1 and running["duration_ms"] >= 0
    out = cli("workers", "--epic", epic, "--json", project=root)
    assert {w["bead_id"] for w in json.loads(out.stdout)} == {a, b, c}
    table = cli("poll", epic, project=root)
    assert table.returncode == 0 and a in table.stdout and "in_progress" in table.stdout


def test_await_with_work_left_and_no_engine_exits_3_at_once(
    project: tuple[Path, str, list[str]],
) -> None:
    # No pool runs here: waiting could only end in the timeout, so await says why.
    root, epic, _ = project
    out = cli("await", epic, "--timeout", "600", "--json", project=root)
    assert out.returncode == 3, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["stalled"] and data["timed_out"] is False
    assert out.stderr.count("\n") == 1 and "swarm-pool start" in out.stderr


def test_spawn_without_a_pool_is_one_clear_line(project: tuple[Path, str, list[str]]) -> None:
    root, _, beads = project
    fresh = beads[0].rsplit(".", 1)[0] + ".9"
    out = cli("spawn", fresh, project=root)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "does not exist" in out.stderr
    with open_project_store(ProjectPaths(root)) as store:
        epic = store.hive.create_epic("f", [BeadSpec(title="x")])
    out = cli("spawn", epic.cells[0].id, "--json", project=root)
    assert out.returncode == 1 and "no running pool" in out.stderr
    assert out.stderr.count("\n") == 1


def test_answer_and_review_errors(project: tuple[Path, str, list[str]]) -> None:
    root, _, (a, _, _) = project
    out = cli("answer", a, project=root)
    assert out.returncode == 2 and "exactly one of --reply or --answer" in out.stderr
    out = cli("answer", a, "--reply", "once", project=root)
    assert out.returncode == 1 and "not waiting for an answer" in out.stderr
    out = cli("merge", a, project=root)
    assert out.returncode == 1 and "only finished work is merged" in out.stderr
