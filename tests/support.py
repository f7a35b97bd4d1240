"""Test helpers: deadline waits and the process-leak check."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
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
