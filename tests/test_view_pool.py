"""The view commands on a real pool (one ``opencode serve``, shared by the module): the
dashboard shows its real pid, port and memory, quitting the live view leaves the pool
running, ``metrics`` measures it live, ``logs`` prints its own output."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.pool_cli import NO_MODEL_ENV, cli, cli_json, make_project
from tests.support import wait_for
from tests.test_view_live import HEADER, PtyDashboard

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    project = make_project(tmp_path_factory.mktemp("view-pool") / "proj")
    out = cli(
        "start", "-n", "1", "--json", project=project, env=NO_MODEL_ENV, session_scoped=True,
        timeout=180,
    )  # fmt: skip
    log = project / ".swarm" / "supervisor.log"
    assert out.returncode == 0, f"{out.stderr}\n{log.read_text() if log.exists() else ''}"
    yield project
    cli("stop", project=project, session_scoped=True)


def instance(pool: Path) -> dict[str, Any]:
    status = cli_json("status", project=pool)
    found: list[dict[str, Any]] = [i for i in status["instances"] if i["kind"] == "opencode"]
    [inst] = found
    assert inst["state"] == "ready"
    return inst


def test_dashboard_once_shows_the_real_pid_port_and_memory(pool: Path) -> None:
    inst = instance(pool)
    status = cli_json("status", project=pool)
    out = cli("dashboard", "--once", project=pool)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"supervisor {status['supervisor']['pid']} running" in text.splitlines()[0]
    [line] = [ln for ln in text.splitlines() if ln.startswith("│ oc-1 ")]
    values = line.strip("│ ").split()
    assert values[:4] == ["oc-1", "ready", str(inst["port"]), str(inst["pid"])]
    rss = float(values[4])
    leader = psutil.Process(inst["pid"])
    real = sum(p.memory_info().rss for p in [leader, *leader.children(recursive=True)]) / 2**20
    assert rss > 50 and abs(rss - real) < 50
    assert float(values[5]) >= 0  # CPU % measured over --once's short sample
    assert values[6:8] == ["0", "0"]  # no busy session, no restart
    assert re.fullmatch(r"\d+(\.\d)?s|\d+m\d\ds", values[8])
    # The supervisor's own events are in the last events panel.
    assert "instance_ready" in text and "pool_started" in text


def test_quitting_the_live_dashboard_leaves_the_pool_running(pool: Path) -> None:
    before = instance(pool)
    dash = PtyDashboard(pool)
    try:
        wait_for(lambda: HEADER.search(dash.text) and f" {before['pid']} " in dash.text, 60)
        dash.send(b"q")
        assert wait_for(lambda: dash.proc.poll() is not None, timeout=10)
        assert dash.proc.returncode == 0
    finally:
        dash.close()
    after = instance(pool)
    assert (after["pid"], after["port"]) == (before["pid"], before["port"])
    assert cli("status", project=pool).returncode == 0


def test_metrics_measure_the_live_instance(pool: Path) -> None:
    inst = instance(pool)
    data = cli_json("metrics", project=pool)
    assert data["epics"] == []
    [m] = [i for i in data["instances"] if i["instance"] == "oc-1"]
    assert m["restarts"] == 0 and m["sessions_served"] == 0 and m["rss_samples"] == 0
    assert m["peak_rss_source"] == "live" and m["cpu_source"] == "live"
    assert m["current_rss_mb"] > 50
    # The high-water mark can only be at or above what is resident now.
    assert m["peak_rss_mb"] >= m["current_rss_mb"] - 1
    # Mean CPU of the run = the tree's CPU time / its wall time; recompute it here.
    leader = psutil.Process(inst["pid"])
    cpu_s = leader.cpu_times().children_user + leader.cpu_times().children_system
    for proc in [leader, *leader.children(recursive=True)]:
        cpu_s += proc.cpu_times().user + proc.cpu_times().system
    mine = 100.0 * cpu_s / (time.time() - leader.create_time())
    assert m["mean_cpu_percent"] > 0
    assert abs(m["mean_cpu_percent"] - mine) < 10


def test_logs_prints_the_instance_output(pool: Path) -> None:
    out = cli("logs", "oc-1", "-n", "20", project=pool)
    assert out.returncode == 0, out.stderr
    assert "opencode server listening on http://127.0.0.1:" in out.stdout
    assert str(instance(pool)["port"]) in out.stdout
    bad = cli("logs", "oc-7", project=pool)
    assert bad.returncode == 1 and "known: oc-1" in bad.stderr
