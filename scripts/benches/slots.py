"""Slots benchmark: warm worktree slots against a fresh worktree per bead, in waves.

One run, two throw-away projects with a real pool of ONE instance and the scripted model
(each worker waits ``delay`` seconds in its first step, writes its file, completes):
``[workers] worktrees = "slots"`` and ``"fresh"`` each run 3 waves of N workers (spawn
all, await, review and merge each). After each wave it reports the wave's wall time,
the CPU seconds the instance's process tree used during the wave (OpenCode plus its
per-directory MCP children, live and reaped), the tree's RSS, and how many distinct
directories the instance has served so far. The memory-limit restart is off, so growth
shows. Waves 2 and 3 are where warm slots differ: their directories were served before.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benches.project import bench_project, worker_script
from swarm_pool.config import load_config
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.api import pool_status, start_pool, stop_pool
from swarm_pool.store import open_project_store
from swarm_pool.store.events import SubtaskSpec
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.review import merge, review
from swarm_pool.swarm.status import await_workers
from swarm_pool.swarm.workers import spawn_async

WAVES = 3


def _project(base: Path, mode: str, n: int) -> ProjectPaths:
    return bench_project(
        base / mode,
        f"[pool]\nmax_sessions_per_instance = {n}\n"
        f'[workers]\ntimeout_s = 600.0\nworktrees = "{mode}"\n'
        "[supervisor]\nmax_rss_mb = 0\n",
    )


def _instance(paths: ProjectPaths) -> psutil.Process:
    for inst in pool_status(paths, live=False)["instances"]:
        if inst["kind"] == "opencode" and inst["pid"]:
            return psutil.Process(int(inst["pid"]))
    raise RuntimeError("no opencode instance running")


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of the tree: live processes, plus the reaped children they waited for."""
    total = 0.0
    for p in _tree(proc):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _rss_mb(proc: psutil.Process) -> dict[str, float]:
    own = children = 0
    for p in _tree(proc):
        try:
            rss = p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        if p.pid == proc.pid:
            own += rss
        else:
            children += rss
    return {"opencode": round(own / 2**20, 1), "children": round(children / 2**20, 1)}


def _wave(ctx: SwarmContext, name: str, n: int, delay_s: float) -> list[str]:
    specs = [
        SubtaskSpec(
            title=f"{name} {i}",
            files=[f"{name}/{i}.txt"],
            script=worker_script(delay_s, "# {file} by {bead_id}\n"),
        )
        for i in range(n)
    ]
    epic = ctx.store.hive.create_epic(name, specs)
    for c in epic.cells:
        spawn_async(ctx, c.id)
    result = await_workers(ctx, epic.id, 900)
    if result.timed_out or result.counts["completed"] != n:
        raise RuntimeError(f"wave {name}: {result.counts}")
    for c in epic.cells:
        if review(ctx, c.id).approved:
            merge(ctx, c.id)
    return [c.id for c in epic.cells]


def _run_mode(base: Path, mode: str, n: int, delay_s: float) -> dict[str, Any]:
    paths = _project(base, mode, n)
    config = load_config(None, project_root=paths.root)
    start_pool(paths, config, size=1)
    store = open_project_store(paths, config)
    ctx = SwarmContext(paths=paths, config=config, store=store)
    waves: list[dict[str, Any]] = []
    served: set[str] = set()
    try:
        proc = _instance(paths)
        idle = _rss_mb(proc)
        for i in range(1, WAVES + 1):
            cpu0, t0 = _cpu_s(proc), time.perf_counter()
            beads = _wave(ctx, f"{mode}{i}", n, delay_s)
            wall = time.perf_counter() - t0
            cpu = _cpu_s(proc) - cpu0
            for b in beads:
                for s in ctx.store.read(types=["worker_session_created"], bead_id=b):
                    served.add(getattr(s.event, "worktree", ""))
            waves.append(
                {
                    "wave": i,
                    "wall_s": round(wall, 2),
                    "instance_cpu_s_per_worker": round(cpu / n, 3),
                    "rss_mb": _rss_mb(proc),
                    "directories_served": len(served),
                }
            )
    finally:
        store.close()
        stop_pool(paths, config)
    total = [w["rss_mb"]["opencode"] + w["rss_mb"]["children"] for w in waves]
    return {
        "idle_rss_mb": idle,
        "waves": waves,
        "rss_wave3_over_wave1": round(total[-1] / total[0], 3),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    n = 4 if quick else 8
    delay_s = 1.0 if quick else 2.0
    base = Path(tempfile.mkdtemp(prefix="swarm-bench-slots-"))
    keep = False
    results: dict[str, Any] = {"workers_per_wave": n, "waves": WAVES, "model_delay_s": delay_s}
    try:
        for mode in ("fresh", "slots"):
            results[mode] = _run_mode(base, mode, n, delay_s)
        fresh, slots = results["fresh"]["waves"], results["slots"]["waves"]
        results["ratios_slots_over_fresh"] = {
            f"wave{w['wave']}": {
                "wall": round(w["wall_s"] / f["wall_s"], 3),
                "cpu_per_worker": round(
                    w["instance_cpu_s_per_worker"] / f["instance_cpu_s_per_worker"], 3
                ),
            }
            for w, f in zip(slots, fresh, strict=True)
        }
    except BaseException:
        keep = True
        print(f"slots bench failed; its projects are kept in {base}", file=sys.stderr)
        raise
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return results
