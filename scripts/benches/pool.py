"""Pool benchmark: how fast instances come up, come back, and how light the supervisor is.

Measured through the real CLI on scratch git repos, with real ``opencode serve``
processes (no model child: ``opencode.model`` is a placeholder, so only the pool's own
work is timed):

- ``one_instance``: ``start -n 1`` wall time (CLI to table) and the instance's own
  launch-to-healthy time;
- ``parallel``: the same for N = 1, 2, 4 instances started together (``--quick``: 1, 2),
  plus ``stop`` wall time;
- ``kill9``: after ``kill -9`` of an instance, the time until the supervisor noticed
  (state leaves ``ready``) and from then until the replacement answered healthy;
- ``supervisor``: the daemon's RSS and CPU while the pool idles.

The machine's load average is recorded too: on a shared 2-core box every figure moves
with it, so compare figures within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from swarm_pool.pool.state import PoolState, read_state

ENV = {**os.environ, "SWARM_POOL_OPENCODE__MODEL": "x/y"}


def _cli(*args: str, project: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "swarm_pool", *args, "--project", str(project)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0 and args[0] != "status":
        raise RuntimeError(f"swarm-pool {' '.join(args)} failed: {out.stderr.strip()}")
    return out


def _project(base: Path, name: str) -> Path:
    path = base / name
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def _state(project: Path) -> PoolState:
    state = read_state(project / ".swarm" / "pool.json")
    assert state is not None
    return state


def _start(project: Path, size: int) -> dict[str, float]:
    t0 = time.perf_counter()
    _cli("start", "-n", str(size), project=project)
    wall = time.perf_counter() - t0
    recs = _state(project).opencode()
    ready = [r.ready_at - r.started_at for r in recs if r.ready_at and r.started_at]
    return {
        "start_wall_s": round(wall, 3),
        "slowest_instance_ready_s": round(max(ready), 3),
        "mean_instance_ready_s": round(statistics.mean(ready), 3),
    }


def _stop(project: Path) -> float:
    t0 = time.perf_counter()
    _cli("stop", project=project)
    return round(time.perf_counter() - t0, 3)


def _kill9(project: Path, runs: int) -> dict[str, Any]:
    detect, recover = [], []
    for _ in range(runs):
        rec = _state(project).opencode()[0]
        assert rec.pid is not None
        killed_at = time.perf_counter()
        os.kill(rec.pid, signal.SIGKILL)
        noticed = None
        deadline = killed_at + 120
        while time.perf_counter() < deadline:
            now = _state(project).child(rec.name)
            assert now is not None
            if noticed is None and now.state != "ready":
                noticed = time.perf_counter()
            if now.state == "ready" and now.pid not in (rec.pid, None):
                back = time.perf_counter()
                break
            time.sleep(0.01)
        else:
            raise RuntimeError("the instance did not come back within 120 s")
        noticed = noticed or back
        detect.append(noticed - killed_at)
        recover.append(back - noticed)
    return {
        "runs": runs,
        "kill_to_detect_s": round(statistics.median(detect), 3),
        "detect_to_ready_s": round(statistics.median(recover), 3),
        "kill_to_ready_s": round(
            statistics.median(d + r for d, r in zip(detect, recover, strict=True)), 3
        ),
    }


def _supervisor_idle(project: Path, window_s: float) -> dict[str, Any]:
    state = _state(project)
    assert state.supervisor is not None
    proc = psutil.Process(state.supervisor.pid)
    proc.cpu_percent(None)
    cpu_before = proc.cpu_times()
    time.sleep(window_s)
    cpu = proc.cpu_percent(None)
    cpu_after = proc.cpu_times()
    return {
        "instances": len(state.opencode()),
        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
        "idle_cpu_percent": round(cpu, 2),
        "cpu_s_per_minute": round(
            (cpu_after.user + cpu_after.system - cpu_before.user - cpu_before.system)
            * 60
            / window_s,
            3,
        ),
        "threads": proc.num_threads(),
        "window_s": window_s,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    quick = bool(getattr(args, "quick", False))
    sizes = [1, 2] if quick else [1, 2, 4]
    result: dict[str, Any] = {"load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="swarm-pool-bench-") as tmp:
        base = Path(tmp)
        one = _project(base, "one")
        try:
            result["one_instance"] = _start(one, 1)
            result["kill9"] = _kill9(one, 1 if quick else 3)
        finally:
            _stop(one)
        parallel: dict[str, Any] = {}
        for size in sizes:
            project = _project(base, f"n{size}")
            try:
                parallel[str(size)] = _start(project, size)
                if size == sizes[-1]:
                    result["supervisor"] = _supervisor_idle(project, 3.0 if quick else 10.0)
            finally:
                parallel.setdefault(str(size), {})["stop_wall_s"] = _stop(project)
        result["parallel"] = parallel
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    print(json.dumps(run(parser.parse_args()), indent=2))
