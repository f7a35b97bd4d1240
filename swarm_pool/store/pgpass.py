"""Keeping a PostgreSQL store's password out of every environment: a private passfile.

Room: store.

A pool hands its store URL to its daemon, and the daemon to its instances and (through
OpenCode) to their MCP servers and the agents' shells, in the environment. A password
in that URL (or in ``$PGPASSWORD``) would be readable by any agent from its own
``env`` or from ``/proc/PID/environ``. So ``start`` moves it into ``.swarm/pgpass``
(mode 0600, libpq's passfile format) and hands on the URL without it plus
``$PGPASSFILE``, which libpq (and so psycopg) reads on every connect. The file is as
private as the state file: a sandboxed agent does not see ``.swarm/`` at all; an
unsandboxed one runs as the same user and can read it, as it can read the user's own
``~/.pgpass`` (see the README's security section). No psycopg import here: the pool's
start path stays light.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

PASSFILE_ENV = "PGPASSFILE"
PASSWORD_ENV = "PGPASSWORD"
PASSFILE_NAME = "pgpass"
_SCHEMES = ("postgresql", "postgres")


def is_postgres(url: str) -> bool:
    return url.split(":", 1)[0].lower() in _SCHEMES


def split_password(url: str) -> tuple[str, str | None]:
    """The URL without its password (in the authority or a ``password=`` parameter),
    and the password (None when it had none)."""
    parts = urlsplit(url)
    password = unquote(parts.password) if parts.password is not None else None
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = []
    for key, value in query:
        if key.lower() == "password":
            password = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(kept))), password


def _field(value: str) -> str:
    # libpq's passfile: ':' and '\' inside a field are escaped with '\'.
    return re.sub(r"([:\\])", r"\\\1", value)


def passfile_line(url: str, password: str) -> str:
    """The passfile entry for ``url``: any host and port (a unix socket and TCP name the
    same server differently), its database and user."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    dbname = query.get("dbname") or unquote(parts.path.lstrip("/")) or "*"
    user = query.get("user") or (unquote(parts.username) if parts.username else "*")
    fields = ["*", "*", _field(dbname) if dbname != "*" else "*"]
    fields.append(_field(user) if user != "*" else "*")
    fields.append(_field(password))
    return ":".join(fields) + "\n"


def seal_store_url(url: str, swarm_dir: Path, env: MutableMapping[str, str]) -> str:
    """Move the store URL's password (or ``$PGPASSWORD``) into ``swarm_dir/pgpass`` and
    point ``env``'s ``$PGPASSFILE`` at it; returns the URL to hand on (unchanged, and
    nothing written, when there is no password or the URL is not PostgreSQL's)."""
    if not is_postgres(url):
        return url
    bare, password = split_password(url)
    if password is None:
        password = env.get(PASSWORD_ENV)
    env.pop(PASSWORD_ENV, None)
    if password is None:
        return url
    path = swarm_dir / PASSFILE_NAME
    # Created private from the first byte (libpq also refuses a group/world-readable one).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(passfile_line(bare, password))
    os.chmod(path, 0o600)
    env[PASSFILE_ENV] = str(path)
    return bare
