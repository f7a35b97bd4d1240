"""Git worktrees for workers: one branch and one checkout per bead, then diff, commit, merge.

``Worktrees`` owns everything swarm-pool does to the project's git repository: it creates
branch ``swarm/<bead>`` in ``.swarm/worktrees/<bead>`` (idempotently, so a retried worker
reuses the same checkout), lists what a worker changed, commits what it left uncommitted,
diffs and merges the branch back into its base branch, and removes worktrees without ever
losing uncommitted work. Every git command that writes the repository's shared files
(config, worktree registry, packed refs, the base branch) runs under ``GitLock`` (file
lock plus thread lock), because parallel git commands on one repository collide on
``.git`` lock files; a slot's checkout, which writes only that worktree's own files and
creates one new ref, does not. Git runs through gitpython's command wrapper; its failures become
``GitError`` subclasses. Each branch's base is remembered in the repository config
(``branch.swarm/<bead>.swarmbase``) and a merge is marked there too, so ``merge`` and
``cleanup`` need no other state. A bead's checkout is wherever git has its branch
checked out (``locate``): its own ``.swarm/worktrees/<bead>``, or a reusable slot that
``reset_slot`` moved to its branch (which slot belongs to which bead is the store's
record, kept by ``swarm.slots``).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import git

from swarm_pool import faults
from swarm_pool.errors import (
    DirtyWorktreeError,
    GitError,
    MergeConflictError,
    ProjectError,
)
from swarm_pool.git.lock import LOCK_NAME, GitLock
from swarm_pool.paths import ProjectPaths

BRANCH_PREFIX = "swarm/"
SWARM_NAME = "swarm-pool"
SWARM_EMAIL = "swarm-pool@localhost"
_BASE_KEY = "swarmbase"
_MERGED_KEY = "swarmmerged"
_BEAD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# `git merge-tree --write-tree` (a merge without touching any working tree) needs 2.38.
_MERGE_TREE_VERSION = (2, 38)
_SWARM_IDENTITY = {
    "GIT_AUTHOR_NAME": SWARM_NAME,
    "GIT_AUTHOR_EMAIL": SWARM_EMAIL,
    "GIT_COMMITTER_NAME": SWARM_NAME,
    "GIT_COMMITTER_EMAIL": SWARM_EMAIL,
}


def branch_name(bead_id: str) -> str:
    """The branch of a bead's worktree; GitError if the id is unusable as a path or ref."""
    if not _BEAD_RE.match(bead_id) or ".." in bead_id or bead_id.endswith((".", ".lock")):
        raise GitError(f"bad bead id for a worktree: {bead_id!r}")
    return BRANCH_PREFIX + bead_id


def _json_safe(obj: Any) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(obj).items()}


@dataclass(frozen=True)
class WorktreeInfo:
    bead_id: str
    path: Path
    branch: str
    base: str
    head: str
    created: bool = False  # False when an existing worktree was returned
    merged: bool = False  # merged by us and no commits since

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(self)


@dataclass(frozen=True)
class DiffInfo:
    """The branch's committed work since its merge-base with the base branch."""

    bead_id: str
    base: str
    merge_base: str
    head: str
    files: list[str]  # committed on the branch since the merge-base (what a merge brings)
    uncommitted: list[str]  # changed or untracked in the worktree, not committed yet
    stat: str
    patch: str
    truncated: bool

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(self)


@dataclass(frozen=True)
class MergeResult:
    bead_id: str
    branch: str
    base: str
    commit: str  # the base branch's head after the merge
    previous: str  # the base branch's head before it
    files: list[str]
    up_to_date: bool = False  # nothing to merge; the base was left alone

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(self)


@dataclass(frozen=True)
class CleanupResult:
    removed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # bead -> why it was kept

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Listed:
    path: Path
    head: str
    branch: str | None  # "swarm/bd-x", None when detached
    prunable: bool


@dataclass(frozen=True)
class _Out:
    status: int
    stdout: str
    stderr: str

    def z(self) -> list[str]:
        return [p for p in self.stdout.split("\0") if p]


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


# What OpenCode itself writes into a directory's .opencode/ (its own .gitignore, which
# ignores the rest, then a background install of its plugin package), kept by a slot
# reset: removing it while that install still writes left package.json and
# package-lock.json untracked, without the .gitignore, for the next bead to commit.
OPENCODE_INSTALL = (
    "**/.opencode/.gitignore",
    "**/.opencode/node_modules/",
    "**/.opencode/package.json",
    "**/.opencode/package-lock.json",
    "**/.opencode/bun.lock",
)


class Worktrees:
    """Worktrees, diffs and merges of one project repository (its top-level dir)."""

    def __init__(
        self,
        project_root: Path,
        worktrees_dir: Path | None = None,
        *,
        lock_timeout: float = 120.0,
        command_timeout: float = 300.0,
    ) -> None:
        self.root = project_root.resolve()
        self.paths = ProjectPaths(self.root)
        self.dir = (worktrees_dir or self.paths.worktrees_dir).resolve()
        self.command_timeout = command_timeout
        top = self._git(self.root, "rev-parse", "--show-toplevel", ok=(0, 128))
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
        self._use_merge_tree: bool | None = None

    @classmethod
    def for_project(cls, paths: ProjectPaths, **kwargs: Any) -> Worktrees:
        return cls(paths.root, paths.worktrees_dir, **kwargs)

    # --- git plumbing ---------------------------------------------------------------

    def _git(
        self,
        cwd: Path,
        *args: str,
        ok: Sequence[int] = (0,),
        env: Mapping[str, str] | None = None,
    ) -> _Out:
        """Run one git command; GitError on a status outside ``ok``."""
        full_env = {"GIT_TERMINAL_PROMPT": "0", "GIT_OPTIONAL_LOCKS": "0", **(env or {})}
        try:
            status, out, err = git.Git(str(cwd)).execute(
                ["git", *args],
                with_extended_output=True,
                with_exceptions=False,
                kill_after_timeout=self.command_timeout,
                strip_newline_in_stdout=False,
                env=full_env,
            )
        except (git.GitCommandError, OSError) as e:
            raise GitError(f"git {args[0]} could not run in {cwd}: {e}") from e
        result = _Out(int(status), str(out), str(err))
        if result.status not in ok:
            detail = _last_line(result.stderr) or _last_line(result.stdout)
            raise GitError(f"git {' '.join(args[:3])} failed in {cwd}: {detail}")
        return result

    def run(self, *args: str, cwd: Path | None = None, ok: Sequence[int] = (0,)) -> tuple[int, str]:
        """One git command in the project (or ``cwd``), for the remote's push and fetch
        (``swarm/remote.py``); the caller holds ``lock`` when it changes anything.
        Returns (status, stdout); GitError on a status outside ``ok``."""
        out = self._git(cwd or self.root, *args, ok=ok)
        return out.status, out.stdout

    def rev(self, ref: str, cwd: Path | None = None) -> str | None:
        """The commit ``ref`` names, or None."""
        return self._rev(ref, cwd)

    def _rev(self, ref: str, cwd: Path | None = None) -> str | None:
        out = self._git(cwd or self.root, "rev-parse", "--verify", "--quiet", ref, ok=(0, 1))
        return out.stdout.strip() if out.status == 0 else None

    def _is_ancestor(self, a: str, b: str) -> bool:
        out = self._git(self.root, "merge-base", "--is-ancestor", a, b, ok=(0, 1))
        return out.status == 0

    def _config_get(self, key: str) -> str | None:
        out = self._git(self.root, "config", "--get", key, ok=(0, 1))
        if out.status != 0:
            return None
        return out.stdout.strip() or None

    def _identity_env(self, cwd: Path) -> dict[str, str]:
        """Our identity only where the repository has none configured."""
        name = self._git(cwd, "config", "user.name", ok=(0, 1)).stdout.strip()
        email = self._git(cwd, "config", "user.email", ok=(0, 1)).stdout.strip()
        return {} if name and email else dict(_SWARM_IDENTITY)

    def git_version(self) -> tuple[int, ...]:
        if self._version is None:
            text = self._git(self.root, "version").stdout
            match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
            self._version = tuple(int(g or 0) for g in match.groups()) if match else (0,)
        return self._version

    def _merge_tree_supported(self) -> bool:
        if self._use_merge_tree is None:
            self._use_merge_tree = self.git_version()[:2] >= _MERGE_TREE_VERSION
        return self._use_merge_tree

    def _listed(self) -> list[_Listed]:
        out = self._git(self.root, "worktree", "list", "--porcelain", "-z")
        found: list[_Listed] = []
        rec: dict[str, str] = {}
        # -z: fields end in NUL, records end in an empty field.
        for item in [*out.stdout.split("\0"), ""]:
            if item:
                key, _, value = item.partition(" ")
                rec[key] = value
                continue
            if "worktree" in rec:
                branch = rec.get("branch")
                found.append(
                    _Listed(
                        path=Path(rec["worktree"]).resolve(),
                        head=rec.get("HEAD", ""),
                        branch=branch.removeprefix("refs/heads/") if branch else None,
                        prunable="prunable" in rec,
                    )
                )
            rec = {}
        return found

    def _find(self, path: Path) -> _Listed | None:
        resolved = path.resolve()
        return next((w for w in self._listed() if w.path == resolved), None)

    def _live(self, path: Path) -> _Listed | None:
        """The worktree registered at ``path`` if it is really there; a stale
        registration (prunable, or its folder gone) is pruned and None returned."""
        listed = self._find(path)
        if listed is not None and (listed.prunable or not path.is_dir()):
            self._git(self.root, "worktree", "prune")
            return None
        return listed

    def checkout_of(self, branch: str) -> Path | None:
        """The working tree (main or linked) that has ``branch`` checked out, if any."""
        for w in self._listed():
            if w.branch == branch and not w.prunable:
                return w.path
        return None

    # --- names and bases ------------------------------------------------------------

    def path_for(self, bead_id: str) -> Path:
        branch_name(bead_id)  # validates the id before it becomes a path
        return self.dir / bead_id

    def locate(self, bead_id: str) -> Path:
        """Where the bead's branch is checked out (a slot, or its own worktree); its own
        worktree's path when it is checked out nowhere."""
        own = self.path_for(bead_id)
        found = self.checkout_of(branch_name(bead_id))
        if found is not None and found != self.root:
            return found
        return own

    def current_branch(self, cwd: Path | None = None) -> str | None:
        out = self._git(cwd or self.root, "symbolic-ref", "--quiet", "--short", "HEAD", ok=(0, 1))
        return out.stdout.strip() if out.status == 0 else None

    def default_base(self) -> str:
        """The branch checked out in the project; GitError on a detached HEAD."""
        branch = self.current_branch()
        if branch is None:
            raise GitError(f"{self.root} has a detached HEAD; name the base branch explicitly")
        return branch

    def _check_branch(self, base: str) -> str:
        if self._rev(f"refs/heads/{base}^{{commit}}") is None:
            raise GitError(f"base branch {base!r} does not exist in {self.root}")
        return base

    def base_of(self, bead_id: str, base: str | None = None) -> str:
        """``base`` if given, else the base recorded at create, else the project's branch."""
        if base:
            return self._check_branch(base)
        return self._check_branch(self._recorded_base(bead_id) or self.default_base())

    def _recorded_base(self, bead_id: str) -> str | None:
        return self._config_get(f"branch.{branch_name(bead_id)}.{_BASE_KEY}")

    def _info(self, bead_id: str, listed: _Listed, *, created: bool) -> WorktreeInfo:
        branch = branch_name(bead_id)
        marker = self._config_get(f"branch.{branch}.{_MERGED_KEY}")
        return WorktreeInfo(
            bead_id=bead_id,
            path=listed.path,
            branch=branch,
            # Never raises: a listing must survive a base branch that was deleted since.
            base=self._recorded_base(bead_id) or self.current_branch() or "",
            head=self._rev("HEAD", listed.path) or listed.head,
            created=created,
            merged=marker is not None and self._rev(f"refs/heads/{branch}") == marker,
        )

    # --- worktrees ------------------------------------------------------------------

    def create(self, bead_id: str, base: str | None = None) -> WorktreeInfo:
        """Branch ``swarm/<bead>`` from ``base`` in its own worktree; reuse it if it exists."""
        branch = branch_name(bead_id)
        path = self.path_for(bead_id)
        with self.lock.hold():
            listed = self._live(path)
            if listed is not None:
                if listed.branch != branch:
                    raise GitError(f"{path} is a worktree on {listed.branch}, not {branch}")
                return self._info(bead_id, listed, created=False)
            if path.exists():
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()
                else:
                    raise GitError(f"{path} exists but is not a git worktree; move it away")
            base_name = self._check_branch(base) if base else self.default_base()
            self.dir.mkdir(parents=True, exist_ok=True)
            if self._rev(f"refs/heads/{branch}") is not None:
                # An earlier worktree was removed but its branch (and commits) survived.
                elsewhere = self.checkout_of(branch)
                if elsewhere is not None:
                    raise GitError(f"branch {branch} is already checked out at {elsewhere}")
                self._git(self.root, "worktree", "add", str(path), branch)
                if base:
                    self._git(self.root, "config", f"branch.{branch}.{_BASE_KEY}", base_name)
            else:
                self._git(self.root, "worktree", "add", "-b", branch, str(path), base_name)
                self._git(self.root, "config", f"branch.{branch}.{_BASE_KEY}", base_name)
            listed = self._find(path)
            if listed is None:
                raise GitError(f"git worktree add did not register {path}")
            return self._info(bead_id, listed, created=True)

    def reset_slot(
        self, path: Path, bead_id: str, base: str | None = None, *, keep_ignored: bool = False
    ) -> Path:
        """Put slot ``path`` on branch ``swarm/<bead>``, creating the slot if needed.

        A slot already on the bead's branch is left as it is (a retry continues the
        attempt's work). Otherwise the slot must be clean (DirtyWorktreeError names the
        files: uncommitted work is never reset); it then checks out the bead's branch
        (made from ``base`` if new) and loses everything of the previous bead: tracked
        changes, untracked files and, unless ``keep_ignored``, ignored ones (build
        caches; what OpenCode writes in ``.opencode/``, ``OPENCODE_INSTALL``, stays).
        The previous bead's branch is deleted if it was merged and nothing came after.
        Only the writes to the repository's shared state (adding or pruning a worktree,
        the config, deleting the previous branch) hold the git lock. The slot's own
        listing, checks, cleaning and checkout run outside it, as the store gives a slot
        to one bead at a time: parallel dispatches do not queue behind each other's git
        processes (measured in a wave of 16 warm workers: a reset took 0.3-0.55 s with
        seven git processes under the lock, most of it waiting for the lock).
        """
        branch = branch_name(bead_id)
        path = path.resolve()
        # The store gives a slot to one bead at a time, so nothing else changes its record
        # in the registry: read without the lock, which only adding or pruning takes (and
        # then reads again under it).
        listing = self._listed()
        listed = next((w for w in listing if w.path == path), None)
        created = False
        if listed is None or listed.prunable or not path.is_dir():
            with self.lock.hold():
                listing = self._listed()
                listed = next((w for w in listing if w.path == path), None)
                if listed is not None and (listed.prunable or not path.is_dir()):
                    self._git(self.root, "worktree", "prune")
                    listed = None
                if listed is None:
                    self._add_slot(path, base)
                    created = True
        if listed is not None and listed.branch == branch:
            return path
        elsewhere = next((w.path for w in listing if w.branch == branch and not w.prunable), None)
        if elsewhere is not None:
            raise GitError(f"branch {branch} is already checked out at {elsewhere}")
        # The project's branch, from the same listing (its first record).
        project_branch = listing[0].branch if listing else None
        previous = None if listed is None else listed.branch
        if created:
            # The slot's own index and files: nothing of the previous bead to look for.
            self._check_out_added(path)
        else:
            dirty = self.uncommitted_files(path)
            if dirty:
                raise DirtyWorktreeError(
                    f"slot {path} has uncommitted changes ({', '.join(dirty[:10])}); "
                    "not resetting it",
                    files=dirty,
                )
            # What is left of the previous bead is untracked (or ignored) files: cleaned
            # before the checkout, so a clean that fails (OpenCode may still be writing in
            # the directory's .opencode/) leaves the slot on its old branch, not on this
            # bead's branch in a slot the store does not give this bead.
            faults.point("worktree.before_clean")
            keep = [] if keep_ignored else [a for p in OPENCODE_INSTALL for a in ("-e", p)]
            self._git(path, "clean", "-ffdq" if keep_ignored else "-ffdxq", *keep)
        # The checkout writes the slot's own HEAD, index and files, and creates only this
        # bead's branch (git locks that one ref; --no-track keeps the shared config out of
        # it): no lock, so parallel dispatches do not queue behind each other's checkout.
        exists = self._rev(f"refs/heads/{branch}") is not None
        if exists:
            # Commits of an earlier attempt survive on the branch: continue from them.
            self._git(path, "checkout", "--force", "--quiet", branch)
            base_name = base
        else:
            if base:
                base_name = self._check_branch(base)
            elif project_branch is not None:
                base_name = project_branch
            else:
                raise GitError(f"{self.root} has a detached HEAD; name the base branch explicitly")
            self._git(path, "checkout", "--force", "--quiet", "--no-track", "-b", branch, base_name)
        # The shared config and the previous branch (its ref and config section): locked.
        drop = previous is not None and previous.startswith(BRANCH_PREFIX)
        marker = self._config_get(f"branch.{previous}.{_MERGED_KEY}") if drop else None
        with self.lock.hold():
            if base_name:
                self._git(self.root, "config", f"branch.{branch}.{_BASE_KEY}", base_name)
            if previous is not None and marker is not None:
                # Git lets a branch be checked out in one worktree only, and it was here.
                # A branch that cannot be deleted now stays; cleanup tries again.
                with contextlib.suppress(GitError):
                    self._drop_if_merged(previous, marker)
        return path

    def open_slot(self, path: Path, base: str | None = None) -> bool:
        """Make slot ``path`` ahead of any bead: detached at ``base`` (default: the
        project's branch), checked out and clean. False, and nothing done, if a worktree
        is there already."""
        path = path.resolve()
        with self.lock.hold():
            if self._live(path) is not None:
                return False
            self._add_slot(path, base)
        self._check_out_added(path)
        return True

    def _add_slot(self, path: Path, base: str | None) -> None:
        """Register slot ``path``, detached at ``base``, without its files (under the
        lock: only the registry and the slot's HEAD; its files are checked out outside
        it, as that is most of the time in a big repository, and parallel dispatches
        making new slots would queue behind it)."""
        if path.exists() and any(path.iterdir()):
            raise GitError(f"{path} exists but is not a git worktree; move it away")
        path.parent.mkdir(parents=True, exist_ok=True)
        start = self._check_branch(base) if base else self.default_base()
        self._git(self.root, "worktree", "add", "--detach", "--no-checkout", str(path), start)

    def _check_out_added(self, path: Path) -> None:
        """Check out the files of a slot ``_add_slot`` registered (outside the lock)."""
        try:
            self._git(path, "reset", "--hard", "--quiet")
        except GitError:
            # Made just now, it holds nobody's work: gone, not left half checked out.
            with contextlib.suppress(GitError), self.lock.hold():
                self._git(self.root, "worktree", "remove", "--force", str(path))
            raise

    def remove_slot(self, path: Path) -> None:
        """Remove a slot's worktree (its branch stays); DirtyWorktreeError if it holds
        uncommitted work."""
        path = path.resolve()
        with self.lock.hold():
            if self._live(path) is None:
                return
            dirty = self.uncommitted_files(path)
            if dirty:
                raise DirtyWorktreeError(
                    f"slot {path} has uncommitted changes ({', '.join(dirty[:10])}); "
                    "not removing it",
                    files=dirty,
                )
            self._git(self.root, "worktree", "remove", "--force", str(path))

    def _drop_if_merged(self, branch: str, marker: str | None = None) -> bool:
        """Delete ``branch`` (checked out nowhere; under the lock) if we merged it and
        nothing came after: committed work is never lost. ``marker``: its merge marker,
        if the caller read it already."""
        if marker is None:
            marker = self._config_get(f"branch.{branch}.{_MERGED_KEY}")
        if marker is None or self._rev(f"refs/heads/{branch}") != marker:
            return False
        self._git(self.root, "branch", "-D", branch)
        return True

    def get(self, bead_id: str) -> WorktreeInfo | None:
        listed = self._find(self.locate(bead_id))
        if listed is None or listed.prunable:
            return None
        return self._info(bead_id, listed, created=False)

    def list_worktrees(self) -> list[WorktreeInfo]:
        """Every live worktree of ours (a ``swarm/*`` branch under the worktrees dir)."""
        found = []
        for w in self._listed():
            if w.prunable or w.path.parent != self.dir or not w.branch:
                continue
            if w.branch == BRANCH_PREFIX + w.path.name:
                found.append(self._info(w.path.name, w, created=False))
        return found

    def _where(self, target: str | Path) -> tuple[Path, str | None]:
        if isinstance(target, Path):
            return target.resolve(), None
        path = self.locate(target)
        if not path.is_dir():
            raise GitError(f"no worktree for {target} at {path}")
        return path, target

    def uncommitted_files(self, target: str | Path) -> list[str]:
        """Tracked changes (staged or not) plus untracked, not ignored, files."""
        cwd, _ = self._where(target)
        changed = self._git(cwd, "diff", "HEAD", "--name-only", "--no-renames", "-z").z()
        untracked = self._git(cwd, "ls-files", "--others", "--exclude-standard", "-z").z()
        return sorted({*changed, *untracked})

    def changed_files(self, target: str | Path, base: str | None = None) -> list[str]:
        """Paths changed since the merge-base with ``base``: committed, uncommitted, new."""
        cwd, bead = self._where(target)
        base_name = (
            self.base_of(bead, base) if bead else self._check_branch(base or self.default_base())
        )
        merge_base = self._git(cwd, "merge-base", f"refs/heads/{base_name}", "HEAD")
        committed = self._git(
            cwd, "diff", "--name-only", "--no-renames", "-z", merge_base.stdout.strip(), "HEAD"
        ).z()
        return sorted({*committed, *self.uncommitted_files(cwd)})

    def commit_all(self, bead_id: str, message: str) -> str | None:
        """Commit everything uncommitted in the bead's worktree; None if there was nothing."""
        cwd, _ = self._where(bead_id)
        with self.lock.hold():
            self._git(cwd, "add", "--all")
            staged = self._git(cwd, "diff", "--cached", "--quiet", ok=(0, 1))
            if staged.status == 0:
                return None
            # The swarm commits for the worker: its own identity, no hooks or signing,
            # because a hook or a pinentry prompt would stall an unattended run.
            self._git(
                cwd,
                "-c",
                "commit.gpgsign=false",
                "commit",
                "--quiet",
                "--no-verify",
                "-m",
                message,
                env=_SWARM_IDENTITY,
            )
            head = self._rev("HEAD", cwd)
            if head is None:
                raise GitError(f"commit in {cwd} left no HEAD")
            return head

    def head(self, bead_id: str) -> str:
        """The commit checked out in the bead's worktree (the tip of ``swarm/<bead>``)."""
        cwd, _ = self._where(bead_id)
        head = self._rev("HEAD", cwd)
        if head is None:
            raise GitError(f"the worktree of {bead_id} has no HEAD")
        return head

    def content_tree(self, bead_id: str) -> str:
        """The tree id of everything in the bead's worktree, uncommitted and untracked
        (not ignored) files included, computed in a throwaway index: the worktree, its
        index and its refs are left as they are."""
        cwd, _ = self._where(bead_id)
        with tempfile.TemporaryDirectory(prefix="swarm-pool-tree-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git(cwd, "read-tree", "HEAD", env=env)
            self._git(cwd, "add", "--all", env=env)
            return self._git(cwd, "write-tree", env=env).stdout.strip()

    def diff(self, bead_id: str, base: str | None = None, *, max_patch: int = 200_000) -> DiffInfo:
        """What merging the bead's branch would bring, plus what is still uncommitted."""
        cwd, _ = self._where(bead_id)
        base_name = self.base_of(bead_id, base)
        head = self._rev("HEAD", cwd) or ""
        merge_base = self._git(cwd, "merge-base", f"refs/heads/{base_name}", head).stdout.strip()
        files = self._git(cwd, "diff", "--name-only", "--no-renames", "-z", merge_base, head).z()
        stat = self._git(cwd, "diff", "--stat", merge_base, head).stdout.rstrip()
        patch = self._git(cwd, "diff", merge_base, head).stdout
        truncated = len(patch) > max_patch
        if truncated:
            patch = patch[:max_patch] + f"\n[... patch truncated at {max_patch} chars]\n"
        return DiffInfo(
            bead_id=bead_id,
            base=base_name,
            merge_base=merge_base,
            head=head,
            files=sorted(files),
            uncommitted=self.uncommitted_files(cwd),
            stat=stat,
            patch=patch,
            truncated=truncated,
        )

    # --- merge ----------------------------------------------------------------------

    def merge(
        self,
        bead_id: str,
        base: str | None = None,
        *,
        message: str | None = None,
        require_clean: bool = True,
    ) -> MergeResult:
        """Merge ``swarm/<bead>`` into its base (--no-ff) under the git lock.

        On a conflict nothing is changed (HEAD, index and files of the base's checkout
        stay as they were) and MergeConflictError names the conflicting files. With
        ``require_clean`` uncommitted work in the bead's worktree is refused
        (DirtyWorktreeError) rather than silently left behind.
        """
        branch = branch_name(bead_id)
        with self.lock.hold():
            base_name = self.base_of(bead_id, base)
            tip = self._rev(f"refs/heads/{branch}")
            if tip is None:
                raise GitError(f"branch {branch} does not exist")
            path = self.locate(bead_id)
            if require_clean and path.is_dir() and self._find(path) is not None:
                dirty = self.uncommitted_files(path)
                if dirty:
                    raise DirtyWorktreeError(
                        f"worktree of {bead_id} has uncommitted changes "
                        f"({', '.join(dirty[:10])}); commit them before merging",
                        files=dirty,
                    )
            previous = self._rev(f"refs/heads/{base_name}") or ""
            if self._is_ancestor(tip, previous):
                # Nothing to bring in; still mark it done, so cleanup may remove it.
                self._git(self.root, "config", f"branch.{branch}.{_MERGED_KEY}", tip)
                return MergeResult(bead_id, branch, base_name, previous, previous, [], True)
            merge_base = self._git(self.root, "merge-base", previous, tip).stdout.strip()
            files = sorted(
                self._git(
                    self.root, "diff", "--name-only", "--no-renames", "-z", merge_base, tip
                ).z()
            )
            text = message or f"Merge {branch} into {base_name} (swarm-pool bead {bead_id})"
            tree: str | None = None
            if self._merge_tree_supported():
                tree = self._merge_tree(branch, base_name, previous, tip)
            checkout = self.checkout_of(base_name)
            if checkout is not None:
                commit = self._merge_in_checkout(checkout, branch, base_name, files, text)
            elif tree is not None:
                commit = self._merge_detached(tree, base_name, previous, tip, text)
            else:
                raise GitError(
                    f"base branch {base_name} is not checked out anywhere, and merging "
                    f"without a checkout needs git >= 2.38 (found {self.git_version()})"
                )
            self._git(self.root, "config", f"branch.{branch}.{_MERGED_KEY}", tip)
            return MergeResult(bead_id, branch, base_name, commit, previous, files)

    def _merge_tree(self, branch: str, base: str, previous: str, tip: str) -> str:
        """Merge in memory only; the resulting tree, or MergeConflictError."""
        out = self._git(
            self.root,
            "merge-tree",
            "--write-tree",
            "--name-only",
            "--no-messages",
            previous,
            tip,
            ok=(0, 1),
        )
        lines = out.stdout.split("\n")
        if out.status == 1:
            conflicts = sorted({ln for ln in lines[1:] if ln.strip()})
            raise MergeConflictError(
                f"merging {branch} into {base} conflicts in: {', '.join(conflicts)}",
                files=conflicts,
                branch=branch,
                base=base,
            )
        return lines[0].strip()

    def _merge_in_checkout(
        self, checkout: Path, branch: str, base: str, files: list[str], message: str
    ) -> str:
        """``git merge`` where the base is checked out, so its files follow the branch."""
        if self._rev("MERGE_HEAD", checkout) is not None:
            raise GitError(f"{checkout} is in the middle of a merge; finish or abort it first")
        # git merge refuses any staged change (even to an unrelated file), with a message
        # that blames the wrong files; say what is wrong instead.
        staged = self._git(checkout, "diff", "--cached", "--name-only", "--no-renames", "-z").z()
        if staged:
            raise DirtyWorktreeError(
                f"{checkout} has staged, uncommitted changes ({', '.join(sorted(staged)[:10])}); "
                f"commit or unstage them before merging {branch}",
                files=sorted(staged),
            )
        local = self.uncommitted_files(checkout)
        touched = sorted(set(local) & set(files))
        if touched:
            raise DirtyWorktreeError(
                f"{checkout} has local changes to files the merge of {branch} would touch "
                f"({', '.join(touched[:10])}); commit or move them first",
                files=touched,
            )
        out = self._git(
            checkout,
            "merge",
            "--no-ff",
            "--no-verify",
            "--no-edit",
            "-m",
            message,
            branch,
            ok=(0, 1, 2, 128),
            env=self._identity_env(checkout),
        )
        if out.status != 0:
            conflicts = self._git(
                checkout, "diff", "--name-only", "--diff-filter=U", "-z", ok=(0, 1, 128)
            ).z()
            if self._rev("MERGE_HEAD", checkout) is not None:
                self._git(checkout, "merge", "--abort")
            if conflicts:
                raise MergeConflictError(
                    f"merging {branch} into {base} conflicts in: {', '.join(sorted(conflicts))}",
                    files=sorted(conflicts),
                    branch=branch,
                    base=base,
                )
            detail = _last_line(out.stderr) or _last_line(out.stdout)
            raise GitError(f"git merge of {branch} into {base} failed in {checkout}: {detail}")
        head = self._rev("HEAD", checkout)
        if head is None:
            raise GitError(f"merge in {checkout} left no HEAD")
        return head

    def _merge_detached(self, tree: str, base: str, previous: str, tip: str, message: str) -> str:
        """Commit the merged tree and move the (not checked out) base ref atomically."""
        commit = self._git(
            self.root,
            "commit-tree",
            tree,
            "-p",
            previous,
            "-p",
            tip,
            "-m",
            message,
            env=self._identity_env(self.root),
        ).stdout.strip()
        # The old value makes update-ref a compare-and-swap against anything outside us.
        self._git(self.root, "update-ref", "-m", message, f"refs/heads/{base}", commit, previous)
        return commit

    # --- removal --------------------------------------------------------------------

    def remove(self, bead_id: str, *, force: bool = False, delete_branch: bool = True) -> bool:
        """Remove the bead's worktree; DirtyWorktreeError if it holds uncommitted work.

        ``force`` discards uncommitted work. The branch is deleted only when its commits
        are all in its base branch, so committed work is never lost. Returns whether the
        branch was deleted.
        """
        branch = branch_name(bead_id)
        path = self.path_for(bead_id)
        with self.lock.hold():
            listed = self._find(path)
            if listed is not None and not listed.prunable and path.is_dir():
                dirty = self.uncommitted_files(path)
                if dirty and not force:
                    raise DirtyWorktreeError(
                        f"worktree of {bead_id} has uncommitted changes "
                        f"({', '.join(dirty[:10])}); not removing it",
                        files=dirty,
                    )
                args = ["worktree", "remove", *(["--force"] if force else []), str(path)]
                self._git(self.root, *args)
            elif listed is not None:
                self._git(self.root, "worktree", "prune")
            elif path.exists():
                raise GitError(f"{path} is not a registered worktree; not touching it")
            tip = self._rev(f"refs/heads/{branch}")
            if not delete_branch or tip is None or self.checkout_of(branch) is not None:
                # Checked out elsewhere (a slot): git would refuse, and the slot is
                # reset to another branch when it is next taken.
                return False
            base = self._recorded_base(bead_id) or self.current_branch()
            if base is None or self._rev(f"refs/heads/{base}") is None:
                return False
            if not self._is_ancestor(tip, f"refs/heads/{base}"):
                return False
            # -D: we just proved the branch is merged into *its* base, which `-d`
            # (merged into HEAD) cannot see when another branch is checked out.
            self._git(self.root, "branch", "-D", branch)
            return True

    def cleanup(self) -> CleanupResult:
        """Remove the worktrees (and branches) we merged; keep anything else, saying why."""
        removed: list[str] = []
        kept: dict[str, str] = {}
        with self.lock.hold():
            for info in self.list_worktrees():
                if not info.merged:
                    kept[info.bead_id] = "not merged"
                    continue
                try:
                    self.remove(info.bead_id)
                except DirtyWorktreeError as e:
                    kept[info.bead_id] = f"uncommitted changes: {', '.join(e.files[:10])}"
                    continue
                removed.append(info.bead_id)
        return CleanupResult(removed=removed, kept=kept)
