"""Start a real ``opencode serve`` and a real scripted model for tests, and stop them by pid.

No pool involved: one process each, in its own session (``start_new_session``), with
its own database (``OPENCODE_DB`` in a tmp dir), a password, the model catalogue fetch
off, and the config passed in ``OPENCODE_CONFIG_CONTENT``. Stopping sends SIGTERM to
the process and its children, waits, then SIGKILLs what is left. Module- or
session-scoped users pass ``shared=True`` so the processes do not carry the per-test
leak tag (the session tag still catches them if they outlive the run).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.pool.process import terminate_family
from tests.support import TEST_TAG_ENV, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = ROOT / ".tools/opencode/node_modules/opencode-linux-x64/bin/opencode"


def opencode_binary() -> Path:
    env = os.environ.get("SWARM_POOL_OPENCODE")
    return Path(env) if env else DEFAULT_BINARY


def free_port() -> int:
    """A port that was free a moment ago (bind probe on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def child_env(*, shared: bool = False, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    if shared:
        env.pop(TEST_TAG_ENV, None)
    env.update(extra)
    return env


def stop_tree(pid: int, grace: float = 5.0) -> None:
    """SIGTERM the process and its descendants, wait ``grace``, SIGKILL the rest."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = [root]
    terminate_family(procs, grace, kill_wait_s=grace)


@dataclass
class OpenCodeServer:
    proc: subprocess.Popen[bytes]
    port: int
    password: str
    workdir: Path
    log_path: Path
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 15.0) -> OpenCodeClient:
        return OpenCodeClient(self.base_url, self.password, timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_tree(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


def start_opencode(
    workdir: Path,
    config: dict[str, Any],
    *,
    shared: bool = False,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> OpenCodeServer:
    """Launch ``opencode serve`` on a free port and wait until /global/health answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    db_dir = workdir / "db"
    db_dir.mkdir(exist_ok=True)
    password = secrets.token_urlsafe(16)
    port = free_port()
    log_path = workdir / "opencode.log"
    full_env = child_env(
        shared=shared,
        OPENCODE_DB=str(db_dir / "opencode.db"),
        OPENCODE_SERVER_PASSWORD=password,
        OPENCODE_DISABLE_MODELS_FETCH="1",
        OPENCODE_CONFIG_CONTENT=json.dumps(config),
    )
    full_env.update(env or {})
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(opencode_binary()), "serve", "--hostname", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = OpenCodeServer(proc, port, password, workdir, log_path, config)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"opencode exited with {proc.returncode}: {server.log()}")
        try:
            # A short per-call timeout: early connections can hang while it starts up.
            r = httpx.get(
                f"{server.base_url}/global/health", auth=("opencode", password), timeout=2.0
            )
            return r.status_code == 200 and r.json().get("healthy") is True
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=timeout, interval=0.2)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_opencode(
    workdir: Path, config: dict[str, Any], *, shared: bool = False
) -> Iterator[OpenCodeServer]:
    server = start_opencode(workdir, config, shared=shared)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class ModelServerProcess:
    proc: subprocess.Popen[bytes]
    url: str  # base URL ending in /v1
    log_path: Path

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/stats", timeout=5).json()
        return data

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_tree(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_model_server(
    workdir: Path,
    *,
    scripts: Path | None = None,
    extra_args: list[str] | None = None,
    shared: bool = False,
    timeout: float = 30.0,
) -> ModelServerProcess:
    """Run ``python -m swarm_pool.scripted_model serve --port 0`` and read its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "model.log"
    cmd = [sys.executable, "-m", "swarm_pool.scripted_model", "serve", "--port", "0"]
    if scripts is not None:
        cmd += ["--scripts", str(scripts)]
    cmd += extra_args or []
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=child_env(shared=shared),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = b""
    try:
        while not line.endswith(b"\n"):
            if proc.poll() is not None:
                raise AssertionError(
                    f"model server exited with {proc.returncode}: {log_path.read_text()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"model server printed no URL within {timeout}s")
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    continue
                line += chunk
        url = line.decode().strip().rsplit(" ", 1)[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1"), line
    except BaseException:
        stop_tree(proc.pid)
        proc.wait(timeout=5)
        proc.stdout.close()
        raise
    return ModelServerProcess(proc, url, log_path)


class EventRecorder:
    """Collect ``/global/event`` payloads from a background thread until ``close()``."""

    def __init__(self, server: OpenCodeServer) -> None:
        self._client = server.client(timeout=30)
        self.events: list[dict[str, Any]] = []
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="oc-events", daemon=True)
        self._thread.start()
        wait_for(self.connected.is_set, timeout=30)

    def _run(self) -> None:
        from swarm_pool.errors import OpenCodeError

        with contextlib.suppress(OpenCodeError):
            for event in self._client.events(global_stream=True, read_timeout=120):
                payload = event.get("payload", event) if isinstance(event, dict) else {}
                self.events.append(payload)
                # The first event (server.connected) proves the stream is open.
                self.connected.set()

    def of(self, session_id: str, type_: str | None = None) -> list[dict[str, Any]]:
        """Events about one session (by ``properties.sessionID``), optionally of one type."""
        return [
            e
            for e in list(self.events)
            if (e.get("properties") or {}).get("sessionID") == session_id
            and (type_ is None or e.get("type") == type_)
        ]

    def close(self) -> None:
        self._client.close()
        self._thread.join(timeout=10)
