"""What the dashboard shows, gathered as plain data: store + pool state file + psutil.

Owns ``Snapshot`` (and its row types) and ``SnapshotSource``, which takes one snapshot
per frame. Everything it does is read-only and bounded: the pool's own status builder
(``pool.api.pool_status`` without its live part, so no HTTP call ever reaches an
instance), psutil on each instance's process tree (CPU % measured between two frames,
never by sleeping, except once to prime ``--once``), and a few indexed store queries
with row limits (the latest N events, the running workers, the poll of the few most
recently active epics, the active reservations). "Busy sessions" therefore comes from
the store: running workers on the instance whose session the watchers last saw busy.
``live_stats`` is the psutil side of ``metrics``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from swarm_pool.config import Config
from swarm_pool.errors import SwarmPoolError
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.process import ProcRef
from swarm_pool.pool.state import InstanceState
from swarm_pool.store import Store, StoredEvent, open_project_store
from swarm_pool.store.core import project_store_exists
from swarm_pool.store.events import EVENT_TYPES, now_ms
from swarm_pool.store.hosts import hosts_overview
from swarm_pool.store.lifecycle import LIVE
from swarm_pool.view.metrics import LiveStats

# Dashboard order of poll's groups: what needs attention first.
GROUP_ORDER = (
    "in_progress",
    "blocked",
    "pending",
    "failed",
    "completed_needs_review",
    "completed",
)
FAILURE_TYPES = frozenset(
    {
        "worker_failed",
        "instance_exited",
        "instance_fatal",
        "instance_unhealthy",
        "session_error",
    }
)
CONFLICT_TYPES = frozenset({"file_conflict", "merge_conflict"})
WARNING_TYPES = frozenset({"worker_blocked", "worker_needs_review"})
GOOD_TYPES = frozenset({"worktree_merged", "instance_ready", "pool_started"})
# Event fields shown in the summary line, in this order.
_SUMMARY_FIELDS = (
    "epic_id",
    "bead_id",
    "cell_id",
    "instance",
    "holder",
    "requested",
    "pattern",
    "status",
    "approved",
    "progress_percent",
    "attempt",
    "rss_mb",
    "cpu_percent",
    "commit",
    "title",
    "subject",
    "message",
    "summary",
    "reason",
    "error",
)
_SKIP_IN_SUMMARY = {"epic_id"}  # the bead id already names its epic

# Periodic resource samples would push every real event out of the "last events" panel;
# they feed `metrics` and the instances panel instead.
_EVENT_PANEL_TYPES = sorted(EVENT_TYPES - {"instance_stats"})


@dataclass(frozen=True)
class InstanceRow:
    name: str
    kind: str
    state: str
    port: int | None
    pid: int | None
    rss_mb: float | None
    cpu_percent: float | None
    busy_sessions: int | None
    restarts: int
    uptime_s: float | None
    draining: bool = False
    reason: str = ""
    last_sign_s: float | None = None  # since its last answer or stream event


@dataclass(frozen=True)
class WorkerRow:
    bead_id: str
    title: str
    group: str
    status: str
    progress_percent: int
    instance: str
    attempt: int
    duration_ms: int | None
    last_message: str
    merged: bool = False


@dataclass(frozen=True)
class EpicBlock:
    epic_id: str
    title: str
    counts: dict[str, int]
    workers: list[WorkerRow]
    hidden: int = 0  # workers left out for lack of room

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class ReservationRow:
    holder: str
    patterns: list[str]
    exclusive: bool
    bead_id: str | None
    expires_in_s: int


@dataclass(frozen=True)
class EventRow:
    seq: int
    timestamp: int
    type: str
    level: str  # failure | conflict | warning | good | info
    text: str


@dataclass(frozen=True)
class SlotRow:
    slot: str
    instance: str
    state: str  # free | busy | dirty
    bead_id: str
    path: str


@dataclass(frozen=True)
class Snapshot:
    project: str
    taken_at: int
    supervisor: dict[str, Any]
    instances: list[InstanceRow] = field(default_factory=list)
    epics: list[EpicBlock] = field(default_factory=list)
    other_epics: int = 0
    reservations: list[ReservationRow] = field(default_factory=list)
    reservations_hidden: int = 0
    events: list[EventRow] = field(default_factory=list)
    last_seq: int = 0
    store_present: bool = False
    problems: list[str] = field(default_factory=list)
    slots: list[SlotRow] = field(default_factory=list)
    # Several hosts on a PostgreSQL store (``Hosts.overview``); empty on one host.
    hosts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Limits:
    """Row budgets, so a frame stays bounded however large the swarm."""

    epics: int = 3
    workers: int = 24
    reservations: int = 8
    events: int = 12

    @classmethod
    def for_height(cls, height: int | None, instances: int = 2) -> Limits:
        if height is None:
            return cls()
        # Header, four panel borders and table headers take ~14 lines; the rest is
        # shared out, workers first.
        spare = max(12, height - 14 - instances)
        return cls(
            epics=3,
            workers=max(4, spare * 5 // 10 - 2),
            reservations=max(2, spare * 2 // 10),
            events=max(4, spare * 3 // 10),
        )


# --- psutil ---------------------------------------------------------------------------


def _tree(leader: psutil.Process) -> list[psutil.Process]:
    procs = [leader]
    with contextlib.suppress(psutil.Error):
        procs.extend(leader.children(recursive=True))
    return procs


def _vm_hwm_mb(pid: int) -> float | None:
    """The kernel's peak RSS of one process (Linux ``VmHWM``), in MB."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def live_stats(ref: ProcRef) -> LiveStats | None:
    """RSS, peak RSS and mean CPU of the current run of ``ref``'s tree (None if gone)."""
    leader = ref.process()
    if leader is None:
        return None
    rss = 0
    peak = 0.0
    peak_known = True
    cpu_s = 0.0
    for proc in _tree(leader):
        with contextlib.suppress(psutil.Error):
            rss += proc.memory_info().rss
            times = proc.cpu_times()
            cpu_s += times.user + times.system
            if proc.pid == leader.pid:  # children already reaped by the leader
                cpu_s += times.children_user + times.children_system
            hwm = _vm_hwm_mb(proc.pid)
            if hwm is None:
                peak_known = False
            else:
                peak += hwm
    wall = max(1e-3, time.time() - ref.create_time)
    rss_mb = rss / 2**20
    return LiveStats(
        rss_mb=round(rss_mb, 1),
        peak_rss_mb=round(max(peak, rss_mb), 1) if peak_known else None,
        mean_cpu_percent=round(100.0 * cpu_s / wall, 1),
    )


class CpuSampler:
    """CPU % of process trees between two calls, without sleeping (psutil's interval=None
    mode on Process objects kept from one frame to the next)."""

    def __init__(self) -> None:
        self._procs: dict[tuple[int, float], psutil.Process] = {}

    def _cached(self, proc: psutil.Process) -> tuple[psutil.Process, bool]:
        try:
            key = (proc.pid, proc.create_time())
        except psutil.Error:
            return proc, False
        known = self._procs.get(key)
        if known is not None:
            return known, True
        self._procs[key] = proc
        return proc, False

    def sample(self, ref: ProcRef) -> tuple[float | None, float | None]:
        """``(rss_mb, cpu_percent)`` of the tree; CPU is None on the first look."""
        leader = ref.process()
        if leader is None:
            return None, None
        rss = 0
        cpu = 0.0
        leader_known = False
        for proc in _tree(leader):
            cached, known = self._cached(proc)
            with contextlib.suppress(psutil.Error):
                rss += cached.memory_info().rss
                value = cached.cpu_percent(None)
                if known:
                    cpu += value
                if cached.pid == leader.pid:
                    leader_known = known
        return round(rss / 2**20, 1), round(cpu, 1) if leader_known else None

    def forget_dead(self) -> None:
        for key, proc in list(self._procs.items()):
            if not proc.is_running():
                del self._procs[key]


# --- store ----------------------------------------------------------------------------


def event_level(stored: StoredEvent) -> str:
    ev = stored.event
    if stored.type in CONFLICT_TYPES:
        return "conflict"
    if stored.type in FAILURE_TYPES:
        return "failure"
    if stored.type == "worker_completed":
        status = getattr(ev, "status", "success")
        return {"success": "good", "failed": "failure"}.get(status, "warning")
    if stored.type == "review_completed":
        return "good" if getattr(ev, "approved", False) else "failure"
    if stored.type in WARNING_TYPES:
        return "warning"
    if stored.type in GOOD_TYPES:
        return "good"
    return "info"


def event_summary(stored: StoredEvent, width: int = 200) -> str:
    data = stored.event.model_dump(mode="json")
    parts = []
    for key in _SUMMARY_FIELDS:
        value = data.get(key)
        if value in (None, "", []) or (key in _SKIP_IN_SUMMARY and data.get("bead_id")):
            continue
        if key == "attempt" and value == 1:
            continue
        if stored.type == "file_conflict" and key == "requested":
            held = [f"{c.get('pattern')} ({c.get('holder')})" for c in data.get("conflicts", [])]
            value = f"{','.join(map(str, value))} held: {'; '.join(held)}"
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)
        text = " ".join(str(value).split())
        parts.append(text if key in ("message", "summary", "reason", "error") else f"{key}={text}")
    return " ".join(parts)[:width]


def _reservation_rows(store: Store, limit: int, now: int) -> tuple[list[ReservationRow], int]:
    groups: dict[tuple[str, str | None, bool], list[Any]] = {}
    for r in store.reservations.active():
        groups.setdefault((r.holder, r.bead_id, r.exclusive), []).append(r)
    rows = [
        ReservationRow(
            holder=holder,
            patterns=[r.pattern for r in items],
            exclusive=exclusive,
            bead_id=bead,
            expires_in_s=max(0, (min(r.expires_at for r in items) - now) // 1000),
        )
        for (holder, bead, exclusive), items in groups.items()
    ]
    rows.sort(key=lambda r: (r.expires_in_s, r.holder))
    return rows[:limit], max(0, len(rows) - limit)


def _recent_epics(store: Store) -> list[str]:
    """Epics by latest worker activity: live workers first, then recent worker events."""
    order: dict[str, int] = {}
    for w in store.workers.list():
        if w.status in LIVE:
            order[w.epic_id] = max(order.get(w.epic_id, 0), w.updated_at or 0)
    live = dict(order)
    recent = store.read(
        types=["worker_spawned", "worker_completed", "worker_failed", "epic_created"],
        descending=True,
        limit=200,
    )
    for s in recent:
        epic = getattr(s.event, "epic_id", None)
        if epic and epic not in order:
            order[epic] = s.timestamp
    return sorted(order, key=lambda e: (e not in live, -order[e]))


class SnapshotSource:
    """Takes snapshots of one project; keeps its store connection and CPU samplers."""

    def __init__(self, paths: ProjectPaths, config: Config | None = None) -> None:
        self.paths = paths
        self.config = config or Config()
        self._store: Store | None = None
        self._cpu = CpuSampler()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> SnapshotSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def store(self) -> Store | None:
        """The project's store once it exists (never created from here)."""
        if self._store is None and project_store_exists(self.paths, self.config):
            self._store = open_project_store(self.paths, self.config)
        return self._store

    def prime(self) -> None:
        """Start CPU measurement, so the next snapshot has CPU figures."""
        for ref in self._refs().values():
            self._cpu.sample(ref)

    def _refs(self) -> dict[str, ProcRef]:
        from swarm_pool.pool.state import read_state

        try:
            state = read_state(self.paths.state_file)
        except SwarmPoolError:
            return {}
        if state is None:
            return {}
        return {rec.name: rec.ref for rec in state.instances if rec.ref is not None}

    def take(self, limits: Limits | None = None) -> Snapshot:
        limits = limits or Limits()
        problems: list[str] = []
        supervisor: dict[str, Any] = {"pid": None, "running": False, "phase": None}
        instances: list[InstanceRow] = []
        running_workers: list[Any] = []
        store = None
        try:
            store = self.store()
        except SwarmPoolError as e:
            problems.append(f"store: {e}")
        if store is not None:
            try:
                running_workers = store.workers.list(status="running")
            except SwarmPoolError as e:
                problems.append(f"store: {e}")
                store = None
        busy: dict[str, int] = {}
        for w in running_workers:
            if w.session_status in ("busy", "retry"):
                busy[w.instance] = busy.get(w.instance, 0) + 1
        try:
            supervisor, instances = self._instances(busy)
        except SwarmPoolError as e:
            problems.append(f"pool: {e}")
        now = now_ms()
        snap = Snapshot(
            project=str(self.paths.root),
            taken_at=now,
            supervisor=supervisor,
            instances=instances,
            problems=problems,
        )
        if store is None:
            return snap
        try:
            epics, other = self._epics(store, limits)
            reservations, hidden = _reservation_rows(store, limits.reservations, now)
            events = [
                EventRow(
                    seq=s.seq,
                    timestamp=s.timestamp,
                    type=s.type,
                    level=event_level(s),
                    text=event_summary(s),
                )
                for s in store.read(types=_EVENT_PANEL_TYPES, descending=True, limit=limits.events)
            ]
            last_seq = store.last_seq()
            slots = [
                SlotRow(s.slot, s.instance, s.state, s.bead_id, s.path) for s in store.slots.list()
            ]
            hosts = hosts_overview(store, self.config.pool.hosts_stale_s)
        except SwarmPoolError as e:  # shown in the frame; the next one tries again
            problems.append(f"store: {e}")
            return snap
        return Snapshot(
            project=snap.project,
            taken_at=now,
            supervisor=supervisor,
            instances=instances,
            epics=epics,
            other_epics=other,
            reservations=reservations,
            reservations_hidden=hidden,
            events=events,
            last_seq=last_seq,
            store_present=True,
            problems=problems,
            slots=slots,
            hosts=hosts,
        )

    def _instances(self, busy: dict[str, int]) -> tuple[dict[str, Any], list[InstanceRow]]:
        from swarm_pool.pool.api import pool_status

        status = pool_status(self.paths, live=False)
        refs = self._refs()
        rows = []
        for view in status["instances"]:
            ref = refs.get(view["name"])
            rss = cpu = None
            if (
                ref is not None
                and view["pid"] == ref.pid
                and view["state"] != InstanceState.STOPPED
            ):
                rss, cpu = self._cpu.sample(ref)
            rows.append(
                InstanceRow(
                    name=view["name"],
                    kind=view["kind"],
                    state=view["state"],
                    port=view["port"],
                    pid=view["pid"],
                    rss_mb=rss,
                    cpu_percent=cpu,
                    busy_sessions=busy.get(view["name"], 0) if view["kind"] == "opencode" else None,
                    restarts=view["restarts"],
                    uptime_s=view["uptime_s"],
                    last_sign_s=view.get("last_sign_s"),
                    draining=bool(view.get("draining")),
                    reason=view.get("reason") or "",
                )
            )
        self._cpu.forget_dead()
        return dict(status["supervisor"]), rows

    def _epics(self, store: Store, limits: Limits) -> tuple[list[EpicBlock], int]:
        from swarm_pool.swarm.context import SwarmContext
        from swarm_pool.swarm.status import poll

        ctx = SwarmContext(paths=self.paths, config=self.config, store=store)
        epic_ids = _recent_epics(store)
        shown = epic_ids[: limits.epics]
        budget = limits.workers
        blocks = []
        for epic_id in shown:
            result = poll(ctx, epic_id)
            titles: dict[str, str] = {}
            epic_title = ""
            with contextlib.suppress(SwarmPoolError):
                epic = store.hive.get_epic(epic_id)
                epic_title = epic.title
                titles = {c.id: c.title for c in epic.cells}
            workers = [
                WorkerRow(
                    bead_id=w.bead_id,
                    title=titles.get(w.bead_id, ""),
                    group=w.group,
                    status=w.status,
                    progress_percent=w.progress_percent,
                    instance=w.instance,
                    attempt=w.attempt,
                    duration_ms=w.duration_ms,
                    last_message=_last_message(w),
                    merged=w.merged,
                )
                for group in GROUP_ORDER
                for w in result.groups.get(group, [])
            ]
            # Every shown epic gets a couple of rows even when the budget is spent.
            room = max(2, budget)
            blocks.append(
                EpicBlock(
                    epic_id=epic_id,
                    title=epic_title,
                    counts={g: n for g, n in result.counts.items() if n},
                    workers=workers[:room],
                    hidden=max(0, len(workers) - room),
                )
            )
            budget -= min(room, len(workers)) + 1
        return blocks, max(0, len(epic_ids) - len(shown))


def _last_message(w: Any) -> str:
    """The most telling text of a worker: why it failed or waits, else its latest news."""
    candidates: tuple[Any, ...]
    if w.group in ("completed", "completed_needs_review"):
        candidates = (w.summary, w.last_message)
    else:
        candidates = (w.error, w.blocked_reason, w.last_message)
    for text in candidates:
        if text:
            return " ".join(str(text).split())
    return ""
