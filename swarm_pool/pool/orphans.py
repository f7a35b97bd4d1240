"""No orphan outlives ``stop``: the pool's process tag, the child subreaper, the sweep.

An agent's shell can detach a process from every tree we know (``setsid cmd &``, a
double fork). Two mechanisms catch it. While the supervisor lives, it is the child
subreaper of everything below it (``PR_SET_CHILD_SUBREAPER``), so a detached process
is re-parented to the supervisor instead of init: ``OrphanReaper`` reaps those that
exit and kills those still running when the pool stops. It tells an adopted orphan from
the supervisor's own children by session: every child the supervisor launches on
purpose either leads a session of its own whose pid it knows (an instance) or stays in
the supervisor's session (git and the other short helpers), while a re-parented process
sits in some other session. Second, every process of a pool inherits one random tag in
``POOL_TAG_ENV``; ``sweep_tagged`` kills whatever still carries it, which works when
the supervisor is dead too (``stop`` reads the tag from the state file). A process that
scrubs the tag from its own environment and outlives a dead supervisor escapes the
sweep; the README says so. Both kill with ``process.terminate_family``. Room: pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterable

import psutil

from swarm_pool.pool.process import terminate_family

log = logging.getLogger("swarm_pool.pool")

POOL_TAG_ENV = "SWARM_POOL_TAG"
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


def new_tag() -> str:
    return secrets.token_hex(16)


def set_child_subreaper() -> bool:
    """Make this process the subreaper of its descendants; False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        ok = bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False
    if not ok:
        log.warning("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %s", ctypes.get_errno())
    return ok


def is_child_subreaper() -> bool:
    """Whether this process is a child subreaper (read back with PR_GET_CHILD_SUBREAPER)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        flag = ctypes.c_int(0)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    return flag.value != 0


class OrphanReaper:
    """Reaps and, on ``kill_all``, kills the processes re-parented to this process.

    ``own_leaders`` names the session leaders this process launched on purpose (the
    supervisor's children); their exit statuses belong to their ``Popen`` and are never
    collected here.
    """

    def __init__(self, own_leaders: Callable[[], Iterable[int]]) -> None:
        self._own_leaders = own_leaders
        self._me = os.getpid()
        self._sid = os.getsid(0)
        self._lock = threading.Lock()

    def orphans(self) -> list[psutil.Process]:
        """Direct children of this process that it did not launch itself."""
        own = set(self._own_leaders())
        found = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self._me).children():
                if child.pid in own:
                    continue
                try:
                    if os.getsid(child.pid) == self._sid:
                        continue  # one of our own helpers (subprocess.run and the like)
                except ProcessLookupError:
                    continue
                found.append(child)
        return found

    def reap(self) -> int:
        """Collect the exit status of adopted orphans that ended; how many."""
        count = 0
        with self._lock:
            for proc in self.orphans():
                with contextlib.suppress(psutil.Error):
                    if proc.status() != psutil.STATUS_ZOMBIE:
                        continue
                with contextlib.suppress(ChildProcessError):
                    pid, _status = os.waitpid(proc.pid, os.WNOHANG)
                    if pid:
                        count += 1
        return count

    def kill_all(self, grace_s: float) -> list[int]:
        """TERM every adopted orphan, KILL what is left after ``grace_s``, reap; the pids."""
        with self._lock:
            procs = [p for p in self.orphans() if _alive(p)]
            terminate_family(procs, grace_s)
        self.reap()
        return [p.pid for p in procs]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def tagged(tag: str, *, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """Every live process whose environment carries ``POOL_TAG_ENV=tag``."""
    if not tag:
        return []
    skip = {os.getpid(), *exclude}
    with contextlib.suppress(psutil.Error):
        skip.update(p.pid for p in psutil.Process().parents())
    found = []
    for proc in psutil.process_iter():
        if proc.pid in skip:
            continue
        try:
            if proc.environ().get(POOL_TAG_ENV) == tag and _alive(proc):
                found.append(proc)
        except (psutil.Error, OSError):
            continue
    return found


def sweep_tagged(tag: str, grace_s: float, *, exclude: Iterable[int] = ()) -> list[int]:
    """Stop every process of the pool tagged ``tag``: TERM, wait, KILL; their pids."""
    procs = tagged(tag, exclude=exclude)
    if not procs:
        return []
    terminate_family(procs, grace_s)
    log.info("swept %d tagged process(es): %s", len(procs), [p.pid for p in procs])
    return [p.pid for p in procs]
