"""Options every command shares (``--project``, ``--config``) and output helpers."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from swarm_pool.config import Config, load_config
from swarm_pool.paths import ProjectPaths, find_project_root

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class AppContext:
    paths: ProjectPaths
    config: Config
    config_path: Path | None


def project_options(func: F) -> F:
    """Add ``--project`` and ``--config`` and pass a resolved ``app: AppContext``."""

    @click.option(
        "--project",
        "project",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Project dir (default: git root of the current dir, else the current dir).",
    )
    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Config TOML (default: .swarm/pool.toml or swarm-pool.toml if present).",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, project: Path | None, config_path: Path | None, **kw: Any) -> Any:
        root = find_project_root(project) if project is None else project.resolve()
        config = load_config(config_path, project_root=root)
        app = AppContext(paths=ProjectPaths(root), config=config, config_path=config_path)
        return func(*args, app=app, **kw)

    return wrapper  # type: ignore[return-value]


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
