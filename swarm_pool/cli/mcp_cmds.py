"""``swarm-pool mcp``: serve the agents' tools over MCP on stdio.

Room: cli.

It takes the common options like every command. ``--project`` (alias ``--cwd``, the
older name) means "serve as if started in this dir": the store is the first
``.swarm/swarm.db`` at or above it, as when OpenCode starts the server in a worktree. A
``--config`` is validated before serving, so a bad one fails at once with one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from swarm_pool.cli.common import common_options
from swarm_pool.cli.group import main
from swarm_pool.config import load_config


@main.command("mcp")
@click.option(
    "--cwd",
    "cwd",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Alias of --project.",
)
@common_options
def mcp_cmd(cwd: Path | None, common: dict[str, Any]) -> None:
    """Run the MCP server (stdio) that gives agents the swarm tools."""
    # Imported here, not at the top: the MCP SDK takes about as long to import as the
    # whole rest of the CLI, and every other command would pay for it.
    from swarm_pool.mcp.server import run

    project: Path | None = common.get("project")
    if cwd is not None and project is not None and cwd.resolve() != project.resolve():
        raise click.UsageError("--cwd is an alias of --project: give one of them")
    where = cwd or project
    if where is not None and not where.is_dir():
        raise click.BadParameter(f"directory {str(where)!r} does not exist", param_hint="--project")
    config_path: Path | None = common.get("config_path")
    if config_path is not None:
        load_config(config_path, project_root=where)
    run(where, config_path=config_path)
