"""How the CLI talks to a running supervisor: a unix socket with JSON lines.

As with supervisord's control socket, the supervisor listens on ``.swarm/supervisor.sock``
(mode 0600; a path too long for a unix socket moves to the per-user folder). A client
connects, sends one JSON object ``{"cmd": "status"|"restart"|"scale"|"stop", ...}`` (or
``add``/``remove`` of one extra named instance) on one line, and reads one line back:
``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "...", "type": "<SwarmPoolError subclass>"}``, which the client
raises again as that class. One connection carries one command, so a slow ``restart``
never blocks ``status``. ``handle`` turns one request into a call on the supervisor
(any ``Commands``); what it returns never holds a password (``public_dump``). Room: pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from swarm_pool import errors
from swarm_pool.errors import PoolError, PoolNotRunningError, SwarmPoolError
from swarm_pool.paths import ProjectPaths, user_state_dir
from swarm_pool.pool.state import PoolPhase, PoolState, public_dump

# "add"/"remove": one extra named instance outside the sized pool (dedicated routing).
COMMANDS = ("status", "restart", "scale", "stop", "add", "remove")
# sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 100
_MAX_LINE = 1 << 20

Handler = Callable[[dict[str, Any]], Any]


class Commands(Protocol):
    """What the control socket's commands act on: the supervisor."""

    @property
    def phase(self) -> PoolPhase: ...

    def snapshot(self) -> PoolState: ...

    def request_stop(self) -> None: ...

    def restart(self, name: str | None = None, timeout: float | None = None) -> PoolState: ...

    def scale(self, size: int, timeout: float | None = None) -> PoolState: ...

    def add_instance(
        self, name: str, *, wait: bool = False, timeout: float | None = None
    ) -> PoolState: ...

    def remove_instance(self, name: str, *, wait: bool = False) -> PoolState: ...


def handle(target: Commands, request: dict[str, Any]) -> Any:
    """Carry out one control request on ``target``; the result without any secret."""
    cmd = request["cmd"]
    if cmd == "status":
        return public_dump(target.snapshot())
    if cmd == "stop":
        target.request_stop()
        return {"stopping": True}
    if target.phase != PoolPhase.RUNNING:
        raise PoolError(f"the pool is {target.phase}; try again when it is running")
    timeout = request.get("timeout")
    if cmd == "restart":
        state = target.restart(request.get("name"), timeout)
    elif cmd == "scale":
        state = target.scale(int(request["size"]), timeout)
    elif cmd == "add":
        state = target.add_instance(
            str(request["name"]), wait=bool(request.get("wait")), timeout=timeout
        )
    elif cmd == "remove":
        state = target.remove_instance(str(request["name"]), wait=bool(request.get("wait")))
    else:
        raise PoolError(f"unknown command {cmd!r}")
    return public_dump(state)


def socket_path_for(paths: ProjectPaths) -> Path:
    path = paths.swarm_dir / "supervisor.sock"
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(paths.root)).hexdigest()[:16]
    return user_state_dir() / "sockets" / f"{digest}.sock"


def error_class(name: str) -> type[SwarmPoolError]:
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, SwarmPoolError):
        return cls
    return SwarmPoolError


class ControlServer:
    """Accepts connections on a thread; each command runs on its own thread."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # The caller holds the supervisor lock, so an existing socket file is stale.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # the socket is born 0600
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closed.is_set():
            try:
                conn, _addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                line = _read_line(conn)
                request = json.loads(line)
                if not isinstance(request, dict) or request.get("cmd") not in COMMANDS:
                    raise PoolError(f"unknown control command: {line[:80]!r}")
                reply: dict[str, Any] = {"ok": True, "result": self.handler(request)}
            except SwarmPoolError as e:
                reply = {"ok": False, "error": str(e), "type": type(e).__name__}
            except (ValueError, OSError) as e:
                reply = {"ok": False, "error": f"bad control request: {e}", "type": "PoolError"}
            except Exception as e:  # the supervisor must survive a failing command
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "type": "PoolError"}
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply, default=str).encode() + b"\n")


def _read_line(conn: socket.socket) -> str:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > _MAX_LINE:
            raise ValueError("control message too long")
    return buf.split(b"\n", 1)[0].decode()


def call(path: Path, cmd: str, *, timeout: float = 30.0, **args: Any) -> Any:
    """Send one command to the supervisor listening on ``path``; its result or its error."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except OSError as e:
            raise PoolNotRunningError(
                f"the supervisor is not answering on {path} ({e.strerror or e})"
            ) from e
        try:
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            line = _read_line(sock)
        except TimeoutError as e:
            raise PoolError(f"the supervisor did not answer {cmd!r} within {timeout:g}s") from e
        except OSError as e:
            raise PoolError(f"lost the supervisor while sending {cmd!r}: {e}") from e
    finally:
        sock.close()
    if not line:
        raise PoolError(f"the supervisor closed the connection during {cmd!r}")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise error_class(str(reply.get("type", "")))(str(reply.get("error", "unknown error")))
    return reply.get("result")
