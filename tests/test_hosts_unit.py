"""Unit tests of the several-hosts pieces that need no server: the store password's
passfile, the host name's validation."""

from __future__ import annotations

import stat
from pathlib import Path

from swarm_pool.store.pgpass import passfile_line, seal_store_url, split_password


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
