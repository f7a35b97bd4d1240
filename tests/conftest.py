"""Fixtures every test gets: a private state dir and env, and proof no process leaked.

Every process a test starts inherits ``SWARM_POOL_TEST_ID`` (set here, per test), so the
leak check finds even daemons that detached into their own session. Processes from
session-scoped fixtures carry only ``SWARM_POOL_TEST_SESSION`` and are checked when the
session ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.pg_server import ScratchPostgres, find_bin_dir, must_not_skip
from tests.support import SESSION_TAG_ENV, TEST_TAG_ENV, describe, tagged_processes

ROOT = Path(__file__).resolve().parent.parent
_SESSION_TAG = uuid.uuid4().hex
os.environ[SESSION_TAG_ENV] = _SESSION_TAG
os.environ.pop(TEST_TAG_ENV, None)
# One per-user state dir for the whole session, as on a real machine: port leases are
# shared by every pool, including those of session-scoped fixtures and of the other
# pytest-xdist workers, which inherit the folder the controller made.
_HOME_ENV = "PYTEST_SWARM_POOL_HOME"
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _XDIST_WORKER and os.environ.get(_HOME_ENV):
    _HOME = Path(os.environ[_HOME_ENV])
else:
    _HOME = Path(tempfile.mkdtemp(prefix="swarm-pool-tests-"))
    os.environ[_HOME_ENV] = str(_HOME)
os.environ["SWARM_POOL_HOME"] = str(_HOME / "swarm-pool")
for _xdg in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
    os.environ[_xdg] = str(_HOME / _xdg.lower())
# A shell starts a background job (`scripts/test &`) with SIGINT ignored, and an ignored
# signal stays ignored across exec: the ctrl-c tests' children would never see theirs.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _check_no_leak(env_name: str, tag: str, what: str) -> None:
    procs = tagged_processes(env_name, tag)
    if not procs:
        return
    # Children may still be exiting after a clean stop; give them a moment.
    _gone, alive = psutil.wait_procs(procs, timeout=5)
    if alive:
        text = describe(alive)
        for proc in alive:  # we started them (they carry our tag), so we may stop them
            with contextlib.suppress(psutil.Error):
                proc.kill()
        pytest.fail(f"{what} left processes behind: {text}", pytrace=False)


@pytest.fixture(autouse=True)
def no_leaked_processes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TEST_TAG_ENV, tag)
    yield
    _check_no_leak(TEST_TAG_ENV, tag, "test")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop stray config overrides from the caller's environment."""
    for name in list(os.environ):
        if name.startswith("SWARM_POOL_") and name not in _KEEP_ENV:
            monkeypatch.delenv(name)


_KEEP_ENV = {"SWARM_POOL_HOME", "SWARM_POOL_OPENCODE", TEST_TAG_ENV, SESSION_TAG_ENV}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[ScratchPostgres]:
    """One throw-away PostgreSQL server for the session (a schema per store). Skipped
    only where the server binaries cannot be had; a failure where they can."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        strict = must_not_skip()
        message = "no PostgreSQL server binaries (initdb, pg_ctl) on this machine"
        if strict:
            pytest.fail(f"{message}, and {strict}: run scripts/setup", pytrace=False)
        pytest.skip(f"{message}; scripts/setup installs them on Debian")
    server = ScratchPostgres(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaked = tagged_processes(SESSION_TAG_ENV, _SESSION_TAG)
    if leaked:
        _gone, alive = psutil.wait_procs(leaked, timeout=5)
        if alive:
            print(f"\nswarm-pool tests leaked processes: {describe(alive)}")
            for proc in alive:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            session.exitstatus = 1
    # Only once nothing of ours runs any more: the per-user folder held their leases. An
    # xdist worker leaves it to the controller, which ends after every worker.
    if not _XDIST_WORKER:
        shutil.rmtree(_HOME, ignore_errors=True)


# Modules that run longest, longest first (measured with --durations). Under xdist's
# --dist loadfile each module goes whole to one worker in this order, so the long ones
# start at once and the short ones fill in around them instead of trailing at the end.
_LONGEST_FIRST = (
    "test_hosts_e2e",  # two pools on PostgreSQL, an 8-task and a 4-task plan: ~4-5 min
    "test_lifecycle_e2e",
    "test_workers_e2e",
    "test_security_e2e",
    "test_gateway_e2e",
    "test_busy_not_dead",
    "test_workers_run",
    "test_pool_e2e",
    "test_view_pool",
    "test_mcp_e2e",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}

    def key(item: pytest.Item) -> int:
        return rank.get(item.path.stem, len(rank))

    items.sort(key=key)  # stable: the order inside a module stays as written
