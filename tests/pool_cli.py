"""Helpers for the end-to-end pool tests: run the real CLI, make a project, scan processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from swarm_pool.paths import ProjectPaths
from tests.support import TEST_TAG_ENV

# Pools that never get a prompt skip the scripted model child (one process less to start).
NO_MODEL_ENV = {"SWARM_POOL_OPENCODE__MODEL": "x/y"}


def make_project(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path.resolve()


def cli(
    *args: str,
    project: Path,
    env: dict[str, str] | None = None,
    session_scoped: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``swarm-pool ARGS --project PROJECT``.

    ``session_scoped`` drops the per-test tag, for pools that outlive one test (module
    fixtures); the session-wide leak check still covers them.
    """
    full_env = {**os.environ, **(env or {})}
    if session_scoped:
        full_env.pop(TEST_TAG_ENV, None)
    return subprocess.run(
        [sys.executable, "-m", "swarm_pool", *args, "--project", str(project)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_json(*args: str, project: Path, **kw: Any) -> dict[str, Any]:
    out = cli(*args, "--json", project=project, **kw)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def pool_processes(project: Path) -> list[psutil.Process]:
    """Every live process that belongs to the pool of ``project`` (by environment or
    by being its supervisor)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            env = proc.environ()
            cmd = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        is_daemon = "swarm_pool.daemon" in cmd and str(project) in cmd
        if is_daemon or env.get("SWARM_POOL_PROJECT") == str(project):
            found.append(proc)
    return found


@contextmanager
def running_pool(root: Path, pool_toml: str) -> Iterator[ProjectPaths]:
    """A pool of ``root`` started with ``pool_toml`` as its ``.swarm/pool.toml`` (which
    git ignores), for a module's tests to share; stopped at the end."""
    paths = ProjectPaths(root).ensure()
    (paths.swarm_dir / "pool.toml").write_text(pool_toml)
    out = cli("start", "--json", project=root, session_scoped=True, timeout=240)
    log = paths.supervisor_log
    assert out.returncode == 0, f"{out.stderr}\n{log.read_text() if log.exists() else ''}"
    try:
        yield paths
    finally:
        cli("stop", project=root, session_scoped=True, timeout=120)
