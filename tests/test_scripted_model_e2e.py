"""The real opencode binary against the real scripted model, with our per-instance config.

One model server and one ``opencode serve`` are shared by the module. Each test makes
its own session in its own fresh git repo. The MCP block of the config is present (so
OpenCode validates it) but disabled through ``extra_config``: these tests are about the
model and the config, the swarm tools are tested with the MCP server.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from swarm_pool.config import Config
from swarm_pool.opencode.client import OpenCodeClient
from swarm_pool.opencode.config import opencode_config
from swarm_pool.protocol import (
    MCP_SERVER_NAME,
    WORKER_TOOLS,
    Contract,
    agent_tool_name,
    render_contract,
)
from tests.opencode_fixture import (
    EventRecorder,
    ModelServerProcess,
    OpenCodeServer,
    start_model_server,
    start_opencode,
)
from tests.support import wait_for

pytestmark = pytest.mark.e2e

RUN_TIMEOUT = 120.0  # a loaded 2-core machine can be slow; the happy path takes ~5 s


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServerProcess]:
    server = start_model_server(tmp_path_factory.mktemp("model"), shared=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def opencode(
    tmp_path_factory: pytest.TempPathFactory, model: ModelServerProcess
) -> Iterator[OpenCodeServer]:
    work = tmp_path_factory.mktemp("opencode")
    config = Config()
    config.opencode.extra_config = {"mcp": {MCP_SERVER_NAME: {"enabled": False}}}
    oc_config = opencode_config(config, project_root=work, model_url=model.url)
    server = start_opencode(work, oc_config, shared=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(opencode: OpenCodeServer) -> Iterator[OpenCodeClient]:
    with opencode.client(timeout=30) as c:
        yield c


def _repo(path: Path) -> Path:
    path.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "init",
        ],
        cwd=path,
        check=True,
    )
    return path.resolve()


def _start(
    client: OpenCodeClient, repo: Path, bead: str, script: list[dict[str, Any]] | None, **kw: Any
) -> str:
    contract = Contract(bead_id=bead, epic_id=bead.rsplit(".", 1)[0], script=script, **kw)
    session = client.create_session(str(repo))["id"]
    client.prompt_async(session, "Work on your subtask.\n" + render_contract(contract), str(repo))
    return str(session)


def _idle(client: OpenCodeClient, repo: Path, session: str) -> bool:
    return session not in client.session_status(directory=str(repo))


def _assistants(client: OpenCodeClient, repo: Path, session: str) -> list[dict[str, Any]]:
    return [m for m in client.messages(session, str(repo)) if m["info"]["role"] == "assistant"]


def _tool_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for m in messages for p in m["parts"] if p["type"] == "tool"]


def _finished(client: OpenCodeClient, repo: Path, session: str) -> list[dict[str, Any]]:
    """The assistant messages once the last one has finished (or failed)."""
    msgs = _assistants(client, repo, session)
    if msgs and (msgs[-1]["info"].get("finish") == "stop" or msgs[-1]["info"].get("error")):
        return msgs
    return []


def test_real_opencode_accepts_the_config(
    opencode: OpenCodeServer, model: ModelServerProcess, tmp_path: Path
) -> None:
    repo = _repo(tmp_path / "repo")
    auth = ("opencode", opencode.password)
    params = {"directory": str(repo)}
    config = httpx.get(f"{opencode.base_url}/config", params=params, auth=auth, timeout=30).json()
    assert config["model"] == "swarmpool/scripted"
    assert config["default_agent"] == "build"
    assert config["provider"]["swarmpool"]["options"]["baseURL"] == model.url
    assert config["permission"]["question"] == "deny"
    assert config["permission"]["external_directory"] == "deny"
    mcp = config["mcp"][MCP_SERVER_NAME]
    # `env -u OPENCODE_SERVER_PASSWORD <python> -m ...`: the server starts without it.
    assert mcp["command"][-2:] == ["-m", "swarm_pool.mcp_server"]
    assert mcp["command"][1:3] == ["-u", "OPENCODE_SERVER_PASSWORD"]
    assert mcp["enabled"] is False and mcp["timeout"] > 60_000
    status = httpx.get(f"{opencode.base_url}/mcp", params=params, auth=auth, timeout=30).json()
    assert status[MCP_SERVER_NAME]["status"] == "disabled"

    # The default agent's effective rules: every "ask" is overridden by a later rule.
    agents = httpx.get(f"{opencode.base_url}/agent", params=params, auth=auth, timeout=30).json()
    build = next(a for a in agents if a["name"] == "build")
    rules = build["permission"]
    for i, rule in enumerate(rules):
        if rule["action"] != "ask":
            continue
        assert any(
            later["permission"] == rule["permission"]
            and later["pattern"] in ("*", rule["pattern"])
            and later["action"] != "ask"
            for later in rules[i + 1 :]
        ), f"{rule} would make a headless worker wait"


def test_inline_script_writes_a_file_through_opencode(
    client: OpenCodeClient, model: ModelServerProcess, tmp_path: Path
) -> None:
    repo = _repo(tmp_path / "repo")
    bead = "bd-e2e0a1.1"
    script = [
        # The first try of this turn gets a 503; OpenCode retries and the write goes through.
        {
            "tool": "write",
            "args": {"filePath": "{worktree}/notes/hello.txt", "content": "hello {bead_id}\n"},
            "http_error": 503,
            "retry_after_s": 0.1,
            "times": 1,
        },
        {"text": "wrote it"},
    ]
    session = _start(client, repo, bead, script, worktree=str(repo))
    target = repo / "notes" / "hello.txt"
    wait_for(target.exists, timeout=RUN_TIMEOUT)
    assert target.read_text() == f"hello {bead}\n"
    msgs = wait_for(lambda: _finished(client, repo, session), timeout=RUN_TIMEOUT)
    wait_for(lambda: _idle(client, repo, session), timeout=RUN_TIMEOUT)
    assert {m["info"]["agent"] for m in msgs} == {"build"}
    [write] = _tool_parts(msgs)
    assert write["tool"] == "write"
    assert write["state"]["status"] == "completed"
    assert write["state"]["input"] == {"filePath": str(target), "content": f"hello {bead}\n"}
    texts = [p["text"] for p in msgs[-1]["parts"] if p["type"] == "text"]
    assert texts == ["wrote it"]

    stats = model.stats()
    by_bead = stats["by_bead"][bead]
    assert by_bead["sessions"] == [session]
    kinds = [r["kind"] for r in stats["recent"] if r["bead_id"] == bead]
    faults = [r["fault"] for r in stats["recent"] if r["bead_id"] == bead]
    assert kinds.count("title") == 1
    assert faults.count("http_503") == 1
    assert by_bead["steps"] == 3  # the 503, its retry, the text
    # What OpenCode offers the model (question is denied, so it is not offered).
    assert {"bash", "edit", "read", "write", "glob", "grep"} <= set(stats["tools_seen"])
    assert "question" not in stats["tools_seen"]


def test_default_script_without_mcp_still_writes_owned_files(
    client: OpenCodeClient, model: ModelServerProcess, tmp_path: Path
) -> None:
    repo = _repo(tmp_path / "repo")
    bead = "bd-e2e0a2.1"
    # No worktree in the contract: the model takes the session directory from OpenCode's
    # system prompt. The swarm tools are missing (MCP disabled): OpenCode turns those
    # calls into "invalid" tool results and the script goes on.
    session = _start(client, repo, bead, None, files=["src/app.py", "src/*.md"])
    msgs = wait_for(lambda: _finished(client, repo, session), timeout=RUN_TIMEOUT)
    assert (repo / "src" / "app.py").read_text().startswith("# src/app.py\n")
    assert sorted(p.name for p in (repo / "src").iterdir()) == ["app.py"]
    parts = _tool_parts(msgs)
    assert [p["tool"] for p in parts] == ["invalid", "invalid", "write", "invalid", "invalid"]
    assert parts[0]["state"]["input"]["tool"] == agent_tool_name("swarmmail_init")
    missing = model.stats()["missing_tools"]
    for tool in ("swarmmail_init", "swarmmail_reserve", "swarm_progress", "swarm_complete"):
        assert tool in WORKER_TOOLS
        assert missing.get(agent_tool_name(tool), 0) >= 1


def test_model_errors_end_in_session_error(
    opencode: OpenCodeServer, client: OpenCodeClient, model: ModelServerProcess, tmp_path: Path
) -> None:
    recorder = EventRecorder(opencode)
    try:
        repos = {name: _repo(tmp_path / name) for name in ("e400", "e500", "bad")}
        sessions = {
            "e400": _start(client, repos["e400"], "bd-e2e0b1.1", [{"http_error": 400}]),
            "e500": _start(
                client, repos["e500"], "bd-e2e0b2.1", [{"http_error": 500, "retry_after_s": 0.1}]
            ),
            "bad": _start(client, repos["bad"], "bd-e2e0b3.1", [{"malformed": True}]),
        }
        for sid in sessions.values():
            wait_for(lambda sid=sid: recorder.of(sid, "session.error"), timeout=RUN_TIMEOUT)
        errors = {
            k: recorder.of(sid, "session.error")[0]["properties"]["error"]
            for k, sid in sessions.items()
        }
        retries = {
            k: [
                e["properties"]["status"]["attempt"]
                for e in recorder.of(sid, "session.status")
                if e["properties"]["status"]["type"] == "retry"
            ]
            for k, sid in sessions.items()
        }
    finally:
        recorder.close()

    # A 4xx: no retry, an APIError at once.
    assert errors["e400"]["name"] == "APIError"
    assert errors["e400"]["data"]["statusCode"] == 400
    assert errors["e400"]["data"]["isRetryable"] is False
    assert retries["e400"] == []
    # A 5xx: OpenCode retries 5 times (session.status "retry", attempt 1..5), then fails.
    assert errors["e500"]["name"] == "APIError"
    assert errors["e500"]["data"]["statusCode"] == 500
    assert errors["e500"]["data"]["isRetryable"] is True
    assert sorted(set(retries["e500"])) == [1, 2, 3, 4, 5]
    assert model.stats()["by_bead"]["bd-e2e0b2.1"]["steps"] == 6
    # A broken chunk: a parse error, not retried.
    assert errors["bad"]["name"] == "UnknownError"
    assert "JSON parsing failed" in errors["bad"]["data"]["message"]
    assert retries["bad"] == []
    # The same error lands on the assistant message (it may be stored just after the event).
    for key, sid in sessions.items():
        msgs = wait_for(lambda r=repos[key], s=sid: _finished(client, r, s), timeout=RUN_TIMEOUT)
        assert msgs[-1]["info"]["error"]["name"] == errors[key]["name"]
        wait_for(lambda r=repos[key], s=sid: _idle(client, r, s), timeout=RUN_TIMEOUT)


def test_hang_keeps_the_session_busy_until_aborted(
    client: OpenCodeClient, model: ModelServerProcess, tmp_path: Path
) -> None:
    repo = _repo(tmp_path / "repo")
    bead = "bd-e2e0c1.1"
    baseline = model.stats()["threads"]
    session = _start(client, repo, bead, [{"hang": True}])
    wait_for(lambda: model.stats()["by_bead"].get(bead, {}).get("steps") == 1, timeout=RUN_TIMEOUT)
    time.sleep(1.0)  # a hang is the absence of an event: give it a moment to not happen
    assert client.session_status(str(repo)).get(session, {}).get("type") == "busy"
    assert model.stats()["threads"] > baseline
    client.abort(session, str(repo))
    wait_for(lambda: _idle(client, repo, session), timeout=RUN_TIMEOUT)
    # OpenCode closed the connection; the model's handler thread noticed and ended.
    wait_for(lambda: model.stats()["threads"] <= baseline, timeout=30)
    msgs = wait_for(lambda: _finished(client, repo, session), timeout=RUN_TIMEOUT)
    assert msgs[-1]["info"]["error"]["name"] == "MessageAbortedError"
