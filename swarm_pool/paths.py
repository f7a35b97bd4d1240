"""Where things live on disk: the project's ``.swarm/`` folder and the per-user folder.

Room: base.

The project folder holds the store, the pool state file, each instance's data and logs,
and the worktrees. The per-user folder holds what every pool on the machine shares
(port leases). ``.swarm/`` is private (0700), and so is every state file in it (0600):
``ensure`` creates it that way and fixes the modes of a project made before.
"""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from swarm_pool.errors import ProjectError

SWARM_DIR = ".swarm"
DIR_MODE = 0o700
FILE_MODE = 0o600
# State files directly under .swarm/ whose modes `ensure` fixes (the store's files
# with their lock and SQLite's -wal/-shm, the state file, the supervisor's files).
_PRIVATE_FILES = (
    "swarm.db",
    "swarm.db.lock",
    "swarm.db-wal",
    "swarm.db-shm",
    "pool.json",
    "supervisor.log",
    "supervisor.lock",
    "supervisor.sock",
    "git.lock",
)


def make_private(path: Path, mode: int = FILE_MODE) -> None:
    """chmod ``path`` to ``mode`` if it exists and has any other bits."""
    try:
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except FileNotFoundError:
        pass


def write_private(path: Path, data: str | bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` atomically with ``data``, the file ``mode`` (0600 by default) from
    its first byte, so no reader ever sees it half written or with looser bits."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask, or an old tmp file, may have left other bits
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def user_state_dir() -> Path:
    """Per-user folder shared by every pool of this user (``$SWARM_POOL_HOME`` wins)."""
    if os.environ.get("SWARM_POOL_HOME"):
        return Path(os.environ["SWARM_POOL_HOME"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "swarm-pool"


def find_project_root(start: Path | None = None) -> Path:
    """The git root of ``start`` (default: cwd), else ``start`` itself."""
    here = (start or Path.cwd()).resolve()
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return here
    if out.returncode == 0 and out.stdout.strip():
        return Path(out.stdout.strip()).resolve()
    return here


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @property
    def swarm_dir(self) -> Path:
        return self.root / SWARM_DIR

    @property
    def db(self) -> Path:
        return self.swarm_dir / "swarm.db"

    @property
    def state_file(self) -> Path:
        return self.swarm_dir / "pool.json"

    @property
    def supervisor_log(self) -> Path:
        return self.swarm_dir / "supervisor.log"

    @property
    def instances_dir(self) -> Path:
        return self.swarm_dir / "instances"

    @property
    def worktrees_dir(self) -> Path:
        return self.swarm_dir / "worktrees"

    @property
    def slots_dir(self) -> Path:
        return self.swarm_dir / "slots"

    @property
    def transcripts_dir(self) -> Path:
        return self.swarm_dir / "transcripts"

    def instance_dir(self, name: str) -> Path:
        return self.instances_dir / name

    def ensure(self) -> ProjectPaths:
        """Create ``.swarm/`` with its own ``.gitignore``; ProjectError if we cannot."""
        if not self.root.is_dir():
            raise ProjectError(f"project dir does not exist: {self.root}")
        try:
            self.swarm_dir.mkdir(exist_ok=True, mode=DIR_MODE)
            make_private(self.swarm_dir, DIR_MODE)
            for name in _PRIVATE_FILES:
                make_private(self.swarm_dir / name)
            gitignore = self.swarm_dir / ".gitignore"
            if not gitignore.exists():
                gitignore.write_text("*\n")
            # One probe name per process and thread: several processes (MCP servers,
            # the supervisor) run ensure() at the same moment.
            probe = self.swarm_dir / f".write-probe-{os.getpid()}-{threading.get_ident()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ProjectError(f"project dir is not writable: {self.root} ({e.strerror})") from e
        return self


def project_paths(root: Path | None) -> ProjectPaths:
    return ProjectPaths(find_project_root(root) if root is None else root.resolve())
