"""Gateway benchmark: what one URL for the pool costs, side by side with direct access.

A pool of 2 instances, the scripted model and the gateway run in a scratch git repo
(started through the real CLI). Every figure is measured on the gateway and on an
instance directly in the same run, interleaved in blocks, and reported as the added
cost or a ratio:

- ``latency``: sequential kept-alive ``GET /session/status`` (a merged route: the
  gateway asks both instances) and ``GET /session/{id}`` (a pass-through to the owner);
  p50/p99 of each side and the added p50/p99;
- ``sse``: one ``/event`` stream on the gateway and one on the instance, both open while
  ``PATCH /session/{id}`` produces ``session.updated`` events; the added delay of each
  event (same event id) at p50/p90;
- ``throughput``: ``GET /session/status`` from 16 concurrent kept-alive connections for
  a fixed time, gateway and direct, with two load generators: httpx (what a Python
  client pays) and a lean one (httptools on raw asyncio connections), since the load
  generator shares the 2 cores and httpx alone costs about a millisecond a request;
- ``run_attach``: 8 ``opencode run --attach`` clients at once, each in its own new
  directory, against the gateway (pool of 2) and against one instance; wall times and
  their ratio, repeated.

The load average is recorded: on a shared 2-core box every figure moves with it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, cast

import httptools
import httpx
import psutil

try:
    import uvloop
except ImportError:  # the gateway runs without it too
    uvloop = None  # type: ignore[assignment]

from swarm_pool.pool.state import PoolState, read_state

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / ".tools/opencode/node_modules/opencode-linux-x64/bin/opencode"
SCRIPTS = '[scripts.default]\nsteps = [{ text = "pong" }]\nfinal_text = "pong"\n'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _cli(*args: str, project: Path, timeout: float = 240) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "swarm_pool", *args, "--project", str(project)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"swarm-pool {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(_pct(values, 0.5) * 1000, 2),
        "p99_ms": round(_pct(values, 0.99) * 1000, 2),
    }


class Side:
    def __init__(self, url: str, password: str) -> None:
        self.url = url
        self.password = password

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, auth=("opencode", self.password), trust_env=False, timeout=60
        )


def _cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def _latency(
    gw: Side, direct: Side, path: str, params: dict[str, str], n: int, gw_pid: int
) -> dict[str, Any]:
    times: dict[str, list[float]] = {"gateway": [], "direct": []}
    gw_cpu = 0.0
    with gw.client() as g, direct.client() as d:
        for c in (g, d):  # warm the connections and both servers
            for _ in range(20):
                c.get(path, params=params).raise_for_status()
        for _block in range(n // 50):
            for name, c in (("gateway", g), ("direct", d)):
                cpu0 = _cpu_s(gw_pid)
                for _ in range(50):
                    t0 = time.perf_counter()
                    c.get(path, params=params).raise_for_status()
                    times[name].append(time.perf_counter() - t0)
                if name == "gateway":
                    gw_cpu += _cpu_s(gw_pid) - cpu0
    out: dict[str, Any] = {name: _ms(v) for name, v in times.items()}
    out["added_p50_ms"] = round(out["gateway"]["p50_ms"] - out["direct"]["p50_ms"], 2)
    out["added_p99_ms"] = round(out["gateway"]["p99_ms"] - out["direct"]["p99_ms"], 2)
    out["requests_each"] = len(times["gateway"])
    # CPU the gateway process spent per request: less sensitive to the machine's load
    # than wall times, and what bounds its throughput (1000 / this per core).
    out["gateway_cpu_ms_per_request"] = round(gw_cpu / len(times["gateway"]) * 1000, 3)
    return out


def _sse(gw: Side, direct: Side, sid: str, directory: str, n: int) -> dict[str, Any]:
    seen: dict[str, dict[str, float]] = {"gateway": {}, "direct": {}}
    ready = threading.Barrier(3)
    stop = threading.Event()

    def reader(name: str, side: Side) -> None:
        with (
            side.client() as c,
            c.stream("GET", "/event", params={"directory": directory}, timeout=None) as resp,
        ):
            ready.wait()
            for line in resp.iter_lines():
                now = time.perf_counter()
                if stop.is_set():
                    return
                if line.startswith("data: "):
                    ev = json.loads(line[6:])
                    if ev.get("type") == "session.updated" and "id" in ev:
                        seen[name][ev["id"]] = now

    threads = [
        threading.Thread(target=reader, args=(name, side), daemon=True)
        for name, side in (("gateway", gw), ("direct", direct))
    ]
    for t in threads:
        t.start()
    ready.wait()
    time.sleep(0.5)
    with direct.client() as c:
        for i in range(n):
            c.patch(f"/session/{sid}", params={"directory": directory}, json={"title": f"t{i}"})
            time.sleep(0.02)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(seen["gateway"]) < len(seen["direct"]):
        time.sleep(0.05)
    stop.set()
    common = [k for k in seen["direct"] if k in seen["gateway"]]
    delays = [seen["gateway"][k] - seen["direct"][k] for k in common]
    return {
        "events_direct": len(seen["direct"]),
        "events_gateway": len(seen["gateway"]),
        "added_p50_ms": round(_pct(delays, 0.5) * 1000, 2) if delays else None,
        "added_p90_ms": round(_pct(delays, 0.9) * 1000, 2) if delays else None,
    }


async def _hammer(
    side: Side, path: str, params: dict[str, str], seconds: float, conc: int
) -> float:
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(
        base_url=side.url,
        auth=("opencode", side.password),
        trust_env=False,
        limits=limits,
        timeout=30,
    ) as c:
        done = 0
        end = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < end:
                (await c.get(path, params=params)).raise_for_status()
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        return done / (time.perf_counter() - t0)


class _KeptAlive(asyncio.Protocol):
    """One kept-alive connection sending the same GET again as soon as the answer to
    the last one is complete (no pipelining), until ``end``; httptools (uvicorn's own
    C parser) reads the answers, so the generator costs a few dozen microseconds a
    request where httpx costs about a millisecond."""

    def __init__(self, request: bytes, end: float, finished: asyncio.Future[int]) -> None:
        self.request = request
        self.end = end
        self.finished = finished
        self.done = 0
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if self.parser.get_status_code() != 200:
            self._finish(RuntimeError(f"status {self.parser.get_status_code()}"))
            return
        self.done += 1
        if time.perf_counter() < self.end:
            self.transport.write(self.request)
        else:
            self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc or RuntimeError("connection closed"))

    def _finish(self, error: Exception | None) -> None:
        if self.finished.done():
            return
        if error is None:
            self.finished.set_result(self.done)
        else:
            self.finished.set_exception(error)
        if self.transport is not None:
            self.transport.close()


async def _hammer_lean(
    side: Side, path: str, params: dict[str, str], seconds: float, conc: int
) -> float:
    url = httpx.URL(side.url + path, params=params)
    token = base64.b64encode(f"opencode:{side.password}".encode()).decode()
    request = (
        f"GET {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
        f"Authorization: Basic {token}\r\nAccept: application/json\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    end = time.perf_counter() + seconds
    finished: list[asyncio.Future[int]] = [loop.create_future() for _ in range(conc)]
    port = url.port or 80
    t0 = time.perf_counter()
    for fut in finished:
        await loop.create_connection(partial(_KeptAlive, request, end, fut), url.host, port)
    done: list[int] = await asyncio.gather(*finished)
    return sum(done) / (time.perf_counter() - t0)


def _throughput(
    gw: Side, direct: Side, params: dict[str, str], seconds: float, gw_pid: int
) -> dict[str, Any]:
    """Each load generator on each side, direct / gateway / direct again (a load trend
    shows as a difference between the two direct figures); with the lean generator, the
    gateway's own CPU per request too."""
    out: dict[str, Any] = {}
    runner = uvloop.run if uvloop is not None else asyncio.run
    for gen, hammer in (("httpx", _hammer), ("lean", _hammer_lean)):
        for name, side in (("direct", direct), ("gateway", gw), ("direct_again", direct)):
            cpu0 = _cpu_s(gw_pid)
            rate = runner(hammer(side, "/session/status", params, seconds, 16))
            out[f"{gen}_{name}_req_s"] = round(rate, 1)
            if name == "gateway" and gen == "lean":
                cpu = _cpu_s(gw_pid) - cpu0
                out["lean_gateway_cpu_ms_per_request"] = round(cpu / (rate * seconds) * 1000, 3)
    return out


def _run_attach(side: Side, base: Path, tag: str, n: int = 8) -> float:
    env = {**os.environ, "OPENCODE_DISABLE_MODELS_FETCH": "1"}
    env.pop("OPENCODE_SERVER_PASSWORD", None)
    dirs = []
    for i in range(n):
        d = base / f"{tag}-{i}"
        d.mkdir(parents=True)
        dirs.append(d)
    run = [str(BINARY), "run", "--attach", side.url, "-p", side.password]
    t0 = time.perf_counter()
    # Each client opens a local database of its own: first-time migrations of one
    # shared file race each other when 8 clients start at once.
    for d in dirs:
        (d.parent / f"{d.name}.client").mkdir()
    procs = [
        subprocess.Popen(
            [*run, "--dir", str(d), f"bench {tag} {i}"],
            cwd=d,
            env={**env, "OPENCODE_DB": str(d.parent / f"{d.name}.client" / "opencode.db")},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, d in enumerate(dirs)
    ]
    try:
        for p in procs:
            if p.wait(timeout=900) != 0:
                raise RuntimeError(f"opencode run --attach {side.url} exited {p.returncode}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return time.perf_counter() - t0


def _state(project: Path) -> PoolState:
    state = read_state(project / ".swarm" / "pool.json")
    assert state is not None
    return state


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    result: dict[str, Any] = {"load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="swarm-pool-bench-") as tmp:
        base = Path(tmp)
        project = base / "proj"
        project.mkdir()
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        subprocess.run(
            ["git", "-C", str(project), "commit", "-q", "--allow-empty", "-m", "init"],
            check=True,
            env={**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x.invalid"}
            | {"GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@x.invalid"},
        )
        swarm = project / ".swarm"
        swarm.mkdir()
        (swarm / "scripts.toml").write_text(SCRIPTS)
        (swarm / "pool.toml").write_text(
            '[pool]\nsize = 2\n[model]\nscripts = ".swarm/scripts.toml"\n'
            f"[gateway]\nport = {_free_port()}\n"
            "[supervisor]\nhealth_timeout_s = 10.0\nhealth_failures = 6\n"
        )
        _cli("start", "--gateway", "--json", project=project)
        try:
            info = json.loads(_cli("attach", "gateway", "--print", project=project))
            gw = Side(info["url"], info["password"])
            oc1 = _state(project).child("oc-1")
            assert oc1 is not None and oc1.url is not None
            direct = Side(oc1.url, oc1.password)
            # One session on oc-1 (created directly: the gateway learns it from events).
            directory = str(project)
            params = {"directory": directory}
            with direct.client() as c:
                sid = c.post("/session", params=params, json={}).json()["id"]
            n = 200 if quick else 1000
            gateway_rec = _state(project).gateway()
            assert gateway_rec is not None and gateway_rec.pid is not None
            gw_pid = gateway_rec.pid
            result["latency_session_status"] = _latency(
                gw, direct, "/session/status", params, n, gw_pid
            )
            result["latency_session_get"] = _latency(
                gw, direct, f"/session/{sid}", params, n, gw_pid
            )
            result["sse"] = _sse(gw, direct, sid, directory, 50 if quick else 200)
            result["throughput"] = _throughput(gw, direct, params, 3.0 if quick else 8.0, gw_pid)
            # Partial results survive a failure of the slow part below.
            print(json.dumps(result), file=sys.stderr, flush=True)
            walls: dict[str, list[float]] = {"gateway": [], "one_instance": []}
            reps = 0 if getattr(args, "no_attach", False) else 1 if quick else 2
            for rep in range(reps):
                # Alternate which side goes first, so a load trend favours neither.
                order = [("gateway", gw), ("one_instance", direct)]
                for name, side in order if rep % 2 == 0 else order[::-1]:
                    walls[name].append(_run_attach(side, base / "runs", f"{name}{rep}"))
                print(json.dumps({"run_attach_so_far": walls}), file=sys.stderr, flush=True)
            if reps:
                result["run_attach_8"] = {
                    "gateway_pool_of_2_wall_s": [round(w, 2) for w in walls["gateway"]],
                    "one_instance_wall_s": [round(w, 2) for w in walls["one_instance"]],
                    "ratio_gateway_over_one": round(
                        statistics.median(walls["gateway"])
                        / statistics.median(walls["one_instance"]),
                        2,
                    ),
                }
        finally:
            _cli("stop", project=project)
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args()), indent=2))
