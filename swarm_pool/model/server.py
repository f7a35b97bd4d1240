"""The scripted model's HTTP side: an OpenAI-compatible chat-completions
server on loopback.

Room: model.

It owns the wire format (streaming SSE chunks with text and ``delta.tool_calls`` ending
in ``data: [DONE]``, or one JSON answer when ``stream`` is false), ``GET /v1/models``,
how a step's faults are played on the wire (delay, barrier, HTTP error, malformed chunk,
hang) and ``GET /v1/stats``. What to answer comes from ``decisions.ScriptedModel``.
Hangs and delays wait on the server's stop event and on the client's socket, so no
thread outlives the server or an aborted request.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from swarm_pool.errors import ConfigError, PortInUseError
from swarm_pool.model.decisions import (
    Decision,
    DecisionKind,
    ScriptedModel,
    fault_name,
    message_text,
)
from swarm_pool.model.scripts import PlannedStep, ScriptBook

log = logging.getLogger("swarm_pool.model")

MODEL_ID = "scripted"
_MAX_BODY = 32 * 1024 * 1024
_CHUNK_CHARS = 24


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
            fault_name(step) if step else None,
        )
        if decision.kind is DecisionKind.SCRIPT_ERROR:
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
