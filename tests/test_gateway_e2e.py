"""The gateway end to end: a real pool of 2 opencode instances + the scripted model behind
one gateway URL, driven by real OpenCode clients (the official JS SDK v2, ``opencode run
--attach``, the TUI in tmux) and broken by ``kill -9``.

One pool serves the whole module (started with ``swarm-pool start --gateway``); the two
destructive tests (an instance, then the gateway, killed) run last.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import PoolState, read_state
from swarm_pool.store import open_project_store
from tests.opencode_fixture import free_port, opencode_binary
from tests.pool_cli import cli
from tests.support import init_repo, wait_for

# Real OpenCode clients and a pool start on 2 shared cores: generous per-test limits.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / ".tools/sdk/node_modules/@opencode-ai/sdk/dist/v2/client.js"
REPLY = "pong from the pool"
HANG = "bd-hang01"  # a prompt naming this bead id stays busy until aborted
SCRIPTS = f"""
[scripts.default]
steps = [{{ text = "{REPLY}", delay_s = 1.0 }}]
final_text = "{REPLY}"

[scripts.{HANG}]
steps = [{{ hang = true }}]
"""


@dataclass
class GatewayPool:
    root: Path
    paths: ProjectPaths
    url: str
    password: str
    dirs: Path

    def state(self) -> PoolState:
        state = read_state(self.paths.state_file)
        assert state is not None
        return state

    def client(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, auth=("opencode", self.password), timeout=timeout, trust_env=False
        )

    def session_map(self) -> dict[str, tuple[str, str]]:
        with open_project_store(self.paths) as store:
            return {p.session_id: (p.instance, p.directory) for p in store.sessions.all()}

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for log in (self.paths.instance_dir("gateway") / "gateway.log", self.paths.supervisor_log):
            if log.exists():
                out += log.read_text().splitlines()[-lines:]
        return "\n".join(out)

    def new_dirs(self, prefix: str, n: int) -> list[Path]:
        out = []
        for i in range(n):
            d = self.dirs / f"{prefix}-{i}"
            d.mkdir(parents=True)
            out.append(d)
        return out


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayPool]:
    base = tmp_path_factory.mktemp("gateway-e2e")
    root = init_repo((base / "proj").resolve())
    paths = ProjectPaths(root).ensure()
    (paths.swarm_dir / "scripts.toml").write_text(SCRIPTS)
    port = free_port()
    (paths.swarm_dir / "pool.toml").write_text(
        # 8 OpenCode clients start on the same 2 shared cores: a loaded instance answers
        # its health check late without being stuck, so the pool is patient here.
        "[pool]\nsize = 2\nstart_timeout_s = 90.0\n"
        "[supervisor]\ncheck_interval_s = 0.5\nhealth_timeout_s = 10.0\n"
        "health_failures = 6\n"
        '[model]\nscripts = ".swarm/scripts.toml"\n'
        f"[gateway]\nport = {port}\n"
    )
    out = cli("start", "--gateway", "--json", project=root, session_scoped=True, timeout=400)
    log = paths.supervisor_log
    assert out.returncode == 0, f"{out.stderr}\n{log.read_text() if log.exists() else ''}"
    try:
        info = json.loads(cli("attach", "gateway", "--print", project=root).stdout)
        assert info["url"] == f"http://127.0.0.1:{port}" and info["username"] == "opencode"
        yield GatewayPool(root, paths, info["url"], info["password"], (base / "dirs").resolve())
    finally:
        cli("stop", project=root, session_scoped=True, timeout=120)


def _wait_idle_with_reply(c: httpx.Client, sid: str, directory: Path) -> list[Any]:
    def done() -> list[Any] | None:
        status = c.get("/session/status", params={"directory": str(directory)}).json()
        if sid in status:
            return None
        msgs = c.get(f"/session/{sid}/message", params={"directory": str(directory)}).json()
        texts = [
            p.get("text", "")
            for m in msgs
            if m["info"]["role"] == "assistant"
            for p in m["parts"]
            if p["type"] == "text"
        ]
        return msgs if any(REPLY in t for t in texts) else None

    return wait_for(done, timeout=90, interval=0.2)


@pytest.mark.skipif(not SDK.exists(), reason="scripts/setup installs the JS SDK in .tools/sdk")
def test_official_js_sdk_v2_through_the_gateway(gw: GatewayPool) -> None:
    dirs = gw.new_dirs("sdk", 4)
    args = {
        "sdk": SDK.as_uri(),
        "url": gw.url,
        "password": gw.password,
        "dirs": [str(d) for d in dirs],
        "text": "hello through the gateway",
        "timeout_ms": 90_000,
        "debug": False,
    }
    out = subprocess.run(
        ["node", str(ROOT / "tests" / "gateway_sdk.mjs"), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert out.returncode == 0, f"{out.stderr}\n{gw.log_tail()}"
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["unauthorized"] == 401
    sessions = result["sessions"]
    assert [s["dir"] for s in sessions] == [str(d) for d in dirs]
    for s in sessions:
        # Seen going busy, then idle, on the gateway's /event.
        assert s["idle"], f"{s}\n{out.stderr}\n{gw.log_tail()}"
        assert s["messages"] >= 2 and any(REPLY in t for t in s["assistant_text"]), s
    owners = gw.session_map()
    assert {owners[s["id"]] for s in sessions} == {(owners[s["id"]][0], s["dir"]) for s in sessions}
    assert {owners[s["id"]][0] for s in sessions} == {"oc-1", "oc-2"}


# 8 OpenCode clients (each a full OpenCode process) on 2 shared cores took 240 s at load 30.
@pytest.mark.timeout(720)
def test_eight_opencode_run_attach_clients_all_finish_on_both_instances(gw: GatewayPool) -> None:
    dirs = gw.new_dirs("run", 8)
    env = {**os.environ, "OPENCODE_DISABLE_MODELS_FETCH": "1"}
    env.pop("OPENCODE_SERVER_PASSWORD", None)
    run = [str(opencode_binary()), "run", "--attach", gw.url, "-p", gw.password]
    # Each client opens a local database of its own: 8 first-time migrations of one shared
    # file race each other ("Failed query: CREATE TABLE ..."), attached or not.
    for i in range(len(dirs)):
        (gw.dirs / "clients" / str(i)).mkdir(parents=True)
    procs = [
        subprocess.Popen(
            [*run, "--dir", str(d), f"say pong {i}"],
            cwd=d,
            env={**env, "OPENCODE_DB": str(gw.dirs / "clients" / str(i) / "opencode.db")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, d in enumerate(dirs)
    ]
    outputs = []
    deadline = time.monotonic() + 600
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append((proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rc, _stdout, stderr in outputs:
        assert rc == 0, f"{stderr}\n{gw.log_tail()}"
    # `opencode run` prints no text for this model, attached to an instance directly as
    # well, so the answers are read back from the sessions, through the gateway.
    sessions = {sid: where for sid, where in gw.session_map().items() if where[1] in map(str, dirs)}
    assert sorted(d for _inst, d in sessions.values()) == sorted(map(str, dirs))
    with gw.client() as c:
        for sid, (_inst, directory) in sessions.items():
            msgs = c.get(f"/session/{sid}/message", params={"directory": directory}).json()
            texts = [p.get("text", "") for m in msgs for p in m["parts"] if p["type"] == "text"]
            assert any(REPLY in t for t in texts), texts
    assert {inst for inst, _d in sessions.values()} == {"oc-1", "oc-2"}


def test_a_session_created_on_an_instance_directly_shows_up_through_the_gateway(
    gw: GatewayPool,
) -> None:
    # What swarm-pool's engine does for a worker: POST /session on the instance it chose.
    (directory,) = gw.new_dirs("direct", 1)
    rec = gw.state().child("oc-2")
    assert rec is not None and rec.url is not None
    with httpx.Client(
        base_url=rec.url, auth=("opencode", rec.password), trust_env=False, timeout=60
    ) as direct:
        sid = direct.post("/session", params={"directory": str(directory)}, json={}).json()["id"]
    wait_for(lambda: gw.session_map().get(sid) == ("oc-2", str(directory)), timeout=20)
    with gw.client() as c:
        listed = c.get("/session", params={"directory": str(directory)}).json()
        assert sid in {s["id"] for s in listed}
        assert c.get(f"/session/{sid}", params={"directory": str(directory)}).json()["id"] == sid


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_tui_attached_to_the_gateway_shows_a_sessions_messages(gw: GatewayPool) -> None:
    (directory,) = gw.new_dirs("tui", 1)
    marker = f"tui-check-{uuid.uuid4().hex[:6]}"
    with gw.client() as c:
        sid = c.post("/session", params={"directory": str(directory)}, json={}).json()["id"]
        c.post(
            f"/session/{sid}/message",
            params={"directory": str(directory)},
            json={"parts": [{"type": "text", "text": marker}]},
        ).raise_for_status()
    sock = f"swarm-gw-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "COLUMNS", "LINES")}

    def tmux(*args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", sock, *args], env=env, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    command = " ".join(
        shlex.quote(a)
        for a in [
            sys.executable,
            "-m",
            "swarm_pool",
            "attach",
            "gateway",
            "--session",
            sid,
            "--dir",
            str(directory),
            "--project",
            str(gw.root),
        ]
    )
    tmux("new-session", "-d", "-s", "tui", "-x", "160", "-y", "48", f"{command}; exec sleep 60")
    try:
        screen = wait_for(
            lambda: (
                (text := tmux("capture-pane", "-p", "-t", "tui"))
                and marker in text
                and REPLY in text
                and text
            ),
            timeout=60,
            interval=0.5,
        )
        assert marker in screen and REPLY in screen
    finally:
        subprocess.run(
            ["tmux", "-L", sock, "kill-server"], env=env, capture_output=True, timeout=30
        )


def test_kill_9_of_an_instance_gives_503_until_it_is_back(gw: GatewayPool) -> None:
    (directory,) = gw.new_dirs("kill", 1)
    params = {"directory": str(directory)}
    with gw.client() as c:
        sid = c.post("/session", params=params, json={}).json()["id"]
        owner = gw.session_map()[sid][0]
        prompt = {"parts": [{"type": "text", "text": "run while I die"}]}
        assert c.post(f"/session/{sid}/prompt_async", params=params, json=prompt).status_code == 204
        victim = gw.state().child(owner)
        assert victim is not None and victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)

        def unavailable() -> httpx.Response | None:
            resp = c.get(f"/session/{sid}", params=params)
            return resp if resp.status_code == 503 else None

        resp = wait_for(unavailable, timeout=20)
        assert resp.headers["retry-after"] == "2"
        assert resp.json()["name"] == "ServiceUnavailable"
        # The other instance's sessions are not affected meanwhile.
        wait_for(lambda: c.get(f"/session/{sid}", params=params).status_code == 200, timeout=90)
        state = gw.state().child(owner)
        assert state is not None and state.pid != victim.pid and state.restarts >= 1
        # The session survived in its instance's own database and takes prompts again.
        c.post(f"/session/{sid}/prompt_async", params=params, json=prompt).raise_for_status()
        _wait_idle_with_reply(c, sid, directory)


def test_kill_9_of_the_gateway_restarts_it_with_the_session_map_intact(gw: GatewayPool) -> None:
    before = gw.session_map()
    assert len(before) >= 12
    old = gw.state().gateway()
    assert old is not None and old.pid is not None
    os.kill(old.pid, signal.SIGKILL)

    def restarted() -> bool:
        rec = gw.state().gateway()
        return rec is not None and rec.state == "ready" and rec.pid not in (None, old.pid)

    wait_for(restarted, timeout=60, interval=0.2)
    after = gw.session_map()
    assert {k: v for k, v in after.items() if k in before} == before
    with gw.client() as c:
        for sid, (_inst, directory) in list(before.items())[:4]:
            resp = c.get(f"/session/{sid}", params={"directory": directory})
            assert resp.status_code == 200 and resp.json()["id"] == sid


def test_a_pty_websocket_through_the_gateway_reaches_the_ptys_instance(gw: GatewayPool) -> None:
    (directory,) = gw.new_dirs("pty", 1)
    params = {"directory": str(directory)}
    with gw.client() as c:
        created = c.post("/pty", params=params, json={"command": "/bin/sh", "cwd": str(directory)})
        assert created.status_code == 200, created.text
        pty_id = created.json()["id"]
        # OpenCode mints a ticket only for a request with this header (a browser page of
        # another origin then needs a CORS preflight).
        minted = c.post(
            f"/pty/{pty_id}/connect-token", params=params, headers={"x-opencode-ticket": "1"}
        )
        assert minted.status_code == 200, minted.text
        ticket = minted.json()["ticket"]
    base = gw.url.replace("http://", "ws://", 1) + f"/pty/{pty_id}/connect"
    where = urlencode(params)
    basic = "Basic " + base64.b64encode(f"opencode:{gw.password}".encode()).decode()

    async def shell_says(url: str, headers: dict[str, str], marker: str) -> None:
        async with ws_connect(url, additional_headers=headers, proxy=None) as ws:
            # Only the shell's own output holds the sum: the echoed input holds $((...)).
            await ws.send(f"echo {marker}-$((40+2))\n")
            seen = ""
            async with asyncio.timeout(60):
                while f"{marker}-42" not in seen:
                    frame = await ws.recv()
                    seen += frame if isinstance(frame, str) else frame.decode("utf-8", "replace")

    asyncio.run(shell_says(f"{base}?{where}", {"authorization": basic}, "basic"))
    # A browser sends no credentials on a WebSocket: the ticket minted through the
    # gateway stands in, and the PTY's instance checks it.
    asyncio.run(shell_says(f"{base}?{where}&ticket={ticket}", {}, "ticket"))
    with pytest.raises(InvalidStatus) as refused:
        asyncio.run(shell_says(f"{base}?{where}", {}, "nobody"))
    assert refused.value.response.status_code == 403
    with gw.client() as c:
        assert c.delete(f"/pty/{pty_id}", params=params).status_code == 200


def test_session_status_follows_events_and_a_restarted_gateway_syncs_it(gw: GatewayPool) -> None:
    (directory,) = gw.new_dirs("status", 1)
    params = {"directory": str(directory)}
    log = gw.paths.instance_dir("gateway") / "gateway.log"
    with gw.client() as c:
        sid = c.post("/session", params=params, json={}).json()["id"]
        owner = gw.session_map()[sid][0]
        rec = gw.state().child(owner)
        assert rec is not None and rec.url is not None

        def status() -> dict[str, Any]:
            resp = c.get("/session/status", params=params)
            assert resp.status_code == 200, resp.text
            answer: dict[str, Any] = resp.json()
            return answer

        prompt = {"parts": [{"type": "text", "text": f"{HANG}: stay busy"}]}
        assert c.post(f"/session/{sid}/prompt_async", params=params, json=prompt).status_code == 204
        wait_for(lambda: status().get(sid, {}).get("type") == "busy", timeout=60, interval=0.1)
        with httpx.Client(
            base_url=rec.url, auth=("opencode", rec.password), trust_env=False, timeout=60
        ) as direct:
            assert direct.get("/session/status", params=params).json().get(sid) == status()[sid]
        # A gateway started while the session is busy has seen no event of it: once its
        # stream is back, one snapshot of the directory must show it busy.
        old = gw.state().gateway()
        assert old is not None and old.pid is not None
        seen = len(log.read_text())
        os.kill(old.pid, signal.SIGKILL)

        def reconnected() -> bool:
            rec = gw.state().gateway()
            up = rec is not None and rec.state == "ready" and rec.pid not in (None, old.pid)
            return up and f"{owner}: event stream connected" in log.read_text()[seen:]

        wait_for(reconnected, timeout=90, interval=0.2)
        assert status().get(sid, {}).get("type") == "busy", gw.log_tail()
        assert status().get(sid, {}).get("type") == "busy"  # now from the synced board
        # The abort's session.status event takes it out, with no snapshot to help.
        c.post(f"/session/{sid}/abort", params=params).raise_for_status()
        wait_for(lambda: sid not in status(), timeout=60, interval=0.1)
