"""The progress helper: drawn on a terminal, silent in a pipe or with --json, and
``pool_progress`` following the pool's state file while a blocking call runs."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from rich.console import Console

from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.state import ChildRecord, PoolState, SupervisorRecord, write_state
from swarm_pool.view.progress import StepProgress, pool_progress, progress_enabled
from tests.support import wait_for


def terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=100), buf


def test_enabled_only_on_a_tty_and_never_with_json() -> None:
    assert progress_enabled(stream=io.StringIO()) is False

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert progress_enabled(stream=Tty()) is True
    assert progress_enabled(as_json=True, stream=Tty()) is False


def test_step_progress_draws_on_a_terminal_and_is_silent_otherwise() -> None:
    console, buf = terminal()
    with StepProgress("tasks done", 4, enabled=True, console=console) as bar:
        bar.update(1)
        bar.advance()
        bar.update(3, description="tasks done: bd-abc.4 running")
    out = buf.getvalue()
    assert "tasks done" in out and "3/4" in out
    assert bar.completed == 3

    for kwargs in ({"enabled": False}, {"enabled": True, "as_json": True}):
        console, buf = terminal()
        with StepProgress("quiet", 2, console=console, **kwargs) as bar:  # type: ignore[arg-type]
            bar.update(2)
        assert buf.getvalue() == "" and bar.completed == 2


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) for _ in range(3)
    ]
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def state_with(root: Path, procs: list[subprocess.Popen[bytes]], ready: int) -> PoolState:
    me = psutil.Process()
    return PoolState(
        project_root=str(root),
        phase="running" if ready == len(procs) else "starting",
        size=len(procs),
        supervisor=SupervisorRecord(pid=me.pid, create_time=me.create_time()),
        instances=[
            ChildRecord(
                name=f"oc-{i}",
                pid=p.pid,
                create_time=psutil.Process(p.pid).create_time(),
                state="ready" if i <= ready else "starting",
            )
            for i, p in enumerate(procs, start=1)
        ],
    )


def test_pool_progress_counts_ready_instances_during_start(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    paths = ProjectPaths(tmp_path).ensure()
    write_state(paths.state_file, state_with(tmp_path, sleepers, 3))  # an older pool's file
    time.sleep(0.05)  # so the new file's updated_at is later than the progress start
    console, buf = terminal()
    seen: list[int] = []
    with pool_progress(
        paths, "start", total=3, enabled=True, console=console, interval_s=0.02
    ) as bar:
        time.sleep(0.1)
        assert bar.completed == 0  # the old file's ready children do not count
        for ready in range(4):
            write_state(paths.state_file, state_with(tmp_path, sleepers, ready))
            wait_for(lambda: bar.completed == ready, timeout=5)  # noqa: B023
            seen.append(bar.completed)
    assert seen == [0, 1, 2, 3]
    assert "starting instances" in buf.getvalue() and "3/3" in buf.getvalue()


def test_pool_progress_counts_stopped_instances_during_stop(
    tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    paths = ProjectPaths(tmp_path).ensure()
    write_state(paths.state_file, state_with(tmp_path, sleepers, 3))
    console, _buf = terminal()
    with pool_progress(paths, "stop", enabled=True, console=console, interval_s=0.02) as bar:
        wait_for(lambda: bar.total == 3, timeout=5)
        for n, proc in enumerate(sleepers, start=1):
            proc.kill()
            proc.wait(timeout=10)
            wait_for(lambda: bar.completed == n, timeout=5)  # noqa: B023
    with pool_progress(paths, "stop", enabled=False) as quiet:
        assert quiet.enabled is False
