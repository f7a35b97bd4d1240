"""What the worker benchmarks share: a throw-away git project with its pool config, and
the scripted worker they spawn (init after a model delay, write its files, complete).

One place, so the ``workers``, ``variants`` and ``slots`` suites measure the same work
and differ only in the settings they compare.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from swarm_pool.paths import ProjectPaths


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def bench_project(root: Path, pool_toml: str) -> ProjectPaths:
    """A new repository at ``root`` (one commit on ``main``) with ``pool_toml`` as its
    ``.swarm/pool.toml``."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", "bench")
    git(root, "config", "user.email", "bench@example.invalid")
    (root / "README.md").write_text("bench\n")
    git(root, "add", "README.md")
    git(root, "commit", "-q", "-m", "init")
    paths = ProjectPaths(root).ensure()
    (paths.swarm_dir / "pool.toml").write_text(pool_toml)
    return paths


def worker_script(delay_s: float, content: str = "# {file}\n") -> list[dict[str, Any]]:
    args = {"bead_id": "{bead_id}", "summary": "done", "files_touched": "{literal_files}"}
    return [
        {"tool": "swarmmail_init", "args": {"bead_id": "{bead_id}"}, "delay_s": delay_s},
        {
            "tool": "write",
            "each_file": True,
            "args": {"filePath": "{path}", "content": content},
        },
        {"tool": "swarm_complete", "args": args},
    ]
