"""An instance's own output: find its log, print the last lines, follow it.

Room: view.

Each child of the pool appends its stdout and stderr to ``.swarm/instances/<name>/``
(``opencode.log`` for OpenCode instances, ``model.log`` for the scripted model; see
``pool/instance.py``), which the supervisor rotates to ``<log>.1``, ``<log>.2`` ... by
copy and truncate while the child runs, or by rename before a launch. ``tail`` reads the
last lines across the current file and its first backup; ``follow`` notices both kinds
of rotation (the file shrank, or the path names a new file) and goes on from the start
of the new content.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from swarm_pool.errors import SwarmPoolError
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.instance import LOG_NAME, MODEL_NAME

MODEL_LOG = "model.log"
_CHUNK = 64 * 1024


class UnknownLogError(SwarmPoolError):
    """No log for that instance name."""


def known_instances(paths: ProjectPaths) -> list[str]:
    try:
        return sorted(p.name for p in paths.instances_dir.iterdir() if p.is_dir())
    except OSError:
        return []


def log_path(paths: ProjectPaths, name: str) -> Path:
    """The log of instance ``name``; UnknownLogError naming the known ones if none."""
    if not name or "/" in name or name in (".", ".."):
        raise UnknownLogError(f"invalid instance name {name!r}")
    folder = paths.instance_dir(name)
    candidates = [folder / (MODEL_LOG if name == MODEL_NAME else LOG_NAME)]
    candidates += [folder / LOG_NAME, folder / MODEL_LOG]
    for path in candidates:
        if path.exists() or path.with_name(path.name + ".1").exists():
            return path
    names = ", ".join(known_instances(paths)) or "none"
    raise UnknownLogError(f"no log for instance {name!r} in {paths.instances_dir} (known: {names})")


def _last_lines(path: Path, n: int) -> tuple[list[bytes], int]:
    """The last ``n`` lines of one file, read backwards in chunks, and where it ended."""
    try:
        with path.open("rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            if n <= 0:
                return [], end
            data = b""
            pos = end
            while pos > 0 and data.count(b"\n") <= n:
                step = min(_CHUNK, pos)
                pos -= step
                fh.seek(pos)
                data = fh.read(step) + data
    except FileNotFoundError:
        return [], 0
    return data.splitlines(keepends=True)[-n:], end


def tail(path: Path, n: int) -> tuple[list[str], int]:
    """The last ``n`` lines of the log (older ones from ``<log>.1`` if needed), and the
    offset in the current file they end at (where ``follow`` should go on)."""
    lines, end = _last_lines(path, n)
    if len(lines) < n:
        older, _ = _last_lines(path.with_name(path.name + ".1"), n - len(lines))
        lines = older + lines
    return [line.decode(errors="replace") for line in lines], end


def follow(
    path: Path,
    *,
    stop: threading.Event | None = None,
    offset: int | None = None,
    poll_s: float = 0.2,
    on_rotate: Callable[[], None] | None = None,
) -> Iterator[str]:
    """Yield text appended to ``path`` after ``offset`` (its current end if None), whole
    lines at a time, until ``stop`` is set."""
    stop = stop or threading.Event()
    fh = None
    ino = None
    pos = 0
    pending = b""
    start: int | None = offset
    try:
        while not stop.is_set():
            if fh is None:
                try:
                    fh = path.open("rb")
                except FileNotFoundError:
                    start = 0  # when it appears, all of it is new
                    stop.wait(poll_s)
                    continue
                ino = os.fstat(fh.fileno()).st_ino
                pos = fh.seek(0, os.SEEK_END) if start is None else start
                start = 0  # a file that takes the name later is read from its start
            try:
                st = path.stat()
            except FileNotFoundError:
                st = None
            size = os.fstat(fh.fileno()).st_size
            if size < pos:  # copy-and-truncate rotation
                pos = 0
                if on_rotate is not None:
                    on_rotate()
            fh.seek(pos)
            data = fh.read()
            pos += len(data)
            if data:
                pending += data
                cut = pending.rfind(b"\n") + 1
                if cut:
                    yield pending[:cut].decode(errors="replace")
                    pending = pending[cut:]
                continue
            if st is not None and st.st_ino != ino:  # renamed away: a new file took the name
                if pending:
                    yield pending.decode(errors="replace")
                    pending = b""
                fh.close()
                fh = None
                if on_rotate is not None:
                    on_rotate()
                continue
            stop.wait(poll_s)
    finally:
        if fh is not None:
            fh.close()
