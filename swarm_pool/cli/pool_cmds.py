"""Pool commands: ``start``, ``status``, ``stop``, ``restart``, ``scale``, ``attach``.

Room: cli.

Thin wrappers over ``swarm_pool.pool.api``: parse, call, print a rich table or ``--json``.
``status`` exits 0 only when the supervisor runs and every child is ready.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from swarm_pool.cli.common import AppContext, emit, project_options
from swarm_pool.cli.group import main
from swarm_pool.config import checked_host
from swarm_pool.errors import SwarmPoolError
from swarm_pool.opencode.binary import find_opencode
from swarm_pool.pool import api
from swarm_pool.pool.state import TROUBLED
from swarm_pool.store import open_project_store
from swarm_pool.store.core import parse_store_url, project_store_exists
from swarm_pool.store.dialect import Backend
from swarm_pool.store.hosts import hosts_overview
from swarm_pool.store.slots import counts_by_instance, describe_counts
from swarm_pool.swarm.engine_state import engine_status
from swarm_pool.view.progress import pool_progress


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _print_table(status: dict[str, Any]) -> None:
    sup = status["supervisor"]
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    running = "running" if sup["running"] else "not running"
    console.print(f"supervisor: pid {_fmt(sup['pid'])} ({running}) - {status['project']}")
    console.print(f"sandbox: {sup.get('sandbox', 'off')}", markup=False)
    engine = status.get("engine")
    if engine is not None:
        state = "alive" if engine["alive"] else "NOT RUNNING"
        detail = f", queue {engine['queue']}, last tick {_fmt(engine['last_tick_s'])}s ago"
        error = f" ({engine['error']})" if engine.get("error") else ""
        console.print(f"engine: {state}{detail if engine['pid'] else ''}{error}", markup=False)
    table = Table(show_header=True, header_style="bold")
    columns = ["name", "kind", "state", "url", "pid", "restarts", "uptime_s", "last_sign_s"]
    columns += ["rss_mb", "cpu_percent", "busy_sessions"]
    for col in columns:
        table.add_column(col)
    for inst in status["instances"]:
        state = inst["state"] + (" (draining)" if inst.get("draining") else "")
        row = [_fmt(inst[c]) for c in columns]
        row[columns.index("state")] = state
        table.add_row(*row)
    console.print(table)
    for inst in status["instances"]:
        if inst["state"] in TROUBLED and inst.get("reason"):
            console.print(f"{inst['name']}: {inst['reason']}", markup=False)
    if status.get("hosts"):
        print_hosts(console, status["hosts"])
    for name, counts in sorted((status.get("slot_counts") or {}).items()):
        console.print(f"slots of {name}: {describe_counts(counts)}", markup=False)
    for s in status.get("slots") or []:
        if s["state"] == "dirty":
            console.print(f"dirty slot {s['slot']}: {s['path']} ({s['reason']})", markup=False)


def _with_slots(app: AppContext, result: dict[str, Any]) -> dict[str, Any]:
    """The warm worktree slots (free, busy, dirty) from the store, when there is one."""
    if project_store_exists(app.paths, app.config):
        with open_project_store(app.paths, app.config) as store:
            views = store.slots.list()
        result["slots"] = [s.to_dict() for s in views]
        result["slot_counts"] = counts_by_instance(views)
    return result


def _public(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != "ok"}


def _with_engine(app: AppContext, result: dict[str, Any]) -> dict[str, Any]:
    """The pool's status plus its worker engine's (alive, queue, last tick), when a
    supervisor runs: queued work only moves while the engine does; and its slots."""
    with contextlib.suppress(SwarmPoolError):
        _with_slots(app, result)
    if result["supervisor"].get("running"):
        engine = engine_status(app.paths, app.config.workers.engine_stale_s)
        result["engine"] = engine.to_dict()
        result["ok"] = result["ok"] and engine.alive
    return result


def _with_hosts(app: AppContext, result: dict[str, Any]) -> dict[str, Any]:
    """Several hosts on a PostgreSQL store: each host's beat, capacity, load, instances."""
    if parse_store_url(app.config.store.url)[0] is not Backend.POSTGRESQL:
        return result
    # The running pool's own name (its `start --host`), else this config's.
    result["host"] = (result.get("engine") or {}).get("host") or app.config.pool.host
    try:
        with open_project_store(app.paths, app.config) as store:
            result["hosts"] = hosts_overview(store, app.config.pool.hosts_stale_s)
    except SwarmPoolError as e:  # the pool's own status still shows
        result["hosts_error"] = str(e)
    return result


def print_hosts(console: Console, hosts: list[dict[str, Any]]) -> None:
    table = Table(title="hosts", title_justify="left", header_style="bold")
    for col in ("host", "state", "last beat", "capacity", "in flight", "load", "instances"):
        table.add_column(col)
    for h in hosts:
        instances = ", ".join(
            f"{i['name']} {i['state']} ({i['busy']} busy)" for i in h["instances"]
        )
        table.add_row(
            h["name"],
            "STALE" if h["stale"] else "alive",
            f"{h['last_beat_s']}s ago",
            str(h["capacity"]),
            str(h["in_flight"]),
            f"{h['load']:.2f}",
            instances,
        )
    console.print(table)


def _show_status(app: AppContext, as_json: bool) -> None:
    result = _with_hosts(app, _with_engine(app, api.pool_status(app.paths)))
    emit(as_json, _public(result), lambda: _print_table(result))


@main.command()
@click.option("-n", "--size", type=click.IntRange(1, 64), default=None, help="Instances.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option(
    "--gateway",
    is_flag=True,
    help="Also run the OpenCode-compatible gateway (one URL for the pool; [gateway] port).",
)
@click.option(
    "--host",
    "host",
    default=None,
    help="This pool's name among several hosts sharing a PostgreSQL store "
    "(default: [pool] host, else the machine's hostname).",
)
@project_options
def start(
    app: AppContext, size: int | None, as_json: bool, gateway: bool, host: str | None
) -> None:
    """Start the supervisor and N opencode instances; return when all are ready."""
    if host is not None:
        app.config.pool.host = checked_host(host)
    total = size or app.config.pool.size
    with pool_progress(app.paths, "start", total=total, as_json=as_json):
        api.start_pool(
            app.paths, app.config, size=size, config_path=app.config_path, gateway=gateway
        )
    _show_status(app, as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@project_options
def status(app: AppContext, as_json: bool) -> None:
    """Show the pool; exit 0 only when it runs, every instance is ready and the worker
    engine is alive."""
    result = _with_hosts(app, _with_engine(app, api.pool_status(app.paths)))
    no_pool = not result["instances"] and result["supervisor"]["pid"] is None
    human = f"no pool in {app.paths.root}" if no_pool else lambda: _print_table(result)
    emit(as_json, _public(result), human)
    sys.exit(0 if result["ok"] else 1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@project_options
def stop(app: AppContext, as_json: bool) -> None:
    """Stop the supervisor and every instance (also when the supervisor is dead)."""
    with pool_progress(app.paths, "stop", as_json=as_json):
        result = api.stop_pool(app.paths, app.config)
    ports = ", ".join(map(str, result["ports"]))
    stopped = result["was_running"] or result["killed"]
    emit(
        as_json, result, f"pool stopped; ports released: {ports}" if stopped else "no pool running"
    )


@main.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@project_options
def restart(app: AppContext, name: str | None, as_json: bool) -> None:
    """Restart instance NAME (also a fatal one), or every instance in turn."""
    api.restart_pool(app.paths, app.config, name)
    _show_status(app, as_json)


@main.command()
@click.argument("size", type=click.IntRange(1, 64))
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@project_options
def scale(app: AppContext, size: int, as_json: bool) -> None:
    """Grow or shrink the pool to SIZE instances."""
    api.scale_pool(app.paths, app.config, size)
    _show_status(app, as_json)


@main.command()
@click.argument("name")
@click.option("--print", "print_only", is_flag=True, help="Print url/username/password JSON.")
@click.option("--session", "session_id", default=None, help="Open this session in the TUI.")
@click.option("--dir", "directory", default=None, help="Directory the TUI works in.")
@project_options
def attach(
    app: AppContext,
    name: str,
    print_only: bool,
    session_id: str | None,
    directory: str | None,
) -> None:
    """Open OpenCode's TUI on instance NAME, or on the pool's gateway with NAME
    ``gateway`` (``--print``: the connection details)."""
    info = api.attach_info(app.paths, name)
    if print_only:
        click.echo(json.dumps(info))
        return
    binary = str(find_opencode(app.config))
    env = dict(os.environ)
    # The password goes through the environment, never argv (visible to `ps`).
    env["OPENCODE_SERVER_PASSWORD"] = info["password"]
    env["OPENCODE_SERVER_USERNAME"] = info["username"]
    argv = [binary, "attach", info["url"]]
    if session_id:
        argv += ["--session", session_id]
    if directory:
        argv += ["--dir", directory]
    os.execve(binary, argv, env)
