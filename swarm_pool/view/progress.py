"""Progress for long operations (``start``, ``run``, ``stop``): rich on a TTY,
else silent.

Room: view.

Owns two small tools for the commands of other modules. ``StepProgress`` is a progress
bar on stderr (transient: it disappears when done, so the command's normal output
follows it) that does nothing when stderr is not a TTY or the command prints
``--json``: scripts and pipes only ever see the machine-readable output.
``pool_progress`` drives one from the pool's state file in a background thread, so a
blocking call such as ``api.start_pool`` needs no hook::

    with pool_progress(app.paths, "start", total=size, enabled=not as_json):
        api.start_pool(...)

For ``run``, call ``update(done, total)`` from the runner's ``on_update`` callback.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Literal

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import InstanceState, read_state_quietly


def progress_enabled(as_json: bool = False, stream: IO[str] | None = None) -> bool:
    """True when a progress bar may be drawn: not ``--json``, and stderr is a TTY."""
    if as_json:
        return False
    stream = stream if stream is not None else sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class StepProgress:
    """One task's bar: ``update(completed, total=, description=)``; a no-op if disabled."""

    def __init__(
        self,
        description: str,
        total: int | None = None,
        *,
        enabled: bool | None = None,
        as_json: bool = False,
        console: Console | None = None,
    ) -> None:
        self.enabled = progress_enabled(as_json) if enabled is None else enabled and not as_json
        self.description = description
        self.total = total
        self.completed = 0
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._lock = threading.Lock()
        if self.enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console or Console(stderr=True),
                transient=True,
            )

    def __enter__(self) -> StepProgress:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(
        self, completed: int, total: int | None = None, description: str | None = None
    ) -> None:
        with self._lock:
            self.completed = completed
            if total is not None:
                self.total = total
            if description is not None:
                self.description = description
            if self._progress is not None and self._task is not None:
                self._progress.update(
                    self._task,
                    completed=completed,
                    total=self.total,
                    description=self.description,
                )

    def advance(self, steps: int = 1) -> None:
        self.update(self.completed + steps)


def _count(
    paths: ProjectPaths, action: str, since: float, alive_at_start: set[str]
) -> tuple[int, int | None, str]:
    """(done, total, detail) for the pool's state file right now."""
    state = read_state_quietly(paths.state_file)
    if state is None:
        return 0, None, ""
    children = state.instances
    if action == "start":
        children = state.opencode()  # the scripted model child is not an instance
        if state.updated_at < since:  # an older pool's file: ours has not written yet
            return 0, None, "launching the supervisor"
        ready = [c for c in children if c.state == InstanceState.READY]
        late = [f"{c.name} {c.state}" for c in children if c.state != InstanceState.READY]
        return len(ready), len(children) or None, ", ".join(late[:3])
    gone = [
        name
        for name in alive_at_start
        if not any(c.name == name and c.ref and c.ref.alive() for c in children)
    ]
    return len(gone), len(alive_at_start), ""


@contextmanager
def pool_progress(
    paths: ProjectPaths,
    action: Literal["start", "stop"],
    *,
    total: int | None = None,
    enabled: bool | None = None,
    as_json: bool = False,
    interval_s: float = 0.2,
    console: Console | None = None,
) -> Iterator[StepProgress]:
    """Show ``start`` (instances ready of N) or ``stop`` (instances stopped of N) progress
    while the body runs, read from ``.swarm/pool.json`` every ``interval_s``."""
    label = "starting instances" if action == "start" else "stopping instances"
    bar = StepProgress(label, total, enabled=enabled, as_json=as_json, console=console)
    if not bar.enabled:
        yield bar
        return
    since = time.time()
    alive: set[str] = set()
    if action == "stop":
        state = read_state_quietly(paths.state_file)
        if state is not None:
            alive = {c.name for c in state.instances if c.ref is not None and c.ref.alive()}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            done, found, detail = _count(paths, action, since, alive)
            text = f"{label}: {detail}" if detail else label
            bar.update(done, total=total or found, description=text)
            stop.wait(interval_s)

    thread = threading.Thread(target=watch, name=f"pool-{action}-progress", daemon=True)
    with bar:
        thread.start()
        try:
            yield bar
        finally:
            stop.set()
            thread.join(timeout=2.0)
