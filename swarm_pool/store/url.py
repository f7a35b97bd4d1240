"""The store URL: which backend it names, and how it is shown.

Room: store.

Owns ``parse_store_url`` (``[store] url``, ``--store``, ``$SWARM_POOL_STORE__URL``:
empty for the project's SQLite file, ``sqlite:///PATH`` for another SQLite file,
``postgresql://...`` for a PostgreSQL database shared by several hosts) and ``redact``
(the URL without its password, for every message and report). Kept apart from the
backends so that naming a store never loads the PostgreSQL driver.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from swarm_pool.errors import ConfigError
from swarm_pool.store.dialect import Backend

_PASSWORD_PARAM = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL without its password (in the authority or a ``password=`` parameter),
    for messages and reports."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return "<unparsable store URL>"
    if has_password:
        host = parts.netloc.rsplit("@", 1)[-1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    query = _PASSWORD_PARAM.sub(r"\1***", parts.query)
    return urlunsplit(parts._replace(query=query))


def parse_store_url(url: str) -> tuple[Backend, str]:
    """``(backend, target)``: the SQLite path (``""`` for the project's own file) or the
    PostgreSQL URL. ConfigError for anything else."""
    text = url.strip()
    if not text:
        return Backend.SQLITE, ""
    scheme, sep, rest = text.partition(":")
    scheme = scheme.lower()
    if sep and scheme in ("postgresql", "postgres") and rest.startswith("//"):
        return Backend.POSTGRESQL, text
    if sep and scheme == "sqlite":
        # sqlite:///abs/path, sqlite://relative/path, sqlite:path (relative to the project)
        path = rest[2:] if rest.startswith("//") else rest
        if path:
            return Backend.SQLITE, path
    raise ConfigError(
        f"bad store URL {redact(text)!r}: use postgresql://USER:PASSWORD@HOST:PORT/DB, "
        "sqlite:///PATH, or nothing for the project's own .swarm/swarm.db"
    )
