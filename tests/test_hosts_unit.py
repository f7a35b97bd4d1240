"""Unit tests of the several-hosts pieces that need no server: the store password's
passfile, the host name's validation, the dashboard's host lines, and a SQLite store
(one host) showing no hosts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from swarm_pool.config import checked_host, default_host, load_config
from swarm_pool.errors import ConfigError
from swarm_pool.store.core import open_url
from swarm_pool.store.events import HostBeat, now_ms
from swarm_pool.store.hosts import hosts_overview
from swarm_pool.store.pgpass import passfile_line, seal_store_url, split_password
from swarm_pool.view.dashboard import header
from swarm_pool.view.snapshot import Snapshot


def test_split_password_takes_it_from_the_authority_and_the_query() -> None:
    bare, pw = split_password("postgresql://ann:s%3Acr%40t@db.example:5433/swarm?sslmode=require")
    assert pw == "s:cr@t"
    assert bare == "postgresql://ann@db.example:5433/swarm?sslmode=require"
    bare, pw = split_password("postgresql:///swarm?host=/run/pg&password=x%26y&user=bob")
    assert pw == "x&y"
    assert "password" not in bare and "user=bob" in bare and "host=%2Frun%2Fpg" in bare
    assert split_password("postgresql://ann@h/db") == ("postgresql://ann@h/db", None)


def test_passfile_line_escapes_and_matches_any_host() -> None:
    line = passfile_line("postgresql://a:b@h:1/d:b", "p\\w:d")
    assert line == "*:*:d\\:b:a:p\\\\w\\:d\n"
    assert passfile_line("postgresql:///x?user=u", "pw") == "*:*:x:u:pw\n"


def test_seal_moves_the_password_to_a_private_file(tmp_path: Path) -> None:
    env = {"PGPASSWORD": "from-env", "OTHER": "1"}
    url = seal_store_url("postgresql://ann:secret@127.0.0.1:5432/db", tmp_path, env)
    assert url == "postgresql://ann@127.0.0.1:5432/db"
    passfile = tmp_path / "pgpass"
    assert env == {"OTHER": "1", "PGPASSFILE": str(passfile)}
    assert passfile.read_text() == "*:*:db:ann:secret\n"
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    # $PGPASSWORD alone is moved too; no password at all leaves everything as it was.
    env = {"PGPASSWORD": "only-env"}
    assert seal_store_url("postgresql://ann@h/db", tmp_path, env) == "postgresql://ann@h/db"
    assert passfile.read_text() == "*:*:db:ann:only-env\n" and "PGPASSWORD" not in env
    env = {}
    assert seal_store_url("postgresql://ann@h/db", tmp_path / "none", env) == (
        "postgresql://ann@h/db"
    )
    assert env == {}
    assert seal_store_url("sqlite:///x.db", tmp_path, env) == "sqlite:///x.db"


def test_the_dashboard_header_shows_each_host_and_a_silent_one(tmp_path: Path) -> None:
    hosts = [
        {
            "name": "alpha",
            "stale": False,
            "last_beat_s": 1.0,
            "capacity": 8,
            "in_flight": 3,
            "load": 1.25,
            "instances": [{"name": "oc-1", "state": "ready", "busy": 3}],
        },
        {
            "name": "beta",
            "stale": True,
            "last_beat_s": 45.0,
            "capacity": 4,
            "in_flight": 2,
            "load": 0.5,
            "instances": [],
        },
    ]
    snap = Snapshot(project=str(tmp_path), taken_at=0, supervisor={}, hosts=hosts)
    text = header(snap).plain
    assert "host alpha  beat 1.0s ago  capacity 8  in flight 3  load 1.25  oc-1:ready/3" in text
    assert "host beta  SILENT 45.0s" in text
    assert "host" not in header(Snapshot(project="p", taken_at=0, supervisor={})).plain


def test_one_host_on_sqlite_has_no_hosts_to_show(tmp_path: Path) -> None:
    with open_url("", project_root=tmp_path) as store:
        store.append(HostBeat(host="x", pid=1, capacity=1))  # even if one beat
        assert hosts_overview(store, 30.0) == []
        assert [h["name"] for h in store.hosts.overview(now_ms(), 30_000)] == ["x"]


def test_host_names_are_checked() -> None:
    assert checked_host("build-01.lab") == "build-01.lab"
    for bad in ("", "-x", "a b", "a/b", "x" * 64):
        with pytest.raises(ConfigError):
            checked_host(bad)
    with pytest.raises(ConfigError, match=r"pool\.host"):
        load_config(None, environ={"SWARM_POOL_POOL__HOST": "no way"})
    assert load_config(None, environ={"SWARM_POOL_POOL__HOST": '"7"'}).pool.host == "7"
    assert load_config(None, environ={}).pool.host == default_host()
