"""Least privilege, piece by piece: the bash tool's shell, the bwrap box, NO_PROXY, private
files, the orphan reaper and the tag sweep (real processes, real bwrap, real SQLite).
The end-to-end proofs on real pools are in test_security_e2e.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psutil
import pytest

from swarm_pool.config import Config
from swarm_pool.errors import SandboxError
from swarm_pool.opencode import shell
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.instance import with_no_proxy
from swarm_pool.pool.orphans import POOL_TAG_ENV, sweep_tagged, tagged
from swarm_pool.store import open_project_store
from tests.support import git, init_repo, wait_for


def test_the_shell_drops_the_password_then_runs_bash(tmp_path: Path) -> None:
    path = shell.install_shell(tmp_path, sandbox=False)
    assert path == tmp_path / ".swarm" / "bin" / "bash"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    env = {**os.environ, "OPENCODE_SERVER_PASSWORD": "s3cret", "KEEP": "kept"}
    # OpenCode runs it as `<shell> -c <command>`.
    out = subprocess.run(
        [str(path), "-c", 'echo "[$OPENCODE_SERVER_PASSWORD][$KEEP]"; cat /proc/$$/environ'],
        env=env,
        capture_output=True,
        check=True,
    ).stdout
    first, environ = out.split(b"\n", 1)
    assert first == b"[][kept]"
    assert b"s3cret" not in environ and b"KEEP=kept" in environ


def test_bwrap_box_layout(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "proj", {"a.txt": "a\n"})
    wt = root / ".swarm" / "worktrees" / "bd-1"
    git(root, "worktree", "add", "-q", "-b", "swarm/bd-1", str(wt))
    argv = shell.bwrap_argv(
        project_root=root, cwd=wt / "sub", shell_args=["-c", "true"], bash="/bin/bash"
    )

    def pairs(flag: str) -> list[str]:
        return [argv[i + 1] for i, a in enumerate(argv) if a == flag]

    common = root / ".git"
    assert pairs("--bind") == [str(wt), str(common / "objects"), str(common / "worktrees/bd-1")]
    assert str(common / "refs/heads/swarm") in pairs("--bind-try")
    # .swarm/ is an empty tmpfs mounted after the project (read-only), before the worktree.
    assert pairs("--tmpfs") == ["/tmp", str(root / ".swarm")]
    assert argv.index(str(root / ".swarm")) < argv.index(str(wt))
    assert "--unshare-net" not in argv and "--unshare-pid" in argv
    assert argv[-4:] == ["--", "/bin/bash", "-c", "true"]
    assert pairs("--chdir") == [str(wt / "sub")]
    # Outside any worktree: nothing writable but /tmp; no network when asked.
    elsewhere = shell.bwrap_argv(
        project_root=root, cwd=root, shell_args=[], bash="/bin/bash", network=False
    )
    assert "--bind" not in elsewhere and "--unshare-net" in elsewhere


def test_bwrap_box_for_real(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "proj", {"a.txt": "a\n"})
    (root / ".swarm").mkdir(exist_ok=True)
    (root / ".swarm" / "pool.json").write_text("{}")
    wt = root / ".swarm" / "worktrees" / "bd-1"
    git(root, "worktree", "add", "-q", "-b", "swarm/bd-1", str(wt))
    script = shell.install_shell(root, sandbox=True, network=False)
    probe = textwrap.dedent(
        f"""
        cat {root}/.swarm/pool.json 2>/dev/null && echo LEAK-state
        touch {root}/x 2>/dev/null && echo LEAK-project
        echo b > b.txt && git add b.txt && git commit -qm boxed && echo committed
        echo $OPENCODE_SERVER_PASSWORD
        """
    )
    env = {**os.environ, "OPENCODE_SERVER_PASSWORD": "s3cret"}
    out = subprocess.run(
        [str(script), "-c", probe], cwd=wt, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["committed"], out.stdout + out.stderr
    assert git(root, "log", "-1", "--format=%s", "swarm/bd-1") == "boxed"
    assert not (root / "x").exists()


def test_check_bwrap_says_what_is_missing_or_broken(monkeypatch: pytest.MonkeyPatch) -> None:
    # Installed by scripts/setup: on a machine without it this fails, never skips.
    assert shell.check_bwrap()
    with pytest.raises(SandboxError, match="cannot run /nonexistent/bwrap"):
        shell.check_bwrap("/nonexistent/bwrap")
    with pytest.raises(SandboxError, match="cannot create a sandbox here"):
        shell.check_bwrap("/bin/false")
    monkeypatch.setattr(shell, "find_bwrap", lambda: None)
    with pytest.raises(SandboxError, match="bubblewrap is not installed"):
        shell.check_bwrap()


def test_start_refuses_a_sandbox_without_bwrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from swarm_pool.pool.api import start_pool

    monkeypatch.setattr(shell, "find_bwrap", lambda: None)
    config = Config()
    config.workers.sandbox = "bwrap"
    paths = ProjectPaths(init_repo(tmp_path / "proj", {"a": "a\n"}))
    with pytest.raises(SandboxError, match="bubblewrap is not installed"):
        start_pool(paths, config)
    assert not paths.state_file.exists()  # nothing was started


def test_no_proxy_gets_loopback_and_keeps_the_rest() -> None:
    env = with_no_proxy({"NO_PROXY": "corp.example,127.0.0.1", "HTTP_PROXY": "http://p:1"})
    assert env["NO_PROXY"] == "corp.example,127.0.0.1,localhost,::1"
    assert env["no_proxy"] == "127.0.0.1,localhost,::1"
    assert env["HTTP_PROXY"] == "http://p:1"


def test_modes_of_an_old_project_are_fixed_on_open(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    swarm = root / ".swarm"
    swarm.mkdir(parents=True, mode=0o755)
    os.chmod(swarm, 0o755)
    for name in ("pool.json", "supervisor.log"):
        (swarm / name).write_text("{}")
        os.chmod(swarm / name, 0o644)
    paths = ProjectPaths(root).ensure()
    assert stat.S_IMODE(swarm.stat().st_mode) == 0o700
    for name in ("pool.json", "supervisor.log"):
        assert stat.S_IMODE((swarm / name).stat().st_mode) == 0o600
    old = os.umask(0o022)
    try:
        store = open_project_store(paths, Config())
        store.close()
    finally:
        os.umask(old)
    for name in ("swarm.db", "swarm.db.lock"):
        assert stat.S_IMODE((swarm / name).stat().st_mode) == 0o600, name
    os.chmod(swarm / "swarm.db", 0o644)
    open_project_store(paths, Config()).close()
    assert stat.S_IMODE((swarm / "swarm.db").stat().st_mode) == 0o600


REAPER = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    from swarm_pool.pool.orphans import OrphanReaper, is_child_subreaper, set_child_subreaper
    assert set_child_subreaper() and is_child_subreaper()
    # An own helper in our session, left running: never the reaper's business.
    helper = subprocess.Popen(["sleep", "60"])
    # A child in its own session that detaches a sleeper and exits.
    subprocess.run(["sh", "-c", "setsid sleep 60 >/dev/null 2>&1 & echo $!"], check=True,
                   start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.time() + 20
    reaper = OrphanReaper(lambda: [helper.pid])
    while not reaper.orphans() and time.time() < deadline:
        time.sleep(0.05)
    orphans = [p.pid for p in reaper.orphans()]
    killed = reaper.kill_all(2.0)
    alive_helper = helper.poll() is None
    helper.kill(); helper.wait()
    print(json.dumps({"orphans": orphans, "killed": killed, "helper_alive": alive_helper,
                      "left": [p.pid for p in reaper.orphans()]}))
    """
)


def test_the_subreaper_adopts_and_kills_what_detaches_not_its_own_helpers() -> None:
    out = subprocess.run(
        [sys.executable, "-c", REAPER], capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(out.stdout)
    assert len(result["orphans"]) == 1 and result["killed"] == result["orphans"]
    assert result["helper_alive"] and result["left"] == []
    assert not psutil.pid_exists(result["orphans"][0])


def test_the_sweep_stops_only_our_tag() -> None:
    tag, other = uuid.uuid4().hex, uuid.uuid4().hex
    ours = subprocess.Popen(["sleep", "60"], env={**os.environ, POOL_TAG_ENV: tag})
    theirs = subprocess.Popen(["sleep", "60"], env={**os.environ, POOL_TAG_ENV: other})
    try:
        assert [p.pid for p in tagged(tag)] == [ours.pid]
        assert sweep_tagged(tag, 2.0) == [ours.pid]
        wait_for(lambda: ours.poll() is not None, timeout=10)
        assert theirs.poll() is None and tagged(tag) == []
        assert sweep_tagged("", 1.0) == []  # no tag: nothing is ever swept
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()
