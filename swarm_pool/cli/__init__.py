"""The click CLI: parse, call the core, print (table or ``--json``), map errors to exits.

Each command group lives in its own module and registers itself on ``main`` below. Core
errors (``SwarmPoolError``) become one line on stderr and exit status 1 here, and only
here.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from swarm_pool import __version__
from swarm_pool.errors import SwarmPoolError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwarmPoolError as e:
            click.echo(f"swarm-pool: error: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="swarm-pool")
def main() -> None:
    """Run a supervised pool of OpenCode servers for parallel agent swarms."""


def _register() -> None:
    # Imported for their side effect of adding commands to ``main``.
    import importlib

    for name in (
        "pool_cmds",
        "store_cmds",
        "model_cmds",
        "mcp_cmds",
        "worker_cmds",
        "view_cmds",
    ):
        try:
            importlib.import_module(f"swarm_pool.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"swarm_pool.cli.{name}":
                raise


_register()
