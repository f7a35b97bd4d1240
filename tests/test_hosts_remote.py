"""The shared git remote of several hosts (``swarm/remote.py``), with real git (a bare
remote and two clones) and a real PostgreSQL store, no pool: host b pushes a worker's
branch (its leftovers committed) and records it; host a fetches it into its own
worktree, fast-forwards its base to the remote's, merges and publishes; a conflict
leaves the remote's base untouched; a push refused because the remote moved puts the
local base back and says so; on one host (SQLite) nothing touches the remote."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from swarm_pool.config import Config
from swarm_pool.errors import MergeConflictError, RemoteMovedError, WorkerError
from swarm_pool.paths import ProjectPaths
from swarm_pool.store.core import open_url
from swarm_pool.store.events import WorkerQueued
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.worker.remote import (
    fetch_branch,
    publish_base,
    push_branch,
    remote_of,
    sync_base,
)
from tests.hosts_fixture import make_clones
from tests.pg_server import ScratchPostgres
from tests.support import git

E = "bd-remote"


def _ctx(clone: Path, url: str, host: str) -> SwarmContext:
    config = Config()
    config.store.url = url
    config.pool.host = host
    config.workers.push_wait_s = 1.0
    return SwarmContext(
        paths=ProjectPaths(clone), config=config, store=open_url(url, project_root=clone)
    )


@pytest.fixture
def hosts(
    tmp_path: Path, pg_server: ScratchPostgres
) -> Iterator[tuple[Path, SwarmContext, SwarmContext]]:
    schema = pg_server.new_schema()
    url = pg_server.url(schema=schema)
    remote, clones = make_clones(tmp_path, ["a", "b"], "")
    a, b = _ctx(clones["a"], url, "a"), _ctx(clones["b"], url, "b")
    try:
        yield remote, a, b
    finally:
        a.store.close()
        b.store.close()
        pg_server.drop_schema(schema)


def _remote_rev(remote: Path, ref: str = "main") -> str:
    return git(remote, "--git-dir", str(remote), "rev-parse", ref)


def _work_on_b(b: SwarmContext, bead: str, text: str) -> None:
    b.store.append(WorkerQueued(bead_id=bead, epic_id=E), expect={bead: 0})
    assert b.store.hosts.claim("b", 1) == [bead]
    tree = b.git.worktrees.create(bead)
    (tree.path / "shared.txt").write_text(text)  # left uncommitted: the push commits it


def test_a_branch_pushed_by_one_host_is_merged_and_published_by_another(
    hosts: tuple[Path, SwarmContext, SwarmContext],
) -> None:
    remote, a, b = hosts
    bead = f"{E}.1"
    _work_on_b(b, bead, "from b\n")
    worker = b.store.workers.get(bead)
    assert worker is not None
    with pytest.raises(WorkerError, match="not on the remote yet"):
        fetch_branch(a, worker)  # host b has not pushed it yet
    commit = push_branch(b, worker)
    assert commit is not None and _remote_rev(remote, f"swarm/{bead}") == commit
    fetch_branch(a, worker)
    assert (a.git.worktrees.path_for(bead) / "shared.txt").read_text() == "from b\n"
    before = sync_base(a, "main")
    assert before == _remote_rev(remote)
    result = a.git.merger.merge(bead, "main")
    publish_base(a, "main", before)
    assert _remote_rev(remote) == result.commit
    assert git(a.paths.root, "show", "main:shared.txt") == "from b"


def test_a_conflict_leaves_the_remote_base_and_a_moved_remote_is_refused(
    hosts: tuple[Path, SwarmContext, SwarmContext],
) -> None:
    remote, a, b = hosts
    bead = f"{E}.2"
    _work_on_b(b, bead, "from b\n")
    worker = b.store.workers.get(bead)
    assert worker is not None
    push_branch(b, worker)
    # Meanwhile someone else changed the same file on the remote's main.
    other = b.paths.root
    (other / "shared.txt").write_text("from elsewhere\n")
    git(other, "add", "shared.txt")
    git(other, "commit", "-q", "-m", "elsewhere")
    git(other, "push", "-q", "origin", "main")
    moved = _remote_rev(remote)
    fetch_branch(a, worker)
    before = sync_base(a, "main")
    assert before == moved == git(a.paths.root, "rev-parse", "main")  # fast-forwarded
    with pytest.raises(MergeConflictError):
        a.git.merger.merge(bead, "main")
    assert _remote_rev(remote) == moved  # nothing was pushed

    # A merge that succeeds locally, while the remote moves on: refused, rolled back.
    bead3 = f"{E}.3"
    tree = a.git.worktrees.create(bead3)
    (tree.path / "a-only.txt").write_text("a\n")
    a.git.worktrees.commit_all(bead3, "a only")
    before = sync_base(a, "main")
    a.git.merger.merge(bead3, "main")
    (other / "later.txt").write_text("later\n")
    git(other, "add", "later.txt")
    git(other, "commit", "-q", "-m", "later")
    git(other, "push", "-q", "origin", "main")
    with pytest.raises(RemoteMovedError):
        publish_base(a, "main", before)
    assert git(a.paths.root, "rev-parse", "main") == before
    assert _remote_rev(remote) != before


def test_one_host_never_touches_the_remote(tmp_path: Path) -> None:
    _remote, clones = make_clones(tmp_path, ["solo"], "")
    config = Config()
    ctx = SwarmContext(
        paths=ProjectPaths(clones["solo"]),
        config=config,
        store=open_url("", project_root=clones["solo"]),
    )
    try:
        assert remote_of(ctx) is None  # SQLite: one host, origin or not
        assert sync_base(ctx, "main") is None
    finally:
        ctx.store.close()
