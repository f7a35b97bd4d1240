"""The per-directory stdio relay to the pool's shared MCP server (stdlib only).

Room: mcp.

OpenCode starts one local MCP process per session directory, with that directory as its
cwd. Instead of a whole MCP server (about 78 MB and 1 CPU-s to import the SDK), it
starts this file with ``python -I -S``: it reads JSON-RPC lines on stdin, POSTs each to
the shared server's streamable HTTP endpoint with the directory's capability token (read
on every call from the worktree's git dir, or from ``.swarm/`` in the project root, so a
token written later, or a reused slot, just works) and writes the answers to stdout.
Each request runs on its own thread, so a long ``swarm_complete`` never holds up a
``swarmmail_inbox``. While the server restarts (connection refused: nothing was sent), a
call is retried for up to ``RETRY_S``; a call cut off after it was sent gets an error
saying its outcome is unknown. It imports nothing outside the standard library and keeps
no state but the URL, so it is cheap to start.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time

# tokens.TOKEN_FILE and COORDINATOR_TOKEN_FILE (this file cannot import the package).
TOKEN_FILE = "swarm-mcp-token"
COORDINATOR_TOKEN_FILE = "mcp-coordinator-token"
RETRY_S = 60.0
TIMEOUT_S = 3600.0
_out = threading.Lock()


class _NotSent(Exception):
    pass


def _git_dir(cwd: str) -> str | None:
    dot_git = os.path.join(cwd, ".git")
    if os.path.isdir(dot_git):
        return dot_git
    try:
        with open(dot_git) as f:
            first = f.readline().strip()
    except OSError:
        return None
    if not first.startswith("gitdir:"):
        return None
    target = first[len("gitdir:") :].strip()
    return target if os.path.isabs(target) else os.path.normpath(os.path.join(cwd, target))


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _token(cwd: str) -> str | None:
    """The project root's coordinator token, else the worktree's own (in its git dir)."""
    found = _read(os.path.join(cwd, ".swarm", COORDINATOR_TOKEN_FILE))
    if found is not None:
        return found
    git_dir = _git_dir(cwd)
    return None if git_dir is None else _read(os.path.join(git_dir, TOKEN_FILE))


def _write(message: object) -> None:
    data = json.dumps(message, separators=(",", ":")) + "\n"
    with _out:
        sys.stdout.write(data)
        sys.stdout.flush()


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def _post(host: str, port: int, path: str, token: str, payload: bytes) -> tuple[int, str, bytes]:
    """(status, content type, body); _NotSent when the connection was refused."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\n"
        f"Authorization: Bearer {token}\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    try:
        sock = socket.create_connection((host, port), timeout=5)
    except OSError as e:
        raise _NotSent(str(e)) from e
    with sock:
        sock.settimeout(TIMEOUT_S)
        sock.sendall(head.encode() + payload)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw = b"".join(chunks)
    header, _, body = raw.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    if not lines or len(lines[0].split(" ")) < 2:
        raise OSError("the server closed the connection without an answer")
    status = int(lines[0].split(" ")[1])
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if fields.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return status, fields.get("content-type", ""), body


def _messages(content_type: str, body: bytes) -> list[object]:
    if not body.strip():
        return []
    if content_type.startswith("text/event-stream"):
        found: list[object] = []
        for line in body.decode().splitlines():
            if line.startswith("data:") and line[5:].strip():
                found.append(json.loads(line[5:]))
        return found
    data = json.loads(body)
    return data if isinstance(data, list) else [data]


def _error(msg_id: object, text: str) -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": -32603, "message": text}}


def _relay(host: str, port: int, path: str, message: dict[str, object]) -> None:
    msg_id = message.get("id")
    is_request = "method" in message and msg_id is not None
    token = _token(os.getcwd())
    if token is None:
        if is_request:
            _write(_error(msg_id, f"no swarm capability token for {os.getcwd()}"))
        return
    payload = json.dumps(message).encode()
    deadline = time.monotonic() + RETRY_S
    delay = 0.1
    while True:
        try:
            status, ctype, body = _post(host, port, path, token, payload)
            break
        except _NotSent as e:
            if time.monotonic() >= deadline:
                if is_request:
                    _write(_error(msg_id, f"the swarm MCP server is unreachable: {e}"))
                return
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        except (OSError, ValueError) as e:
            if is_request:
                _write(
                    _error(
                        msg_id,
                        f"the swarm MCP server dropped this call ({e}); its outcome is "
                        "unknown: check (e.g. swarmmail_inbox, your reservations) first",
                    )
                )
            return
    if not is_request:
        return
    try:
        answers = _messages(ctype, body) if status < 300 else []
    except ValueError:
        answers = []
    if status >= 300 or not answers:
        text = body.decode(errors="replace").strip()[:500]
        _write(_error(msg_id, f"the swarm MCP server answered {status}: {text}"))
        return
    for answer in answers:
        _write(answer)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].startswith("http://"):
        sys.stderr.write("usage: relay.py http://127.0.0.1:PORT/mcp\n")
        return 2
    hostport, _, rest = argv[1][len("http://") :].partition("/")
    host, _, port = hostport.rpartition(":")
    path = "/" + rest
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        thread = threading.Thread(target=_relay, args=(host, int(port), path, message))
        thread.daemon = True
        thread.start()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
