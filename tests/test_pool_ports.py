"""The cross-process port allocator: leases, foreign listeners, dead owners, races."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from swarm_pool.errors import PortInUseError, PortsExhaustedError
from swarm_pool.pool.ports import Owner, PortLeases, port_is_free


def free_range(width: int) -> tuple[int, int]:
    """A run of ``width`` ports nobody listens on right now (from a high, quiet area)."""
    for start in range(49200, 49900, width):
        if all(port_is_free(p) for p in range(start, start + width)):
            return start, start + width - 1
    raise AssertionError("no free port range for the test")


def dead_owner() -> Owner:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    owner = Owner.of(proc.pid)
    proc.wait()
    return owner


def test_leases_are_distinct_and_recorded(tmp_path: Path) -> None:
    lo, hi = free_range(4)
    leases = PortLeases(lo, hi, directory=tmp_path)
    me = Owner.me()
    ports = {leases.acquire([me], label=f"t{i}") for i in range(4)}
    assert ports == set(range(lo, hi + 1))
    with pytest.raises(PortsExhaustedError, match=f"no free port in {lo}-{hi}"):
        leases.acquire([me])
    data = json.loads((tmp_path / "leases.json").read_text())
    assert set(data["leases"]) == {str(p) for p in ports}
    assert (os.stat(tmp_path / "leases.json").st_mode & 0o777) == 0o600


def test_foreign_listener_is_skipped(tmp_path: Path) -> None:
    lo, hi = free_range(2)
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", lo))
        foreign.listen()
        leases = PortLeases(lo, hi, directory=tmp_path)
        assert leases.acquire([Owner.me()], prefer=lo) == hi
        with pytest.raises(PortsExhaustedError):
            leases.acquire([Owner.me()])


def test_dead_owners_port_is_reclaimed(tmp_path: Path) -> None:
    lo, _hi = free_range(1)
    leases = PortLeases(lo, lo, directory=tmp_path)
    ghost = dead_owner()
    assert leases.acquire([ghost]) == lo
    # Its only owner is gone, so the port is free again.
    assert leases.acquire([Owner.me()]) == lo


def test_any_live_owner_keeps_the_lease(tmp_path: Path) -> None:
    lo, _hi = free_range(1)
    leases = PortLeases(lo, lo, directory=tmp_path)
    assert leases.acquire([dead_owner(), Owner.me()]) == lo
    with pytest.raises(PortsExhaustedError):
        leases.acquire([Owner.me()])
    leases.release(lo, [Owner.me()])
    assert leases.acquire([Owner.me()]) == lo


def test_preferred_port_is_kept_when_free(tmp_path: Path) -> None:
    lo, hi = free_range(8)
    leases = PortLeases(lo, hi, directory=tmp_path)
    me = Owner.me()
    for _ in range(5):
        port = leases.acquire([me], prefer=lo + 5)
        assert port == lo + 5
        leases.release(port, [me])


def test_claim_rules(tmp_path: Path) -> None:
    lo, hi = free_range(2)
    leases = PortLeases(lo, hi, directory=tmp_path)
    me = Owner.me()
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = Owner.of(helper.pid)
        leases.claim(lo, [other], label="someone else")
        with pytest.raises(PortInUseError, match="leased to another pool"):
            leases.claim(lo, [me])
        # Sharing an owner re-owns the lease (how adoption hands it over).
        leases.claim(lo, [me, other])
        leases.set_owners(lo, [me])
        assert leases.snapshot()[lo]["owners"] == [me.to_dict()]
    finally:
        helper.kill()
        helper.wait()
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", hi))
        foreign.listen()
        with pytest.raises(PortInUseError, match="in use by another process"):
            leases.claim(hi, [me])


def test_release_only_our_own_lease(tmp_path: Path) -> None:
    lo, _hi = free_range(1)
    leases = PortLeases(lo, lo, directory=tmp_path)
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        leases.claim(lo, [Owner.of(helper.pid)])
        leases.release(lo, [Owner.me()])  # not ours: kept
        assert lo in leases.snapshot()
    finally:
        helper.kill()
        helper.wait()


def test_concurrent_processes_never_share_a_port(tmp_path: Path) -> None:
    lo, hi = free_range(12)
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from swarm_pool.pool.ports import Owner, PortLeases\n"
        f"leases = PortLeases({lo}, {hi}, directory=Path(sys.argv[1]))\n"
        "ports = [leases.acquire([Owner.me()]) for _ in range(3)]\n"
        "print(' '.join(map(str, ports)), flush=True)\n"
        "sys.stdin.read()\n"  # keep the leases alive until the test has read them all
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        got: list[int] = []
        for proc in procs:
            assert proc.stdout is not None
            got += [int(p) for p in proc.stdout.readline().split()]
    finally:
        for proc in procs:
            proc.communicate("", timeout=30)
    assert len(got) == 12
    assert len(set(got)) == 12


def test_corrupt_lease_file_does_not_wedge(tmp_path: Path) -> None:
    lo, hi = free_range(2)
    (tmp_path / "leases.json").write_text("{not json")
    leases = PortLeases(lo, hi, directory=tmp_path)
    assert lo <= leases.acquire([Owner.me()]) <= hi
