"""Worker commands: ``spawn``, ``poll``, ``await``, ``review``, ``merge``,
``answer``, ``workers``, ``transcript`` and ``run``, each with ``--json``.

Room: cli.

They parse, call the core in ``swarm_pool.swarm`` and print a table or JSON. Exit codes:
0 on success; 1 on an error (one line on stderr, via the root group); 2 for ``await``
that timed out, a ``review`` that did not approve, or a ``run`` that did not merge every
task; 3 for ``await`` when work is pending or running and nothing can dispatch it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from swarm_pool.cli.common import AppContext, echo_json, existing_store, project_options
from swarm_pool.cli.group import error_line, main
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.plans.runner import RunOptions, run_plan_file
from swarm_pool.swarm.status import PollResult, await_workers
from swarm_pool.swarm.status import poll as do_poll
from swarm_pool.swarm.worker import SpawnRequest, SpawnStatus, spawn_async
from swarm_pool.swarm.worker import answer as do_answer
from swarm_pool.swarm.worker import transcript as transcripts
from swarm_pool.swarm.worker.review import merge as do_merge
from swarm_pool.swarm.worker.review import review as do_review
from swarm_pool.view.plan_table import PlanTable


@contextmanager
def swarm_context(app: AppContext) -> Iterator[SwarmContext]:
    """The core's context over the project's store, which must exist already: even
    ``spawn`` needs the bead's cell, so no worker command creates a store."""
    with existing_store(app) as store:
        yield SwarmContext(paths=app.paths, config=app.config, store=store)


def _fmt_duration(ms: int | None) -> str:
    if ms is None:
        return "-"
    s = ms / 1000
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}m"


def _console() -> Console:
    # Piped output is read by people and greps alike: do not cut bead ids at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


def print_poll(result: PollResult) -> None:
    console = _console()
    table = Table(title=f"workers of {result.epic_id or 'all epics'}")
    table.add_column("bead", no_wrap=True)
    for col in ("group", "attempt", "retries", "progress", "instance", "duration", "last message"):
        table.add_column(col)
    for w in result.workers():
        message = w.blocked_reason or w.error or w.last_message or w.summary
        table.add_row(
            w.bead_id,
            w.group + (" (merged)" if w.merged else ""),
            str(w.attempt),
            f"{w.retries_task} task, {w.retries_infra} infra",
            f"{w.progress_percent}%",
            w.instance or "-",
            _fmt_duration(w.duration_ms),
            (message or "")[:60],
        )
    console.print(table)
    counts = ", ".join(f"{g} {n}" for g, n in result.counts.items() if n)
    console.print(counts or "no workers")


@main.command()
@click.argument("bead_id")
@click.option("--epic", "epic_id", default=None, help="Epic of the bead (checked).")
@click.option("--title", default=None, help="Default: the bead's title.")
@click.option("--description", default=None, help="Default: the bead's description.")
@click.option("--file", "files", multiple=True, help="Owned pattern (repeat). Default: the bead's.")
@click.option("--read-only", "read_only", multiple=True, help="Read-only pattern (repeat).")
@click.option("--depends-on", "deps", multiple=True, help="Extra dependency bead (repeat).")
@click.option("--context", "shared_context", default="", help="Shared context for the prompt.")
@click.option("--routing", type=click.Choice(["least_busy", "dedicated"]), default=None)
@click.option("--timeout", "timeout_s", type=float, help="Seconds; default workers.timeout_s.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@project_options
def spawn(
    app: AppContext,
    bead_id: str,
    epic_id: str | None,
    title: str | None,
    description: str | None,
    files: tuple[str, ...],
    read_only: tuple[str, ...],
    deps: tuple[str, ...],
    shared_context: str,
    routing: str | None,
    timeout_s: float | None,
    as_json: bool,
) -> None:
    """Start a worker for BEAD_ID without waiting for it."""
    request = SpawnRequest(
        bead_id,
        epic_id=epic_id,
        title=title,
        description=description,
        files=list(files) if files else None,
        dependencies=list(deps),
        shared_context=shared_context,
        routing=routing,
        read_only=list(read_only),
        timeout_s=timeout_s,
    )
    with swarm_context(app) as ctx:
        result = spawn_async(ctx, request)
    if as_json:
        echo_json(result.to_dict())
    elif result.status == SpawnStatus.RUNNING:
        click.echo(
            f"{bead_id}: running on {result.instance} (session {result.session_id}, "
            f"attempt {result.attempt}) in {result.worktree} [{result.elapsed_ms:.0f} ms]"
        )
    else:
        click.echo(f"{bead_id}: queued (pool full), attempt {result.attempt}")


@main.command()
@click.argument("epic_id", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@project_options
def poll(app: AppContext, epic_id: str | None, as_json: bool) -> None:
    """Show the workers of EPIC_ID (default: all) grouped by state."""
    with swarm_context(app) as ctx:
        result = do_poll(ctx, epic_id)
    if as_json:
        echo_json(result.to_dict())
    else:
        print_poll(result)


@main.command(name="await")
@click.argument("epic_id", required=False)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@project_options
def await_cmd(app: AppContext, epic_id: str | None, timeout: float, as_json: bool) -> None:
    """Wait until no worker of EPIC_ID is in progress or pending (exit 2 on timeout, 3
    when work is pending or running and no worker engine runs to move it)."""
    with swarm_context(app) as ctx:
        result = await_workers(ctx, epic_id, timeout, stall_check=True)
    if as_json:
        echo_json(result.to_dict())
    else:
        print_poll(result)
    if result.stalled:
        error_line(result.stalled)
        sys.exit(3)
    if result.timed_out:
        sys.exit(2)


@main.command()
@click.argument("bead_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@project_options
def review(app: AppContext, bead_id: str, as_json: bool) -> None:
    """Review a finished worker against its contract (exit 2 if not approved)."""
    with swarm_context(app) as ctx:
        result = do_review(ctx, bead_id)
    if as_json:
        echo_json(result.to_dict())
    else:
        verdict = "approved" if result.approved else "NOT approved"
        click.echo(f"{bead_id}: {verdict} (worker {result.status})")
        click.echo(f"files touched: {', '.join(result.files_touched) or '-'}")
        if result.outside_owned:
            click.echo(f"outside the owned patterns: {', '.join(result.outside_owned)}")
        if result.reservations_held:
            click.echo(f"reservations still held: {', '.join(result.reservations_held)}")
        for problem in result.problems:
            click.echo(f"problem: {problem}")
        if result.diffstat:
            click.echo(result.diffstat)
    if not result.approved:
        sys.exit(2)


@main.command()
@click.argument("bead_id")
@click.option("--attempt", type=click.IntRange(1), default=None, help="Default: the latest.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (entries: text, tool calls).")
@project_options
def transcript(app: AppContext, bead_id: str, attempt: int | None, as_json: bool) -> None:
    """Print what a worker did: its text, its tool calls and their results (saved when
    its session is deleted, after the merge)."""
    with swarm_context(app) as ctx:
        ctx.store.hive.get_cell(bead_id)  # NotFoundError: an unknown bead says so
        summary = transcripts.summarize(transcripts.load(app.paths, bead_id, attempt))
    if as_json:
        echo_json(summary)
    else:
        click.echo(transcripts.render(summary), nl=False)


@main.command()
@click.argument("bead_id")
@click.option("--base", default=None, help="Base branch (default: the worktree's base).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@project_options
def merge(app: AppContext, bead_id: str, base: str | None, as_json: bool) -> None:
    """Merge a finished worker's branch into its base branch."""
    with swarm_context(app) as ctx:
        result = do_merge(ctx, bead_id, base=base)
    if as_json:
        echo_json(result.to_dict())
    elif result.up_to_date:
        click.echo(f"{bead_id}: nothing to merge into {result.base}")
    else:
        click.echo(
            f"{bead_id}: merged {result.branch} into {result.base} at {result.commit[:12]} "
            f"({len(result.files)} files)"
        )


@main.command()
@click.argument("bead_id")
@click.option(
    "--reply", type=click.Choice(["once", "always", "reject"]), default=None, help="Permission."
)
@click.option("--answer", "text", default=None, help="Answer to the worker's question.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@project_options
def answer(
    app: AppContext, bead_id: str, reply: str | None, text: str | None, as_json: bool
) -> None:
    """Answer a blocked worker's permission request or question."""
    if (reply is None) == (text is None):
        raise click.UsageError("give exactly one of --reply or --answer")
    with swarm_context(app) as ctx:
        result = do_answer(ctx, bead_id, reply=reply, text=text)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(f"{bead_id}: answered {result.kind} {result.request_id}")


@main.command()
@click.option("--epic", "epic_id", default=None, help="Only this epic.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@project_options
def workers(app: AppContext, epic_id: str | None, as_json: bool) -> None:
    """List every worker (one row per bead, latest attempt)."""
    with swarm_context(app) as ctx:
        result = do_poll(ctx, epic_id)
    if as_json:
        echo_json([w.to_dict() for w in result.workers()])
    else:
        print_poll(result)


@main.command()
@click.argument("plan_path", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--timeout", type=float, default=1800.0, show_default=True, help="Seconds.")
@click.option("--size", type=int, default=None, help="Instances, if the pool must be started.")
@click.option("--keep-pool", is_flag=True, help="Leave a pool started by this run running.")
@click.option(
    "--restart-pool",
    is_flag=True,
    help="If the pool's supervisor dies, start one (default: wait for `swarm-pool start`).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end.")
@project_options
def run(
    app: AppContext,
    plan_path: Path,
    timeout: float,
    size: int | None,
    keep_pool: bool,
    restart_pool: bool,
    as_json: bool,
) -> None:
    """Run PLAN_PATH: create its epic, spawn, watch, review and merge every task."""
    live = not as_json and sys.stdout.isatty()
    options = RunOptions(
        timeout=timeout,
        size=size,
        keep_pool=keep_pool,
        config_path=app.config_path,
        restart_pool=restart_pool,
        notify=lambda line: click.echo(f"swarm-pool run: {line}", err=True),
        display=PlanTable() if live else None,
    )
    summary = run_plan_file(app.paths, app.config, plan_path, options)
    if as_json:
        echo_json(summary.to_dict())
    else:
        _print_summary(summary.to_dict())
    if not summary.ok:
        sys.exit(2)


def _print_summary(data: dict[str, Any]) -> None:
    click.echo(
        f"epic {data['epic_id']}: {data['merged']}/{data['total']} tasks merged "
        f"(sandbox: {data.get('sandbox', 'off')})"
    )
    for task in data["tasks"]:
        click.echo(
            f"  {task['bead_id']} {task['title'][:40]:40} {task['state']:10} "
            f"attempt {task['attempt']} {task.get('note', '')}"
        )
