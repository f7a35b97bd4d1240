"""Model commands: ``swarm-pool model serve`` runs the scripted model in the foreground.

Room: cli.

Defaults come from the ``[model]`` config section (port, scripts file, delay); options
override them. The server itself is ``swarm_pool.scripted_model.serve``.
"""

from __future__ import annotations

from pathlib import Path

import click

from swarm_pool.cli.common import AppContext, project_options
from swarm_pool.cli.group import main
from swarm_pool.scripted_model import serve


@main.group()
def model() -> None:
    """The built-in scripted model (offline, OpenAI-compatible)."""


@model.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Loopback address.")
@click.option("--port", type=int, default=None, help="Port (default: [model].port; 0: any).")
@click.option(
    "--scripts",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Scripts TOML (default: [model].scripts; none: the built-in default script).",
)
@click.option("--delay", type=float, default=None, help="Delay before each answer (s).")
@click.option("-v", "--verbose", is_flag=True, help="Log every HTTP request.")
@project_options
def serve_cmd(
    app: AppContext,
    host: str,
    port: int | None,
    scripts: Path | None,
    delay: float | None,
    verbose: bool,
) -> None:
    """Serve the scripted model until SIGTERM or Ctrl-C."""
    if scripts is None and app.config.model.scripts:
        scripts = Path(app.config.model.scripts)
        if not scripts.is_absolute():
            scripts = app.paths.root / scripts
    serve(
        host=host,
        port=app.config.model.port if port is None else port,
        scripts=scripts,
        default_delay_s=app.config.model.default_delay_s if delay is None else delay,
        verbose=verbose,
    )
