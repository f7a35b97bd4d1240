"""A throw-away PostgreSQL server for the tests and the store benchmark.

``ScratchPostgres`` runs ``initdb`` and ``pg_ctl`` from the server binaries on this
machine (Debian's ``/usr/lib/postgresql/<version>/bin``, else ``initdb`` on PATH) in a
fresh temporary folder owned by the ``postgres`` user when we are root (``initdb``
refuses root), with its own random password (scram-sha-256), listening on 127.0.0.1 at
a free port and on a unix socket in that folder: two routes to one server, which the
several-hosts tests use as two "hosts". The default collation is ICU ``en-US`` where
the server supports it, so a projection that forgot ``COLLATE "C"`` sorts differently
from SQLite and the conformance suite sees it. ``stop`` shuts the server down and
removes the folder.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import psycopg

REQUIRE_ENV = "SWARM_POOL_REQUIRE_PG"


def find_bin_dir() -> Path | None:
    """The folder holding initdb/pg_ctl/postgres (the newest Debian version first)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def must_not_skip() -> str | None:
    """Why a missing server would be a failure here rather than a skip, if it would."""
    if os.environ.get(REQUIRE_ENV) == "1":
        return f"${REQUIRE_ENV}=1"
    if os.geteuid() == 0 and Path("/etc/debian_version").exists() and shutil.which("apt-get"):
        return "running as root on Debian, where scripts/setup installs the server"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ScratchPostgres:
    def __init__(self, bin_dir: Path, *, fsync: bool = False) -> None:
        self.bin_dir = bin_dir
        self.fsync = fsync
        self.password = secrets.token_urlsafe(18)
        self.port = 0
        # Directly under the system temp dir: the postgres user must reach it.
        self.base = Path(tempfile.mkdtemp(prefix="swarm-pool-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log = self.base / "server.log"
        self._started = False

    def _as_owner(self, argv: Sequence[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def _run(self, argv: Sequence[str], timeout: float = 120) -> None:
        out = subprocess.run(
            self._as_owner(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
        if out.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({out.returncode}): {out.stderr.strip()}")

    def start(self) -> ScratchPostgres:
        self.socket_dir.mkdir()
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            for path in (self.base, self.socket_dir, pwfile):
                shutil.chown(path, "postgres", "postgres")
        initdb = [str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres"]
        initdb += ["--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8", "--no-sync"]
        try:
            self._run([*initdb, "--locale-provider=icu", "--icu-locale=en-US", "--locale=C"])
        except RuntimeError:
            shutil.rmtree(self.data, ignore_errors=True)
            self._run([*initdb, "--locale=C"])  # a server built without ICU
        pwfile.unlink()
        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "200",
            "shared_buffers": "128MB",
            "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
        }
        options = " ".join(f"-c {k}={v}" for k, v in settings.items())
        for _attempt in range(5):
            self.port = _free_port()
            try:
                self._run(
                    [
                        str(self.bin_dir / "pg_ctl"),
                        "start",
                        "-w",
                        "-t",
                        "60",
                        "-D",
                        str(self.data),
                        "-l",
                        str(self.log),
                        "-o",
                        f"-p {self.port} {options}",
                    ]
                )
            except RuntimeError:
                continue  # most likely the port was taken meanwhile
            self._started = True
            return self
        raise RuntimeError(f"PostgreSQL would not start; see {self.log}")

    def url(self, dbname: str = "postgres", *, via: str = "tcp", schema: str | None = None) -> str:
        """A URL to this server over ``tcp`` (127.0.0.1) or the unix ``socket``."""
        auth = f"postgres:{quote(self.password, safe='')}"
        if via == "tcp":
            url = f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"
            sep = "?"
        else:
            url = f"postgresql://{auth}@/{dbname}?host={quote(str(self.socket_dir), safe='')}"
            url += f"&port={self.port}"
            sep = "&"
        if schema is not None:
            url += f"{sep}options={quote(f'-csearch_path={schema}', safe='')}"
        return url

    def new_schema(self) -> str:
        """A fresh empty schema (a store of its own); its name."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return name

    def drop_schema(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")

    def stop(self) -> None:
        try:
            if self._started:
                self._started = False
                try:
                    self._run(
                        [
                            str(self.bin_dir / "pg_ctl"),
                            "stop",
                            "-w",
                            "-m",
                            "fast",
                            "-D",
                            str(self.data),
                        ]
                    )
                except RuntimeError as e:
                    # The server died before the end (something killed it): say so with
                    # its log, which is about to go with the folder.
                    tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
                    raise RuntimeError(f"{e}\n--- server log (tail) ---\n{tail}") from e
        finally:
            # Wait for the socket to go; then nothing of the server is left.
            deadline = time.monotonic() + 10
            while any(self.socket_dir.glob(".s.PGSQL.*")) and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(OSError):
                shutil.rmtree(self.base)
