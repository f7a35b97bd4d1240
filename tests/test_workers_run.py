"""``swarm-pool run``: bad plans are refused before anything starts; with no pool running,
the shipped demo plan starts one, merges every task, and leaves no process behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pool_cli import cli, pool_processes
from tests.support import git, init_repo

ROOT = Path(__file__).resolve().parent.parent


def project(path: Path) -> Path:
    return init_repo(path).resolve()


BAD_PLANS = {
    "cycle": (
        '[epic]\ntitle = "e"\n'
        '[[tasks]]\nid = "a"\ntitle = "A"\nfiles = ["a"]\ndepends_on = ["b"]\n'
        '[[tasks]]\nid = "b"\ntitle = "B"\nfiles = ["b"]\ndepends_on = ["a"]\n',
        "cycle",
    ),
    "unknown dependency": (
        '[epic]\ntitle = "e"\n[[tasks]]\nid = "a"\ntitle = "A"\nfiles = ["a"]\n'
        'depends_on = ["zz"]\n',
        "unknown task",
    ),
    "parallel overlap": (
        '[epic]\ntitle = "e"\n'
        '[[tasks]]\nid = "a"\ntitle = "A"\nfiles = ["src/**"]\n'
        '[[tasks]]\nid = "b"\ntitle = "B"\nfiles = ["src/x.py"]\n',
        "in parallel",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_PLANS))
def test_bad_plan_is_refused_before_anything_starts(tmp_path: Path, kind: str) -> None:
    root = project(tmp_path / "proj")
    text, expected = BAD_PLANS[kind]
    plan = tmp_path / "plan.toml"
    plan.write_text(text)
    out = cli("run", str(plan), "--json", project=root)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], out.stderr
    assert not (root / ".swarm" / "pool.json").exists()
    assert not (root / ".swarm" / "swarm.db").exists()
    assert pool_processes(root) == []


@pytest.mark.e2e
def test_demo_plan_starts_a_pool_merges_everything_and_stops_it(tmp_path: Path) -> None:
    root = project(tmp_path / "proj")
    plan = ROOT / "conf" / "demo-plan.toml"
    out = cli("run", str(plan), "--json", "--size", "1", project=root, timeout=600)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr}"
    summary = json.loads(out.stdout)
    assert summary["ok"] and summary["pool_started"]
    assert summary["merged"] == summary["total"] == 4
    for path in (
        "wordcount/__init__.py",
        "wordcount/core.py",
        "wordcount/report.py",
        "wordcount/__main__.py",
        "wordcount/cli.py",
        "docs/wordcount.md",
    ):
        assert git(root, "cat-file", "-t", f"main:{path}") == "blob", path
    assert git(root, "status", "--porcelain") == ""
    # the pool this run started is gone again, and merged worktrees were cleaned up
    assert pool_processes(root) == []
    assert not list((root / ".swarm" / "worktrees").glob("bd-*"))


@pytest.mark.e2e
def test_run_that_fails_after_starting_a_pool_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the pool is up (forced here by a fault in the run itself) leaves
    nothing running: the pool this run started is stopped before the error surfaces."""
    from swarm_pool.config import load_config
    from swarm_pool.errors import WorkerError
    from swarm_pool.paths import ProjectPaths
    from swarm_pool.pool.state import read_state
    from swarm_pool.swarm.plans import runner

    root = project(tmp_path / "proj")
    plan = tmp_path / "plan.toml"
    plan.write_text('[epic]\ntitle = "e"\n[[tasks]]\nid = "a"\ntitle = "A"\nfiles = ["a"]\n')
    started: list[int] = []

    def fail_after_start(*args: object, **kw: object) -> None:
        started.extend(p.pid for p in pool_processes(root))
        raise WorkerError("injected: the run failed after its pool started")

    monkeypatch.setattr(runner, "_run", fail_after_start)
    monkeypatch.setenv("SWARM_POOL_OPENCODE__MODEL", '"x/y"')  # no prompts: no model child
    paths = ProjectPaths(root)
    config = load_config(project_root=root)
    with pytest.raises(WorkerError, match="injected"):
        runner.run_plan_file(paths, config, plan, runner.RunOptions(size=1))
    assert len(started) >= 2  # the supervisor and its instance were up
    assert pool_processes(root) == []
    state = read_state(paths.state_file)
    assert state is not None and state.phase == "stopped"
