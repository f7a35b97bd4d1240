"""Running git on the project's repository: the one way the pool calls git.

Room: git. ``Runner`` owns the repository's top-level folder (checked at start: the
project must be that folder, not a folder inside it), the ``.swarm/`` folder it keeps its
lock in, the ``GitLock`` every shared write holds, and the command itself: git through
gitpython's command wrapper, with no terminal prompt and no optional locks, a timeout, and
its failures as ``GitError``. On top of that it answers the small questions every other
part asks: which commit a ref names, whether one commit is an ancestor of another, a
config value, the checked-out branch, the base branch by default, the git version, the
files a checkout has uncommitted, and whose identity a merge commit gets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import git

from swarm_pool.errors import DirtyWorktreeError, GitError, ProjectError
from swarm_pool.git.lock import LOCK_NAME, GitLock
from swarm_pool.paths import ProjectPaths

SWARM_NAME = "swarm-pool"
SWARM_EMAIL = "swarm-pool@localhost"
SWARM_IDENTITY = {
    "GIT_AUTHOR_NAME": SWARM_NAME,
    "GIT_AUTHOR_EMAIL": SWARM_EMAIL,
    "GIT_COMMITTER_NAME": SWARM_NAME,
    "GIT_COMMITTER_EMAIL": SWARM_EMAIL,
}


@dataclass(frozen=True)
class Output:
    """What one git command returned."""

    status: int
    stdout: str
    stderr: str

    def z(self) -> list[str]:
        """The NUL-separated paths of a ``-z`` listing."""
        return [p for p in self.stdout.split("\0") if p]


def last_line(text: str) -> str:
    """The last non-blank line: where git says what went wrong."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


class Runner:
    """Runs git in one project repository (its top-level folder) or one of its checkouts."""

    def __init__(
        self, project_root: Path, *, lock_timeout: float = 120.0, command_timeout: float = 300.0
    ) -> None:
        self.root = project_root.resolve()
        self.paths = ProjectPaths(self.root)
        self.command_timeout = command_timeout
        top = self.run("rev-parse", "--show-toplevel", ok=(0, 128))
        if top.status != 0:
            raise GitError(f"not a git repository: {self.root}")
        if Path(top.stdout.strip()).resolve() != self.root:
            raise GitError(
                f"{self.root} is inside the git repository {top.stdout.strip()}; "
                "use the repository's top-level folder as the project"
            )
        try:
            # `.swarm/` carries its own `.gitignore` (`*`), so neither the lock nor the
            # worktrees ever show up in the project's `git status`.
            self.paths.ensure()
        except ProjectError as e:
            raise GitError(str(e)) from e
        self.lock = GitLock(self.paths.swarm_dir / LOCK_NAME, timeout=lock_timeout)
        self._version: tuple[int, ...] | None = None

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        ok: Sequence[int] = (0,),
        env: Mapping[str, str] | None = None,
    ) -> Output:
        """One git command in the project (or ``cwd``); GitError on a status outside
        ``ok``. The caller holds ``lock`` when the command writes the repository's shared
        files (config, worktree registry, refs other than a slot's own new branch)."""
        where = cwd or self.root
        full_env = {"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", **(env or {})}
        try:
            status, out, err = git.Git(str(where)).execute(
                ["git", *args],
                with_extended_output=True,
                with_exceptions=False,
                kill_after_timeout=self.command_timeout,
                strip_newline_in_stdout=False,
                env=full_env,
            )
        except (git.GitCommandError, OSError) as e:
            raise GitError(f"git {args[0]} could not run in {where}: {e}") from e
        result = Output(int(status), str(out), str(err))
        if result.status not in ok:
            detail = last_line(result.stderr) or last_line(result.stdout)
            raise GitError(f"git {' '.join(args[:3])} failed in {where}: {detail}")
        return result

    def rev(self, ref: str, cwd: Path | None = None) -> str | None:
        """The commit ``ref`` names, or None."""
        out = self.run("rev-parse", "--verify", "--quiet", ref, cwd=cwd, ok=(0, 1))
        return out.stdout.strip() if out.status == 0 else None

    def is_ancestor(self, a: str, b: str) -> bool:
        return self.run("merge-base", "--is-ancestor", a, b, ok=(0, 1)).status == 0

    def config_get(self, key: str) -> str | None:
        out = self.run("config", "--get", key, ok=(0, 1))
        if out.status != 0:
            return None
        return out.stdout.strip() or None

    def config_set(self, key: str, value: str) -> None:
        """Set a key of the shared config (the caller holds ``lock``)."""
        self.run("config", key, value)

    def identity_env(self, cwd: Path) -> dict[str, str]:
        """Our identity only where the repository has none configured."""
        name = self.run("config", "user.name", cwd=cwd, ok=(0, 1)).stdout.strip()
        email = self.run("config", "user.email", cwd=cwd, ok=(0, 1)).stdout.strip()
        return {} if name and email else dict(SWARM_IDENTITY)

    def version(self) -> tuple[int, ...]:
        """The git version, as numbers (``(0,)`` when git does not say)."""
        if self._version is None:
            text = self.run("version").stdout
            match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
            self._version = tuple(int(g or 0) for g in match.groups()) if match else (0,)
        return self._version

    def current_branch(self, cwd: Path | None = None) -> str | None:
        out = self.run("symbolic-ref", "--quiet", "--short", "HEAD", cwd=cwd, ok=(0, 1))
        return out.stdout.strip() if out.status == 0 else None

    def default_base(self) -> str:
        """The branch checked out in the project; GitError on a detached HEAD."""
        branch = self.current_branch()
        if branch is None:
            raise GitError(f"{self.root} has a detached HEAD; name the base branch explicitly")
        return branch

    def check_branch(self, base: str) -> str:
        """``base``, once it is known to be a branch with a commit; GitError if not."""
        if self.rev(f"refs/heads/{base}^{{commit}}") is None:
            raise GitError(f"base branch {base!r} does not exist in {self.root}")
        return base

    def uncommitted_files(self, cwd: Path) -> list[str]:
        """Tracked changes (staged or not) plus untracked, not ignored, files."""
        changed = self.run("diff", "HEAD", "--name-only", "--no-renames", "-z", cwd=cwd).z()
        untracked = self.run("ls-files", "--others", "--exclude-standard", "-z", cwd=cwd).z()
        return sorted({*changed, *untracked})

    def require_clean(self, cwd: Path, what: str, refusal: str) -> None:
        """DirtyWorktreeError naming the files when ``cwd`` holds uncommitted work, which
        is never lost: ``what`` names the checkout, ``refusal`` what is not done to it."""
        dirty = self.uncommitted_files(cwd)
        if dirty:
            raise DirtyWorktreeError(
                f"{what} has uncommitted changes ({', '.join(dirty[:10])}); {refusal}",
                files=dirty,
            )
