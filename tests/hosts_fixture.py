"""Several hosts on one machine, for tests and ``scripts/demo-hosts``: a bare git remote,
one clone of it per host (each with its own ``.swarm/pool.toml``), and a plan of N
independent tasks that each own one file, so the scripted model's default worker can do
them on whichever host claims them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support import git, init_repo


def make_clones(base: Path, hosts: list[str], pool_toml: str) -> tuple[Path, dict[str, Path]]:
    """``base/remote.git`` (its ``main`` seeded with a README) and ``base/<host>`` clones."""
    seed = init_repo((base / "seed").resolve(), {"README.md": "several hosts\n"})
    remote = (base / "remote.git").resolve()
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    git(seed, "push", "-q", str(remote), "main")
    clones: dict[str, Path] = {}
    for host in hosts:
        clone = (base / host).resolve()
        subprocess.run(["git", "clone", "-q", str(remote), str(clone)], check=True)
        git(clone, "config", "user.name", f"host {host}")
        git(clone, "config", "user.email", f"{host}@example.invalid")
        git(clone, "config", "commit.gpgsign", "false")
        swarm = clone / ".swarm"
        swarm.mkdir(mode=0o700)
        (swarm / "pool.toml").write_text(pool_toml)
        clones[host] = clone
    return remote, clones


def plan_toml(tasks: int, *, title: str = "several hosts", first_bash: str = "") -> str:
    """A plan of ``tasks`` independent tasks, task N owning ``hosts/tN.txt``;
    ``first_bash``: a bash command each worker runs before the default steps."""
    out = [f'[epic]\ntitle = "{title}"\ndescription = "one file per task"\n']
    for n in range(1, tasks + 1):
        task = (
            f'[[tasks]]\nid = "t{n}"\ntitle = "file {n}"\n'
            f'description = "Write hosts/t{n}.txt."\nfiles = ["hosts/t{n}.txt"]\n'
        )
        if first_bash:
            task += (
                f'script = [{{ tool = "bash", args = {{ command = {json.dumps(first_bash)}, '
                'timeout = 300000 } }, { include = "default" }]\n'
            )
        out.append(task)
    return "\n".join(out)


def remote_files(remote: Path, branch: str = "main") -> list[str]:
    """The files of ``branch`` in the bare remote."""
    out = subprocess.run(
        ["git", "--git-dir", str(remote), "ls-tree", "-r", "--name-only", branch],
        check=True,
        capture_output=True,
        text=True,
    )
    return sorted(out.stdout.split())
