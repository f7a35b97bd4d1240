"""One CLI shape: the common options after the command name or before it (the command's
own value wins), on every command including ``mcp`` (``--cwd`` an alias), and ``stop``
with nothing running says so and succeeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from swarm_pool.cli import main
from swarm_pool.cli.common import COMMON_PARAMS
from tests.test_mcp_server import call, make_project, mcp_session, run_async


def _commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            found.update(_commands(cmd, f"{prefix}{name} "))
        else:
            found[f"{prefix}{name}"] = cmd
    return found


def test_every_command_takes_the_common_options() -> None:
    commands = _commands(main)
    assert {"start", "status", "stop", "run", "poll", "mcp", "db check", "model serve"} <= set(
        commands
    )
    for name, cmd in commands.items():
        params = {p.name for p in cmd.params}
        assert params >= COMMON_PARAMS, name
    assert {p.name for p in main.params} >= COMMON_PARAMS


def test_options_before_the_command_and_the_command_s_own_wins(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    runner = CliRunner()
    before = runner.invoke(main, ["--project", str(here), "status", "--json"])
    assert json.loads(before.stdout)["project"] == str(here.resolve())
    both = runner.invoke(
        main, ["--project", str(here), "status", "--json", "--project", str(there)]
    )
    assert json.loads(both.stdout)["project"] == str(there.resolve())
    conf = tmp_path / "bad.toml"
    conf.write_text("[pool]\nsiz = 1\n")
    out = runner.invoke(main, ["--config", str(conf), "poll", "--project", str(here)])
    assert out.exit_code == 1
    assert out.stderr.strip() == "swarm-pool: error: unknown config key 'pool.siz'"


def test_stop_with_nothing_running(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "swarm_pool", "--project", str(tmp_path), "stop"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "no pool running" and out.stderr == ""
    assert not (tmp_path / ".swarm").exists()


@pytest.mark.parametrize("option", ["--project", "--cwd"])
def test_mcp_serves_for_the_project_given(tmp_path: Path, option: str) -> None:
    project = make_project(tmp_path / "proj")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    async def main_() -> None:
        args = ("-m", "swarm_pool", "mcp", option, str(project.root))
        # Started elsewhere (no store there) and without $SWARM_POOL_PROJECT: only the
        # option can lead the server to the project's store.
        async with mcp_session(
            elsewhere, project.root, args=args, SWARM_POOL_PROJECT=""
        ) as session:
            error, data = await call(session, "hive_query", {"epic_id": project.epic_id})
            assert not error, data
            assert data["epic_id"] == project.epic_id

    run_async(main_)
