"""The live dashboard loop: redraw on every store change and at least every ``refresh`` s.

Room: view.

Owns the terminal while the dashboard runs: rich ``Live`` on the alternate screen, and a
thread that reads keys from the TTY in cbreak mode (``q`` quits). Ctrl-C and SIGTERM
quit too. Whatever ends the loop, the terminal's settings and screen are restored, and
nothing is sent to the pool: quitting leaves it running.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from types import FrameType
from typing import IO, Any

from rich.console import Console
from rich.live import Live

from swarm_pool.errors import SwarmPoolError
from swarm_pool.view.dashboard import render
from swarm_pool.view.snapshot import Limits, SnapshotSource

QUIT_KEYS = frozenset({"q", "Q"})
# A burst of appends redraws at most this often (a frame costs a few store queries).
MIN_FRAME_S = 0.2


class KeyReader:
    """Reads single keys from a TTY in a thread (cbreak mode), calling ``on_key``.

    A no-op when ``stream`` is not a TTY. Cbreak keeps ISIG, so Ctrl-C still raises
    KeyboardInterrupt in the main thread.
    """

    def __init__(self, on_key: Callable[[str], None], stream: IO[str] | None = None) -> None:
        self.on_key = on_key
        self.stream = stream if stream is not None else sys.stdin
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd: int | None = None
        self._saved: list[Any] | None = None

    def __enter__(self) -> KeyReader:
        try:
            fd = self.stream.fileno()
        except (OSError, ValueError, AttributeError):
            return self
        if not os.isatty(fd):
            return self
        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._thread = threading.Thread(target=self._run, name="dashboard-keys", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        assert self._fd is not None
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self._fd, 32)
            except OSError:
                return
            if not data:
                return
            for ch in data.decode(errors="replace"):
                self.on_key(ch)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._fd is not None and self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)


@contextlib.contextmanager
def _sigterm_quits() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the terminal is restored."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_live(
    source: SnapshotSource,
    *,
    refresh_s: float = 1.0,
    console: Console | None = None,
    screen: bool = True,
) -> int:
    """Run until ``q``, Ctrl-C or SIGTERM; returns the number of frames drawn."""
    console = console or Console()
    quit_now = threading.Event()

    def on_key(ch: str) -> None:
        if ch in QUIT_KEYS:
            quit_now.set()

    frames = 0
    with (
        _sigterm_quits(),
        contextlib.suppress(KeyboardInterrupt),
        KeyReader(on_key),
        Live(
            console=console,
            screen=screen,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live,
    ):
        while not quit_now.is_set():
            limits = Limits.for_height(console.size.height)
            snap = source.take(limits)
            live.update(render(snap, quit_hint=True), refresh=True)
            frames += 1
            # Redraw at once when anything is appended, and at least every refresh_s
            # (clocks, durations, CPU move on their own).
            deadline = time.monotonic() + refresh_s
            seq = snap.last_seq
            quit_now.wait(min(MIN_FRAME_S, refresh_s))
            while not quit_now.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    store = source.store()
                    if store is not None and store.wait_for_change(seq, min(0.1, remaining)) != seq:
                        break
                except SwarmPoolError:
                    store = None  # take() shows the problem in the next frame
                if store is None:
                    quit_now.wait(min(0.1, remaining))
    return frames
