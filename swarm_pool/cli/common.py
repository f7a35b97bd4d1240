"""Options every command shares (``--project``, ``--config``, ``--store``) and output
helpers."""

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
from swarm_pool.store.core import parse_store_url

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
    @click.option(
        "--store",
        "store_url",
        default=None,
        metavar="URL",
        help="Event store: postgresql://USER@HOST/DB or sqlite:///PATH "
        "(default: [store] url, else .swarm/swarm.db).",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        project: Path | None,
        config_path: Path | None,
        store_url: str | None,
        **kw: Any,
    ) -> Any:
        root = find_project_root(project) if project is None else project.resolve()
        config = load_config(config_path, project_root=root)
        if store_url is not None:
            parse_store_url(store_url)  # a bad URL fails here, in one line
            config.store.url = store_url
        app = AppContext(paths=ProjectPaths(root), config=config, config_path=config_path)
        return func(*args, app=app, **kw)

    return wrapper  # type: ignore[return-value]


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))
