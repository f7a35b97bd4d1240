"""``swarm-pool mcp``: serve the agents' tools over MCP on stdio."""

from __future__ import annotations

from pathlib import Path

import click

from swarm_pool.cli import main


@main.command("mcp")
@click.option(
    "--cwd",
    "cwd",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Serve as if started in this dir (default: the current dir, as OpenCode does).",
)
def mcp_cmd(cwd: Path | None) -> None:
    """Run the MCP server (stdio) that gives agents the swarm tools."""
    from swarm_pool.mcp.server import run

    run(cwd)
