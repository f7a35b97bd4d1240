"""What psutil says about the pool's process trees, read-only and bounded.

Room: view.

Owns the psutil side of the view: ``live_stats`` (RSS, the kernel's peak RSS and mean CPU
of an instance's current run, for ``metrics``), ``CpuSampler`` (CPU % between two
dashboard frames, measured without sleeping), and ``pool_refs`` (the process of every
instance the pool's state file names, or none when there is no readable file: a view
shows what it can and never fails on a pool that is starting or gone).
"""

from __future__ import annotations

import contextlib
import time

import psutil

from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.process import ProcRef
from swarm_pool.pool.state import read_state_quietly
from swarm_pool.view.metrics import LiveStats


def pool_refs(paths: ProjectPaths) -> dict[str, ProcRef]:
    """The process of each instance in the pool's state file, by instance name."""
    state = read_state_quietly(paths.state_file)
    if state is None:
        return {}
    return {rec.name: rec.ref for rec in state.instances if rec.ref is not None}


def live_stats_by_instance(paths: ProjectPaths) -> dict[str, LiveStats]:
    """``live_stats`` of every instance whose process still runs, by instance name."""
    found: dict[str, LiveStats] = {}
    for name, ref in pool_refs(paths).items():
        stats = live_stats(ref)
        if stats is not None:
            found[name] = stats
    return found


def _tree(leader: psutil.Process) -> list[psutil.Process]:
    procs = [leader]
    with contextlib.suppress(psutil.Error):
        procs.extend(leader.children(recursive=True))
    return procs


def _vm_hwm_mb(pid: int) -> float | None:
    """The kernel's peak RSS of one process (Linux ``VmHWM``), in MB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def live_stats(ref: ProcRef) -> LiveStats | None:
    """RSS, peak RSS and mean CPU of the current run of ``ref``'s tree (None if gone)."""
    leader = ref.process()
    if leader is None:
        return None
    rss = 0
    peak = 0.0
    peak_known = True
    cpu_s = 0.0
    for proc in _tree(leader):
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss
            times = proc.cpu_times()
            cpu_s += times.user + times.system
            if proc.pid == leader.pid:  # children already reaped by the leader
                cpu_s += times.children_user + times.children_system
            hwm = _vm_hwm_mb(proc.pid)
            if hwm is None:
                peak_known = False
            else:
                peak += hwm
    wall = max(1e-3, time.time() - ref.create_time)
    rss_mb = rss / 2**20
    return LiveStats(
        rss_mb=round(rss_mb, 1),
        peak_rss_mb=round(max(peak, rss_mb), 1) if peak_known else None,
        mean_cpu_percent=round(100.0 * cpu_s / wall, 1),
    )


class CpuSampler:
    """CPU % of process trees between two calls, without sleeping (psutil's interval=None
    mode on Process objects kept from one frame to the next)."""

    def __init__(self) -> None:
        self._procs: dict[tuple[int, float], psutil.Process] = {}

    def _cached(self, proc: psutil.Process) -> tuple[psutil.Process, bool]:
        try:
            key = (proc.pid, proc.create_time())
        except psutil.Error:
            return proc, False
        known = self._procs.get(key)
        if known is not None:
            return known, True
        self._procs[key] = proc
        return proc, False

    def sample(self, ref: ProcRef) -> tuple[float | None, float | None]:
        """``(rss_mb, cpu_percent)`` of the tree; CPU is None on the first look."""
        leader = ref.process()
        if leader is None:
            return None, None
        rss = 0
        cpu = 0.0
        leader_known = False
        for proc in _tree(leader):
            cached, known = self._cached(proc)
            with contextlib.suppress(psutil.Error):
                rss += cached.memory_info().rss
                value = cached.cpu_percent(None)
                if known:
                    cpu += value
                if cached.pid == leader.pid:
                    leader_known = known
        return round(rss / 2**20, 1), round(cpu, 1) if leader_known else None

    def forget_dead(self) -> None:
        for key, proc in list(self._procs.items()):
            if not proc.is_running():
                del self._procs[key]
