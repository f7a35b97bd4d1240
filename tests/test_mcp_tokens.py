"""Capability tokens (``swarm_pool/tokens.py``): what they grant, what is refused,
and where a worktree's token is kept (its git dir: private, never in the work tree)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swarm_pool import tokens
from swarm_pool.errors import CapabilityError
from swarm_pool.tokens import Principal, Role
from tests.support import git, init_repo

SECRET = "s3cret-of-this-pool"


def test_tokens_grant_their_role_and_directory(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    wt.mkdir()
    worker = tokens.mint(SECRET, Role.WORKER, wt)
    assert tokens.verify(SECRET, worker) == Principal(Role.WORKER, wt.resolve())
    assert tokens.verify(SECRET, tokens.mint(SECRET, Role.COORDINATOR)) == Principal(
        Role.COORDINATOR
    )
    with pytest.raises(ValueError, match="needs its directory"):
        tokens.mint(SECRET, Role.WORKER)


def test_forged_and_malformed_tokens_are_refused(tmp_path: Path) -> None:
    worker = tokens.mint(SECRET, Role.WORKER, tmp_path)
    prefix, role, where, mac = worker.split(".")
    other_dir = tokens.mint(SECRET, Role.WORKER, tmp_path / "other").split(".")[2]
    refused = {
        "another pool's secret": tokens.mint("other", Role.COORDINATOR),
        "a worker turned coordinator": ".".join((prefix, "coordinator", where, mac)),
        "a worker moved to another directory": ".".join((prefix, role, other_dir, mac)),
        "a coordinator made to name a directory": ".".join(
            (prefix, "coordinator", where, tokens.mint(SECRET, Role.COORDINATOR).split(".")[3])
        ),
    }
    for what, token in refused.items():
        with pytest.raises(CapabilityError, match="not signed by this pool"):
            tokens.verify(SECRET, token)
            pytest.fail(what)
    for bad in ("", "swp1", "swp1.admin.x.y", "v0.worker.x.y", "swp1.worker.%%%.y", "a.b.c.d.e"):
        with pytest.raises(CapabilityError, match="malformed"):
            tokens.verify(SECRET, bad)


def test_a_worktree_token_lives_in_its_git_dir(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "proj")
    wt = tmp_path / "proj" / ".swarm" / "worktrees" / "bd-1"
    git(root, "worktree", "add", "-q", "-b", "swarm/bd-1", str(wt))
    path = tokens.write_worker_token(SECRET, wt)
    assert path.parent == root / ".git" / "worktrees" / "bd-1"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert tokens.verify(SECRET, path.read_text()) == Principal(Role.WORKER, wt.resolve())
    # Nothing in the work tree: git sees no change, and the token is not committable.
    assert git(wt, "status", "--porcelain", "--ignored") == ""
    # Written once: a second grant (a retry, a reused slot) leaves the file as it is.
    before = path.stat().st_mtime_ns
    assert tokens.write_worker_token(SECRET, wt) == path
    assert path.stat().st_mtime_ns == before
    # A main checkout keeps it in its own .git.
    assert tokens.write_worker_token(SECRET, root).parent == root / ".git"
    with pytest.raises(CapabilityError, match="not a git worktree"):
        tokens.write_worker_token(SECRET, tmp_path)


def test_coordinator_token_file_is_private(tmp_path: Path) -> None:
    swarm = tmp_path / ".swarm"
    swarm.mkdir()
    path = tokens.write_coordinator_token(SECRET, swarm)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert tokens.verify(SECRET, path.read_text()).role is Role.COORDINATOR
