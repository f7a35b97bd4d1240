"""Options every command shares (``--project``, ``--config``, ``--store``) and
output helpers (``echo_json``, and ``emit``: JSON with ``--json``, else the human form).

Room: cli.

``COMMON_OPTIONS`` is the one place that declares them: each is added to the root group
(so ``swarm-pool --project DIR status`` works, as with git, docker and kubectl) and to
every command (``swarm-pool status --project DIR``); the command's own value wins.
Adding a global option means one more ``CommonOption`` here, one more field on
``AppContext`` and, if it changes how things are resolved, a line in ``resolve_app``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from swarm_pool.config import Config, load_config
from swarm_pool.errors import ProjectError, StoreError
from swarm_pool.paths import ProjectPaths, find_project_root
from swarm_pool.store import Store, open_project_store
from swarm_pool.store.core import parse_store_url, project_store_exists

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CommonOption:
    """One option every command takes, also accepted before the command name."""

    param: str
    decls: tuple[str, ...]
    type: click.ParamType[Any]
    help: str


COMMON_OPTIONS: tuple[CommonOption, ...] = (
    CommonOption(
        "project",
        ("--project",),
        click.Path(file_okay=False, path_type=Path),
        "Project dir (default: git root of the current dir, else the current dir).",
    ),
    CommonOption(
        "config_path",
        ("--config",),
        click.Path(dir_okay=False, path_type=Path),
        "Config TOML (default: .swarm/pool.toml or swarm-pool.toml if present).",
    ),
    CommonOption(
        "store_url",
        ("--store",),
        click.STRING,
        "Event store URL: postgresql://USER@HOST/DB or sqlite:///PATH "
        "(default: [store] url, else .swarm/swarm.db).",
    ),
)
COMMON_PARAMS = frozenset(o.param for o in COMMON_OPTIONS)


def add_common_options(func: F) -> F:
    """Declare every common option on a command or group (values default to None)."""
    for opt in reversed(COMMON_OPTIONS):
        func = click.option(*opt.decls, opt.param, type=opt.type, default=None, help=opt.help)(func)
    return func


def common_values(given: Mapping[str, Any]) -> dict[str, Any]:
    """The common options' values: the command's own, else those given before its name."""
    ctx = click.get_current_context()
    before = ctx.find_root().obj
    before = before if isinstance(before, dict) else {}
    return {
        p: given[p] if given.get(p) is not None else before.get(p) for p in sorted(COMMON_PARAMS)
    }


@dataclass(frozen=True)
class AppContext:
    paths: ProjectPaths
    config: Config
    config_path: Path | None


def resolve_app(values: Mapping[str, Any]) -> AppContext:
    """Project root and validated config from the common options (no side effect)."""
    project: Path | None = values.get("project")
    config_path: Path | None = values.get("config_path")
    if project is not None and not project.is_dir():
        raise ProjectError(f"project dir does not exist: {project}")
    root = find_project_root(project) if project is None else project.resolve()
    config = load_config(config_path, project_root=root)
    store_url: str | None = values.get("store_url")
    if store_url is not None:
        parse_store_url(store_url)  # a bad URL fails here, in one line
        config.store.url = store_url
    return AppContext(paths=ProjectPaths(root), config=config, config_path=config_path)


def common_options(func: F) -> F:
    """Add the common options and pass their merged raw values as ``common: dict``."""

    @add_common_options
    @functools.wraps(func)
    def wrapper(*args: Any, **kw: Any) -> Any:
        given = {p: kw.pop(p) for p in COMMON_PARAMS}
        return func(*args, common=common_values(given), **kw)

    return wrapper  # type: ignore[return-value]


def project_options(func: F) -> F:
    """Add the common options and pass a resolved ``app: AppContext``."""

    @add_common_options
    @functools.wraps(func)
    def wrapper(*args: Any, **kw: Any) -> Any:
        given = {p: kw.pop(p) for p in COMMON_PARAMS}
        return func(*args, app=resolve_app(common_values(given)), **kw)

    return wrapper  # type: ignore[return-value]


@contextmanager
def existing_store(app: AppContext) -> Iterator[Store]:
    """The project's store, which must exist: read-only commands never create one."""
    if not project_store_exists(app.paths, app.config):
        raise StoreError(
            f"no store at {app.paths.db}: nothing has been recorded in {app.paths.root} yet"
        )
    store = open_project_store(app.paths, app.config)
    try:
        yield store
    finally:
        store.close()


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def emit(as_json: bool, data: Any, human: str | Callable[[], None]) -> None:
    """A command's answer: ``data`` as JSON with ``--json``, else its human form, one line
    of text or what ``human()`` prints (a table)."""
    if as_json:
        echo_json(data)
    elif callable(human):
        human()
    else:
        click.echo(human)
