"""Test helpers: deadline waits, the process-leak check, and scratch git repositories."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import psutil

T = TypeVar("T")

TEST_TAG_ENV = "SWARM_POOL_TEST_ID"
SESSION_TAG_ENV = "SWARM_POOL_TEST_SESSION"


def wait_for(pred: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Return the first truthy value of ``pred()``; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = pred()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {pred}")
        time.sleep(interval)
        last = pred()
    return last


def tagged_processes(env_name: str, tag: str) -> list[psutil.Process]:
    """Live processes (not us) whose environment carries ``env_name=tag``."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if proc.environ().get(env_name) == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def describe(procs: list[psutil.Process]) -> str:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid}: {' '.join(p.cmdline())[:160]}")
        except psutil.Error:
            out.append(f"{p.pid}: <gone>")
    return "; ".join(out)


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd``; its stdout, stripped. Fails the caller on a non-zero exit."""
    out = subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=60
    )
    return out.stdout.strip()


def init_repo(
    root: Path,
    files: Mapping[str, str] | None = None,
    *,
    user: str = "tester",
    message: str = "init",
) -> Path:
    """A git repo at ``root`` on branch main with one commit of ``files``
    (relative path -> text; default a README.md), committed as ``user``."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", user)
    git(root, "config", "user.email", f"{user.split()[0].lower()}@example.invalid")
    git(root, "config", "commit.gpgsign", "false")
    for rel, text in (files or {"README.md": "demo\n"}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return root
