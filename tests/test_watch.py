"""SSE -> store mapping, and the watcher's reconnect and polling fallback (MockTransport)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from swarm_pool.errors import (
    OpenCodeNotSentError,
    OpenCodeStatusError,
    OpenCodeUnknownOutcomeError,
)
from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.pulse import Pulse, Pulses
from swarm_pool.pool.router import InstanceView
from swarm_pool.pool.state import read_state
from swarm_pool.store.events import (
    BaseEvent,
    SessionError,
    SessionStatus,
    WorkerBlocked,
    WorkerProgress,
)
from swarm_pool.swarm.engine.mapper import EventMapper, WorkerRef, may_map, unwrap
from swarm_pool.swarm.engine.watch import (
    InstanceWatcher,
    WatchManager,
    idle_outcome,
    session_finished,
)
from swarm_pool.swarm.engine_state import engine_status
from tests.pool_cli import NO_MODEL_ENV, cli, make_project, pool_processes
from tests.support import wait_for


class FakeLookup:
    def __init__(self, refs: list[WorkerRef]) -> None:
        self.refs = {r.session_id: r for r in refs}
        self.fresh_calls = 0

    def by_session(self, session_id: str, *, fresh: bool = False) -> WorkerRef | None:
        self.fresh_calls += fresh
        return self.refs.get(session_id)

    def live_on(self, instance: str) -> list[WorkerRef]:
        return [r for r in self.refs.values() if r.instance == instance]


W1 = WorkerRef("bd-abc123.1", "bd-abc123", "ses_w1", 1, "running", "i1", 50)


def wrap(kind: str, props: dict[str, Any]) -> dict[str, Any]:
    return {"directory": "/w", "payload": {"id": "evt_1", "type": kind, "properties": props}}


def status(sid: str, state: str) -> dict[str, Any]:
    return wrap("session.status", {"sessionID": sid, "status": {"type": state}})


def test_unwrap_both_stream_shapes() -> None:
    assert unwrap(status("s", "busy")) == (
        "session.status",
        {"sessionID": "s", "status": {"type": "busy"}},
    )
    assert unwrap({"type": "session.idle", "properties": {"sessionID": "s"}}) == (
        "session.idle",
        {"sessionID": "s"},
    )
    assert unwrap({"payload": "x"}) is None
    assert unwrap("junk") is None


def test_status_changes_are_recorded_once_for_workers_only() -> None:
    m = EventMapper("i1", FakeLookup([W1]))
    out = m.map(status("ses_w1", "busy"))
    assert len(out) == 1 and isinstance(out[0], SessionStatus)
    assert (out[0].status, out[0].bead_id, out[0].instance) == ("busy", W1.bead_id, "i1")
    assert m.map(status("ses_w1", "busy")) == []  # repeated status
    assert m.map(status("ses_other", "busy")) == []  # not a worker
    out = m.map(status("ses_w1", "retry"))
    assert [e.status for e in out if isinstance(e, SessionStatus)] == ["retry"]
    idle = m.map(wrap("session.idle", {"sessionID": "ses_w1"}))
    assert [e.status for e in idle if isinstance(e, SessionStatus)] == ["idle"]
    # session.status idle after session.idle is the same news
    assert m.map(status("ses_w1", "idle")) == []
    assert m.map(wrap("server.heartbeat", {})) == []
    assert m.map(wrap("message.updated", {"sessionID": "ses_w1"})) == []


def test_session_error() -> None:
    m = EventMapper("i1", FakeLookup([W1]))
    err = {"name": "APIError", "data": {"message": "boom 500", "isRetryable": False}}
    out = m.map(wrap("session.error", {"sessionID": "ses_w1", "error": err}))
    assert len(out) == 1 and isinstance(out[0], SessionError)
    assert out[0].error == "APIError: boom 500" and out[0].bead_id == W1.bead_id
    # an error without a session (or for a foreign one) is not ours
    assert m.map(wrap("session.error", {"error": err})) == []
    assert m.map(wrap("session.error", {"sessionID": "ses_x", "error": err})) == []
    # ... nor for a worker that already finished (its session was deleted after merge)
    done = WorkerRef("bd-abc123.1", "bd-abc123", "ses_w1", 1, "completed", "i1", 100)
    m2 = EventMapper("i1", FakeLookup([done]))
    assert m2.map(wrap("session.error", {"sessionID": "ses_w1", "error": err})) == []


def test_permission_and_question_block_the_worker() -> None:
    m = EventMapper("i1", FakeLookup([W1]))
    out = m.map(
        wrap(
            "permission.asked",
            {"id": "per_1", "sessionID": "ses_w1", "permission": "bash", "patterns": ["ls *"]},
        )
    )
    assert len(out) == 1 and isinstance(out[0], WorkerBlocked)
    b = out[0]
    assert (b.kind, b.request_id, b.instance, b.attempt) == ("permission", "per_1", "i1", 1)
    assert "bash" in b.reason and "ls *" in b.reason
    out = m.map(
        wrap(
            "question.asked",
            {
                "id": "que_1",
                "sessionID": "ses_w1",
                "questions": [{"question": "Which db?", "header": "db", "options": []}],
            },
        )
    )
    assert isinstance(out[0], WorkerBlocked) and out[0].kind == "question"
    assert out[0].request_id == "que_1" and "Which db?" in out[0].reason


def test_reply_resumes_only_a_blocked_worker() -> None:
    blocked = WorkerRef("bd-abc123.1", "bd-abc123", "ses_w1", 2, "blocked", "i1", 50)
    lookup = FakeLookup([blocked])
    m = EventMapper("i1", lookup)
    replied = wrap(
        "permission.replied", {"sessionID": "ses_w1", "requestID": "per_1", "reply": "once"}
    )
    out = m.map(replied)
    assert len(out) == 1 and isinstance(out[0], WorkerProgress)
    assert out[0].progress_percent == 50 and out[0].attempt == 2 and "once" in out[0].message
    assert lookup.fresh_calls == 1  # the blocked state is read fresh, not from a cache
    lookup.refs["ses_w1"] = W1  # running again
    assert m.map(replied) == []


def test_snapshot_polling_fallback() -> None:
    m = EventMapper("i1", FakeLookup([W1]))
    # absent before we ever saw it run: not idle (prompt_async may not have started yet)
    assert m.snapshot({}, ["ses_w1"]) == []
    out = m.snapshot({"ses_w1": {"type": "busy"}}, ["ses_w1"])
    assert [e.status for e in out if isinstance(e, SessionStatus)] == ["busy"]
    out = m.snapshot({}, ["ses_w1"])
    assert [e.status for e in out if isinstance(e, SessionStatus)] == ["idle"]
    assert m.snapshot({}, ["ses_w1"]) == []


# --- the watcher thread over a mock server ---------------------------------------------


class MockServer:
    """A fake instance: the first N stream connections fail, then it streams ``script``."""

    def __init__(self, fail_first: int, script: list[dict[str, Any]]) -> None:
        self.fail_first = fail_first
        self.script = script
        self.stream_calls = 0
        self.status_calls = 0
        self.statuses: dict[str, Any] = {"ses_w1": {"type": "busy"}}
        self.lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            if request.url.path == "/global/event":
                self.stream_calls += 1
                if self.stream_calls <= self.fail_first:
                    return httpx.Response(503, text="down")
                body = "".join(f"data: {json.dumps(e)}\n\n" for e in self.script)
                self.script = []  # later connections get an empty stream
                return httpx.Response(
                    200, headers={"content-type": "text/event-stream"}, content=body.encode()
                )
            if request.url.path == "/session/status":
                self.status_calls += 1
                return httpx.Response(200, json=self.statuses)
        return httpx.Response(404)


def make_watcher(server: MockServer, sink: list[BaseEvent]) -> InstanceWatcher:
    lookup = FakeLookup([W1])
    lock = threading.Lock()

    def deliver(events: list[BaseEvent]) -> None:
        with lock:
            sink.extend(events)

    instance = InstanceView(name="i1", url="http://inst", state="ready", password="pw")
    return InstanceWatcher(
        instance,
        make_lookup=lambda: (lookup, deliver, lambda: None),
        client_factory=lambda s: OpenCodeClient(
            s.url, s.password, transport=httpx.MockTransport(server.handler)
        ),
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )


def statuses_of(events: list[BaseEvent]) -> list[str]:
    return [e.status for e in events if isinstance(e, SessionStatus)]


def test_watcher_streams_and_reconnects_after_a_drop() -> None:
    server = MockServer(
        0, [status("ses_w1", "busy"), wrap("session.idle", {"sessionID": "ses_w1"})]
    )
    server.statuses = {}
    seen: list[BaseEvent] = []
    w = make_watcher(server, seen).start()
    try:
        wait_for(lambda: statuses_of(seen) == ["busy", "idle"], 5)
        # the stream ended (a drop): the watcher reconnects with backoff
        wait_for(lambda: server.stream_calls >= 3, 5)
        assert w.connects >= 1
    finally:
        w.stop()
    assert not w.is_alive()


def test_watcher_polls_status_while_the_stream_is_down() -> None:
    server = MockServer(10**6, [])
    seen: list[BaseEvent] = []
    w = make_watcher(server, seen).start()
    try:
        wait_for(lambda: statuses_of(seen) == ["busy"], 5)
        server.statuses = {}  # the worker finished while we had no stream
        wait_for(lambda: statuses_of(seen) == ["busy", "idle"], 5)
        assert server.status_calls >= 2 and not w.connected.is_set()
    finally:
        w.stop()


def test_manager_keeps_one_watcher_per_instance() -> None:
    started: list[str] = []

    class Dummy:
        def __init__(self, instance: InstanceView) -> None:
            self.instance = instance
            self.alive = True

        def start(self) -> Dummy:
            started.append(self.instance.name)
            return self

        def stop(self, timeout: float = 0) -> None:
            self.alive = False

        def is_alive(self) -> bool:
            return self.alive

    mgr = WatchManager(Dummy)  # type: ignore[arg-type]
    a = InstanceView("a", "http://a", "ready")
    b = InstanceView("b", "http://b", "ready")
    mgr.sync([a, b])
    mgr.sync([a, b])
    assert started == ["a", "b"]
    mgr.sync([a, InstanceView("b", "http://b2", "ready")])  # b moved: new watcher
    assert started == ["a", "b", "b"]
    mgr.sync([a])
    assert set(mgr.watchers) == {"a"}
    mgr.watchers["a"].alive = False  # type: ignore[attr-defined]
    mgr.sync([a])  # a dead watcher is replaced
    assert started == ["a", "b", "b", "a"]
    mgr.stop()


def test_session_finished_needs_a_completed_assistant_message() -> None:
    state: dict[str, Any] = {"status": {}, "messages": []}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/session/status":
            return httpx.Response(200, json=state["status"])
        return httpx.Response(200, json=state["messages"])

    client = OpenCodeClient("http://x", "pw", transport=httpx.MockTransport(handler))
    assert not session_finished(client, "ses_1", None)  # no messages yet
    user = {"info": {"role": "user", "time": {"created": 1}}, "parts": []}
    running = {"info": {"role": "assistant", "time": {"created": 2}}, "parts": []}
    done = {"info": {"role": "assistant", "time": {"created": 2, "completed": 3}}, "parts": []}
    state["messages"] = [user]
    assert not session_finished(client, "ses_1", None)
    state["messages"] = [user, running]
    assert not session_finished(client, "ses_1", None)
    state["messages"] = [user, done]
    assert session_finished(client, "ses_1", None)
    state["status"] = {"ses_1": {"type": "busy"}}
    assert not session_finished(client, "ses_1", None)


def test_idle_outcome_asks_only_the_status_of_a_running_session_and_names_a_failed_answer() -> None:
    paths: list[str] = []
    state: dict[str, Any] = {"status": {"ses_1": {"type": "busy"}}, "messages": []}

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        if request.url.path == "/session/status":
            return httpx.Response(200, json=state["status"])
        return httpx.Response(200, json=state["messages"])

    client = OpenCodeClient("http://x", "pw", transport=httpx.MockTransport(handler))
    assert idle_outcome(client, "ses_1", None) is None
    assert paths == ["/session/status"]  # a running session costs OpenCode one request
    state["status"] = {}
    user = {"info": {"role": "user", "time": {"created": 1}}, "parts": []}
    failed = {
        "info": {
            "role": "assistant",
            "time": {"created": 2, "completed": 3},
            "error": {"name": "APIError", "data": {"message": "overloaded"}},
        },
        "parts": [],
    }
    state["messages"] = [user, failed]
    assert idle_outcome(client, "ses_1", None) == "APIError: overloaded"
    state["messages"] = [user, {**failed, "info": {**failed["info"], "error": None}}]
    assert idle_outcome(client, "ses_1", None) == ""


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (httpx.ConnectError("refused"), OpenCodeNotSentError),
        (httpx.ConnectTimeout("slow connect"), OpenCodeNotSentError),
        (httpx.PoolTimeout("no slot"), OpenCodeNotSentError),
        (httpx.ReadTimeout("no answer"), OpenCodeUnknownOutcomeError),
        (httpx.RemoteProtocolError("cut off"), OpenCodeUnknownOutcomeError),
        (httpx.WriteError("half sent"), OpenCodeUnknownOutcomeError),
    ],
)
def test_client_errors_say_whether_the_request_was_sent(
    raised: Exception, expected: type[Exception]
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise raised

    client = OpenCodeClient("http://inst", "pw", transport=httpx.MockTransport(handler))
    with pytest.raises(expected):
        client.create_session("/wt")


def test_client_error_status_is_its_own_error() -> None:
    client = OpenCodeClient(
        "http://inst", "pw", transport=httpx.MockTransport(lambda r: httpx.Response(500))
    )
    with pytest.raises(OpenCodeStatusError) as info:
        client.create_session("/wt")
    assert info.value.status_code == 500


# --- one stream per instance: the supervisor's pulse feeds the engine's watcher --------


class StreamingInstance:
    """A real HTTP server standing for one instance: ``/global/event`` streams SSE (a
    connected event, the worker's session going busy, then heartbeats until closed) and
    counts the streams open at once; the catch-up's listings answer too."""

    def __init__(self) -> None:
        self.open_streams = 0
        self.most_open = 0
        self.streams_served = 0
        self.lock = threading.Lock()
        self.closing = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.open_streams += 1
            self.streams_served += 1
            self.most_open = max(self.most_open, self.open_streams)
        try:
            handler.send_response(200)
            handler.send_header("content-type", "text/event-stream")
            handler.end_headers()
            first = [wrap("server.connected", {}), status("ses_w1", "busy")]
            for event in first:
                handler.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            while not self.closing.wait(0.05):
                handler.wfile.write(
                    f"data: {json.dumps(wrap('server.heartbeat', {}))}\n\n".encode()
                )
                handler.wfile.flush()
        except OSError:
            pass  # the reader hung up
        finally:
            with self.lock:
                self.open_streams -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        answers: dict[str, Any] = {
            "/session/status": {"ses_w1": {"type": "busy"}},
            "/permission": [],
            "/question": [],
        }

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path == "/global/event":
                    server._stream(self)
                    return
                body = json.dumps(answers.get(path, {})).encode()
                self.send_response(200 if path in answers else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def real_client(instance: InstanceView) -> OpenCodeClient:
    return OpenCodeClient(instance.url, instance.password)


def supervisor_pulse(server: StreamingInstance, lives: list[int]) -> Pulse:
    """The pulse as the supervisor's watcher makes it (``Program.events`` of the port)."""

    def stream() -> Iterator[str]:
        with OpenCodeClient(server.url, "pw") as client:
            yield from client.event_data()

    return Pulse("i1", stream, lambda: lives.append(1))


def stream_watcher(
    server: StreamingInstance, seen: list[BaseEvent], streams: Pulses | None
) -> InstanceWatcher:
    instance = InstanceView(name="i1", url=server.url, state="ready", password="pw")
    return InstanceWatcher(
        instance,
        make_lookup=lambda: (FakeLookup([W1]), seen.extend, lambda: None),
        client_factory=real_client,
        streams=streams,
        backoff_initial_s=0.05,
        backoff_max_s=0.2,
    )


def test_the_daemon_opens_one_stream_per_instance_for_supervisor_and_engine() -> None:
    server = StreamingInstance()
    pulses = Pulses()
    lives: list[int] = []
    seen: list[BaseEvent] = []
    pulse = supervisor_pulse(server, lives)
    pulses.publish(pulse)
    pulse.start()
    watcher = stream_watcher(server, seen, pulses).start()
    try:
        # Both listeners hear the same stream: the supervisor's life and busy count, and
        # the engine's mapper (which also caught up on subscribing).
        wait_for(lambda: pulse.busy == 1 and len(lives) > 3, 10)
        wait_for(lambda: watcher.connected.is_set() and statuses_of(seen) == ["busy"], 10)
        assert watcher.connects == 1
        assert server.open_streams == 1 and server.most_open == 1
        assert server.streams_served == 1

        # The instance restarts: the supervisor's watcher replaces its pulse, and the
        # engine's watcher follows it by name (catching up again) on one stream still.
        pulse.stop()
        pulses.withdraw(pulse)
        wait_for(lambda: not watcher.connected.is_set(), 10)
        wait_for(lambda: server.open_streams == 0, 10)
        pulse = supervisor_pulse(server, lives)
        pulses.publish(pulse)
        pulse.start()
        wait_for(lambda: watcher.connects == 2 and pulse.busy == 1, 10)
        assert server.open_streams == 1 and server.most_open == 1
    finally:
        watcher.stop()
        pulse.stop()
        server.close()
    assert not watcher.is_alive()


def test_without_a_supervisor_the_engine_opens_the_stream_through_the_same_reader() -> None:
    server = StreamingInstance()
    seen: list[BaseEvent] = []
    watcher = stream_watcher(server, seen, None).start()
    try:
        wait_for(lambda: watcher.connected.is_set() and statuses_of(seen) == ["busy"], 10)
        assert server.open_streams == 1 and server.streams_served == 1
    finally:
        watcher.stop()
        server.close()
    wait_for(lambda: server.open_streams == 0, 10)
    assert not watcher.is_alive()


@pytest.mark.e2e
def test_a_real_daemon_holds_one_event_stream_per_instance(tmp_path: Path) -> None:
    """The real daemon (supervisor and engine in one process) against a real instance:
    one connection to it stays open throughout (the stream; health probes come and go),
    where the supervisor's pulse and the engine's watcher used to hold one each."""
    root = make_project(tmp_path / "proj")
    out = cli("start", "--size", "1", project=root, env=NO_MODEL_ENV, timeout=180)
    assert out.returncode == 0, out.stderr
    try:
        state = read_state(ProjectPaths(root).state_file)
        assert state is not None and state.supervisor is not None
        daemon = psutil.Process(state.supervisor.pid)
        ports = {c.port for c in state.instances if c.kind == "opencode" and c.port}
        assert len(ports) == 1

        def open_to_instance() -> set[int]:
            return {
                c.laddr.port
                for c in daemon.net_connections("tcp")
                if c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED
            }

        # The engine's watcher subscribes on its first ticks; then sample a few seconds.
        wait_for(lambda: (engine_status(ProjectPaths(root)).ticks or 0) >= 3, 60)
        wait_for(lambda: len(open_to_instance()) >= 1, 30)
        stop_at = time.monotonic() + 5.0
        lasting = open_to_instance()
        while time.monotonic() < stop_at:
            lasting &= open_to_instance()
            time.sleep(0.2)  # a sampling period, not a wait for a condition
        assert len(lasting) == 1, lasting
    finally:
        cli("stop", project=root, timeout=120)
    assert pool_processes(root) == []


def test_the_watcher_queues_only_messages_the_mapper_may_map() -> None:
    # Every kind the mapper handles passes the cheap filter; a message part does not.
    for kind in (
        "session.status",
        "session.idle",
        "session.error",
        "permission.asked",
        "permission.v2.replied",
        "question.asked",
        "question.v2.rejected",
    ):
        wrapped = json.dumps({"payload": {"type": kind, "properties": {"sessionID": "s"}}})
        assert may_map(wrapped), kind
    part = {"type": "message.part.updated", "properties": {"part": {"text": "hello"}}}
    assert not may_map(json.dumps({"payload": part}))
