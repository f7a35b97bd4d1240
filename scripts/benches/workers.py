"""Workers benchmark: async spawn vs the blocking prompt, swarm wall time, push vs polling.

One run, in a throw-away git project with a real pool and the scripted model:

- ``spawn_latency``: p50/p95 of ``spawn_async`` (worktree, prompt, route, session,
  ``prompt_async``, store) against the blocking ``POST /session/{id}/message`` that
  returns only when the model is done (what a coordinator waits for per worker with the
  blocking Task tool).
- ``wall``: N workers whose script waits a fixed delay, run one after the other with the
  blocking prompt (the ADR's baseline) against swarm-pool's spawn-all-then-await, on 1
  instance and on 4 (``max_sessions_per_instance`` is raised to N, so both pool sizes
  run every worker at once and the figure compares one event loop with four).
- ``completion_detection``: for the workers of the 4-instance run, the delay from the
  moment a session really finished (its last assistant message's ``completed`` time) to
  the moment the store knew (the SSE idle that the watcher recorded), against a poller
  that asks ``GET /session/status`` every 5 s (the ADR's polling), measured side by side.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benches.project import bench_project, worker_script
from swarm_pool.config import load_config
from swarm_pool.errors import OpenCodeError
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.api import scale_pool, start_pool, stop_pool
from swarm_pool.protocol import Contract
from swarm_pool.store import open_project_store
from swarm_pool.store.events import BeadSpec
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.status import await_workers
from swarm_pool.swarm.engine.watch import session_finished
from swarm_pool.swarm.worker import PromptSpec, spawn_async

POLL_PERIOD_S = 5.0
_DROPPED: list[str] = []  # blocking prompts whose connection the server dropped


def _project(base: Path, max_sessions: int) -> ProjectPaths:
    # Every worker opens a new directory on its instance, which grows its RSS by ~60-100
    # MB that dispose does not return; ~40 workers on one instance cross the default
    # 2 GB limit and the supervisor restarts it mid-run. The memory limit is a separate
    # concern from the orchestration measured here, so it is off.
    return bench_project(
        base / "proj",
        f"[pool]\nmax_sessions_per_instance = {max_sessions}\n"
        "[workers]\ntimeout_s = 600.0\n"
        "[supervisor]\nmax_rss_mb = 0\n",
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[k], 2)


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50": _pct(values, 0.5),
        "p95": _pct(values, 0.95),
        "mean": round(statistics.fmean(values), 2) if values else None,
    }


def _epic(ctx: SwarmContext, name: str, n: int, delay_s: float) -> list[str]:
    specs = [
        BeadSpec(title=f"{name} {i}", files=[f"{name}/{i}.txt"], script=worker_script(delay_s))
        for i in range(n)
    ]
    return [c.id for c in ctx.store.hive.create_epic(name, specs).cells]


def _blocking_one(ctx: SwarmContext, bead: str, instance: str) -> float:
    """Run one worker the blocking way; seconds until the prompt call returned."""
    cell = ctx.store.hive.get_cell(bead)
    tree = ctx.git.worktrees.create(bead)
    contract = Contract(
        bead_id=bead,
        epic_id=cell.epic_id,
        title=cell.title,
        worktree=str(tree.path),
        files=cell.files,
        script=cell.script,
    )
    prompt = PromptSpec(contract=contract, description=cell.description).render()
    client = ctx.client(ctx.instance(instance))
    try:
        started = time.perf_counter()
        session = client.create_session(str(tree.path), title=bead)
        try:
            client.prompt(session["id"], prompt, directory=str(tree.path), timeout=600)
        except OpenCodeError:
            # Seen under load: the server drops the long-held request. A blocking
            # coordinator would then have to poll; count it and wait for the end.
            _DROPPED.append(bead)
            deadline = time.monotonic() + 600
            while not session_finished(client, session["id"], str(tree.path)):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        return time.perf_counter() - started
    finally:
        client.close()


class _Poller:
    """The ADR's completion detection: every 5 s, ask each instance which sessions are
    still running, and check the ones that are not for a completed last answer."""

    def __init__(self, ctx: SwarmContext) -> None:
        self.ctx = ctx
        self.seen_done: dict[str, float] = {}  # session -> wall time the poll noticed
        self.watch: dict[str, tuple[str, str]] = {}  # session -> (instance, worktree)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _Poller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        clients = {s.name: self.ctx.client(s) for s in self.ctx.instances()}
        try:
            while not self._stop.wait(POLL_PERIOD_S):
                for sid, (instance, worktree) in list(self.watch.items()):
                    client = clients.get(instance)
                    if client is None or sid in self.seen_done:
                        continue
                    try:
                        if session_finished(client, sid, worktree):
                            self.seen_done[sid] = time.time()
                    except Exception:
                        continue
        finally:
            for c in clients.values():
                c.close()


def _finished_at(ctx: SwarmContext, instance: str, session_id: str, worktree: str) -> float:
    client = ctx.client(ctx.instance(instance))
    try:
        messages = client.messages(session_id, directory=worktree)
    finally:
        client.close()
    done = [
        m["info"]["time"]["completed"]
        for m in messages
        if m.get("info", {}).get("role") == "assistant"
        and m["info"].get("time", {}).get("completed")
    ]
    return max(done) / 1000 if done else float("nan")


def _swarm_run(
    ctx: SwarmContext, name: str, n: int, delay_s: float, poller: _Poller | None
) -> dict[str, Any]:
    beads = _epic(ctx, name, n, delay_s)
    started = time.perf_counter()
    called = []
    spawns = []
    for b in beads:
        called.append(time.time())
        spawns.append(spawn_async(ctx, b))
    epic_id = spawns[0].epic_id
    if poller is not None:
        # The poller learns each session as soon as the dispatcher has started it.
        def running() -> bool:
            for w in ctx.store.workers.list(epic_id=epic_id):
                if w.session_id and w.session_id not in poller.watch:
                    poller.watch[w.session_id] = (w.instance, w.worktree)
            return len(poller.watch) >= n

        while not running() and time.perf_counter() - started < 300:
            ctx.store.wait_for_change(ctx.store.last_seq(), 0.5)
    result = await_workers(ctx, epic_id, 900)
    wall = time.perf_counter() - started
    to_session = []
    for s, t in zip(spawns, called, strict=True):
        ev = ctx.store.read(types=["worker_spawned"], bead_id=s.bead_id)
        if ev:
            to_session.append((ev[0].timestamp / 1000 - t) * 1000)
    out: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "completed": result.counts["completed"],
        "spawn_ms": _summary([s.elapsed_ms for s in spawns]),
        "spawn_to_session_started_ms": _summary(to_session),
    }
    if poller is not None:
        # The poller needs up to one period after the last finish to notice it.
        time.sleep(POLL_PERIOD_S + 1)
        push, poll = [], []
        for s in spawns:
            w = ctx.store.workers.get(s.bead_id)
            if w is None or not w.session_id:
                continue
            done = _finished_at(ctx, w.instance, w.session_id, w.worktree)
            idle = [
                e.timestamp / 1000
                for e in ctx.store.read(types=["session_status"], session_id=w.session_id)
                if getattr(e.event, "status", "") == "idle"
            ]
            if idle:
                push.append(max(0.0, idle[-1] - done) * 1000)
            if w.session_id in poller.seen_done:
                poll.append(max(0.0, poller.seen_done[w.session_id] - done) * 1000)
        out["detection_ms"] = {"push_sse": _summary(push), "poll_5s": _summary(poll)}
    return out


def _warm_up(ctx: SwarmContext, name: str, instances: int) -> None:
    """One tiny worker per instance: the first session an instance serves pays for
    loading its providers and plugins, which is not what the comparison is about."""
    beads = _epic(ctx, name, instances, 0.0)
    for b in beads:
        spawn_async(ctx, b)
    await_workers(ctx, ctx.store.hive.get_cell(beads[0]).epic_id, 300)


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    n = 4 if quick else 8
    delay_s = 1.0 if quick else 2.0
    base = Path(tempfile.mkdtemp(prefix="swarm-bench-workers-"))
    paths = _project(base, max_sessions=n)
    config = load_config(None, project_root=paths.root)
    results: dict[str, Any] = {
        "workers": n,
        "model_delay_s": delay_s,
        "max_sessions_per_instance": n,
        "memory_limit": "off",
    }
    start_pool(paths, config, size=1)
    store = open_project_store(paths, config)
    keep = False
    ctx = SwarmContext(paths=paths, config=config, store=store)
    try:
        # 1. spawn latency vs the blocking prompt (1 instance, no model delay)
        _warm_up(ctx, "warm1", 1)
        latency = _swarm_run(ctx, "lat", n, 0.0, None)
        blocking = [_blocking_one(ctx, b, "oc-1") * 1000 for b in _epic(ctx, "latb", n, 0.0)]
        results["spawn_latency_ms"] = {
            "spawn_async": latency["spawn_ms"],
            "spawn_to_session_started": latency["spawn_to_session_started_ms"],
            "blocking_prompt": _summary(blocking),
        }
        # 2. wall time: sequential blocking vs swarm-pool on 1 instance, then 4
        seq_started = time.perf_counter()
        for bead in _epic(ctx, "seq", n, delay_s):
            _blocking_one(ctx, bead, "oc-1")
        sequential = time.perf_counter() - seq_started
        one = _swarm_run(ctx, "one", n, delay_s, None)
        scale_pool(paths, config, 4)
        _warm_up(ctx, "warm4", 4)
        poller = _Poller(ctx).start()
        try:
            four = _swarm_run(ctx, "four", n, delay_s, poller)
        finally:
            poller.stop()
        results["wall_s"] = {
            "sequential_blocking_1_instance": round(sequential, 2),
            "swarm_pool_1_instance": one["wall_s"],
            "swarm_pool_4_instances": four["wall_s"],
            "speedup_vs_sequential_4_instances": round(sequential / four["wall_s"], 2),
        }
        results["completion_detection_ms"] = four.get("detection_ms")
        results["blocking_prompts_dropped"] = len(_DROPPED)
    except BaseException:
        keep = True
        print(f"workers bench failed; its project is kept in {base}", file=sys.stderr)
        raise
    finally:
        store.close()
        stop_pool(paths, config)
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return results
