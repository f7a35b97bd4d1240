"""What ``swarm_complete`` checks before it accepts a worker's claim of being done.

Room: mcp.

Three things, none of which touch the store: the worktree's real changes against its base
(committed since the merge-base, uncommitted, and untracked files), how those compare
with the ``files_touched`` the agent claimed and with the patterns the bead owns, and the
project's configurable check command run in the worktree with a timeout. The result is
the ``verification`` dict recorded in ``worker_completed``, plus the list of contract
violations.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarm_pool.errors import GitError
from swarm_pool.git import Repo
from swarm_pool.store.globs import matches

OUTPUT_TAIL_CHARS = 4000


@dataclass(frozen=True)
class CheckCommand:
    """The project's check command (``[workers] check_command``; blank: none) and how
    long it may run."""

    command: str
    timeout_s: float


@dataclass
class Verification:
    worktree: str | None
    base: str | None = None
    changed: list[str] = field(default_factory=list)
    claimed: list[str] = field(default_factory=list)
    outside_owned: list[str] = field(default_factory=list)
    unreported: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    git_error: str | None = None
    check: dict[str, Any] | None = None

    @property
    def check_failed(self) -> bool:
        return self.check is not None and not self.check.get("passed", True)

    def violations(self) -> list[str]:
        """Contract violations, one readable line each (recorded in the event)."""
        out = [f"changed outside the owned patterns: {p}" for p in self.outside_owned]
        out += [f"changed but not in files_touched: {p}" for p in self.unreported]
        out += [f"in files_touched but not changed: {p}" for p in self.unchanged]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "worktree": self.worktree,
            "base": self.base,
            "changed_files": self.changed,
            "files_touched": self.claimed,
            "outside_owned": self.outside_owned,
            "unreported": self.unreported,
            "unchanged": self.unchanged,
            "git_error": self.git_error,
            "check": self.check,
        }


# --- git ------------------------------------------------------------------------------


def real_changes(
    project_root: Path, worktree: Path, bead_id: str, base_branch: str
) -> tuple[str, list[str]]:
    """``(base, files)``: what the worktree changed since its merge-base with its base."""
    repo = Repo(project_root)
    if repo.worktrees.locate(bead_id) == worktree.resolve():
        base = repo.branches.base_of(bead_id, base_branch or None)
        return base, repo.diffs.changed_files(bead_id, base)
    base = base_branch or repo.runner.default_base()
    return base, repo.diffs.changed_files(worktree, base)


def owned_by(path: str, patterns: Sequence[str]) -> bool:
    """Does some owned pattern cover ``path``? An owned directory covers its contents."""
    for pattern in patterns:
        if matches(pattern, path) or matches(pattern.rstrip("/") + "/**", path):
            return True
    return False


def compare(
    changed: Sequence[str], claimed: Sequence[str], owned: Sequence[str]
) -> tuple[list[str], list[str], list[str]]:
    """``(outside_owned, unreported, unchanged)`` for real vs claimed vs owned files."""
    real, said = set(changed), set(claimed)
    outside = sorted(p for p in real if not owned_by(p, owned))
    return outside, sorted(real - said), sorted(said - real)


# --- the check command ----------------------------------------------------------------


def run_check(command: str, cwd: Path, timeout_s: float) -> dict[str, Any]:
    """Run ``command`` through the shell in ``cwd``; never reads or writes our stdio."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(
                command,
                shell=True,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            return {
                "command": command,
                "passed": False,
                "exit_code": None,
                "timed_out": False,
                "duration_ms": 0,
                "output_tail": f"cannot run the check command: {e}",
            }
        timed_out = False
        try:
            code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            # The command runs in its own session: kill its whole process group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        size = out.seek(0, os.SEEK_END)
        out.seek(max(0, size - OUTPUT_TAIL_CHARS * 4))
        tail = out.read().decode("utf-8", "replace")[-OUTPUT_TAIL_CHARS:]
    if timed_out:
        tail += f"\n[check command timed out after {timeout_s:g} s]"
    return {
        "command": command,
        "passed": code == 0,
        "exit_code": code,
        "timed_out": timed_out,
        "duration_ms": int((time.monotonic() - started) * 1000),
        "output_tail": tail,
    }


def verify(
    *,
    worktree: Path | None,
    project_root: Path,
    bead_id: str,
    base_branch: str,
    claimed: Sequence[str],
    owned: Sequence[str],
    check: CheckCommand,
) -> Verification:
    """Everything ``swarm_complete`` records about the worktree (slow: git and the check)."""
    result = Verification(worktree=str(worktree) if worktree else None, claimed=sorted(claimed))
    if worktree is None or not worktree.is_dir():
        result.git_error = "no worktree to verify"
    else:
        try:
            result.base, result.changed = real_changes(project_root, worktree, bead_id, base_branch)
        except GitError as e:
            result.git_error = str(e)
        else:
            result.outside_owned, result.unreported, result.unchanged = compare(
                result.changed, claimed, owned
            )
    if check.command.strip():
        cwd = worktree if worktree is not None and worktree.is_dir() else project_root
        result.check = run_check(check.command, cwd, check.timeout_s)
    return result
