"""Named fault points, so tests force a race or a crash at one exact moment.

Room: base.

Production code calls ``point("name")`` where a crash or a competing writer matters
(between creating a session and prompting it, between reading a worker and recording
its failure, ...). Normally nothing happens. A test in the same process registers a
callback with ``inject``; a test driving other processes sets ``SWARM_POOL_FAULTS`` in
their environment, ``name=action`` pairs separated by commas, where action is
``kill`` (SIGKILL this process), ``raise`` (raise ``InjectedFault``), ``wait:PATH``
(block until PATH exists: the test decides when to go on) or ``mark:PATH`` (create
PATH, then go on), several joined by ``+`` (``mark:A+wait:B``). An unknown point or
action is a no-op, so a stale variable never breaks a run.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "SWARM_POOL_FAULTS"
_WAIT_LIMIT_S = 120.0


class InjectedFault(RuntimeError):
    """Raised at an armed point: stands for an unexpected failure (a bug, a broken
    import), which is why it is not one of our own errors."""


_guard = threading.Lock()
_hooks: dict[str, Callable[[], None]] = {}


@contextmanager
def inject(name: str, fn: Callable[[], None]) -> Iterator[None]:
    """Run ``fn`` whenever this process reaches point ``name`` (tests)."""
    with _guard:
        _hooks[name] = fn
    try:
        yield
    finally:
        with _guard:
            _hooks.pop(name, None)


def _env_actions(name: str) -> list[str]:
    spec = os.environ.get(ENV, "")
    for pair in spec.split(","):
        key, _, action = pair.partition("=")
        if key.strip() == name and action:
            return action.strip().split("+")
    return []


def point(name: str) -> None:
    """A fault point: no-op unless a test armed ``name``."""
    with _guard:
        hook = _hooks.get(name)
    if hook is not None:
        hook()
    for action in _env_actions(name):
        kind, _, arg = action.partition(":")
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "raise":
            raise InjectedFault(f"fault injected at {name}")
        elif kind == "mark" and arg:
            Path(arg).touch()
        elif kind == "wait" and arg:
            deadline = time.monotonic() + _WAIT_LIMIT_S
            while not Path(arg).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
