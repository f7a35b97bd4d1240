"""The dispatcher in-process (no stdio): error mapping, identity edge cases, path mapping.

The same registry and runtime the server uses, over a real store; only the transport is
skipped, so the corner cases stay fast.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

from swarm_pool.errors import HiveError, PathEscapeError
from swarm_pool.mcp.identity import to_project_path
from swarm_pool.mcp.registry import Registry, ToolOutcome, ToolSpec
from swarm_pool.mcp.runtime import Runtime
from swarm_pool.mcp.schemas import ToolArgs
from swarm_pool.mcp.worker_tools import WORKER_SPECS
from swarm_pool.store import open_store
from tests.test_mcp_server import Project, make_project


class _NoArgs(ToolArgs):
    pass


async def _boom(rt: Runtime, args: Any) -> dict[str, Any]:
    raise RuntimeError("disk on fire")


async def _refuse(rt: Runtime, args: Any) -> dict[str, Any]:
    raise HiveError("cycle between bd-a.1 and bd-a.2")


def _dispatch(
    registry: Registry, rt: Runtime, name: str, args: dict[str, Any] | None
) -> ToolOutcome:
    async def main() -> ToolOutcome:
        return await registry.dispatch(rt, name, args)

    return anyio.run(main)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return make_project(tmp_path / "proj")


def _runtime(project: Project, cwd: Path) -> Runtime:
    return Runtime(cwd, opener=lambda _cwd: open_store(project.paths.db))


def test_unexpected_exception_is_an_internal_error_and_logged(
    project: Project, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry([ToolSpec("boom", "d", _NoArgs, _boom)])
    rt = _runtime(project, project.root)
    try:
        with caplog.at_level(logging.ERROR, logger="swarm_pool.mcp"):
            out = _dispatch(registry, rt, "boom", {})
    finally:
        rt.close()
    assert out.is_error
    assert out.text == "internal error: RuntimeError: disk on fire"
    assert "disk on fire" in caplog.text and "Traceback" in caplog.text


def test_our_errors_keep_their_message_and_args_are_checked_first(project: Project) -> None:
    registry = Registry([ToolSpec("refuse", "d", _NoArgs, _refuse)])
    rt = _runtime(project, project.root)
    try:
        assert _dispatch(registry, rt, "refuse", None).text == "cycle between bd-a.1 and bd-a.2"
        bad = _dispatch(registry, rt, "refuse", {"x": 1})
        assert bad.is_error and bad.text.startswith("invalid arguments: unknown argument: x")
    finally:
        rt.close()


def test_a_worktree_without_a_bead_is_a_readable_error(project: Project) -> None:
    stray = project.paths.worktrees_dir / "bd-ffffff.7"
    stray.mkdir(parents=True)
    registry = Registry(WORKER_SPECS)
    rt = _runtime(project, stray)
    try:
        out = _dispatch(registry, rt, "swarmmail_reserve", {"paths": ["src/a.py"]})
        assert out.is_error
        assert "bead bd-ffffff.7 does not exist" in out.text
        assert "internal error" not in out.text
    finally:
        rt.close()


def test_store_missing_is_a_readable_error(tmp_path: Path) -> None:
    registry = Registry(WORKER_SPECS)
    rt = Runtime(tmp_path)  # no $SWARM_POOL_PROJECT (conftest clears it), no .swarm/ above
    try:
        out = _dispatch(registry, rt, "swarmmail_inbox", {})
        assert out.is_error and "no swarm store found" in out.text
    finally:
        rt.close()


def test_paths_from_the_worktree_map_to_project_paths(project: Project) -> None:
    wt = project.worktree(project.beads[0])
    with project.store() as store:
        assert to_project_path(f"{wt}/src/a.py", store, wt) == "src/a.py"
        assert to_project_path(f"{wt}/./src/../src/a.py", store, wt) == "src/a.py"
        assert to_project_path("./src/a.py", store, wt) == "src/a.py"
        assert to_project_path(f"{wt}/src", store, wt) == "src/**"
        assert to_project_path(f"{project.root}/README.md", store, wt) == "README.md"
        with pytest.raises(PathEscapeError, match=re.escape("pattern escapes the project: ../x")):
            to_project_path("../x", store, wt)
        with pytest.raises(PathEscapeError, match="pattern escapes the project"):
            to_project_path(f"{wt}/../../../../outside", store, wt)
