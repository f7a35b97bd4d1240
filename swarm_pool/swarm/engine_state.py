"""The engine's heartbeat file, so other processes can tell whether workers will move.

The engine (in the supervisor daemon) rewrites ``.swarm/engine.json`` (0600) on every
loop: its pid, the time of its last pass, how many workers wait in the queue, its tick
and error counts, and a fatal error if it stopped. ``engine_status`` reads it for
``status`` and for ``spawn``, which refuses to queue work when no engine would run it:
the engine is alive when the file names a live process and its last pass is recent.
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


def engine_status(paths: ProjectPaths, stale_after_s: float = 30.0) -> dict[str, Any]:
    """``{"alive", "pid", "queue", "last_tick_s" (age), "ticks", "errors", "error"}``;
    alive needs a heartbeat younger than ``stale_after_s`` (``workers.engine_stale_s``)."""
    beat = read_beat(paths)
    if beat is None:
        return {"alive": False, "pid": None, "queue": None, "last_tick_s": None, "error": ""}
    age = max(0.0, (now_ms() - beat.last_tick_ms) / 1000)
    alive = not beat.error and age <= stale_after_s and _same_process(beat.pid, beat.create_time)
    return {
        "alive": alive,
        "pid": beat.pid,
        "queue": beat.queue,
        "last_tick_s": round(age, 1),
        "ticks": beat.ticks,
        "errors": beat.errors,
        "acting": beat.acting,
        "error": beat.error,
        "host": beat.host,
    }
