"""Workers benchmark, variants side by side: ``scripts/bench.py workers --variants legacy,lean``.

Each variant is a set of ``[opencode]`` settings; for every pool size K and repeat, the
variants run one after the other (interleaved, so load drifts hit them alike), each in a
fresh throw-away git project with a fresh pool: warm-up (one worker per instance, so
start-up costs are not counted), then N workers spawned at once, each with three
scripted model answers ``delay`` seconds apart. Figures per run:

- ``wall_s`` from the first spawn to ``await``;
- CPU-s per worker by process kind, over the pool's process tree (psutil): for each
  long-lived process, its own CPU plus what its exited children used (``children_*``
  times, so the short git processes of snapshots land in ``opencode_exited_children``),
  plus the live per-directory MCP servers and relays found under the instances, plus the
  spawner's own git (this process's exited children);
- ``instance_rss_mb``: the instances' trees after the run;
- ``bound_s = max(model chain, total CPU / cores)``, and ``wall_s / bound_s``.

To add a variant (e.g. warm slots), add an entry to ``VARIANTS``.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benches.project import bench_project
from swarm_pool.config import load_config
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.api import start_pool, stop_pool
from swarm_pool.pool.state import read_state
from swarm_pool.store import open_project_store
from swarm_pool.store.events import SubtaskSpec
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.status import await_workers
from swarm_pool.swarm.workers import spawn_async

ANSWERS = 3  # model answers per worker that wait ``delay``


@dataclass(frozen=True)
class Variant:
    name: str
    opencode: str  # lines of the [opencode] section
    note: str
    workers: str = ""  # extra lines of the [workers] section


VARIANTS: dict[str, Variant] = {
    "legacy": Variant(
        "legacy",
        'mcp = "local"\nsnapshot = true\n',
        "round 1: a fresh worktree per bead, a whole MCP server per session directory, "
        "snapshots on",
        workers='worktrees = "fresh"\n',
    ),
    "lean": Variant(
        "lean",
        'mcp = "shared"\nsnapshot = false\n',
        "one shared MCP server per pool + a stdlib relay per directory, snapshots off",
    ),
    # One switch at a time against lean: what snapshots alone cost.
    "lean_snapshots": Variant(
        "lean_snapshots",
        'mcp = "shared"\nsnapshot = true\n',
        "lean with OpenCode's snapshots on",
    ),
}


def _script(delay_s: float) -> list[dict[str, Any]]:
    # Three answers, each ``delay_s`` late (ANSWERS): the model chain the bound uses.
    done = {"bead_id": "{bead_id}", "summary": "done", "files_touched": "{literal_files}"}
    return [
        {"tool": "swarmmail_init", "args": {}, "delay_s": delay_s},
        {
            "tool": "write",
            "each_file": True,
            "args": {"filePath": "{path}", "content": "# {file}\n"},
            "delay_s": delay_s,
        },
        {"tool": "swarm_complete", "args": done, "delay_s": delay_s},
    ]


def _project(base: Path, variant: Variant, n: int) -> ProjectPaths:
    return bench_project(
        base / "proj",
        f"[pool]\nmax_sessions_per_instance = {n}\n"
        f"[workers]\ntimeout_s = 600.0\n{variant.workers}"
        "[supervisor]\nmax_rss_mb = 0\n"
        f"[opencode]\n{variant.opencode}",
    )


def _epic(ctx: SwarmContext, name: str, n: int, delay_s: float) -> tuple[str, list[str]]:
    specs = [
        SubtaskSpec(title=f"{name} {i}", files=[f"{name}/{i}.txt"], script=_script(delay_s))
        for i in range(n)
    ]
    epic = ctx.store.hive.create_epic(name, specs)
    return epic.id, [c.id for c in epic.cells]


def _kind(proc: psutil.Process, roots: dict[int, str]) -> str:
    if proc.pid in roots:
        return roots[proc.pid]
    cmd = " ".join(proc.cmdline())
    if "relay.py" in cmd:
        return "relay"
    if "swarm_pool.mcp_server" in cmd:
        return "mcp_local"
    return "other_live"


def _tree_cpu(paths: ProjectPaths) -> dict[str, float]:
    """Cumulative CPU-s by kind over the pool's tree, exited children included."""
    state = read_state(paths.state_file)
    assert state is not None and state.supervisor is not None
    roots: dict[int, str] = {state.supervisor.pid: "supervisor"}
    for rec in state.instances:
        if rec.pid is not None:
            roots[rec.pid] = rec.kind if rec.kind != "mcp" else "mcp_shared"
    out: dict[str, float] = {}
    supervisor = psutil.Process(state.supervisor.pid)
    for proc in [supervisor, *supervisor.children(recursive=True)]:
        try:
            kind = _kind(proc, roots)
            t = proc.cpu_times()
        except psutil.Error:
            continue
        out[kind] = out.get(kind, 0.0) + t.user + t.system
        exited = t.children_user + t.children_system
        label = f"{kind}_exited_children"
        out[label] = out.get(label, 0.0) + exited
    own = resource.getrusage(resource.RUSAGE_CHILDREN)
    out["spawner_git"] = own.ru_utime + own.ru_stime
    return out


def _instance_rss_mb(paths: ProjectPaths) -> float:
    state = read_state(paths.state_file)
    assert state is not None
    total = 0
    for rec in state.opencode():
        if rec.pid is None:
            continue
        proc = psutil.Process(rec.pid)
        for p in [proc, *proc.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
    return round(total / 2**20, 1)


def _live_mcp_processes(paths: ProjectPaths) -> dict[str, int]:
    state = read_state(paths.state_file)
    assert state is not None
    counts = {"relay": 0, "mcp_local": 0}
    for rec in state.opencode():
        if rec.pid is None:
            continue
        for p in psutil.Process(rec.pid).children(recursive=True):
            try:
                kind = _kind(p, {})
            except psutil.Error:
                continue
            if kind in counts:
                counts[kind] += 1
    return counts


def _wave(ctx: SwarmContext, name: str, n: int, delay_s: float) -> float:
    epic_id, beads = _epic(ctx, name, n, delay_s)
    started = time.perf_counter()
    for bead in beads:
        spawn_async(ctx, bead)
    result = await_workers(ctx, epic_id, 900)
    wall = time.perf_counter() - started
    if result.counts.get("completed", 0) != n:
        raise RuntimeError(f"{name}: only {result.counts} of {n} completed")
    return wall


def _one(variant: Variant, k: int, n: int, delay_s: float) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix=f"swarm-bench-{variant.name}-"))
    paths = _project(base, variant, n)
    config = load_config(None, project_root=paths.root)
    start_pool(paths, config, size=k)
    store = open_project_store(paths, config)
    ctx = SwarmContext(paths=paths, config=config, store=store)
    try:
        _wave(ctx, "warm", k, 0.0)
        before = _tree_cpu(paths)
        wall = _wave(ctx, "run", n, delay_s)
        after = _tree_cpu(paths)
        cpu = {
            kind: round((after.get(kind, 0.0) - before.get(kind, 0.0)) / n, 3)
            for kind in sorted(set(after) | set(before))
        }
        cpu = {kind: v for kind, v in cpu.items() if abs(v) >= 0.0005}
        total = sum(cpu.values()) * n
        cores = psutil.cpu_count() or 1
        bound = max(ANSWERS * delay_s, total / cores)
        return {
            "wall_s": round(wall, 2),
            "cpu_s_per_worker": cpu,
            "cpu_s_per_worker_total": round(total / n, 3),
            "instance_rss_mb": _instance_rss_mb(paths),
            "mcp_processes_under_instances": _live_mcp_processes(paths),
            "bound_s": round(bound, 2),
            "wall_over_bound": round(wall / bound, 2),
        }
    finally:
        store.close()
        stop_pool(paths, config)
        shutil.rmtree(base, ignore_errors=True)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [v.strip() for v in str(args.variants).split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    quick = bool(getattr(args, "quick", False))
    n = 4 if quick else 8
    delay_s = 1.0 if quick else 2.0
    sizes = [int(k) for k in str(getattr(args, "sizes", "1,2")).split(",")]
    repeats = 1 if quick else int(getattr(args, "repeats", 2))
    load_before = os.getloadavg()
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {v: {k: [] for k in sizes} for v in names}
    for k in sizes:
        for _ in range(repeats):
            for name in names:
                print(f"variants: {name} K={k} N={n}", file=sys.stderr, flush=True)
                runs[name][k].append(_one(VARIANTS[name], k, n, delay_s))
    summary: dict[str, Any] = {}
    for name in names:
        for k in sizes:
            rs = runs[name][k]
            summary[f"{name}_K{k}"] = {
                "wall_s_median": _median([r["wall_s"] for r in rs]),
                "cpu_s_per_worker_median": _median([r["cpu_s_per_worker_total"] for r in rs]),
                "instance_rss_mb_median": _median([r["instance_rss_mb"] for r in rs]),
                "wall_over_bound_median": _median([r["wall_over_bound"] for r in rs]),
            }
    ratios: dict[str, Any] = {}
    if "legacy" in names and "lean" in names:
        for k in sizes:
            lean, legacy = summary[f"lean_K{k}"], summary[f"legacy_K{k}"]
            ratios[f"K{k}_cpu_per_worker_lean_over_legacy"] = round(
                lean["cpu_s_per_worker_median"] / legacy["cpu_s_per_worker_median"], 2
            )
            ratios[f"K{k}_wall_lean_over_legacy"] = round(
                lean["wall_s_median"] / legacy["wall_s_median"], 2
            )
        if 1 in sizes and 2 in sizes:
            for name in names:
                ratios[f"{name}_K1_over_K2_wall"] = round(
                    summary[f"{name}_K1"]["wall_s_median"] / summary[f"{name}_K2"]["wall_s_median"],
                    2,
                )
    return {
        "workers": n,
        "model_answers_per_worker": ANSWERS,
        "model_delay_s": delay_s,
        "repeats": repeats,
        "variants": {name: VARIANTS[name].note for name in names},
        "load_average_before": [round(x, 1) for x in load_before],
        "load_average_after": [round(x, 1) for x in os.getloadavg()],
        "summary": summary,
        "ratios": ratios,
        "runs": {name: {f"K{k}": runs[name][k] for k in sizes} for name in names},
    }
