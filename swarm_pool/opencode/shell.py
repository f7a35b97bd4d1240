"""The shell of OpenCode's bash tool: no pool secret in it, and optionally
a bubblewrap box.

Room: opencode.

OpenCode 1.18.33 runs every bash tool call as ``<shell> -c <command>`` with the server's
whole environment, where ``<shell>`` is the config key ``shell`` when it names an existing
file (else ``$SHELL``, else bash); checked in its source and against the binary. So each
instance's config points ``shell`` at ``.swarm/bin/bash``, a small script written here,
which drops ``SECRET_ENV`` and then either execs bash or, with ``[workers] sandbox =
"bwrap"``, execs this module's ``main``, which execs bash inside ``bwrap``.

The box (``bwrap_argv``): the whole filesystem read-only; a private ``/tmp``; ``.swarm/``
replaced by an empty tmpfs, so the state file, the store and the other worktrees are
not there; then, writable, the worker's own worktree and what git needs to commit in it
(the shared object store, the ``swarm/`` branch refs and their logs, the worktree's own
admin folder). New pid, IPC and UTS namespaces and its own ``/proc`` (the server's
environment is not readable from inside), no capabilities, and with ``sandbox_network =
false`` no network. A shell whose directory is not a worktree of the pool gets the same
box with nothing writable but ``/tmp``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from swarm_pool import tokens
from swarm_pool.errors import SandboxError
from swarm_pool.paths import write_private

# OpenCode takes its server password only from this env var (checked against 1.18.33).
PASSWORD_ENV = "OPENCODE_SERVER_PASSWORD"
# What an instance holds in its env that no process started for an agent may inherit
# (the MCP server, the bash tool's shell). Defined here, not next to the HTTP client:
# the boxed shell imports this module for every command and must start fast.
# The shared MCP server's token secret (tokens.py): only that child may hold it.
MCP_SECRET_ENV = tokens.SECRET_ENV
SECRET_ENV = (PASSWORD_ENV, MCP_SECRET_ENV)

SHELL_NAME = "bash"  # OpenCode picks its argument style by the shell's file name
BWRAP = "bwrap"
SWARM_DIR = ".swarm"
WORKTREES = "worktrees"
SLOTS = "slots"


def shell_path(project_root: Path) -> Path:
    return project_root / SWARM_DIR / "bin" / SHELL_NAME


# shlex, shutil and subprocess are imported where used: `main` runs once per bash
# tool command, and their import time (about 20 ms, measured on a loaded machine) would
# be paid every time.


def find_bash() -> str:
    import shutil

    return shutil.which("bash") or "/bin/sh"


def find_bwrap() -> str | None:
    import shutil

    return shutil.which(BWRAP)


def check_bwrap(bwrap: str | None = None) -> str:
    """The bwrap binary, proven to work here; SandboxError otherwise."""
    path = bwrap or find_bwrap()
    if path is None:
        raise SandboxError(
            "workers.sandbox is 'bwrap' but bubblewrap is not installed "
            "(Debian/Ubuntu: apt-get install bubblewrap; scripts/setup does it as root)"
        )
    probe = [path, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    probe += ["--unshare-pid", "--cap-drop", "ALL", "true"]
    import subprocess

    try:
        out = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxError(f"cannot run {path}: {e}") from e
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip().splitlines()
        raise SandboxError(
            f"bubblewrap ({path}) cannot create a sandbox here: "
            f"{detail[-1] if detail else f'exit {out.returncode}'} "
            "(are unprivileged user namespaces disabled?)"
        )
    return path


def shell_script(
    *,
    project_root: Path,
    sandbox: bool,
    network: bool = True,
    bash: str | None = None,
    bwrap: str | None = None,
    python: str | None = None,
) -> str:
    """The text of ``.swarm/bin/bash``."""
    import shlex

    bash = bash or find_bash()
    lines = [
        "#!/bin/sh",
        "# Written by swarm-pool: the shell of OpenCode's bash tool (opencode/shell.py).",
        # The secrets go before anything else runs, so no process below ever holds them.
        "unset " + " ".join(SECRET_ENV),
    ]
    if not sandbox:
        lines.append(f'exec {shlex.quote(bash)} "$@"')
    else:
        argv = [python or sys.executable, "-m", __name__, "--project", str(project_root)]
        argv += ["--bash", bash, "--bwrap", bwrap or find_bwrap() or BWRAP]
        if not network:
            argv.append("--no-network")
        lines.append("exec " + " ".join(shlex.quote(a) for a in argv) + ' -- "$@"')
    return "\n".join(lines) + "\n"


def install_shell(project_root: Path, *, sandbox: bool, network: bool = True) -> Path:
    """Write the bash tool's shell (0700, replaced atomically); its path."""
    path = shell_path(project_root)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = shell_script(project_root=project_root, sandbox=sandbox, network=network)
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    write_private(path, text, 0o700)
    return path


def worktree_of(project_root: Path, cwd: Path) -> Path | None:
    """The pool worktree holding ``cwd`` (``<project>/.swarm/worktrees/<bead>``, or a
    slot ``<project>/.swarm/slots/<instance>/<n>``), or None."""
    for sub, depth in ((WORKTREES, 1), (SLOTS, 2)):
        base = (project_root / SWARM_DIR / sub).resolve()
        try:
            rel = cwd.resolve().relative_to(base)
        except ValueError:
            continue
        if len(rel.parts) < depth:
            return None
        return base.joinpath(*rel.parts[:depth])
    return None


def git_dirs(worktree: Path) -> tuple[Path, Path] | None:
    """(the common .git dir, the worktree's admin dir) read from ``<worktree>/.git``."""
    try:
        text = (worktree / ".git").read_text()
    except OSError:
        return None
    if not text.startswith("gitdir:"):
        return None
    admin = (worktree / text.split(":", 1)[1].strip()).resolve()
    try:
        common_rel = (admin / "commondir").read_text().strip()
    except OSError:
        common_rel = "../.."
    return (admin / common_rel).resolve(), admin


def bwrap_argv(
    *,
    project_root: Path,
    cwd: Path,
    shell_args: Sequence[str],
    bash: str,
    bwrap: str = BWRAP,
    network: bool = True,
) -> list[str]:
    """The bwrap command line that runs ``bash shell_args`` boxed for ``cwd``."""
    root = project_root.resolve()
    argv = [bwrap, "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    if not network:
        argv.append("--unshare-net")
    argv += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    # The private /tmp would hide a project that lives under /tmp: put it back, read-only.
    argv += ["--ro-bind", str(root), str(root)]
    argv += ["--tmpfs", str(root / SWARM_DIR)]
    worktree = worktree_of(root, cwd)
    if worktree is not None and worktree.is_dir():
        argv += ["--bind", str(worktree), str(worktree)]
        dirs = git_dirs(worktree)
        if dirs is not None:
            common, admin = dirs
            if not _inside(common, root):
                argv += ["--ro-bind", str(common), str(common)]
            argv += ["--bind", str(common / "objects"), str(common / "objects")]
            for sub in ("refs/heads/swarm", "logs/refs/heads/swarm"):
                argv += ["--bind-try", str(common / sub), str(common / sub)]
            argv += ["--bind", str(admin), str(admin)]
    chdir = cwd if worktree is not None else root
    argv += ["--chdir", str(chdir), "--", bash, *shell_args]
    return argv


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m swarm_pool.opencode.shell --project P --bash B [--bwrap W]
    [--no-network] -- ARGS``: exec bwrap running ``B ARGS`` boxed for the cwd.

    Only ``shell_script`` writes this command line, so it is parsed by hand (argparse
    alone would cost more than the rest of this module's start-up).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    opts: dict[str, str] = {"--bwrap": BWRAP}
    network = True
    while args and args[0] != "--":
        flag = args.pop(0)
        if flag == "--no-network":
            network = False
        elif flag in ("--project", "--bash", "--bwrap") and args:
            opts[flag] = args.pop(0)
        else:
            print(f"swarm-pool sandbox: bad argument {flag!r}", file=sys.stderr)
            return 2
    rest = args[1:]
    if "--project" not in opts or "--bash" not in opts:
        print("swarm-pool sandbox: --project and --bash are required", file=sys.stderr)
        return 2
    for var in SECRET_ENV:
        os.environ.pop(var, None)
    cmd = bwrap_argv(
        project_root=Path(opts["--project"]),
        cwd=Path.cwd(),
        shell_args=rest,
        bash=opts["--bash"],
        bwrap=opts["--bwrap"],
        network=network,
    )
    try:
        os.execv(cmd[0], cmd)
    except OSError as e:
        print(f"swarm-pool sandbox: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
    return 126


if __name__ == "__main__":
    raise SystemExit(main())
