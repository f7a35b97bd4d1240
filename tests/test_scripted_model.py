"""The scripted model as a real process, over HTTP: wire format, scripts, faults, stats, CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from swarm_pool.protocol import Contract, agent_tool_name, render_contract
from tests.opencode_fixture import ModelServerProcess, child_env, start_model_server, stop_tree
from tests.support import wait_for

ROOT = Path(__file__).resolve().parent.parent
BEAD = "bd-abc123.1"
TOOLS = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("bash", "read", "write", agent_tool_name("swarmmail_init"))
]
TITLE_SYSTEM = "You are a title generator. You output ONLY a thread title. Nothing else."
SCRIPTS = """
[match]
"*.7" = "globbed"

[scripts."bd-abc123.5"]
steps = [{ text = "by bead id" }]

[scripts.globbed]
steps = [{ tool = "bash", args = { command = "echo {bead_id}" } }]
final_text = "globbed done"
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServerProcess]:
    work = tmp_path_factory.mktemp("model")
    scripts = work / "scripts.toml"
    scripts.write_text(SCRIPTS)
    server = start_model_server(work, scripts=scripts, shared=True)
    try:
        yield server
    finally:
        server.stop()


def _prompt(bead: str = BEAD, script: list[dict[str, Any]] | None = None, **kw: Any) -> str:
    contract = Contract(
        bead_id=bead,
        epic_id=bead.rsplit(".", 1)[0],
        worktree="/work/tree",
        files=kw.pop("files", ["src/a.py", "docs/*.md"]),
        script=script,
        **kw,
    )
    return "Do your subtask.\n" + render_contract(contract)


def _messages(prompt: str, turns: int = 0) -> list[dict[str, Any]]:
    """A conversation after ``turns`` tool-calling assistant turns."""
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are opencode."},
        {"role": "user", "content": [{"type": "text", "text": prompt}]},
    ]
    for i in range(turns):
        call = {"id": f"c{i}", "type": "function", "function": {"name": "x", "arguments": "{}"}}
        msgs.append({"role": "assistant", "content": "", "tool_calls": [call]})
        msgs.append({"role": "tool", "tool_call_id": f"c{i}", "content": "ok"})
    return msgs


def _body(messages: list[dict[str, Any]], *, stream: bool = True, tools: bool = True) -> dict:
    body: dict[str, Any] = {"model": "scripted", "messages": messages, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if tools:
        body["tools"] = TOOLS
        body["tool_choice"] = "auto"
    return body


def _stream(model: ModelServerProcess, body: dict, session: str = "", timeout: float = 30) -> list:
    """POST a streaming request; the decoded ``data:`` payloads ("[DONE]" kept as is)."""
    headers = {"x-session-id": session} if session else {}
    out: list[Any] = []
    with httpx.stream(
        "POST", f"{model.url}/chat/completions", json=body, headers=headers, timeout=timeout
    ) as resp:
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                out.append(data if data == "[DONE]" else json.loads(data))
            else:
                assert line == "", line
    return out


def _summary(chunks: list[Any]) -> dict[str, Any]:
    """Reassemble the text, the tool call and the finish reason from stream chunks."""
    text, name, args, finish, ids = "", "", "", None, set()
    for chunk in chunks:
        if chunk == "[DONE]":
            continue
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                assert call["index"] == 0
                ids.add(call.get("id"))
                name += call.get("function", {}).get("name", "")
                args += call.get("function", {}).get("arguments", "")
            finish = choice["finish_reason"] or finish
    ids.discard(None)
    return {
        "text": text,
        "tool": name or None,
        "args": json.loads(args) if args else None,
        "finish": finish,
        "ids": ids,
    }


def test_models_health_and_unknown_routes(model: ModelServerProcess) -> None:
    models = httpx.get(f"{model.url}/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["scripted"]
    assert httpx.get(f"{model.root}/health", timeout=10).json()["ok"] is True
    assert httpx.get(f"{model.url}/nope", timeout=10).status_code == 404
    bad = httpx.post(f"{model.url}/chat/completions", content=b"[1, 2]", timeout=10)
    assert bad.status_code == 400
    assert "JSON object" in bad.json()["error"]["message"]


def test_streaming_tool_call_format(model: ModelServerProcess) -> None:
    chunks = _stream(model, _body(_messages(_prompt())))
    assert chunks[-1] == "[DONE]"
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    usage = [c for c in chunks[:-1] if not c["choices"]]
    assert len(usage) == 1 and usage[0]["usage"]["total_tokens"] > 0
    got = _summary(chunks)
    assert got["tool"] == agent_tool_name("swarmmail_init")
    assert got["args"] == {"bead_id": BEAD}
    assert got["finish"] == "tool_calls"
    assert got["ids"] == {"call_0"}


def test_step_index_follows_the_conversation(model: ModelServerProcess) -> None:
    prompt = _prompt()
    tools = [_summary(_stream(model, _body(_messages(prompt, n))))["tool"] for n in range(5)]
    assert tools == [
        agent_tool_name("swarmmail_init"),
        agent_tool_name("swarmmail_reserve"),
        "write",  # one literal owned file: src/a.py (docs/*.md is a glob)
        agent_tool_name("swarm_progress"),
        agent_tool_name("swarm_complete"),
    ]
    write = _summary(_stream(model, _body(_messages(prompt, 2))))
    assert write["args"]["filePath"] == "/work/tree/src/a.py"
    done = _summary(_stream(model, _body(_messages(prompt, 5))))
    assert (done["tool"], done["text"], done["finish"]) == (None, f"Done with {BEAD}.", "stop")
    # Any later turn (a follow-up prompt) still gets the final text.
    assert _summary(_stream(model, _body(_messages(prompt, 9))))["finish"] == "stop"


def test_non_streaming_answers(model: ModelServerProcess) -> None:
    resp = httpx.post(
        f"{model.url}/chat/completions", json=_body(_messages(_prompt()), stream=False), timeout=30
    )
    assert resp.status_code == 200
    data = resp.json()
    assert data["object"] == "chat.completion"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == agent_tool_name("swarmmail_init")
    assert json.loads(call["function"]["arguments"]) == {"bead_id": BEAD}


def test_title_request_gets_a_short_title(model: ModelServerProcess) -> None:
    before = model.stats()["by_kind"].get("title", 0)
    messages = [
        {"role": "system", "content": TITLE_SYSTEM},
        {"role": "user", "content": "Generate a title for this conversation:\n"},
        {"role": "user", "content": _prompt(title="Add the parser")},
    ]
    got = _summary(_stream(model, _body(messages, tools=False)))
    assert got["text"] == f"{BEAD} Add the parser"
    assert (got["tool"], got["finish"]) == (None, "stop")
    assert model.stats()["by_kind"]["title"] == before + 1


def test_script_selection_inline_file_bead_and_glob(model: ModelServerProcess) -> None:
    inline = _prompt(script=[{"text": "inline {bead_id} at {worktree}"}])
    assert _summary(_stream(model, _body(_messages(inline))))["text"] == (
        f"inline {BEAD} at /work/tree"
    )
    by_bead = _summary(_stream(model, _body(_messages(_prompt("bd-abc123.5")))))
    assert by_bead["text"] == "by bead id"
    globbed = _prompt("bd-abc123.7")
    first = _summary(_stream(model, _body(_messages(globbed))))
    assert (first["tool"], first["args"]) == ("bash", {"command": "echo bd-abc123.7"})
    assert _summary(_stream(model, _body(_messages(globbed, 1))))["text"] == "globbed done"
    # No contract, just a bead id in the prose: the default script.
    bare = _summary(_stream(model, _body(_messages("please do bd-0ff1ce.3"))))
    assert bare["args"] == {"bead_id": "bd-0ff1ce.3"}
    stats = model.stats()["by_bead"]
    assert stats["bd-abc123.7"]["script"] == "globbed"
    assert stats["bd-0ff1ce.3"]["script"] == "default"


def test_bad_inline_script_is_a_400_naming_the_problem(model: ModelServerProcess) -> None:
    body = _body(_messages(_prompt("bd-abc123.8", script=[{"tool": "write", "hang": 3}])))
    resp = httpx.post(f"{model.url}/chat/completions", json=body, timeout=30)
    assert resp.status_code == 400
    message = resp.json()["error"]["message"]
    assert "bad script in inline script of bd-abc123.8: steps.0.hang" in message


def test_fault_delay(model: ModelServerProcess) -> None:
    body = _body(_messages(_prompt(script=[{"text": "late", "delay_s": 1.0}])))
    start = time.monotonic()
    assert _summary(_stream(model, body))["text"] == "late"
    assert time.monotonic() - start >= 1.0


def test_barrier_answers_only_once_enough_requests_wait_together(
    model: ModelServerProcess,
) -> None:
    # Alone, a request at a barrier of 2 is refused after the barrier's timeout.
    alone = [{"text": "never", "barrier": "alone", "barrier_count": 2, "barrier_timeout_s": 0.5}]
    resp = httpx.post(
        f"{model.url}/chat/completions", json=_body(_messages(_prompt(script=alone))), timeout=30
    )
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "barrier_timeout"
    # Three at once: none is answered before the third arrives, then all are.
    step = {"text": "together", "barrier": "trio", "barrier_count": 3, "barrier_timeout_s": 60}
    body = _body(_messages(_prompt("bd-trio01.1", script=[step])))
    answered: list[str] = []
    threads = [
        threading.Thread(target=lambda: answered.append(_summary(_stream(model, body))["text"]))
        for _ in range(3)
    ]
    for t in threads[:2]:
        t.start()
    wait_for(lambda: _waiting(model) >= 2, 30)
    assert answered == []  # two wait; the barrier needs three
    threads[2].start()
    for t in threads:
        t.join(timeout=60)
    assert answered == ["together"] * 3


def _waiting(model: ModelServerProcess) -> int:
    stats = httpx.get(f"{model.url}/stats", timeout=10).json()
    return sum(1 for r in stats["recent"] if r["bead_id"] == "bd-trio01.1")


def test_fault_http_error_with_retry_after(model: ModelServerProcess) -> None:
    script = [{"http_error": 503, "retry_after_s": 0.25, "error_message": "down for {bead_id}"}]
    resp = httpx.post(
        f"{model.url}/chat/completions", json=_body(_messages(_prompt(script=script))), timeout=30
    )
    assert resp.status_code == 503
    assert resp.json()["error"] == {
        "message": f"down for {BEAD}",
        "type": "server_error",
        "code": None,
    }
    assert resp.headers["retry-after-ms"] == "250"
    four = httpx.post(
        f"{model.url}/chat/completions",
        json=_body(_messages(_prompt(script=[{"http_error": 400}]))),
        timeout=30,
    )
    # A 4xx body must not look like a server error, or OpenCode retries it.
    assert four.status_code == 400
    assert four.json()["error"]["type"] == "invalid_request_error"


def test_fault_times_then_the_step_answers(model: ModelServerProcess) -> None:
    script = [{"tool": "read", "args": {"filePath": "/x"}, "http_error": 500, "times": 2}]
    body = _body(_messages(_prompt("bd-abc123.3", script=script)))
    url = f"{model.url}/chat/completions"
    codes = [
        httpx.post(url, json=body, headers={"x-session-id": "ses_t"}, timeout=30).status_code
        for _ in range(2)
    ]
    assert codes == [500, 500]
    assert _summary(_stream(model, body, session="ses_t"))["tool"] == "read"
    # Another session has its own count.
    assert httpx.post(url, json=body, headers={"x-session-id": "ses_u"}).status_code == 500


def test_fault_malformed_chunk(model: ModelServerProcess) -> None:
    body = _body(_messages(_prompt(script=[{"malformed": True}])))
    lines: list[str] = []
    with httpx.stream("POST", f"{model.url}/chat/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert "data: [DONE]" not in lines
    json.loads(lines[0][len("data: ") :])  # the role chunk is fine
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[1][len("data: ") :])


def test_fault_hang_ends_when_the_client_leaves(model: ModelServerProcess) -> None:
    baseline = model.stats()["threads"]
    body = _body(_messages(_prompt("bd-abc123.4", script=[{"hang": True}])))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{model.url}/chat/completions", json=body, timeout=1.5)
    # The handler notices the closed socket and its thread ends.
    wait_for(lambda: model.stats()["threads"] <= baseline, timeout=10)
    assert model.stats()["by_bead"]["bd-abc123.4"]["steps"] == 1


def test_hang_does_not_block_shutdown(tmp_path: Path) -> None:
    server = start_model_server(tmp_path)
    try:
        body = _body(_messages(_prompt(script=[{"hang": True}])))
        errors: list[BaseException] = []

        def call() -> None:
            try:
                httpx.post(f"{server.url}/chat/completions", json=body, timeout=60)
            except httpx.HTTPError as e:
                errors.append(e)

        caller = threading.Thread(target=call)
        caller.start()
        wait_for(lambda: server.stats()["by_kind"].get("step") == 1, timeout=10)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=10) == 0
        assert time.monotonic() - start < 5
        caller.join(timeout=10)
        assert not caller.is_alive()
        assert errors, "the hanging request should fail once the server is gone"
    finally:
        server.stop()


def test_parallel_sessions_are_independent(model: ModelServerProcess) -> None:
    turns = {f"bd-beef{i:02d}.1": i % 6 for i in range(8)}
    results: dict[str, Any] = {}

    def run(bead: str) -> None:
        results[bead] = _summary(_stream(model, _body(_messages(_prompt(bead), turns[bead]))))

    threads = [threading.Thread(target=run, args=(b,)) for b in turns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    expected = [
        agent_tool_name("swarmmail_init"),
        agent_tool_name("swarmmail_reserve"),
        "write",
        agent_tool_name("swarm_progress"),
        agent_tool_name("swarm_complete"),
        None,
    ]
    assert {b: r["tool"] for b, r in results.items()} == {b: expected[n] for b, n in turns.items()}


def test_cli_serve_and_errors(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "swarm_pool", "model", "serve", "--port", "0"]
    proc = subprocess.Popen(
        [*cmd, "--project", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("scripted model listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        assert httpx.get(f"{url}/models", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        stop_tree(proc.pid)
        proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    bad = tmp_path / "bad.toml"
    bad.write_text('[scripts.x]\nsteps = [{ tool = "write", http_error = 99 }]\n')
    for extra, message in (
        (["--scripts", str(bad)], "bad script in"),
        (["--scripts", str(tmp_path / "none.toml")], "scripts file not found"),
        (["--host", "0.0.0.0"], "loopback only"),
    ):
        done = subprocess.run(
            [*cmd, "--project", str(tmp_path), *extra],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=30,
        )
        assert done.returncode == 1, done
        assert message in done.stderr
        assert done.stderr.startswith("swarm-pool: error:"), done.stderr
