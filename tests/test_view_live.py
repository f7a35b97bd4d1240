"""The live dashboard in a real terminal: it starts, redraws (the clock moves; an event
appended by another process shows up), and quits on ``q`` or Ctrl-C with status 0,
restoring the terminal. Driven in tmux (send-keys, capture-pane) and in a pty."""

from __future__ import annotations

import fcntl
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm_pool.paths import ProjectPaths
from swarm_pool.store import open_project_store
from tests.support import wait_for
from tests.view_history import build_history

HEADER = re.compile(r"seq (\d+)  (\d\d:\d\d:\d\d)")
ROWS, COLS = 45, 120


def dashboard_argv(project: Path) -> list[str]:
    argv = [sys.executable, "-m", "swarm_pool", "dashboard", "--refresh", "0.5"]
    return [*argv, "--project", str(project)]


def append_from_another_process(project: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from swarm_pool.store import open_store; "
        "s = open_store(Path(sys.argv[1]) / '.swarm' / 'swarm.db'); "
        "s.append({'type': 'instance_fatal', 'instance': 'oc-9', 'reason': 'gave up'}); "
        "s.close()"
    )
    subprocess.run([sys.executable, "-c", code, str(project)], check=True, timeout=60)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    build_history(tmp_path)
    return tmp_path


def clocks(text: str) -> set[str]:
    return {m.group(2) for m in HEADER.finditer(text)}


# --- pty ------------------------------------------------------------------------------


class PtyDashboard:
    """The dashboard on the slave side of a pty (its controlling terminal)."""

    def __init__(self, project: Path) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.canonical = termios.tcgetattr(self.master)[3] & termios.ICANON
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env["TERM"] = "xterm-256color"

        def controlling_tty() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            dashboard_argv(project),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            # The pty must be the controlling terminal, for Ctrl-C to send SIGINT.
            preexec_fn=controlling_tty,
        )
        os.close(slave)
        self.chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def lflag(self) -> int:
        return int(termios.tcgetattr(self.master)[3])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def pty_dashboard(project: Path) -> Iterator[PtyDashboard]:
    dash = PtyDashboard(project)
    yield dash
    dash.close()


def test_pty_refreshes_shows_new_events_and_quits_on_q(
    project: Path, pty_dashboard: PtyDashboard
) -> None:
    dash = pty_dashboard
    # A frame arrives in several reads: wait for its end, not just its header.
    wait_for(lambda: HEADER.search(dash.text) and "workers by epic" in dash.text, timeout=30)
    assert "q quits" in dash.text
    # Cbreak while it runs: keys arrive one at a time, not line by line.
    wait_for(lambda: not dash.lflag() & termios.ICANON, timeout=10)
    wait_for(lambda: len(clocks(dash.text)) >= 2, timeout=10)  # redrawn on its own
    with open_project_store(ProjectPaths(project)) as store:
        last = store.last_seq()
    append_from_another_process(project)
    wait_for(lambda: f"seq {last + 1} " in dash.text and "instance_fatal" in dash.text, timeout=10)
    dash.send(b"q")
    assert wait_for(lambda: dash.proc.poll() is not None, timeout=10)
    assert dash.proc.returncode == 0
    assert dash.lflag() & termios.ICANON == dash.canonical  # terminal restored
    assert "\x1b[?1049l" in dash.text  # and the alternate screen left


def test_pty_ctrl_c_quits_cleanly(pty_dashboard: PtyDashboard) -> None:
    dash = pty_dashboard
    wait_for(lambda: HEADER.search(dash.text), timeout=30)
    wait_for(lambda: not dash.lflag() & termios.ICANON, timeout=10)
    dash.send(b"\x03")
    assert wait_for(lambda: dash.proc.poll() is not None, timeout=10)
    assert dash.proc.returncode == 0
    assert dash.lflag() & termios.ICANON == dash.canonical
    assert "Traceback" not in dash.text


def test_sigterm_restores_the_terminal(pty_dashboard: PtyDashboard) -> None:
    dash = pty_dashboard
    wait_for(lambda: HEADER.search(dash.text), timeout=30)
    wait_for(lambda: not dash.lflag() & termios.ICANON, timeout=10)
    dash.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: dash.proc.poll() is not None, timeout=10)
    assert dash.lflag() & termios.ICANON == dash.canonical


# --- tmux -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_tmux_starts_refreshes_and_quits_on_q(project: Path) -> None:
    sock = f"swarm-view-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "COLUMNS", "LINES")}

    def tmux(*args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", sock, *args], env=env, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    # tmux (3.3a) can miss a pane's SIGCHLD and never show its exit status, so a shell
    # runs the dashboard and prints it; `exec sleep` keeps the pane for capture-pane.
    dashboard = " ".join(shlex.quote(a) for a in dashboard_argv(project))
    command = f'{dashboard}; echo "dashboard exited: $?"; exec sleep 60'

    def screen() -> str:
        return tmux("capture-pane", "-p", "-t", "dash")

    def frame() -> str:
        text = screen()
        return text if HEADER.search(text) else ""

    tmux("new-session", "-d", "-s", "dash", "-x", str(COLS), "-y", str(ROWS), command)
    try:
        first = wait_for(frame, timeout=30)
        for panel in ("instances", "workers by epic", "active reservations", "last events"):
            assert panel in first
        first_clock = clocks(first)
        wait_for(lambda: clocks(screen()) - first_clock, timeout=10)
        with open_project_store(ProjectPaths(project)) as store:
            last = store.last_seq()
        append_from_another_process(project)
        wait_for(lambda: f"seq {last + 1} " in screen() and "gave up" in screen(), timeout=10)
        tmux("send-keys", "-t", "dash", "q")

        # The shell in the pane reports how the dashboard exited.
        wait_for(lambda: "dashboard exited: " in screen(), timeout=10)
        assert "dashboard exited: 0" in screen()
    finally:
        subprocess.run(
            ["tmux", "-L", sock, "kill-server"], env=env, capture_output=True, timeout=30
        )
