"""View commands: ``dashboard``, ``logs NAME`` and ``metrics``.

Room: cli.

Thin wrappers over ``swarm_pool.view``: they only read (the store, the pool's state file,
psutil through ``view.procstats``, the instances' log files) and never change the pool.
``dashboard --once`` and every command whose stdout is not a TTY print plain text 120
columns wide.
"""

from __future__ import annotations

import contextlib
import sys
import time

import click
from rich.console import Console
from rich.table import Table

from swarm_pool.cli.common import AppContext, echo_json, existing_store, project_options
from swarm_pool.cli.group import main
from swarm_pool.cli.pool_cmds import print_hosts
from swarm_pool.errors import StoreError
from swarm_pool.store.hosts import hosts_overview
from swarm_pool.view import logtail
from swarm_pool.view.dashboard import render
from swarm_pool.view.live import run_live
from swarm_pool.view.metrics import METRIC_EVENT_TYPES, compute
from swarm_pool.view.procstats import live_stats_by_instance
from swarm_pool.view.snapshot import Limits, SnapshotSource

PLAIN_WIDTH = 120
# --once waits this long between two CPU samples, so its frame has CPU figures.
ONCE_CPU_SAMPLE_S = 0.3


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console = Console(width=PLAIN_WIDTH)
    return console


@main.command()
@click.option(
    "--once", is_flag=True, help="Print one frame and exit (also what a non-TTY stdout gets)."
)
@click.option(
    "--refresh",
    type=click.FloatRange(0.1, 1.0),
    default=1.0,
    show_default=True,
    help="Seconds between redraws (it also redraws on every new event).",
)
@project_options
def dashboard(app: AppContext, once: bool, refresh: float) -> None:
    """Live view of instances, workers, reservations and events (q quits; the pool stays)."""
    console = _console()
    with SnapshotSource(app.paths, app.config) as source:
        if once or not console.is_terminal:
            source.prime()
            time.sleep(ONCE_CPU_SAMPLE_S)
            console.print(render(source.take(Limits())))
            return
        run_live(source, refresh_s=refresh, console=console)


@main.command()
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep printing what the instance writes.")
@click.option(
    "-n", "--lines", type=click.IntRange(min=0), default=50, show_default=True, help="Last N."
)
@project_options
def logs(app: AppContext, name: str, follow: bool, lines: int) -> None:
    """Print instance NAME's own output (its rotating log under .swarm/instances/)."""
    path = logtail.log_path(app.paths, name)
    text, offset = logtail.tail(path, lines)
    out = sys.stdout
    out.write("".join(text))
    out.flush()
    if not follow:
        return
    with contextlib.suppress(KeyboardInterrupt):
        for chunk in logtail.follow(path, offset=offset):
            out.write(chunk)
            out.flush()


def _fmt(value: object, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}s" if value >= 1000 else f"{value:.0f}ms"


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--epic", "epic_id", default=None, help="Only this epic's figures.")
@project_options
def metrics(app: AppContext, as_json: bool, epic_id: str | None) -> None:
    """Per epic: durations, success rate, retries, idle-to-detected; per instance:
    restarts, peak RSS, mean CPU, sessions served."""
    with existing_store(app) as store:
        events = store.read(types=METRIC_EVENT_TYPES)
        hosts = hosts_overview(store, app.config.pool.hosts_stale_s)
    result = compute(events, live_stats_by_instance(app.paths), epic_id=epic_id)
    if hosts:
        result["hosts"] = hosts
    if epic_id is not None and not result["epics"]:
        raise StoreError(f"no workers recorded for epic {epic_id}")
    if as_json:
        echo_json(result)
        return
    console = _console()
    epics = Table(title="epics", title_justify="left", header_style="bold")
    for col in (
        "epic",
        "workers",
        "attempts",
        "success",
        "failed",
        "retries",
        "p50",
        "p95",
        "idle→done p50",
        "idle→done p95",
    ):
        epics.add_column(col, justify="left" if col == "epic" else "right")
    for e in result["epics"]:
        rate = e["success_rate"]
        success = f"{e['succeeded']}/{e['finished']}" + (
            f" ({rate:.0%})" if rate is not None else ""
        )
        epics.add_row(
            e["epic_id"],
            str(e["workers"]),
            str(e["attempts"]),
            success,
            str(e["failed"]),
            f"{e['retries_task']} task, {e['retries_infra']} infra",
            _ms(e["duration_p50_ms"]),
            _ms(e["duration_p95_ms"]),
            _ms(e["idle_to_detected_p50_ms"]),
            _ms(e["idle_to_detected_p95_ms"]),
        )
    instances = Table(title="instances", title_justify="left", header_style="bold")
    for col in ("instance", "restarts", "sessions", "peak RSS MB", "mean CPU %", "source"):
        instances.add_column(col, justify="left" if col in ("instance", "source") else "right")
    for i in result["instances"]:
        sources = {s for s in (i["peak_rss_source"], i["cpu_source"]) if s}
        source = "/".join(sorted(sources))
        instances.add_row(
            i["instance"],
            str(i["restarts"]),
            str(i["sessions_served"]),
            _fmt(i["peak_rss_mb"], "{:.0f}"),
            _fmt(i["mean_cpu_percent"], "{:.1f}"),
            source or "-",
        )
    console.print(epics if result["epics"] else "no workers recorded yet")
    console.print(instances if result["instances"] else "no instances recorded yet")
    if result.get("hosts"):
        print_hosts(console, result["hosts"])
    if not sys.stdout.isatty():
        return
    console.print(
        "[dim]peak RSS: max of recorded samples and the current run's high-water mark "
        "(summed over the process tree); mean CPU: samples, else current run's CPU time "
        "/ wall time[/dim]"
    )
