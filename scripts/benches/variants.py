"""Workers benchmark, variants side by side: ``scripts/bench.py workers --variants legacy,lean``.

Each variant is a set of ``[opencode]`` and ``[workers]`` settings. For every number of
workers N (``--workers 8,16``), pool size K (``--sizes 1,2,4``) and repeat, the variants
run one after the other (interleaved, so load drifts hit them alike), each in a fresh
throw-away git project with a fresh pool of K instances:

- a warm-up worker per instance (so the instances' own start-up is not counted); it is
  merged only after wave 1, so wave 1 runs in new directories in every variant but
  ``lean_min_slots``, whose instances open their slots as they start (the run waits for
  that before wave 1; ``start_wall_s`` and ``start_cpu_s`` cover the warm-up and it);
- ``--waves`` waves (3 by default) of N workers spawned at once, each with three scripted
  model answers ``delay`` seconds apart; after each wave, outside its timing, every
  worker is reviewed and merged (which frees a warm slot for the next wave, and disposes
  a fresh worktree's directory). So wave 1 is cold everywhere, and waves 2-3 show warm
  slots in ``lean`` (``legacy`` takes a fresh worktree per bead every time).

Figures per wave:

- ``wall_s`` from the first spawn to ``await``;
- CPU-s per worker by process kind, over the pool's process tree (psutil): for each
  long-lived process, its own CPU plus what its exited children used (``children_*``
  times, so the short git processes of snapshots land in ``opencode_exited_children``),
  plus the live per-directory MCP servers and relays found under the instances, plus the
  spawner's own git (this process's exited children). ``cpu_s_per_worker_total`` leaves
  out the scripted model (it stands in for a remote LLM API; its share is reported as
  ``model_cpu_s_per_worker``);
- ``instance_rss_mb``: the instances' trees after the wave's merges, the directories
  they have served so far, and the RSS per served directory;
- the MCP processes (per-directory servers or relays) under the instances;
- ``bound_s = max(model chain, total CPU / cores)``, and ``wall_s / bound_s``.

The summary takes medians over the repeats: wave 1 (``cold``) and waves 2.. (``warm``).
To add a variant, add an entry to ``VARIANTS``.
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
from swarm_pool.store.events import BeadSpec
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker.review import merge, review
from swarm_pool.pool.router import active_instances
from swarm_pool.swarm.status import await_workers
from swarm_pool.swarm.worker import spawn_async

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
        'mcp = "local"\nsnapshot = true\nmodels_catalog = "full"\n',
        "round 1: a fresh worktree per bead, a whole MCP server per session directory, "
        "snapshots on, OpenCode's full models catalog",
        workers='worktrees = "fresh"\n',
    ),
    "lean": Variant(
        "lean",
        'mcp = "shared"\nsnapshot = false\n',
        "one shared MCP server per pool + a stdlib relay per directory, snapshots off",
    ),
    # One switch at a time against lean: what warm slots alone save, what snapshots
    # and the full models catalog alone cost.
    "lean_fresh": Variant(
        "lean_fresh",
        'mcp = "shared"\nsnapshot = false\n',
        "lean with a fresh worktree per bead (no warm slots)",
        workers='worktrees = "fresh"\n',
    ),
    "lean_snapshots": Variant(
        "lean_snapshots",
        'mcp = "shared"\nsnapshot = true\n',
        "lean with OpenCode's snapshots on",
    ),
    "lean_min_slots": Variant(
        "lean_min_slots",
        'mcp = "shared"\nsnapshot = false\n',
        "lean with each instance's slots made and opened as it starts ([workers] min_slots: "
        "N/K rounded up, plus one for the warm-up worker's slot)",
        workers="min_slots = {per_instance}\n",
    ),
    "lean_full_catalog": Variant(
        "lean_full_catalog",
        'mcp = "shared"\nsnapshot = false\nmodels_catalog = "full"\n',
        "lean with OpenCode's full models catalog (rebuilt for every session directory)",
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


def _project(base: Path, variant: Variant, n: int, k: int) -> ProjectPaths:
    # Room for the warm-up worker's slot, held until wave 1 is merged, next to the wave's.
    per_instance = -(-n // k) + 1
    return bench_project(
        base / "proj",
        f"[pool]\nmax_sessions_per_instance = {n + 1}\n"
        f"[workers]\ntimeout_s = 600.0\n{variant.workers.format(per_instance=per_instance)}"
        "[supervisor]\nmax_rss_mb = 0\n"
        f"[opencode]\n{variant.opencode}",
    )


def _epic(ctx: SwarmContext, name: str, n: int, delay_s: float) -> tuple[str, list[str]]:
    specs = [
        BeadSpec(title=f"{name} {i}", files=[f"{name}/{i}.txt"], script=_script(delay_s))
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


def _without_model(cpu: dict[str, float]) -> float:
    return sum(v for kind, v in cpu.items() if not kind.startswith("model"))


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


def _opened_slot_dirs(paths: ProjectPaths) -> int:
    """Slot directories the instances have opened: those with an MCP process."""
    state = read_state(paths.state_file)
    assert state is not None
    slots = str(paths.slots_dir.resolve()) + os.sep
    found = set()
    for rec in state.opencode():
        if rec.pid is None:
            continue
        for p in psutil.Process(rec.pid).children(recursive=True):
            try:
                if _kind(p, {}) in ("relay", "mcp_local") and p.cwd().startswith(slots):
                    found.add(p.cwd())
            except psutil.Error:
                continue
    return len(found)


def _wait_slots_opened(paths: ProjectPaths, count: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while _opened_slot_dirs(paths) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the instances did not open {count} slots in {timeout}s")
        time.sleep(0.2)


def _spawn_wave(ctx: SwarmContext, name: str, n: int, delay_s: float) -> tuple[float, list[str]]:
    epic_id, beads = _epic(ctx, name, n, delay_s)
    started = time.perf_counter()
    for bead in beads:
        spawn_async(ctx, bead)
    result = await_workers(ctx, epic_id, 900)
    wall = time.perf_counter() - started
    if result.counts.get("completed", 0) != n:
        raise RuntimeError(f"{name}: only {result.counts} of {n} completed")
    return wall, beads


def _merge_all(ctx: SwarmContext, beads: list[str]) -> None:
    for bead in beads:
        if not review(ctx, bead).approved:
            raise RuntimeError(f"{bead}: review did not approve")
        merge(ctx, bead)


def _served(ctx: SwarmContext, beads: list[str]) -> set[str]:
    return {
        getattr(e.event, "worktree", "")
        for bead in beads
        for e in ctx.store.read(types=["worker_session_created"], bead_id=bead)
    }


def _cpu_figures(
    before: dict[str, float], after: dict[str, float], n: int, delay_s: float
) -> dict[str, Any]:
    cpu = {
        kind: round((after.get(kind, 0.0) - before.get(kind, 0.0)) / n, 3)
        for kind in sorted(set(after) | set(before))
    }
    cpu = {kind: v for kind, v in cpu.items() if abs(v) >= 0.0005}
    model = sum(v for kind, v in cpu.items() if kind.startswith("model"))
    per_worker = sum(cpu.values()) - model
    bound = max(ANSWERS * delay_s, per_worker * n / (psutil.cpu_count() or 1))
    return {
        "cpu_s_per_worker": cpu,
        "cpu_s_per_worker_total": round(per_worker, 3),
        "model_cpu_s_per_worker": round(model, 3),
        "bound_s": round(bound, 2),
    }


def _one(variant: Variant, k: int, n: int, waves: int, delay_s: float) -> list[dict[str, Any]]:
    base = Path(tempfile.mkdtemp(prefix=f"swarm-bench-{variant.name}-"))
    paths = _project(base, variant, n, k)
    config = load_config(None, project_root=paths.root)
    start_pool(paths, config, size=k)
    store = open_project_store(paths, config)
    ctx = SwarmContext(paths=paths, config=config, store=store)
    out: list[dict[str, Any]] = []
    try:
        start_cpu, started = _tree_cpu(paths), time.perf_counter()
        _, warm = _spawn_wave(ctx, "warm", k, 0.0)
        # Only the active instances open slots ahead (overflow ones get work when full).
        _wait_slots_opened(paths, min(k, active_instances(config)) * config.workers.min_slots)
        ready_cpu = _tree_cpu(paths)
        start = {
            "start_wall_s": round(time.perf_counter() - started, 2),
            "start_cpu_s": round(_without_model(ready_cpu) - _without_model(start_cpu), 2),
        }
        served = _served(ctx, warm)
        for i in range(1, waves + 1):
            before = _tree_cpu(paths)
            wall, beads = _spawn_wave(ctx, f"wave{i}", n, delay_s)
            after = _tree_cpu(paths)
            _merge_all(ctx, beads + warm if i == 1 else beads)
            served |= _served(ctx, beads)
            figures = _cpu_figures(before, after, n, delay_s)
            rss = _instance_rss_mb(paths)
            out.append(
                {
                    "wave": i,
                    "wall_s": round(wall, 2),
                    **figures,
                    "wall_over_bound": round(wall / figures["bound_s"], 2),
                    "instance_rss_mb": rss,
                    "directories_served": len(served),
                    "rss_mb_per_served_directory": round(rss / len(served), 1),
                    "mcp_processes_under_instances": _live_mcp_processes(paths),
                    **(start if i == 1 else {}),
                }
            )
        return out
    finally:
        store.close()
        stop_pool(paths, config)
        shutil.rmtree(base, ignore_errors=True)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _summary(runs: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over the repeats: wave 1 (cold) and the later waves (warm), and the RSS
    after each wave."""

    def med(key: str, waves: range) -> float:
        return _median([r[w][key] for r in runs for w in waves if w < len(r)])

    count = len(runs[0])
    out: dict[str, Any] = {}
    for label, waves in (("cold", range(0, 1)), ("warm", range(1, count))):
        if not waves:
            continue
        out[label] = {
            "wall_s": med("wall_s", waves),
            "cpu_s_per_worker": med("cpu_s_per_worker_total", waves),
            "wall_over_bound": med("wall_over_bound", waves),
        }
    out["start_wall_s"] = med("start_wall_s", range(0, 1))
    out["start_cpu_s"] = med("start_cpu_s", range(0, 1))
    out["instance_rss_mb_after_wave"] = [
        med("instance_rss_mb", range(w, w + 1)) for w in range(count)
    ]
    out["rss_mb_per_served_directory_last_wave"] = med(
        "rss_mb_per_served_directory", range(count - 1, count)
    )
    rss = out["instance_rss_mb_after_wave"]
    out["rss_last_over_first_wave"] = round(rss[-1] / rss[0], 3)
    return out


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def _ratios(
    summary: dict[str, Any], names: list[str], ns: list[int], sizes: list[int]
) -> dict[str, Any]:
    """The issue's table, as ratios within this run: each variant against the first one
    named (e.g. ``lean_over_legacy``), and each variant's pool sizes against K=2."""
    out: dict[str, Any] = {}
    phases = [p for p in ("cold", "warm") if all(p in v for v in summary.values())]
    base = names[0]
    for n in ns:
        for phase in phases:
            for name in names[1:]:
                for k in sizes:
                    this = summary[f"{name}_N{n}_K{k}"][phase]
                    that = summary[f"{base}_N{n}_K{k}"][phase]
                    out[f"N{n}_K{k}_{phase}_cpu_per_worker_{name}_over_{base}"] = _ratio(
                        this["cpu_s_per_worker"], that["cpu_s_per_worker"]
                    )
                    out[f"N{n}_K{k}_{phase}_wall_{name}_over_{base}"] = _ratio(
                        this["wall_s"], that["wall_s"]
                    )
            for name in names:
                if 1 in sizes and 2 in sizes:
                    out[f"{name}_N{n}_{phase}_K1_over_K2_wall"] = _ratio(
                        summary[f"{name}_N{n}_K1"][phase]["wall_s"],
                        summary[f"{name}_N{n}_K2"][phase]["wall_s"],
                    )
                if 2 in sizes and 4 in sizes:
                    out[f"{name}_N{n}_{phase}_K4_over_K2_wall"] = _ratio(
                        summary[f"{name}_N{n}_K4"][phase]["wall_s"],
                        summary[f"{name}_N{n}_K2"][phase]["wall_s"],
                    )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    names = [v.strip() for v in str(args.variants).split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    quick = bool(getattr(args, "quick", False))
    ns = [4] if quick else [int(x) for x in str(getattr(args, "workers", "8")).split(",")]
    delay_s = 1.0 if quick else 2.0
    sizes = [int(k) for k in str(getattr(args, "sizes", "1,2")).split(",")]
    repeats = 1 if quick else int(getattr(args, "repeats", 2))
    waves = 2 if quick else int(getattr(args, "waves", 3))
    if waves < 1 or repeats < 1 or min(ns) < 1 or min(sizes) < 1:
        raise SystemExit("--workers, --sizes, --waves and --repeats must be at least 1")
    load_before = os.getloadavg()
    runs: dict[str, list[list[dict[str, Any]]]] = {}
    # Repeats outermost: a machine that drifts during the run (it does, on a shared VM)
    # then shifts every size and variant alike instead of the last ones run.
    for _ in range(repeats):
        for n in ns:
            for k in sizes:
                for name in names:
                    print(f"variants: {name} N={n} K={k}", file=sys.stderr, flush=True)
                    key = f"{name}_N{n}_K{k}"
                    runs.setdefault(key, []).append(_one(VARIANTS[name], k, n, waves, delay_s))
    summary = {key: _summary(rs) for key, rs in runs.items()}
    return {
        "workers": ns,
        "sizes": sizes,
        "waves": waves,
        "model_answers_per_worker": ANSWERS,
        "model_delay_s": delay_s,
        "repeats": repeats,
        "variants": {name: VARIANTS[name].note for name in names},
        "load_average_before": [round(x, 1) for x in load_before],
        "load_average_after": [round(x, 1) for x in os.getloadavg()],
        "summary": summary,
        "ratios": _ratios(summary, names, ns, sizes),
        "runs": runs,
    }
