"""The view commands on a real pool after a finished demo run.

One pool (one ``opencode serve`` plus the scripted model) is shared by the module; the
shipped demo plan runs on it once (four workers, reviewed and merged). Then: the
dashboard shows the real pid, port and memory, the finished epic and a reservation;
quitting the live view leaves the pool running; ``metrics --json`` matches a hand
computation over the same store plus psutil; ``logs`` prints the instance's output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from swarm_pool.paths import ProjectPaths
from swarm_pool.store import open_project_store
from tests.pool_cli import cli, cli_json
from tests.support import init_repo, wait_for
from tests.test_view_live import HEADER, PtyDashboard

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Demo:
    root: Path
    epic_id: str
    beads: list[str]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    root = init_repo((tmp_path_factory.mktemp("view-pool") / "proj").resolve())
    # Sample often, so the run leaves instance_stats events with CPU figures to check.
    out = cli(
        "start",
        "-n",
        "1",
        "--json",
        project=root,
        session_scoped=True,
        timeout=180,
        env={"SWARM_POOL_SUPERVISOR__STATS_INTERVAL_S": "1.0"},
    )
    log = root / ".swarm" / "supervisor.log"
    assert out.returncode == 0, f"{out.stderr}\n{log.read_text() if log.exists() else ''}"
    try:
        plan = ROOT / "conf" / "demo-plan.toml"
        run = cli("run", str(plan), "--json", project=root, session_scoped=True, timeout=600)
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
        summary = json.loads(run.stdout)
        assert summary["merged"] == summary["total"] == 4
        beads = sorted(t["bead_id"] for t in summary["tasks"])
        yield Demo(root=root, epic_id=summary["epic_id"], beads=beads)
    finally:
        cli("stop", project=root, session_scoped=True)


def instance(root: Path) -> dict[str, Any]:
    status = cli_json("status", project=root)
    found: list[dict[str, Any]] = [i for i in status["instances"] if i["kind"] == "opencode"]
    [inst] = found
    assert inst["state"] == "ready"
    return inst


def tree_rss_mb(pid: int) -> float:
    leader = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [leader, *leader.children(recursive=True)]) / 2**20


def test_dashboard_once_after_a_demo_run_shows_every_panel(demo: Demo) -> None:
    inst = instance(demo.root)
    status = cli_json("status", project=demo.root)
    with open_project_store(ProjectPaths(demo.root)) as store:
        held = store.reservations.reserve("coordinator", ["docs/**"], ttl_s=900)
        assert held.granted
        last_seq = store.last_seq()
    try:
        out = cli("dashboard", "--once", project=demo.root)
    finally:
        with open_project_store(ProjectPaths(demo.root)) as store:
            store.reservations.release("coordinator")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    lines = text.splitlines()
    assert f"supervisor {status['supervisor']['pid']} running" in lines[1]
    # The supervisor appends instance_stats samples meanwhile: the header shows the store's
    # seq at the moment the frame was taken.
    shown = re.search(r"\bseq (\d+) ", lines[0])
    assert shown is not None, lines[0]
    with open_project_store(ProjectPaths(demo.root)) as store:
        assert last_seq <= int(shown.group(1)) <= store.last_seq()

    # instances: the real opencode server and the scripted model
    [line] = [ln for ln in lines if ln.startswith("│ oc-1 ")]
    values = line.strip("│ ").split()
    assert values[:4] == ["oc-1", "ready", str(inst["port"]), str(inst["pid"])]
    assert abs(float(values[4]) - tree_rss_mb(inst["pid"])) < 50
    assert float(values[4]) > 50 and float(values[5]) >= 0
    assert values[6:8] == ["0", "0"]  # nothing busy now, never restarted
    last_sign = values[9]  # after the uptime: seconds since its last answer or event
    assert re.fullmatch(r"\d+(\.\d)?s", last_sign) and float(last_sign[:-1]) < 30, line
    assert any(ln.startswith("│ model (model) ") and " ready " in ln for ln in lines)

    # workers: the demo's epic, all four merged on oc-1, with durations and summaries
    assert re.search(rf"{demo.epic_id}\s+wordcount: a tiny word-frequency tool\s+4/4 done", text)
    for bead in demo.beads:
        [row] = [ln for ln in lines if ln.startswith(f"│ {bead} ")]
        assert "merged" in row and "100%" in row and " oc-1 " in row
        # fmt_duration's shapes: "7.8s", or "1m01s" when a loaded machine made it slow
        assert re.search(r" (\d+m\d\ds|\d+(\.\d)?s) ", row)
        assert "scripted worker wrote" in row

    # reservations: the coordinator's, with its expiry
    [res] = [ln for ln in lines if ln.startswith("│ coordinator ")]
    assert "docs/**" in res and "exclusive" in res
    assert re.search(r"\b14m5\ds\b|\b15m00s\b", res)

    # last events: the newest first, our reservation among them. A worker's session may
    # go idle after its merge (swarm_complete comes before the agent's last step), so
    # its session_status can land after the reservation: only such later events may
    # stand above it.
    events = lines[lines.index(next(ln for ln in lines if "last events" in ln)) + 1 :]
    seqs = [int(m.group(1)) for ln in events if (m := re.match(r"│ (\d+) ", ln))]
    assert seqs == sorted(seqs, reverse=True) and last_seq in seqs, events
    ours = seqs.index(last_seq)
    assert "file_reserved" in events[ours]
    assert all("session_status" in ln or "instance_stats" in ln for ln in events[:ours]), events


def test_quitting_the_live_dashboard_leaves_the_pool_running(demo: Demo) -> None:
    before = instance(demo.root)
    dash = PtyDashboard(demo.root)
    try:
        # A frame arrives in several reads: wait for the whole of it.
        wait_for(
            lambda: (
                HEADER.search(dash.text)
                and f" {before['pid']} " in dash.text
                and "4/4 done" in dash.text
            ),
            60,
        )
        dash.send(b"q")
        assert wait_for(lambda: dash.proc.poll() is not None, timeout=10)
        assert dash.proc.returncode == 0
    finally:
        dash.close()
    after = instance(demo.root)
    assert (after["pid"], after["port"]) == (before["pid"], before["port"])
    assert cli("status", project=demo.root).returncode == 0


def test_metrics_json_match_a_hand_computation(demo: Demo) -> None:
    inst = instance(demo.root)
    with open_project_store(ProjectPaths(demo.root)) as store:
        # The supervisor keeps sampling: metrics saw between `before` and all oc-1 samples.
        before = len(
            [s for s in store.read(types=["instance_stats"]) if s.event.instance == "oc-1"]  # type: ignore[union-attr]
        )
    data = cli_json("metrics", project=demo.root)
    # By hand, from the same store: one spawn and one success per bead, all on oc-1.
    with open_project_store(ProjectPaths(demo.root)) as store:
        spawned = {s.event.bead_id: s for s in store.read(types=["worker_spawned"])}  # type: ignore[union-attr]
        done = {s.event.bead_id: s for s in store.read(types=["worker_completed"])}  # type: ignore[union-attr]
        retried = store.read(types=["worker_retried"])
        stats = [
            s.event
            for s in store.read(types=["instance_stats"])
            if s.event.instance == "oc-1"  # type: ignore[union-attr]
        ]
    rss_samples = [e.rss_mb for e in stats]  # type: ignore[union-attr]
    cpu_samples = [e.cpu_percent for e in stats if e.cpu_percent is not None]  # type: ignore[union-attr]
    assert len(cpu_samples) >= 2, "the supervisor recorded no instance_stats samples"
    assert set(spawned) == set(done) == set(demo.beads)
    durations = sorted(
        d.event.duration_ms  # type: ignore[union-attr]
        if d.event.duration_ms is not None  # type: ignore[union-attr]
        else d.timestamp - spawned[b].timestamp
        for b, d in done.items()
    )
    # Four samples: p50 halfway between the 2nd and 3rd; p95 at rank 2.85 (0-based).
    p50 = (durations[1] + durations[2]) / 2
    p95 = durations[2] + 0.85 * (durations[3] - durations[2])
    [epic] = data["epics"]
    assert epic["epic_id"] == demo.epic_id
    assert (epic["workers"], epic["attempts"], epic["finished"], epic["succeeded"]) == (4, 4, 4, 4)
    assert epic["success_rate"] == 1.0 and epic["retries"] == len(retried) == 0
    assert epic["duration_p50_ms"] == pytest.approx(p50, abs=0.1)
    assert epic["duration_p95_ms"] == pytest.approx(p95, abs=0.1)
    assert epic["idle_samples"] == 4 and epic["idle_to_detected_max_ms"] is not None

    [oc1] = [i for i in data["instances"] if i["instance"] == "oc-1"]
    assert oc1["sessions_served"] == 4 and oc1["restarts"] == 0
    assert abs(oc1["current_rss_mb"] - tree_rss_mb(inst["pid"])) < 50
    assert oc1["peak_rss_mb"] >= oc1["current_rss_mb"] - 1  # a high-water mark
    # The supervisor sampled the instance every second during the run: peak RSS covers
    # the samples, and mean CPU is the mean of the sampled CPU figures.
    assert oc1["peak_rss_source"] == "samples+live" and oc1["cpu_source"] == "samples"
    assert oc1["peak_rss_mb"] >= max(rss_samples)
    cpu_seen = [
        [e.cpu_percent for e in stats[:n] if e.cpu_percent is not None]  # type: ignore[union-attr]
        for n in range(before, len(stats) + 1)
    ]
    means = [sum(c) / len(c) for c in cpu_seen if c]
    assert any(oc1["mean_cpu_percent"] == pytest.approx(m, abs=0.1) for m in means), means


def test_logs_prints_the_instance_output(demo: Demo) -> None:
    out = cli("logs", "oc-1", "-n", "100000", project=demo.root)
    assert out.returncode == 0, out.stderr
    assert f"opencode server listening on http://127.0.0.1:{instance(demo.root)['port']}" in (
        out.stdout
    )
    assert cli("logs", "model", project=demo.root).stdout.strip()
    bad = cli("logs", "oc-7", project=demo.root)
    assert bad.returncode == 1 and "known: mcp, model, oc-1" in bad.stderr
