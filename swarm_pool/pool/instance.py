"""What the supervisor runs: a ``Program`` (command, env, readiness probe) per child.

Every child, an ``opencode serve`` instance or the scripted model server, is described
the same way, so the supervisor treats them alike. ``opencode_program`` builds an
instance: ``opencode serve --hostname 127.0.0.1 --port P`` with its own database
(``OPENCODE_DB`` under ``.swarm/instances/NAME/``; ``XDG_DATA_HOME`` is left alone so
the user's provider credentials keep working), its own password, and the per-instance
OpenCode config; ready means ``GET /global/health`` answers healthy with Basic auth.
Loopback traffic never goes through a proxy: our HTTP clients ignore the proxy env
(``trust_env=False``) and the instance gets ``127.0.0.1`` in ``NO_PROXY``.
``model_program`` builds the scripted model server; ready means ``GET /v1/models``
answers 200. ``mcp_program`` builds the pool's shared MCP server (streamable HTTP; it
reads its token secret from the state file); ready means ``GET /health`` answers 200.
``gateway_program`` builds the OpenCode-compatible gateway on its fixed port; it reads
every secret from the private state file, never from its environment, and is ready when
it answers ``GET /global/health`` to its own password. This module also counts an
instance's busy sessions (see ``busy_sessions``) and rotates the logs children append
to. Room: pool.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from swarm_pool.config import Config
from swarm_pool.errors import OpenCodeError
from swarm_pool.opencode.catalog import instance_catalog_env
from swarm_pool.opencode.client import USERNAME, OpenCodeClient
from swarm_pool.opencode.config import CONFIG_ENV, opencode_config, serialize
from swarm_pool.opencode.shell import PASSWORD_ENV, SECRET_ENV, install_shell
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import ChildKind

HOST = "127.0.0.1"
LOG_NAME = "opencode.log"
MODEL_NAME = "model"
GATEWAY_NAME = "gateway"
MCP_NAME = "mcp"
# Env a parent may carry that would change how an instance authenticates or stores data.
# PGPASSWORD: a store password reaches our processes only through the passfile.
_DROPPED_ENV = ("OPENCODE_SERVER_USERNAME", "OPENCODE_DB", "OPENCODE_CONFIG_CONTENT", "PGPASSWORD")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Program:
    """One supervised child: how to launch it on a port and how to tell it is ready."""

    name: str
    kind: ChildKind
    command: Callable[[int], list[str]]
    env: Callable[[int], dict[str, str]]
    cwd: Path
    log_path: Path
    probe: Callable[[int, float], None]  # raises OpenCodeError when not ready
    # Counts busy sessions (None when unknown); only opencode instances have sessions.
    busy: Callable[[int, float], int | None] | None = None
    # The raw messages of its event stream (a sign of life); only opencode has one.
    events: Callable[[int], Iterator[str]] | None = None
    password: str = ""  # the instance's own HTTP Basic password ("" for the model)

    def url(self, port: int) -> str:
        base = f"http://{HOST}:{port}"
        if self.kind == MCP_NAME:
            return f"{base}/mcp"
        return f"{base}/v1" if self.kind == MODEL_NAME else base


def instance_names(size: int) -> list[str]:
    return [f"oc-{i}" for i in range(1, size + 1)]


def build_instance_env(
    config: Config,
    *,
    paths: ProjectPaths,
    name: str,
    password: str,
    model_url: str | None,
    base_env: Mapping[str, str] | None = None,
    mcp_url: str | None = None,
) -> dict[str, str]:
    """The environment of instance ``name`` (its data folder is created here)."""
    env = dict(os.environ if base_env is None else base_env)
    for var in _DROPPED_ENV:
        env.pop(var, None)
    inst_dir = paths.instance_dir(name)
    # opencode dies with "unable to open database file" if the folder is missing.
    inst_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    env["OPENCODE_DB"] = str(inst_dir / "opencode.db")
    env[PASSWORD_ENV] = password
    with_no_proxy(env)
    env["SWARM_POOL_PROJECT"] = str(paths.root)
    if config.opencode.disable_models_fetch:
        env["OPENCODE_DISABLE_MODELS_FETCH"] = "1"
    else:
        env.pop("OPENCODE_DISABLE_MODELS_FETCH", None)
    install_shell(
        paths.root.resolve(),
        sandbox=config.workers.sandbox == "bwrap",
        network=config.workers.sandbox_network,
    )

    env[CONFIG_ENV] = serialize(
        opencode_config(config, project_root=paths.root, model_url=model_url, mcp_url=mcp_url)
    )
    instance_catalog_env(config, paths.instances_dir, env)
    return env


def with_no_proxy(env: dict[str, str]) -> dict[str, str]:
    """Add loopback to ``NO_PROXY``/``no_proxy`` (kept otherwise): an instance reaches the
    scripted model on 127.0.0.1, and a user's ``HTTP_PROXY`` must not carry that."""
    for var in ("NO_PROXY", "no_proxy"):
        current = [h.strip() for h in env.get(var, "").split(",") if h.strip()]
        env[var] = ",".join([*current, *(h for h in _LOOPBACK if h not in current)])
    return env


def pool_child_env(paths: ProjectPaths) -> dict[str, str]:
    """The environment of the pool's own children (model, MCP server, gateway): the
    supervisor's, without any secret (each reads what it needs from the private state
    file), with the project named and loopback kept off any proxy."""
    out = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    out["SWARM_POOL_PROJECT"] = str(paths.root)
    return with_no_proxy(out)


class _Clients:
    """One kept-alive HTTP client per port: a fresh httpx client costs ~25 ms of CPU
    (mostly its TLS context), which the once-a-second probes would pay every time."""

    def __init__(self, factory: Callable[[int], httpx.Client | OpenCodeClient]) -> None:
        self._factory = factory
        self._clients: dict[int, httpx.Client | OpenCodeClient] = {}
        self._lock = threading.Lock()

    def get(self, port: int) -> httpx.Client | OpenCodeClient:
        with self._lock:
            client = self._clients.get(port)
            if client is None:
                client = self._clients[port] = self._factory(port)
            return client


def probe_opencode(password: str) -> Callable[[int, float], None]:
    clients = _Clients(lambda port: OpenCodeClient(f"http://{HOST}:{port}", password))

    def probe(port: int, timeout: float) -> None:
        client = clients.get(port)
        assert isinstance(client, OpenCodeClient)
        client.health(timeout=timeout)

    return probe


def probe_http(
    path: str, *, password: str | None = None, up: tuple[int, ...] = (200,)
) -> Callable[[int, float], None]:
    """A readiness probe for one of the pool's own HTTP servers: ``GET path`` answers
    one of the ``up`` statuses (with Basic auth when ``password`` is given)."""
    auth = httpx.BasicAuth(USERNAME, password) if password is not None else None
    clients = _Clients(
        lambda port: httpx.Client(base_url=f"http://{HOST}:{port}", auth=auth, trust_env=False)
    )

    def probe(port: int, timeout: float) -> None:
        client = clients.get(port)
        assert isinstance(client, httpx.Client)
        try:
            resp = client.get(path, timeout=timeout)
        except httpx.HTTPError as e:
            raise OpenCodeError(f"GET http://{HOST}:{port}{path} failed: {e!r}") from e
        if resp.status_code not in up:
            raise OpenCodeError(f"GET http://{HOST}:{port}{path} answered {resp.status_code}")

    return probe


def busy_sessions(url: str, password: str, timeout: float = 2.0) -> int | None:
    """Sessions of one instance that are busy (or retrying), across all directories.

    ``GET /session/status`` only reports the directory it is asked about (without
    ``?directory`` it is the server's cwd, which our worker sessions never use; checked
    against 1.18.33). So this lists every session across projects with
    ``GET /experimental/session``, then asks ``/session/status?directory=D`` for each
    distinct directory that still exists. None when the instance does not answer.
    """
    auth = httpx.BasicAuth(USERNAME, password)
    try:
        with httpx.Client(base_url=url, auth=auth, timeout=timeout, trust_env=False) as http:
            resp = http.get("/experimental/session")
            resp.raise_for_status()
            sessions = resp.json()
            if not isinstance(sessions, list):
                return None
            dirs = sorted(
                {
                    s["directory"]
                    for s in sessions
                    if isinstance(s, dict) and isinstance(s.get("directory"), str)
                }
            )
            busy: set[str] = set()
            for directory in dirs:
                # Asking about a deleted worktree would make the server set it up again.
                if not os.path.isdir(directory):
                    continue
                resp = http.get("/session/status", params={"directory": directory})
                resp.raise_for_status()
                status = resp.json()
                if isinstance(status, dict):
                    busy.update(
                        sid
                        for sid, st in status.items()
                        if not (isinstance(st, dict) and st.get("type") == "idle")
                    )
            return len(busy)
    except (httpx.HTTPError, ValueError):
        return None


def opencode_program(
    name: str,
    *,
    config: Config,
    paths: ProjectPaths,
    binary: Path,
    password: str,
    model_url: Callable[[], str | None],
    mcp_url: Callable[[], str | None] = lambda: None,
) -> Program:
    def command(port: int) -> list[str]:
        return [str(binary), "serve", "--hostname", HOST, "--port", str(port)]

    def env(port: int) -> dict[str, str]:
        return build_instance_env(
            config,
            paths=paths,
            name=name,
            password=password,
            model_url=model_url(),
            mcp_url=mcp_url(),
        )

    def busy(port: int, timeout: float) -> int | None:
        return busy_sessions(f"http://{HOST}:{port}", password, timeout)

    def events(port: int) -> Iterator[str]:
        with OpenCodeClient(f"http://{HOST}:{port}", password) as client:
            yield from client.event_data()

    return Program(
        name=name,
        kind="opencode",
        command=command,
        env=env,
        cwd=paths.root,
        log_path=paths.instance_dir(name) / LOG_NAME,
        probe=probe_opencode(password),
        busy=busy,
        events=events,
        password=password,
    )


def _own_program(
    kind: ChildKind,
    paths: ProjectPaths,
    command: Callable[[int], list[str]],
    probe: Callable[[int, float], None],
) -> Program:
    """One of the pool's own servers (model, MCP server, gateway), named after its kind:
    launched at the project root with ``pool_child_env`` (no secret), logging to
    ``.swarm/instances/KIND/KIND.log``."""

    def env(port: int) -> dict[str, str]:
        return pool_child_env(paths)

    return Program(
        name=kind,
        kind=kind,
        command=command,
        env=env,
        cwd=paths.root,
        log_path=paths.instance_dir(kind) / f"{kind}.log",
        probe=probe,
    )


def model_program(config: Config, paths: ProjectPaths) -> Program:
    """The scripted model server, supervised like an instance (kind ``model``)."""

    def command(port: int) -> list[str]:
        argv = [sys.executable, "-m", "swarm_pool.scripted_model", "serve", "--port", str(port)]
        if config.model.scripts:
            argv += ["--scripts", str((paths.root / config.model.scripts).resolve())]
        if config.model.default_delay_s:
            argv += ["--delay", str(config.model.default_delay_s)]
        return argv

    return _own_program("model", paths, command, probe_http("/v1/models"))


def mcp_program(paths: ProjectPaths) -> Program:
    """The pool's shared MCP server (kind ``mcp``, ``swarm_pool/mcp/http.py``); it reads
    its token secret from the private state file, never from its environment."""

    def command(port: int) -> list[str]:
        root = str(paths.root)
        return [sys.executable, "-m", "swarm_pool.mcp.http", "--project", root, "--port", str(port)]

    return _own_program("mcp", paths, command, probe_http("/health"))


def gateway_settings(config: Config) -> str:
    return json.dumps(
        {
            "gateway": config.gateway.model_dump(),
            "pool": {"max_sessions_per_instance": config.pool.max_sessions_per_instance},
            "store": config.store.model_dump(),
        },
        separators=(",", ":"),
    )


def gateway_program(config: Config, paths: ProjectPaths, password: str) -> Program:
    """The gateway (kind ``gateway``): one OpenCode-compatible URL for the whole pool."""

    def command(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "swarm_pool.gateway",
            "--project",
            str(paths.root),
            "--port",
            str(port),
            # Only the sections it uses (no secrets live in them): the daemon may have
            # been given a config file the gateway could not find on its own.
            "--settings",
            gateway_settings(config),
        ]

    # It reads the instances' and its own password from .swarm/pool.json (0600). 503
    # means no instance is ready behind it: the gateway itself is up, and restarting it
    # would not help the instances.
    probe = probe_http("/global/health", password=password, up=(200, 503))
    return _own_program("gateway", paths, command, probe)


def rotate_log(path: Path, *, max_bytes: int, backups: int, copy_truncate: bool) -> bool:
    """Rotate ``path`` to ``path.1`` ... when it is larger than ``max_bytes``.

    Children append to their log with O_APPEND and outlive the supervisor, so nothing
    sits between them and the file. Before a launch the file is simply renamed; while a
    child runs it is copied and truncated in place (its O_APPEND writes go on at the new
    end; lines written between the copy and the truncate are lost, as with logrotate's
    copytruncate).
    """
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if backups <= 0:
        os.truncate(path, 0)
        return True
    for i in range(backups - 1, 0, -1):
        src = path.with_name(f"{path.name}.{i}")
        if src.exists():
            os.replace(src, path.with_name(f"{path.name}.{i + 1}"))
    first = path.with_name(f"{path.name}.1")
    if copy_truncate:
        shutil.copyfile(path, first)
        os.truncate(path, 0)
    else:
        os.replace(path, first)
    return True


def log_tail(path: Path, max_bytes: int = 4096) -> str:
    """The last non-empty line of a log (ANSI colour codes removed), or ''."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
