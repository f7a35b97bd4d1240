"""The CLI room's root group, ``main``: the one place errors become exit statuses.

Room: cli.

Each command module (``pool_cmds``, ``store_cmds``, ...) adds its commands to ``main``;
``cli/__init__.py`` imports every one of them by name. Core
errors (``SwarmPoolError``) become one line on stderr and exit status 1 here, and only
here; usage errors (bad option, missing argument) become one line and exit status 2. The
common options (``cli/common.py``) are accepted before the command name too.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import click

from swarm_pool import __version__
from swarm_pool.cli.common import add_common_options
from swarm_pool.errors import SwarmPoolError

PROG = "swarm-pool"


def error_line(message: str) -> None:
    """The one line every failure prints on stderr."""
    text = " ".join(str(message).split())
    click.echo(f"{PROG}: error: {text}", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SwarmPoolError as e:
            error_line(str(e))
            sys.exit(1)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as e:
            hint = ""
            if e.ctx is not None:
                hint = f" (see `{e.ctx.command_path} --help`)"
            error_line(e.format_message() + hint)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            error_line(e.format_message())
            sys.exit(e.exit_code)
        except click.Abort:
            error_line("aborted")
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name=PROG)
@add_common_options
@click.pass_context
def main(ctx: click.Context, /, **common: Any) -> None:
    """Run a supervised pool of OpenCode servers for parallel agent swarms."""
    ctx.obj = common
