"""One child process: own session, identity by pid + create_time, stop kills the tree."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from swarm_pool.errors import ProcessError
from swarm_pool.pool import process
from swarm_pool.pool.ports import port_is_free
from swarm_pool.pool.process import ExitStatus, ProcRef
from tests.support import wait_for

STANDIN = str(Path(__file__).with_name("pool_standin.py"))
SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_launch_in_own_session_with_output_in_log(tmp_path: Path) -> None:
    log = tmp_path / "x" / "child.log"
    launched = process.launch(SLEEPER, env=os.environ, cwd=tmp_path, log_path=log)
    try:
        assert os.getsid(launched.ref.pid) == launched.ref.pid
        assert os.getpgid(launched.ref.pid) == launched.ref.pid
        assert launched.ref.alive()
        wait_for(lambda: log.exists() and "up" in log.read_text(), 10)
        assert (log.stat().st_mode & 0o777) == 0o600
    finally:
        status = process.stop(launched.ref, grace_s=5, popen=launched.popen)
    assert status == ExitStatus(None, signal.SIGTERM)
    assert not launched.ref.alive()


def test_ref_with_another_create_time_is_not_ours(tmp_path: Path) -> None:
    launched = process.launch(SLEEPER, env=os.environ, cwd=tmp_path, log_path=tmp_path / "l")
    try:
        impostor = ProcRef(launched.ref.pid, launched.ref.create_time - 10)
        assert not impostor.alive()
        # stop() on a ref that is not ours must not signal the live process.
        process.stop(impostor, grace_s=0.5)
        assert launched.ref.alive()
    finally:
        process.stop(launched.ref, grace_s=5, popen=launched.popen)


def test_zombie_is_not_alive(tmp_path: Path) -> None:
    quick = [sys.executable, "-c", "pass"]
    launched = process.launch(quick, env=os.environ, cwd=tmp_path, log_path=tmp_path / "l")
    # Not reaped yet: it is a zombie, which must count as dead.
    wait_for(lambda: not launched.ref.alive(), 10)
    assert launched.popen.wait(5) == 0


def test_stop_kills_a_stubborn_tree_and_frees_the_port(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, STANDIN, "stubborn", "--port", str(port)]
    launched = process.launch(argv, env=os.environ, cwd=tmp_path, log_path=tmp_path / "l")
    wait_for(lambda: not port_is_free(port), 15)
    leader = psutil.Process(launched.ref.pid)
    kids = wait_for(lambda: leader.children(recursive=True), 10)
    tree = [leader, *kids]
    started = time.monotonic()
    status = process.stop(launched.ref, grace_s=0.5, port=port, popen=launched.popen)
    assert time.monotonic() - started < 8
    assert status.signal == signal.SIGKILL  # SIGTERM was ignored
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
    assert port_is_free(port)


def test_orphans_of_a_dead_leader_are_reaped(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, STANDIN, "stubborn", "--port", str(port)]
    launched = process.launch(argv, env=os.environ, cwd=tmp_path, log_path=tmp_path / "l")
    leader = psutil.Process(launched.ref.pid)
    kids = wait_for(lambda: leader.children(recursive=True), 10)
    os.kill(launched.ref.pid, signal.SIGKILL)
    assert launched.popen.wait(5) == -signal.SIGKILL
    # The grandchild now belongs to init, but is still in our process group.
    assert kids[0].is_running()
    assert process.reap_orphans(launched.ref, grace_s=0.3) == 1
    wait_for(lambda: not kids[0].is_running() or kids[0].status() == psutil.STATUS_ZOMBIE, 10)


def test_stop_reports_a_port_held_by_someone_else(tmp_path: Path) -> None:
    import socket

    launched = process.launch(SLEEPER, env=os.environ, cwd=tmp_path, log_path=tmp_path / "l")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ProcessError, match=f"port {port} is still in use"):
            process.stop(
                launched.ref, grace_s=2, port=port, popen=launched.popen, port_timeout_s=0.3
            )
    assert not launched.ref.alive()


def test_tree_stats_and_cpu(tmp_path: Path) -> None:
    log = tmp_path / "l"
    launched = process.launch(SLEEPER, env=os.environ, cwd=tmp_path, log_path=log)
    try:
        wait_for(lambda: "up" in log.read_text(), 10)
        stats = process.tree_stats(launched.ref)
        assert stats is not None and stats[0] > 1
        cpu = process.cpu_percents([launched.ref], interval=0.05)
        assert launched.ref.pid in cpu
    finally:
        process.stop(launched.ref, grace_s=5, popen=launched.popen)
    assert process.tree_stats(launched.ref) is None


def test_exit_status_descriptions() -> None:
    assert ExitStatus.from_returncode(-9).describe() == "killed by SIGKILL"
    assert ExitStatus.from_returncode(3).describe() == "exit code 3"
    assert "unknown" in ExitStatus.from_returncode(None).describe()
