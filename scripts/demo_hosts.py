"""Two hosts on one machine, offline: what ``scripts/demo-hosts`` runs.

A throw-away PostgreSQL server (``tests/pg_server.py``), a bare git remote with two
clones of it, and one pool in each clone (``start --store postgresql://... --host a``
and ``--host b``, one instance each, the scripted model). Host a runs an 8-task plan as
the coordinator; both hosts' engines claim the queued tasks, each host pushes the
branches it ran to the remote, and a merges every one of them into the remote's main.
Prints which host ran what, the hosts as ``status`` shows them, and the remote's log.
``HOSTS=a`` runs the same plan on host a alone, for comparison.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swarm_pool.store.core import open_url  # noqa: E402
from tests.hosts_fixture import make_clones, plan_toml, remote_files  # noqa: E402
from tests.pg_server import ScratchPostgres, find_bin_dir  # noqa: E402

POOL_TOML = """
[pool]
size = 1
start_timeout_s = 120.0
max_sessions_per_instance = 2
hosts_beat_s = 1.0
hosts_stale_s = 15.0

[supervisor]
health_timeout_s = 10.0
health_failures = 6
"""
SP = [sys.executable, "-m", "swarm_pool"]


def sp(*args: str, project: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*SP, *args, "--project", str(project)], capture_output=True, text=True)
    if check and out.returncode != 0:
        sys.exit(f"swarm-pool {' '.join(args[:2])} failed:\n{out.stdout}\n{out.stderr}")
    return out


def main() -> int:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        sys.exit("no PostgreSQL server binaries (initdb, pg_ctl): run scripts/setup")
    work = Path(tempfile.mkdtemp(prefix="swarm-hosts-"))
    server = ScratchPostgres(bin_dir).start()
    url = server.url()
    started: list[Path] = []
    try:
        names = os.environ.get("HOSTS", "a,b").split(",")
        remote, clones = make_clones(work, names, POOL_TOML)
        print(f"== remote {remote}; clones {', '.join(str(c) for c in clones.values())}")
        print(f"== one PostgreSQL at 127.0.0.1:{server.port} (its password goes to a passfile)")
        for host, clone in clones.items():
            print(f"== swarm-pool start --store postgresql://... --host {host}")
            sp("start", "--store", url, "--host", host, project=clone)
            started.append(clone)
        plan = work / "plan.toml"
        plan.write_text(plan_toml(8, title="demo: several hosts"))
        print("== swarm-pool run plan.toml (8 tasks) on host a, the coordinator")
        t0 = time.monotonic()
        out = sp("run", str(plan), "--json", "--store", url, project=clones["a"], check=False)
        wall = time.monotonic() - t0
        summary = json.loads(out.stdout) if out.stdout.strip().startswith("{") else {}
        if out.returncode != 0:
            print(out.stdout, out.stderr, sep="\n")
        with open_url(url, project_root=clones["a"]) as store:
            epic = summary.get("epic_id")
            ran = Counter(
                s.event.host  # type: ignore[union-attr]
                for s in store.read(types=["branch_pushed"], epic_id=epic)
            )
            claims = len(store.read(types=["worker_claimed"], epic_id=epic))
        print(f"== merged {summary.get('merged')}/{summary.get('total')} in {wall:.1f}s; ")
        print(f"   branches pushed per host: {dict(ran)}; claims: {claims}")
        status = sp("status", "--store", url, project=clones[names[-1]], check=False)
        print(status.stdout)
        print("== the remote's main")
        log = subprocess.run(
            ["git", "--git-dir", str(remote), "log", "--oneline", "-n", "20", "main"],
            capture_output=True,
            text=True,
        )
        print(log.stdout)
        print("files:", " ".join(remote_files(remote)))
        return 0 if out.returncode == 0 else 1
    finally:
        for clone in started:
            sp("stop", "--store", url, project=clone, check=False)
        server.stop()
        if os.environ.get("KEEP") != "1":
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
