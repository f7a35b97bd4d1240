"""``log --follow`` (events appended by another process show up within a second, filters
hold, Ctrl-C exits 0) and ``logs NAME`` (an instance's own log: last lines across the
rotation backup, following through both kinds of rotation)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm_pool.paths import ProjectPaths
from swarm_pool.view import logtail
from tests.support import wait_for
from tests.view_history import build_history


class Lines:
    """Reads a child's stdout in a thread, noting when each line arrived."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def texts(self) -> list[str]:
        return [text for _, text in self.lines]

    def stop(self) -> int:
        """Ctrl-C, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_cli(*args: str, project: Path) -> Lines:
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarm_pool", *args, "--project", str(project)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    return Lines(proc)


APPEND = """
import sys, time
from pathlib import Path
from swarm_pool.store import open_store
store = open_store(Path(sys.argv[1]) / ".swarm" / "swarm.db")
store.append({"type": "session_status", "session_id": "ses_x", "instance": "oc-1",
              "status": "busy"})
store.append({"type": "instance_fatal", "instance": "oc-7", "reason": sys.argv[2]})
print(time.time(), flush=True)
store.close()
"""


def append_elsewhere(project: Path, reason: str) -> float:
    """Append (from another process) a non-matching then a matching event; when done."""
    out = subprocess.run(
        [sys.executable, "-c", APPEND, str(project), reason],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return float(out.stdout.strip())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    return tmp_path


def test_log_follow_streams_appends_from_another_process_within_a_second(
    project: Path,
) -> None:
    history = build_history(project)
    follower = start_cli(
        "log", "-f", "--json", "--type", "instance_fatal", "--type", "pool_started",
        project=project,
    )  # fmt: skip
    plain = start_cli("log", "--follow", project=project)
    try:
        # The backlog: the one pool_started for the filtered one, the last 20 for the other.
        wait_for(lambda: len(follower.lines) == 1, timeout=30)
        assert json.loads(follower.texts()[0])["type"] == "pool_started"
        wait_for(lambda: any(f" {history.last_seq}  " in t for t in plain.texts()), timeout=30)
        assert len(plain.texts()) == 20
        for n in range(2):
            appended_at = append_elsewhere(project, f"gave up {n}")
            wait_for(lambda: len(follower.lines) == n + 2, timeout=5)  # noqa: B023
            seen_at, text = follower.lines[n + 1]
            assert seen_at - appended_at < 1.0, f"{seen_at - appended_at:.2f}s late"
            data = json.loads(text)
            # The session_status appended just before is filtered out.
            assert data["type"] == "instance_fatal" and data["reason"] == f"gave up {n}"
            assert data["seq"] == history.last_seq + 2 * (n + 1)
        # The unfiltered one gets both events of each append, in order, once.
        wait_for(lambda: len(plain.texts()) == 24, timeout=5)
        new = plain.texts()[20:]
        assert [t.split()[3] for t in new] == ["session_status", "instance_fatal"] * 2
        assert [int(t.split()[0]) for t in new] == list(
            range(history.last_seq + 1, history.last_seq + 5)
        )
    finally:
        codes = follower.stop(), plain.stop()
    assert codes == (0, 0)
    assert follower.proc.stderr is not None and "Traceback" not in follower.proc.stderr.read()


def test_log_follow_after_a_page_goes_on_from_that_page(project: Path) -> None:
    history = build_history(project)
    follower = start_cli("log", "-f", "--since-seq", "5", "--limit", "3", project=project)
    try:
        # Three from the page, then every later one up to now, then the new ones.
        expected = history.last_seq - 5
        wait_for(lambda: len(follower.lines) >= expected, timeout=30)
        seqs = [int(t.split()[0]) for t in follower.texts()]
        assert seqs == list(range(6, history.last_seq + 1))
    finally:
        assert follower.stop() == 0


# --- logs NAME ------------------------------------------------------------------------


def make_log(project: Path, name: str, lines: list[str], backup: list[str] | None = None) -> Path:
    folder = ProjectPaths(project).instance_dir(name)
    folder.mkdir(parents=True)
    path = folder / ("model.log" if name == "model" else "opencode.log")
    path.write_text("".join(f"{line}\n" for line in lines))
    if backup is not None:
        path.with_name(path.name + ".1").write_text("".join(f"{line}\n" for line in backup))
    return path


def run_logs(*args: str, project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swarm_pool", "logs", *args, "--project", str(project)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_logs_prints_the_last_lines_across_the_backup(project: Path) -> None:
    make_log(project, "oc-1", [f"new {i}" for i in range(3)], [f"old {i}" for i in range(5)])
    make_log(project, "model", ["model up"])
    out = run_logs("oc-1", "-n", "5", project=project)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["old 3", "old 4", "new 0", "new 1", "new 2"]
    assert run_logs("oc-1", "-n", "2", project=project).stdout.splitlines() == ["new 1", "new 2"]
    assert run_logs("model", project=project).stdout == "model up\n"
    bad = run_logs("oc-9", project=project)
    assert bad.returncode == 1
    assert "oc-9" in bad.stderr and "known: model, oc-1" in bad.stderr
    assert run_logs("..", project=project).returncode == 1


def test_logs_follow_prints_appended_lines_then_exits_0_on_ctrl_c(project: Path) -> None:
    path = make_log(project, "oc-1", ["booted"])
    follower = start_cli("logs", "oc-1", "-f", project=project)
    try:
        wait_for(lambda: follower.texts() == ["booted"], timeout=30)
        with path.open("a") as fh:
            fh.write("listening\n")
        wait_for(lambda: follower.texts() == ["booted", "listening"], timeout=5)
    finally:
        assert follower.stop() == 0


@pytest.fixture
def followed(tmp_path: Path) -> Iterator[tuple[Path, list[str], threading.Event]]:
    path = tmp_path / "opencode.log"
    path.write_text("before\n")
    got: list[str] = []
    stop = threading.Event()
    _lines, offset = logtail.tail(path, 10)

    def run() -> None:
        for chunk in logtail.follow(path, stop=stop, offset=offset, poll_s=0.02):
            got.extend(chunk.splitlines())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield path, got, stop
    stop.set()
    thread.join(timeout=5)


def test_follow_survives_copy_truncate_rotation(
    followed: tuple[Path, list[str], threading.Event],
) -> None:
    path, got, _stop = followed
    with path.open("a") as fh:
        fh.write("one\n")
    wait_for(lambda: got == ["one"], timeout=5)
    path.with_name("opencode.log.1").write_bytes(path.read_bytes())
    os.truncate(path, 0)
    with path.open("a") as fh:  # shorter than before: the shrink shows
        fh.write("two\n")
    wait_for(lambda: got == ["one", "two"], timeout=5)


def test_follow_survives_rename_rotation_and_joins_partial_lines(
    followed: tuple[Path, list[str], threading.Event],
) -> None:
    path, got, _stop = followed
    with path.open("a") as fh:
        fh.write("par")
        fh.flush()
        time.sleep(0.1)  # not a wait: gives the follower a chance to read half a line
        fh.write("tial\n")
    wait_for(lambda: got == ["partial"], timeout=5)
    os.replace(path, path.with_name("opencode.log.1"))
    path.write_text("fresh start\n")
    wait_for(lambda: got == ["partial", "fresh start"], timeout=5)
