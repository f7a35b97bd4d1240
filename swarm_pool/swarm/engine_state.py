"""The engine's heartbeat file, so other processes can tell whether workers will move.

Room: swarm (its base, below the worker steps and the engine loop). The engine (in the
supervisor daemon) rewrites ``.swarm/engine.json`` (0600) on every loop: its pid, the
time of its last pass, how many workers wait in the queue, its tick and error counts,
and a fatal error if it stopped (``EngineBeat``). ``engine_status`` reads it into an
``EngineStatus`` for ``status`` and for ``spawn``, which refuses to queue work when no
engine would run it: the engine is alive when the file names a live process and its
last pass is recent.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from swarm_pool.paths import ProjectPaths, write_private
from swarm_pool.store.events import now_ms


def engine_file(paths: ProjectPaths) -> Path:
    return paths.swarm_dir / "engine.json"


@dataclass(frozen=True)
class EngineBeat:
    pid: int
    create_time: float
    last_tick_ms: int
    queue: int
    ticks: int
    errors: int
    acting: bool  # the pool is running under this engine's supervisor
    error: str = ""
    # The pool's name among several hosts (`start --host`), which `status` cannot know
    # from its own config.
    host: str = ""


def write_beat(paths: ProjectPaths, beat: EngineBeat) -> None:
    write_private(engine_file(paths), json.dumps(asdict(beat)))


def read_beat(paths: ProjectPaths) -> EngineBeat | None:
    try:
        data = json.loads(engine_file(paths).read_text())
        return EngineBeat(**data)
    except (OSError, ValueError, TypeError):
        return None


def _same_process(pid: int, create_time: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - create_time) <= 0.05
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@dataclass(frozen=True)
class EngineStatus:
    """What the heartbeat says about the engine; without a heartbeat only ``alive``
    (False) and ``error`` ("") are known, the rest is None."""

    alive: bool
    pid: int | None = None
    queue: int | None = None
    last_tick_s: float | None = None  # age of the last pass
    ticks: int | None = None
    errors: int | None = None
    acting: bool | None = None
    error: str = ""
    host: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``status --json``: without a heartbeat, only the keys a
        heartbeat-less status always had."""
        if self.pid is None:
            return {
                "alive": self.alive,
                "pid": None,
                "queue": None,
                "last_tick_s": None,
                "error": self.error,
            }
        return asdict(self)


def engine_status(paths: ProjectPaths, stale_after_s: float = 30.0) -> EngineStatus:
    """The engine's status from its heartbeat; alive needs a heartbeat younger than
    ``stale_after_s`` (``workers.engine_stale_s``)."""
    beat = read_beat(paths)
    if beat is None:
        return EngineStatus(alive=False)
    age = max(0.0, (now_ms() - beat.last_tick_ms) / 1000)
    alive = not beat.error and age <= stale_after_s and _same_process(beat.pid, beat.create_time)
    return EngineStatus(
        alive=bool(alive),
        pid=beat.pid,
        queue=beat.queue,
        last_tick_s=round(age, 1),
        ticks=beat.ticks,
        errors=beat.errors,
        acting=beat.acting,
        error=beat.error,
        host=beat.host,
    )
