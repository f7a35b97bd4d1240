"""``swarm-pool log``, ``reservations``, ``db check`` and ``db rebuild`` with CliRunner."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from swarm_pool.cli import main
from swarm_pool.paths import ProjectPaths
from swarm_pool.store import open_store
from swarm_pool.store.events import InstanceReady, SubtaskSpec


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, str]:
    paths = ProjectPaths(tmp_path).ensure()
    with open_store(paths.db) as s:
        epic = s.hive.create_epic("demo", [SubtaskSpec(title="a"), SubtaskSpec(title="b")])
        bead = epic.cells[0].id
        s.append(
            {"type": "worker_spawned", "bead_id": bead, "epic_id": epic.id, "session_id": "S1"}
        )
        s.append(InstanceReady(instance="i1", pid=1))
        s.reservations.reserve("alice", ["src/**"], reason="auth work", bead_id=bead)
        s.reservations.reserve("bob", ["src/a.py"])  # conflict
    return tmp_path, epic.id


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_log_json_lines_and_filters(project: tuple[Path, str]) -> None:
    root, epic = project
    code, out, _ = run("log", "--project", str(root), "--json")
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["type"] for e in events][:3] == ["epic_created", "cell_created", "cell_created"]
    assert events[3]["session_id"] == "S1"

    def seqs(*extra: str) -> list[int]:
        code, out, err = run("log", "--project", str(root), "--json", *extra)
        assert code == 0, err
        return [json.loads(line)["seq"] for line in out.splitlines()]

    assert seqs("--type", "instance_ready") == [5]
    assert seqs("--type", "instance_ready", "--type", "file_conflict") == [5, 7]
    assert seqs("--epic", epic) == [1, 2, 3, 4]
    assert seqs("--bead", f"{epic}.2") == [3]
    assert seqs("--session", "S1") == [4]
    assert seqs("--since-seq", "5") == [6, 7]
    assert seqs("--limit", "2") == [6, 7]  # the latest two
    assert seqs("--since-seq", "1", "--limit", "2") == [2, 3]  # the next two


def test_log_human_lines(project: tuple[Path, str]) -> None:
    root, _epic = project
    code, out, _ = run("log", "--project", str(root), "--type", "file_reserved")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 1
    assert "file_reserved" in lines[0] and "holder=alice" in lines[0]
    assert "pattern=src/**" in lines[0]


def test_log_rejects_unknown_type(project: tuple[Path, str]) -> None:
    root, _epic = project
    code, _out, err = run("log", "--project", str(root), "--type", "nope")
    assert code == 2 and "nope" in err


def test_reservations(project: tuple[Path, str]) -> None:
    root, _epic = project
    code, out, _ = run("reservations", "--project", str(root), "--json")
    assert code == 0
    data = json.loads(out)
    assert [(r["holder"], r["pattern"], r["reason"]) for r in data] == [
        ("alice", "src/**", "auth work")
    ]
    code, out, _ = run("reservations", "--project", str(root))
    assert code == 0
    assert "alice" in out and "src/**" in out and "exclusive" in out


def test_db_check_and_rebuild(project: tuple[Path, str]) -> None:
    root, _epic = project
    code, out, _ = run("db", "check", "--project", str(root), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["integrity"] == "ok"
    assert report["events"] == 7 and report["seq_gap_free"]
    assert report["by_type"]["cell_created"] == 2
    code, out, _ = run("db", "check", "--project", str(root))
    assert code == 0 and "integrity:  ok" in out

    db = root / ".swarm" / "swarm.db"
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM reservations")
    conn.commit()
    conn.close()
    code, out, _ = run("reservations", "--project", str(root))
    assert "no active reservations" in out
    code, out, _ = run("db", "rebuild", "--project", str(root))
    assert code == 0 and "7 events" in out
    code, out, _ = run("reservations", "--project", str(root), "--json")
    assert [r["holder"] for r in json.loads(out)] == ["alice"]


def test_commands_need_an_existing_store(tmp_path: Path) -> None:
    for args in (["log"], ["reservations"], ["db", "check"], ["db", "rebuild"]):
        code, _out, err = run(*args, "--project", str(tmp_path))
        assert code == 1
        assert "no store at" in err
    assert not (tmp_path / ".swarm").exists()
