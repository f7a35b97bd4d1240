"""One child process: launch it in its own session, tell whether it lives, stop its tree.

A child is identified by pid plus ``create_time`` (``ProcRef``), so a recycled pid is
never mistaken for ours and never signalled. Launching puts the child in a new session
(its pid is its process group id) with stdout and stderr appended straight to its log
file: the child never writes to a pipe we hold, so it keeps serving, and never gets
SIGPIPE, when the supervisor dies. Stopping collects the whole tree first (psutil
descendants plus every process still in the child's group, which catches orphans of a
dead leader), sends SIGTERM to the group, waits up to a grace period, SIGKILLs whatever
is left, and finally waits for the port to be free. ``terminate_family`` is the one
TERM/wait/KILL loop for processes that are not a group we lead (orphans, tagged
leftovers). Room: pool.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from swarm_pool.errors import ProcessError
from swarm_pool.pool.ports import CT_TOLERANCE, ProcRef, wait_port_free

__all__ = [
    "ExitStatus",
    "Launched",
    "ProcRef",
    "launch",
    "launched_pids",
    "stop",
    "terminate_family",
]

# Children launched here whose exit status their Popen has not collected yet: the orphan
# reaper (orphans.py) must leave those to their Popen.
_launched: weakref.WeakValueDictionary[int, subprocess.Popen[bytes]] = weakref.WeakValueDictionary()
_launched_lock = threading.Lock()


def launched_pids() -> set[int]:
    """Pids of children launched by ``launch`` that their Popen has not reaped yet."""
    with _launched_lock:
        return {pid for pid, popen in _launched.items() if popen.returncode is None}


@dataclass(frozen=True)
class ExitStatus:
    code: int | None
    signal: int | None

    @classmethod
    def from_returncode(cls, rc: int | None) -> ExitStatus:
        if rc is None:
            return cls(None, None)
        return cls(None, -rc) if rc < 0 else cls(rc, None)

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = str(self.signal)
            return f"killed by {name}"
        if self.code is not None:
            return f"exit code {self.code}"
        return "exited (status unknown: not our child)"


@dataclass
class Launched:
    ref: ProcRef
    popen: subprocess.Popen[bytes]


def launch(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
) -> Launched:
    """Start ``argv`` in its own session, output appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as e:
        raise ProcessError(f"cannot open log {log_path}: {e.strerror}") from e
    try:
        popen = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        raise ProcessError(f"cannot launch {argv[0]}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    with _launched_lock:
        _launched[popen.pid] = popen
    try:
        ct = psutil.Process(popen.pid).create_time()
    except psutil.NoSuchProcess:
        # Died before we could look: its create_time is unknowable; use now so the ref
        # never matches a later process with the same pid.
        ct = time.time()
    return Launched(ProcRef(popen.pid, ct), popen)


def _group_members(pgid: int, leader: ProcRef) -> list[psutil.Process]:
    """Processes still in the child's process group (orphans of a dead leader too)."""
    # If the leader's pid is now a different process, the kernel has freed the group id,
    # so nothing there is ours.
    try:
        other = psutil.Process(pgid)
        if abs(other.create_time() - leader.create_time) > CT_TOLERANCE:
            return []
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        pass
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.create_time() >= leader.create_time - 1:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def collect_tree(ref: ProcRef) -> list[psutil.Process]:
    """The child, its descendants and its group members, collected before any signal."""
    procs: dict[int, psutil.Process] = {}
    leader = ref.process()
    if leader is not None:
        procs[leader.pid] = leader
        with contextlib.suppress(psutil.Error):
            for child in leader.children(recursive=True):
                procs[child.pid] = child
    for member in _group_members(ref.pid, ref):
        procs.setdefault(member.pid, member)
    return list(procs.values())


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop(
    ref: ProcRef,
    *,
    grace_s: float,
    port: int | None = None,
    popen: subprocess.Popen[bytes] | None = None,
    port_timeout_s: float = 5.0,
) -> ExitStatus:
    """Stop ``ref`` and its tree: TERM the group, wait ``grace_s``, KILL the rest.

    Returns the exit status when the child was ours (``popen``), else unknown. Raises
    ProcessError if ``port`` is still taken afterwards.
    """
    tree = collect_tree(ref)
    leader = next((p for p in tree if p.pid == ref.pid), None)
    # psutil's wait() on our own child would reap it and hide its exit status from
    # Popen, so the leader is waited for through ``popen`` when we have it.
    watched = [p for p in tree if popen is None or p.pid != ref.pid]
    if leader is not None:
        _signal_group(ref.pid, signal.SIGTERM)
    for proc in tree:
        # Members outside the group (a descendant that called setsid), and orphans of a
        # dead leader, are signalled one by one.
        with contextlib.suppress(psutil.Error, OSError):
            if leader is None or os.getpgid(proc.pid) != ref.pid:
                proc.terminate()
    deadline = time.monotonic() + grace_s
    status = ExitStatus(None, None)
    if popen is not None and leader is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=grace_s)
    _gone, alive = psutil.wait_procs(watched, timeout=max(0.0, deadline - time.monotonic()))
    leader_left = popen.poll() is None if popen is not None else ref.alive()
    if leader_left:
        # The unreaped leader pins the group id, so the whole group is still ours;
        # this also catches members that appeared after the tree was collected.
        _signal_group(ref.pid, signal.SIGKILL)
    if popen is not None and popen.poll() is None:
        with contextlib.suppress(OSError):
            popen.kill()
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            status = ExitStatus.from_returncode(popen.wait(timeout=5))
    _gone, alive = psutil.wait_procs(alive, timeout=5)
    if alive or (popen is not None and popen.poll() is None):
        pids = ", ".join(str(p.pid) for p in alive) or str(ref.pid)
        raise ProcessError(f"processes {pids} survived SIGKILL")
    if port is not None and not wait_port_free(port, port_timeout_s):
        raise ProcessError(f"port {port} is still in use after stopping pid {ref.pid}")
    return status


def reap_orphans(ref: ProcRef, grace_s: float = 1.0) -> int:
    """After the leader died on its own, kill what is left of its group; count them."""
    members = [p for p in _group_members(ref.pid, ref) if p.pid != ref.pid]
    if not members:
        return 0
    terminate_family(members, grace_s)
    return len(members)


def terminate_family(
    procs: Sequence[psutil.Process], grace_s: float, *, kill_wait_s: float = 5.0
) -> list[psutil.Process]:
    """SIGTERM each of ``procs``, wait up to ``grace_s``, SIGKILL the survivors and wait
    ``kill_wait_s`` for them; what still runs after that (normally nothing).

    The one TERM/wait/KILL loop for a family of processes that are not a group we own
    (``stop`` signals a group it leads, which this cannot); the orphan reaper and the
    tag sweep use it too.
    """
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _gone, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _gone, alive = psutil.wait_procs(alive, timeout=kill_wait_s)
    return alive


def tree_stats(ref: ProcRef) -> tuple[float, list[psutil.Process]] | None:
    """(rss in MB of the whole tree, the tree) or None when the child is gone."""
    leader = ref.process()
    if leader is None:
        return None
    procs = [leader]
    with contextlib.suppress(psutil.Error):
        procs.extend(leader.children(recursive=True))
    rss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss
    return rss / 2**20, procs


def cpu_percents(refs: Sequence[ProcRef], interval: float = 0.2) -> dict[int, float]:
    """CPU percent of each ref's tree, sampled together over ``interval`` seconds."""
    trees: dict[int, list[psutil.Process]] = {}
    for ref in refs:
        stats = tree_stats(ref)
        if stats is None:
            continue
        trees[ref.pid] = stats[1]
        for proc in stats[1]:
            with contextlib.suppress(psutil.Error):
                proc.cpu_percent(None)
    if not trees:
        return {}
    time.sleep(interval)
    out: dict[int, float] = {}
    for pid, procs in trees.items():
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                total += proc.cpu_percent(None)
        out[pid] = round(total, 1)
    return out
