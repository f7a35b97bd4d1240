"""The supervisor loop on cheap stand-in children: restarts, flapping, health, memory.

The supervisor runs in a thread of the test process, supervising ``pool_standin.py``
children instead of opencode (same ``Program`` shape), so every policy is exercised with
real processes and real signals in a few seconds.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from swarm_pool.config import Config
from swarm_pool.errors import OpenCodeError
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.instance import Program
from swarm_pool.pool.ports import PortLeases, port_is_free
from swarm_pool.pool.state import read_state
from swarm_pool.pool.supervisor import Supervisor, SupervisorOptions
from tests.support import wait_for

STANDIN = str(Path(__file__).with_name("pool_standin.py"))
PORTS = (49000, 49199)


def standin_probe(port: int, timeout: float) -> None:
    try:
        resp = httpx.get(f"http://127.0.0.1:{port}/", timeout=timeout)
    except httpx.HTTPError as e:
        raise OpenCodeError(str(e)) from e
    if resp.status_code != 200:
        raise OpenCodeError(f"answered {resp.status_code}")


class Harness:
    """Per-child mode, env and busy count, changeable while the supervisor runs."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.modes: dict[str, str] = {}
        self.env: dict[str, str] = {}
        self.busy: dict[str, int | None] = {}

    def program(self, name: str, _model_url: Callable[[], str | None]) -> Program:
        def command(port: int) -> list[str]:
            return [sys.executable, STANDIN, self.modes.get(name, "serve"), "--port", str(port)]

        def env(port: int) -> dict[str, str]:
            return {**os.environ, **self.env}

        def busy(port: int, timeout: float) -> int | None:
            return self.busy.get(name, 0)

        return Program(
            name=name,
            kind="opencode",
            command=command,
            env=env,
            cwd=self.tmp,
            log_path=self.tmp / "logs" / f"{name}.log",
            probe=standin_probe,
            busy=busy,
        )


def make_config(**supervisor: Any) -> Config:
    sup = {
        "check_interval_s": 0.1,
        "health_interval_s": 0.1,
        "health_timeout_s": 0.5,
        "health_failures": 2,
        "no_progress_s": 0.3,
        "no_progress_per_busy_s": 0.0,
        "slow_answer_s": 0.5,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "backoff_jitter": 0.1,
        "flap_max_restarts": 3,
        "flap_window_s": 30.0,
        "max_rss_mb": 0,
    }
    sup.update(supervisor)
    return Config.model_validate(
        {
            "pool": {
                "port_min": PORTS[0],
                "port_max": PORTS[1],
                "start_timeout_s": 10,
                "stop_grace_s": 1,
            },
            "supervisor": sup,
            "opencode": {"model": "x/y"},
        }
    )


class Running:
    def __init__(self, sup: Supervisor, thread: threading.Thread, paths: ProjectPaths) -> None:
        self.sup = sup
        self.thread = thread
        self.paths = paths
        self.rc: list[int] = []

    def record(self, name: str) -> Any:
        rec = self.sup.snapshot().child(name)
        assert rec is not None
        return rec

    def stop(self) -> None:
        self.sup.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def _start(harness: Harness, size: int = 1, **supervisor: Any) -> Running:
        paths = ProjectPaths(tmp_path / "proj")
        paths.root.mkdir(exist_ok=True)
        sup = Supervisor(
            paths,
            make_config(**supervisor),
            SupervisorOptions(size=size, program_factory=harness.program, with_model=False),
        )
        running = Running(sup, threading.Thread(target=lambda: None), paths)
        running.thread = threading.Thread(target=lambda: running.rc.append(sup.run()))
        running.thread.start()
        started.append(running)
        wait_for(lambda: sup.me is not None and sup.snapshot().phase != "starting", 30)
        return running

    yield _start
    for running in started:
        if running.thread.is_alive():
            running.stop()


def test_kill9_restarts_on_the_same_port_then_stop_cleans_up(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    pool = start(Harness(tmp_path), size=2)
    assert pool.sup.snapshot().phase == "running"
    first = pool.record("oc-1")
    os.kill(first.pid, signal.SIGKILL)
    wait_for(lambda: pool.record("oc-1").state == "ready" and pool.record("oc-1").pid != first.pid)
    again = pool.record("oc-1")
    assert again.port == first.port
    assert again.restarts == 1
    assert len(again.restarted_at) == 1  # the router avoids it while it settles
    assert again.last_exit.signal == signal.SIGKILL
    assert pool.record("oc-2").restarts == 0
    # The state file follows the supervisor.
    wait_for(lambda: (s := read_state(pool.paths.state_file)) and s.child("oc-1").pid == again.pid)
    ports = [first.port, pool.record("oc-2").port]
    pool.stop()
    assert pool.rc == [0]
    assert restarts_of(pool.paths, "oc-1") == [("exited", "killed by SIGKILL")]
    state = read_state(pool.paths.state_file)
    assert state is not None and state.phase == "stopped"
    assert all(r.state == "stopped" and r.pid is None for r in state.instances)
    assert all(port_is_free(p) for p in ports)
    leases = PortLeases(*PORTS).snapshot()
    assert not set(ports) & set(leases)


def test_crash_loop_becomes_fatal_until_manual_restart(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    harness = Harness(tmp_path)
    pool = start(harness, size=1)
    harness.modes["oc-1"] = "crash"
    os.kill(pool.record("oc-1").pid, signal.SIGKILL)
    wait_for(lambda: pool.record("oc-1").state == "fatal", 30)
    rec = pool.record("oc-1")
    assert "flapping" in rec.reason
    assert rec.restarts == 3  # flap_max_restarts: the 4th failure is fatal
    assert rec.last_exit.code == 3
    # Fatal stays fatal: nothing restarts it on its own.
    with pytest.raises(AssertionError):
        wait_for(lambda: pool.record("oc-1").state != "fatal", 0.5)
    harness.modes["oc-1"] = "serve"
    pool.sup.restart("oc-1", timeout=20)
    rec = pool.record("oc-1")
    assert rec.state == "ready" and rec.restarts == 4
    pool.stop()
    from swarm_pool.store import open_project_store

    with open_project_store(pool.paths) as store:
        types = [e.type for e in store.read()]
    assert "instance_fatal" in types
    assert types.count("instance_exited") >= 4
    assert "instance_restarted" in types and types[-1] == "pool_stopped"


def test_failed_health_checks_restart(tmp_path: Path, start: Callable[..., Running]) -> None:
    harness = Harness(tmp_path)
    sick = tmp_path / "sick"
    harness.modes["oc-1"] = "sick"
    harness.env["STANDIN_SICK_FILE"] = str(sick)
    pool = start(harness, size=1)
    pid = pool.record("oc-1").pid
    sick.touch()
    wait_for(lambda: pool.record("oc-1").state == "unhealthy", 10)
    # Two failures in a row (health_failures=2) -> stopped and relaunched; the new run
    # stays sick until the file goes away.
    wait_for(lambda: pool.record("oc-1").pid not in (pid, None), 10)
    sick.unlink()
    wait_for(lambda: pool.record("oc-1").state == "ready", 20)
    assert pool.record("oc-1").restarts >= 1
    assert "health checks" in pool.record("oc-1").last_exit.reason
    pool.stop()
    causes = restarts_of(pool.paths, "oc-1")
    assert causes and all(c == "unhealthy" for c, _ in causes), causes
    assert "unhealthy with no progress for" in causes[0][1]


def test_a_healthy_child_is_probed_every_health_interval_not_every_check(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    probes: list[float] = []

    class Counting(Harness):
        def program(self, name: str, model_url: Callable[[], str | None]) -> Program:
            base = super().program(name, model_url)

            def probe(port: int, timeout: float) -> None:
                probes.append(time.monotonic())
                standin_probe(port, timeout)

            return dataclasses.replace(base, probe=probe)

    pool = start(Counting(tmp_path), size=1, check_interval_s=0.05, health_interval_s=0.6)
    wait_for(lambda: pool.record("oc-1").state == "ready", 10)
    seen = len(probes)
    wait_for(lambda: len(probes) >= seen + 4, 20)
    gaps = [b - a for a, b in itertools.pairwise(probes[seen:])]
    # Checks run every 0.05 s; the probe only every 0.6 s (a slow machine only widens it).
    assert min(gaps) >= 0.5, gaps
    # Liveness is still checked every check: a kill -9 is seen long before the next probe.
    pid = pool.record("oc-1").pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pool.record("oc-1").pid not in (pid, None), 10)
    pool.stop()


def restarts_of(paths: ProjectPaths, name: str) -> list[tuple[str, str]]:
    """(cause, reason) of every instance_restarted event of ``name``."""
    from swarm_pool.store import open_project_store

    with open_project_store(paths) as store:
        found = [s.event for s in store.read(types=["instance_restarted"])]
    return [(str(e.cause), e.reason) for e in found if getattr(e, "instance", "") == name]


def test_memory_limit_drains_then_restarts_when_idle(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    harness = Harness(tmp_path)
    pool = start(harness, size=2, max_rss_mb=60, memory_checks=2, memory_grace_s=300)
    harness.modes["oc-1"] = "fat"
    harness.env["STANDIN_MB"] = "120"
    harness.busy["oc-1"] = 2
    pool.sup.restart("oc-1", timeout=20)  # now a fat one, with busy sessions
    wait_for(lambda: pool.sup.draining() == {"oc-1"}, 10)
    assert pool.record("oc-1").draining
    pid = pool.record("oc-1").pid
    harness.modes["oc-1"] = "serve"
    # Busy: it keeps serving (draining) rather than being cut short.
    with pytest.raises(AssertionError):
        wait_for(lambda: pool.record("oc-1").pid != pid, 0.5)
    harness.busy["oc-1"] = 0
    wait_for(lambda: pool.record("oc-1").pid not in (pid, None), 10)
    wait_for(lambda: pool.record("oc-1").state == "ready", 20)
    assert pool.sup.draining() == set()
    assert "MB limit" in pool.record("oc-1").last_exit.reason


def test_scale_up_and_down(tmp_path: Path, start: Callable[..., Running]) -> None:
    pool = start(Harness(tmp_path), size=1)
    state = pool.sup.scale(3, timeout=20)
    assert [r.name for r in state.instances] == ["oc-1", "oc-2", "oc-3"]
    assert all(r.state == "ready" for r in state.instances)
    ports = {r.name: r.port for r in state.instances}
    pids = {r.name: r.pid for r in state.instances}
    state = pool.sup.scale(1, timeout=20)
    assert [r.name for r in state.instances] == ["oc-1"]
    assert state.instances[0].pid == pids["oc-1"]
    assert port_is_free(ports["oc-3"]) and port_is_free(ports["oc-2"])


def test_second_supervisor_refuses_the_project(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    from swarm_pool.errors import PoolAlreadyRunningError

    pool = start(Harness(tmp_path), size=1)
    other = Supervisor(pool.paths, make_config(), SupervisorOptions(size=1, with_model=False))
    with pytest.raises(PoolAlreadyRunningError):
        other.run()


def test_port_taken_while_down_gets_a_new_port(
    tmp_path: Path, start: Callable[..., Running]
) -> None:
    import socket

    pool = start(Harness(tmp_path), size=1, backoff_initial_s=1.0, backoff_max_s=1.0)
    before = pool.record("oc-1")
    os.kill(before.pid, signal.SIGKILL)
    wait_for(lambda: pool.record("oc-1").state == "backoff", 10)
    with socket.socket() as foreign:
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        foreign.bind(("127.0.0.1", before.port))
        foreign.listen()
        wait_for(lambda: pool.record("oc-1").state == "ready", 20)
        after = pool.record("oc-1")
        assert after.port != before.port
        assert PORTS[0] <= after.port <= PORTS[1]
        leases = PortLeases(*PORTS).snapshot()
        assert after.port in leases and before.port not in leases
