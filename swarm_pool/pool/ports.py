"""The cross-process port allocator shared by every pool of this user.

Leases live in one JSON file under ``user_state_dir()/ports``, read and written only while
holding a file lock beside it, so two pools started in the same second never get the same
port. A lease names its owners by pid and ``create_time`` (typically the supervisor and
the instance using the port): while any owner lives the port stays taken, even across
restarts of the instance, and once all are gone the port is reclaimed. A port that some
foreign process listens on (the bind probe on 127.0.0.1 fails) is skipped. Free ports are
picked at random within the range, starting from the caller's preferred port if it is
still free, so independent lease files (other users, test sessions) rarely collide either.
Room: pool.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import psutil

from swarm_pool.errors import PortError, PortInUseError, PortsExhaustedError
from swarm_pool.paths import user_state_dir

HOST = "127.0.0.1"
# pid create_time as psutil reports it can differ in the last digits between readings.
CT_TOLERANCE = 0.05


@dataclass(frozen=True)
class ProcRef:
    """A process identity that survives pid reuse: pid plus its start time.

    One class for both jobs: a port lease's owner and a reference to a child we started
    (``process`` re-exports it), so a recycled pid is never taken for ours.
    """

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcRef:
        return cls(pid, psutil.Process(pid).create_time())

    @classmethod
    def me(cls) -> ProcRef:
        return cls.of(os.getpid())

    def process(self) -> psutil.Process | None:
        """The live, non-zombie process this ref names, or None."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > CT_TOLERANCE:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None

    def alive(self) -> bool:
        return self.process() is not None

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time}


# A lease's owner is a process identity; the lease vocabulary keeps its own word for it.
Owner = ProcRef


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether we could listen on ``host:port`` right now (SO_REUSEADDR, like servers do)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1)
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            return False
        raise
    finally:
        sock.close()
    return True


def wait_port_free(port: int, timeout: float, host: str = HOST) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if port_is_free(port, host):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


class PortLeases:
    """Lease, re-own and release ports in ``[port_min, port_max]`` under a file lock."""

    def __init__(
        self,
        port_min: int,
        port_max: int,
        *,
        directory: Path | None = None,
        lock_timeout_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        if port_min > port_max:
            raise PortError(f"empty port range {port_min}-{port_max}")
        self.port_min = port_min
        self.port_max = port_max
        self.directory = directory or (user_state_dir() / "ports")
        self.lock_timeout_s = lock_timeout_s
        self._rng = rng or random.Random()

    @property
    def file(self) -> Path:
        return self.directory / "leases.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Yield the live leases (dead owners dropped); whatever is left is written back."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise PortError(f"cannot create the port lease folder {self.directory}: {e}") from e
        lock = filelock.FileLock(str(self.directory / "leases.lock"), thread_local=False)
        try:
            lock.acquire(timeout=self.lock_timeout_s)
        except filelock.Timeout as e:
            raise PortError(f"timed out waiting for the port lease lock {lock.lock_file}") from e
        try:
            leases = self._read()
            live = {port: lease for port, lease in leases.items() if _lease_alive(lease)}
            yield live
            self._write(live)
        finally:
            lock.release()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # A corrupt lease file must not wedge every pool; the bind probe still guards.
            return {}
        return data.get("leases", {}) if isinstance(data, dict) else {}

    def _write(self, leases: dict[str, Any]) -> None:
        tmp = self.file.with_name(f".leases.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"version": 1, "leases": leases}, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.file)

    def acquire(
        self, owners: Sequence[Owner], *, prefer: int | None = None, label: str = ""
    ) -> int:
        """Lease a free port for ``owners``; ``prefer`` first when it is free."""
        with self._locked() as leases:
            for port in self._candidates(prefer):
                if str(port) in leases or not port_is_free(port):
                    continue
                leases[str(port)] = _lease(owners, label)
                return port
            taken = len([p for p in leases if self.port_min <= int(p) <= self.port_max])
        size = self.port_max - self.port_min + 1
        raise PortsExhaustedError(
            f"no free port in {self.port_min}-{self.port_max} ({taken} of {size} leased, the "
            f"rest in use by other processes); widen pool.port_min/pool.port_max"
        )

    def claim(self, port: int, owners: Sequence[Owner], *, label: str = "") -> None:
        """Take ``port`` for ``owners`` (a fixed or adopted port); PortInUseError if taken.

        A port already leased to one of ``owners`` is re-owned (owners replaced), which is
        how an adopted instance's lease passes to the new supervisor.
        """
        with self._locked() as leases:
            lease = leases.get(str(port))
            if lease is not None and not _shares_owner(lease, owners):
                raise PortInUseError(
                    f"port {port} is leased to another pool ({lease.get('label') or 'unknown'})"
                )
            if lease is None and not port_is_free(port):
                raise PortInUseError(f"port {port} is in use by another process")
            leases[str(port)] = _lease(owners, label or (lease or {}).get("label", ""))

    def set_owners(self, port: int, owners: Sequence[Owner]) -> None:
        """Replace the owners of our lease on ``port`` (e.g. after relaunching an instance)."""
        with self._locked() as leases:
            lease = leases.get(str(port))
            label = lease.get("label", "") if lease else ""
            leases[str(port)] = _lease(owners, label)

    def release(self, port: int, owners: Sequence[Owner] = ()) -> None:
        """Drop the lease on ``port``; with ``owners``, only when it is theirs."""
        with self._locked() as leases:
            lease = leases.get(str(port))
            if lease is None:
                return
            if owners and not _shares_owner(lease, owners):
                return
            del leases[str(port)]

    def snapshot(self) -> dict[int, dict[str, Any]]:
        with self._locked() as leases:
            return {int(p): dict(lease) for p, lease in leases.items()}

    def _candidates(self, prefer: int | None) -> Iterator[int]:
        if prefer is not None and self.port_min <= prefer <= self.port_max:
            yield prefer
        size = self.port_max - self.port_min + 1
        start = self._rng.randrange(size)
        for i in range(size):
            port = self.port_min + (start + i) % size
            if port != prefer:
                yield port


def _lease(owners: Sequence[Owner], label: str) -> dict[str, Any]:
    return {"owners": [o.to_dict() for o in owners], "label": label, "at": time.time()}


def _owners(lease: dict[str, Any]) -> list[Owner]:
    out = []
    for raw in lease.get("owners", []):
        with contextlib.suppress(KeyError, TypeError, ValueError):
            out.append(Owner(int(raw["pid"]), float(raw["create_time"])))
    return out


def _lease_alive(lease: Any) -> bool:
    return isinstance(lease, dict) and any(o.alive() for o in _owners(lease))


def _shares_owner(lease: dict[str, Any], owners: Sequence[Owner]) -> bool:
    theirs = _owners(lease)
    return any(
        o.pid == t.pid and abs(o.create_time - t.create_time) <= CT_TOLERANCE
        for o in owners
        for t in theirs
    )
