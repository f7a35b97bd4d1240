"""The scripted model's HTTP side: an OpenAI-compatible chat-completions server on loopback.

It owns the wire format (streaming SSE chunks with text and ``delta.tool_calls`` ending
in ``data: [DONE]``, or one JSON answer when ``stream`` is false), ``GET /v1/models``,
the answer to OpenCode's title request (a request without tools), the faults a step can
ask for (delay, barrier, HTTP error, malformed chunk, hang), and per-request stats served at
``GET /v1/stats``. It is stateless about conversations: the step to play is the number
of assistant messages in the request, so restarts and parallel sessions are harmless.
Hangs and delays wait on the server's stop event and on the client's socket, so no
thread outlives the server or an aborted request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import select
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from swarm_pool.errors import ConfigError, PortInUseError, ScriptError
from swarm_pool.model.scripts import Context, PlannedStep, ScriptBook, context_from_texts

log = logging.getLogger("swarm_pool.model")

MODEL_ID = "scripted"
TITLE_MARKER = "title generator"
_MAX_BODY = 32 * 1024 * 1024
_CHUNK_CHARS = 24


def message_text(message: dict[str, Any]) -> str:
    """The text of one chat message (string content or a list of text parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


@dataclass(frozen=True)
class Decision:
    """What to answer one request with."""

    kind: str  # "title" | "plain" | "step" | "final" | "script_error"
    ctx: Context
    step_index: int
    script_name: str = ""
    step: PlannedStep | None = None
    text: str = ""


class Stats:
    """Per-request counters, in memory, for tests and the dashboard."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests = 0
        self.by_kind: Counter[str] = Counter()
        self.by_bead: dict[str, dict[str, Any]] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=200)
        self.tools_seen: list[str] = []
        # Script tools the request did not offer (e.g. the MCP server is not connected).
        self.missing_tools: Counter[str] = Counter()

    def record(self, decision: Decision, tools: list[str], session_id: str) -> None:
        step = decision.step
        entry = {
            "time": time.time(),
            "kind": decision.kind,
            "bead_id": decision.ctx.bead_id,
            "session_id": session_id,
            "script": decision.script_name,
            "step": decision.step_index,
            "tool": step.tool if step else None,
            "fault": _fault_name(step) if step else None,
        }
        with self._lock:
            self.requests += 1
            self.by_kind[decision.kind] += 1
            if tools:
                self.tools_seen = tools
            if step is not None and step.tool and tools and step.tool not in tools:
                self.missing_tools[step.tool] += 1
            bead = self.by_bead.setdefault(
                decision.ctx.bead_id or "-",
                {"requests": 0, "steps": 0, "last_step": None, "script": "", "sessions": []},
            )
            bead["requests"] += 1
            if decision.kind == "step":
                bead["steps"] += 1
                bead["last_step"] = decision.step_index
            if decision.script_name:
                bead["script"] = decision.script_name
            if session_id and session_id not in bead["sessions"]:
                bead["sessions"] = [*bead["sessions"], session_id][-20:]
            self.recent.append(entry)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_s": round(time.time() - self.started, 3),
                "requests": self.requests,
                "by_kind": dict(self.by_kind),
                "by_bead": json.loads(json.dumps(self.by_bead)),
                "tools_seen": list(self.tools_seen),
                "missing_tools": dict(self.missing_tools),
                "threads": threading.active_count(),
                "recent": list(self.recent),
            }


def _fault_name(step: PlannedStep) -> str | None:
    if step.hang:
        return "hang"
    if step.malformed:
        return "malformed"
    if step.http_error is not None:
        return f"http_{step.http_error}"
    if step.delay_s:
        return "delay"
    if step.barrier:
        return "barrier"
    return None


class ScriptedModel:
    """The decisions (which script, which step) and the stats; no HTTP here."""

    def __init__(self, book: ScriptBook) -> None:
        self.book = book
        self.stats = Stats()
        self.stop_event = threading.Event()
        # (session or bead, step index) -> fault hits so far, for steps with ``times``.
        self._hits: dict[tuple[str, int], int] = {}
        self._hits_lock = threading.Lock()
        # Barrier name -> requests waiting at it now; a barrier that opened stays open.
        self._waiting: Counter[str] = Counter()
        self._opened: set[str] = set()
        self._barriers = threading.Condition()

    def pass_barrier(
        self, name: str, count: int, timeout_s: float, gone: Callable[[], bool]
    ) -> bool:
        """Wait until ``count`` requests wait at ``name`` at once (then it opens for good);
        False when the deadline passes, the server stops or the client leaves first."""
        deadline = time.monotonic() + timeout_s
        with self._barriers:
            self._waiting[name] += 1
            try:
                while name not in self._opened:
                    if self._waiting[name] >= count:
                        self._opened.add(name)
                        self._barriers.notify_all()
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.stop_event.is_set() or gone():
                        return False
                    self._barriers.wait(min(0.2, remaining))
                return True
            finally:
                self._waiting[name] -= 1

    def _count_fault(self, key: str, index: int, step: PlannedStep) -> PlannedStep:
        """The step itself while its fault has hits left, else the step without the fault."""
        if step.times is None:
            return step
        with self._hits_lock:
            hits = self._hits.get((key, index), 0)
            if hits < step.times:
                self._hits[(key, index)] = hits + 1
                return step
        return dataclasses.replace(
            step, http_error=None, malformed=False, hang=False, delay_s=0.0, times=None
        )

    def decide(self, body: dict[str, Any], session_id: str = "") -> Decision:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        system = [message_text(m) for m in messages if m.get("role") in ("system", "developer")]
        users = [message_text(m) for m in messages if m.get("role") == "user"]
        ctx = context_from_texts(users, system, session_id)
        if not body.get("tools"):
            # OpenCode's title request (and any other tool-less side request).
            if any(TITLE_MARKER in s for s in system):
                return Decision("title", ctx, -1, text=_title(ctx))
            return Decision("plain", ctx, -1, text=_title(ctx))
        index = sum(1 for m in messages if m.get("role") == "assistant")
        try:
            plan = self.book.plan(ctx)
        except ScriptError as e:
            return Decision("script_error", ctx, index, text=str(e))
        if index < len(plan.steps):
            step = self._count_fault(session_id or ctx.bead_id, index, plan.steps[index])
            return Decision("step", ctx, index, plan.script_name, step=step)
        return Decision("final", ctx, index, plan.script_name, text=plan.final_text)


def _title(ctx: Context) -> str:
    title = f"{ctx.bead_id} {ctx.title}".strip() if ctx.bead_id else "Scripted session"
    return title[:50]


def _chunks(text: str, size: int = _CHUNK_CHARS) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _usage(body: dict[str, Any], completion: str) -> dict[str, int]:
    prompt = sum(len(message_text(m)) for m in body.get("messages") or [] if isinstance(m, dict))
    p, c = max(1, prompt // 4), max(1, len(completion) // 4)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


class _Handler(BaseHTTPRequestHandler):
    server: ModelHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "swarm-pool-scripted-model/1"
    # Idle keep-alive connections (non-streaming clients) must not pin a thread forever.
    timeout = 120

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # --- plumbing -------------------------------------------------------------------

    def _send_json(self, status: int, data: Any) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self.close_connection = True
        self._send_json(status, {"error": {"message": message, "type": kind, "code": None}})

    def _client_gone(self) -> bool:
        # The body has been read, so a readable socket here means EOF (or a pipelined
        # request we do not serve): the client gave up.
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            peek: bytes = self.connection.recv(1, socket.MSG_PEEK)
            return peek == b""
        except (OSError, ValueError):
            return True

    def _wait(self, seconds: float | None) -> bool:
        """Sleep (forever if None) until the server stops or the client leaves; True if done."""
        deadline = None if seconds is None else time.monotonic() + seconds
        stop = self.server.model.stop_event
        while True:
            if stop.is_set() or self._client_gone():
                return False
            remaining = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            if remaining <= 0:
                return True
            stop.wait(remaining)

    # --- routes ---------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            created = int(self.server.model.stats.started)
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": MODEL_ID, "object": "model", "created": created, "owned_by": "swarm"}
                    ],
                },
            )
        elif path in ("/v1/stats", "/stats"):
            self._send_json(200, self.server.model.stats.snapshot())
        elif path in ("/health", "/v1/health"):
            self._send_json(200, {"ok": True, "model": MODEL_ID})
        else:
            self._error(404, f"no route GET {path}", "not_found")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._error(404, f"no route POST {path}", "not_found")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "Content-Length required", "invalid_request_error")
            return
        if not 0 < length <= _MAX_BODY:
            self._error(413, f"body of {length} bytes refused", "invalid_request_error")
            return
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._error(400, f"body is not a JSON object: {e}", "invalid_request_error")
            return
        session_id = self.headers.get("x-session-id", "")
        model = self.server.model
        decision = model.decide(body, session_id)
        tools = [
            str(t.get("function", {}).get("name", ""))
            for t in body.get("tools") or []
            if isinstance(t, dict)
        ]
        model.stats.record(decision, tools, session_id)
        step = decision.step
        log.info(
            "%s bead=%s session=%s step=%s tool=%s fault=%s",
            decision.kind,
            decision.ctx.bead_id or "-",
            session_id or "-",
            decision.step_index,
            step.tool if step else None,
            _fault_name(step) if step else None,
        )
        if decision.kind == "script_error":
            self._error(400, decision.text, "script_error")
            return
        if step is not None:
            if step.delay_s and not self._wait(step.delay_s):
                self.close_connection = True
                return
            if step.hang:
                self._wait(None)
                self.close_connection = True
                return
            if step.barrier and not model.pass_barrier(
                step.barrier, step.barrier_count, step.barrier_timeout_s, self._client_gone
            ):
                self._error(400, f"barrier {step.barrier!r} did not open", "barrier_timeout")
                return
            if step.http_error is not None:
                self._http_error(step)
                return
        self._answer(body, decision)

    # --- answers --------------------------------------------------------------------

    def _http_error(self, step: PlannedStep) -> None:
        status = step.http_error or 500
        # OpenCode retries (5 times, backoff from 2 s) when the status is >= 500 or the
        # body looks like a server error, so a 4xx must not say "server_error".
        kind = "server_error" if status >= 500 else "invalid_request_error"
        message = step.error_message or f"scripted HTTP {status}"
        raw = json.dumps({"error": {"message": message, "type": kind, "code": None}}).encode()
        self.close_connection = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        if step.retry_after_s is not None:
            self.send_header("retry-after-ms", str(int(step.retry_after_s * 1000)))
            self.send_header("Retry-After", str(max(0, round(step.retry_after_s))))
        self.end_headers()
        self.wfile.write(raw)

    def _answer(self, body: dict[str, Any], decision: Decision) -> None:
        step = decision.step
        text = decision.text if step is None else (step.text or "")
        call: dict[str, Any] | None = None
        if step is not None and step.tool:
            call = {
                "id": f"call_{decision.step_index}",
                "type": "function",
                "function": {"name": step.tool, "arguments": json.dumps(step.args)},
            }
        finish = "tool_calls" if call else "stop"
        if body.get("stream"):
            self._stream(body, text, call, finish, malformed=bool(step and step.malformed))
        else:
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if call:
                message["tool_calls"] = [call]
            self._send_json(
                200,
                {
                    "id": f"chatcmpl-{id(self):x}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model") or MODEL_ID,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": _usage(body, text + (json.dumps(call) if call else "")),
                },
            )

    def _stream(
        self,
        body: dict[str, Any],
        text: str,
        call: dict[str, Any] | None,
        finish: str,
        *,
        malformed: bool,
    ) -> None:
        # Streams end with the connection: no Content-Length, no chunked encoding.
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        base = {
            "id": f"chatcmpl-{id(self):x}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model") or MODEL_ID,
        }

        def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            chunk = {
                **base,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            self.wfile.flush()

        try:
            send({"role": "assistant", "content": ""})
            if malformed:
                self.wfile.write(b'data: {"id": "broken", "choices": [{"delta": {"content": \n\n')
                self.wfile.flush()
                return
            if text:
                for piece in _chunks(text):
                    send({"content": piece})
            if call:
                fn = call["function"]
                head = {"id": call["id"], "type": "function"}
                send(
                    {"tool_calls": [{"index": 0, **head, "function": {"name": fn["name"]}}]},
                )
                for piece in _chunks(fn["arguments"], 64):
                    send({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            send({}, finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = _usage(body, text + (json.dumps(call) if call else ""))
                tail: dict[str, Any] = {**base, "choices": [], "usage": usage}
                self.wfile.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            log.info("client left during the stream")


class ModelHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # Handlers check the stop event; daemon threads never block interpreter exit.
    block_on_close = False

    def __init__(self, address: tuple[str, int], model: ScriptedModel) -> None:
        self.model = model
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else host
        return f"http://{name}:{port}/v1"

    def stop(self) -> None:
        """Stop serving: wake hanging handlers, end the loop, close the socket."""
        self.model.stop_event.set()
        self.shutdown()
        self.server_close()


def _check_loopback(host: str) -> None:
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ConfigError(f"the scripted model listens on loopback only, not {host!r}")


def make_server(book: ScriptBook, *, host: str = "127.0.0.1", port: int = 0) -> ModelHTTPServer:
    """Bind (but do not start) a server; port 0 picks a free one (see ``.url``)."""
    _check_loopback(host)
    try:
        return ModelHTTPServer((host, port), ScriptedModel(book))
    except OSError as e:
        raise PortInUseError(f"scripted model cannot bind {host}:{port}: {e}") from e


class RunningServer:
    """A server serving from a background thread (for embedding and in-process use)."""

    def __init__(self, server: ModelHTTPServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="scripted-model", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.server.stop()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(book: ScriptBook, *, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    return RunningServer(make_server(book, host=host, port=port))
