"""The one lock that serializes the git operations that write a repository's shared files.

Room: git. Parallel ``git worktree add`` / ``commit`` / ``merge`` / ``config`` calls on one
repository collide on ``.git`` lock files (``index.lock``, ``config.lock``, ref locks) and
fail at random. This module owns the cure: a cross-process file lock at
``.swarm/git.lock`` plus a per-process re-entrant thread lock, shared by every ``GitLock``
on the same path, so threads never busy-poll the file lock against each other and nested
use in one thread does not deadlock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from swarm_pool.errors import GitError

LOCK_NAME = "git.lock"

_registry_guard = threading.Lock()
# One (thread lock, file lock) pair per lock file in this process: two Runner objects
# on the same repo must exclude each other too, not just two threads of one object.
_registry: dict[Path, tuple[threading.RLock, filelock.BaseFileLock]] = {}


def _locks_for(path: Path) -> tuple[threading.RLock, filelock.BaseFileLock]:
    key = path.resolve()
    with _registry_guard:
        pair = _registry.get(key)
        if pair is None:
            # thread_local=False: the RLock already admits one thread at a time, and the
            # file lock's own counter then makes nested acquisition in that thread cheap.
            pair = (threading.RLock(), filelock.FileLock(str(key), thread_local=False))
            _registry[key] = pair
        return pair


class GitLock:
    """Serializes git operations on one repository across threads and processes."""

    def __init__(self, lock_path: Path, *, timeout: float = 120.0) -> None:
        self.path = lock_path
        self.timeout = timeout
        self._thread_lock, self._file_lock = _locks_for(lock_path)

    @contextmanager
    def hold(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the lock for the block; GitError if it cannot be had within ``timeout``."""
        wait = self.timeout if timeout is None else timeout
        if not self._thread_lock.acquire(timeout=wait if wait >= 0 else -1):
            raise GitError(f"timed out after {wait:g}s waiting for the git lock {self.path}")
        try:
            try:
                self._file_lock.acquire(timeout=wait)
            except filelock.Timeout as e:
                raise GitError(
                    f"timed out after {wait:g}s waiting for the git lock {self.path} "
                    "(held by another process)"
                ) from e
            try:
                yield
            finally:
                self._file_lock.release()
        finally:
            self._thread_lock.release()
