"""``swarm-pool log``, ``reservations``, ``db check`` and ``db rebuild`` with CliRunner: a
contract run on the project's SQLite file and on PostgreSQL (``--store URL``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from swarm_pool.cli import main
from swarm_pool.store.events import BeadSpec, InstanceReady
from tests.store_backends import OnPostgres, OnSQLite, StoreBackend, StoreFixtures


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


class CliContract(StoreFixtures):
    @pytest.fixture
    def project(self, backend: StoreBackend, url: str, root: Path) -> tuple[list[str], str]:
        with backend.open(url, root) as s:
            epic = s.hive.create_epic("demo", [BeadSpec(title="a"), BeadSpec(title="b")])
            bead = epic.cells[0].id
            s.append(
                {"type": "worker_spawned", "bead_id": bead, "epic_id": epic.id, "session_id": "S1"}
            )
            s.append(InstanceReady(instance="i1", pid=1))
            s.reservations.reserve("alice", ["src/**"], reason="auth work", bead_id=bead)
            s.reservations.reserve("bob", ["src/a.py"])  # conflict
        return ["--project", str(root), *backend.cli_args(url)], epic.id

    def test_log_json_lines_and_filters(self, project: tuple[list[str], str]) -> None:
        where, epic = project
        code, out, err = run("log", *where, "--json")
        assert code == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert [e["type"] for e in events][:3] == ["epic_created", "cell_created", "cell_created"]
        assert events[3]["session_id"] == "S1"

        def seqs(*extra: str) -> list[int]:
            code, out, err = run("log", *where, "--json", *extra)
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

    def test_log_human_lines(self, project: tuple[list[str], str]) -> None:
        where, _epic = project
        code, out, _ = run("log", *where, "--type", "file_reserved")
        assert code == 0
        lines = out.splitlines()
        assert len(lines) == 1
        assert "file_reserved" in lines[0] and "holder=alice" in lines[0]
        assert "pattern=src/**" in lines[0]

    def test_log_rejects_unknown_type(self, project: tuple[list[str], str]) -> None:
        where, _epic = project
        code, _out, err = run("log", *where, "--type", "nope")
        assert code == 2 and "nope" in err

    def test_reservations(self, project: tuple[list[str], str]) -> None:
        where, _epic = project
        code, out, _ = run("reservations", *where, "--json")
        assert code == 0
        data = json.loads(out)
        assert [(r["holder"], r["pattern"], r["reason"]) for r in data] == [
            ("alice", "src/**", "auth work")
        ]
        code, out, _ = run("reservations", *where)
        assert code == 0
        assert "alice" in out and "src/**" in out and "exclusive" in out

    def test_db_check_and_rebuild(
        self,
        project: tuple[list[str], str],
        backend: StoreBackend,
        url: str,
        root: Path,
    ) -> None:
        where, _epic = project
        code, out, _ = run("db", "check", *where, "--json")
        assert code == 0
        report = json.loads(out)
        assert report["integrity"] == "ok" and report["backend"] == backend.name
        assert report["events"] == 7 and report["seq_gap_free"]
        assert report["by_type"]["cell_created"] == 2
        code, out, _ = run("db", "check", *where)
        assert code == 0 and "integrity:  ok" in out

        with backend.raw(url, root) as conn:
            conn.execute("DELETE FROM reservations")
        code, out, _ = run("reservations", *where)
        assert "no active reservations" in out
        code, out, _ = run("db", "rebuild", *where)
        assert code == 0 and "7 events" in out
        code, out, _ = run("reservations", *where, "--json")
        assert [r["holder"] for r in json.loads(out)] == ["alice"]

    def test_store_url_from_the_environment(
        self,
        project: tuple[list[str], str],
        url: str,
        root: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("SWARM_POOL_STORE__URL", url)
        code, out, err = run("log", "--project", str(root), "--json", "--type", "instance_ready")
        assert code == 0, err
        assert [json.loads(line)["seq"] for line in out.splitlines()] == [5]


class TestCliOnSQLite(OnSQLite, CliContract):
    pass


class TestCliOnPostgres(OnPostgres, CliContract):
    pass


def test_commands_need_an_existing_store(tmp_path: Path) -> None:
    for args in (["log"], ["reservations"], ["db", "check"], ["db", "rebuild"]):
        code, _out, err = run(*args, "--project", str(tmp_path))
        assert code == 1
        assert "no store at" in err
    assert not (tmp_path / ".swarm").exists()


def test_bad_store_option_is_one_line(tmp_path: Path) -> None:
    code, out, err = run("log", "--project", str(tmp_path), "--store", "mysql://u:pw@h/db")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "bad store URL" in err and "pw" not in err


def test_unreachable_store_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql://u:secretpw@127.0.0.1:{port}/db"
    code, _out, err = run("db", "check", "--project", str(tmp_path), "--store", url)
    assert code == 1
    assert err.count("\n") == 1 and "cannot connect to the store" in err
    assert "secretpw" not in err
