"""What the dashboard shows, gathered as plain data: store + pool state file
+ psutil.

Room: view.

Owns ``Snapshot`` (and its row types), how an event is classed and summed up in one line
(``event_level``, ``event_summary``), and ``SnapshotSource``, which takes one snapshot
per frame. Everything it does is read-only and bounded: the pool's own status builder
(``pool.api.pool_status`` without its live part, so no HTTP call ever reaches an
instance), psutil on each instance's process tree (``procstats``: CPU % measured between
two frames, never by sleeping, except once to prime ``--once``), and a few indexed store
queries with row limits (the latest N events, the running workers, the poll of the few
most recently active epics, the active reservations). "Busy sessions" therefore comes
from the store: running workers on the instance whose session the watchers last saw busy.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from swarm_pool.config import Config
from swarm_pool.errors import SwarmPoolError
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.api import pool_status
from swarm_pool.pool.process import ProcRef
from swarm_pool.pool.state import InstanceState
from swarm_pool.store import Store, StoredEvent, open_project_store
from swarm_pool.store.core import project_store_exists
from swarm_pool.store.events import EVENT_TYPES, now_ms
from swarm_pool.store.hosts import hosts_overview
from swarm_pool.store.lifecycle import LIVE, WorkerStatus
from swarm_pool.swarm.context import SwarmContext
from swarm_pool.swarm.status import poll
from swarm_pool.view.procstats import CpuSampler, pool_refs

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


# The InstanceRow fields copied as they are from the pool's status view.
_STATUS_FIELDS = ("name", "kind", "state", "port", "pid", "restarts", "uptime_s")


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


# The WorkerRow fields copied as they are from poll's WorkerInfo.
_WORKER_FIELDS = (
    "bead_id",
    "group",
    "status",
    "progress_percent",
    "instance",
    "attempt",
    "duration_ms",
    "merged",
)


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


class EventLevel(StrEnum):
    """How an event is highlighted in the dashboard's event panel."""

    FAILURE = "failure"
    CONFLICT = "conflict"
    WARNING = "warning"
    GOOD = "good"
    INFO = "info"


@dataclass(frozen=True)
class EventRow:
    seq: int
    timestamp: int
    type: str
    level: EventLevel
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


# --- store ----------------------------------------------------------------------------


def event_level(stored: StoredEvent) -> EventLevel:
    ev = stored.event
    if stored.type in CONFLICT_TYPES:
        return EventLevel.CONFLICT
    if stored.type in FAILURE_TYPES:
        return EventLevel.FAILURE
    if stored.type == "worker_completed":
        status = getattr(ev, "status", "success")
        by_status = {"success": EventLevel.GOOD, "failed": EventLevel.FAILURE}
        return by_status.get(status, EventLevel.WARNING)
    if stored.type == "review_completed":
        return EventLevel.GOOD if getattr(ev, "approved", False) else EventLevel.FAILURE
    if stored.type in WARNING_TYPES:
        return EventLevel.WARNING
    if stored.type in GOOD_TYPES:
        return EventLevel.GOOD
    return EventLevel.INFO


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
        return pool_refs(self.paths)

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
                running_workers = store.workers.list(status=WorkerStatus.RUNNING)
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
            found = self._from_store(store, limits, now)
        except SwarmPoolError as e:  # shown in the frame; the next one tries again
            problems.append(f"store: {e}")
            return snap
        return replace(snap, store_present=True, **found)

    def _from_store(self, store: Store, limits: Limits, now: int) -> dict[str, Any]:
        """The ``Snapshot`` fields read from the store, by field name."""
        epics, other = self._epics(store, limits)
        reservations, hidden = _reservation_rows(store, limits.reservations, now)
        events = [
            EventRow(s.seq, s.timestamp, s.type, level=event_level(s), text=event_summary(s))
            for s in store.read(types=_EVENT_PANEL_TYPES, descending=True, limit=limits.events)
        ]
        return {
            "epics": epics,
            "other_epics": other,
            "reservations": reservations,
            "reservations_hidden": hidden,
            "events": events,
            "last_seq": store.last_seq(),
            "slots": [
                SlotRow(s.slot, s.instance, s.state, s.bead_id, s.path) for s in store.slots.list()
            ],
            "hosts": hosts_overview(store, self.config.pool.hosts_stale_s),
        }

    def _instances(self, busy: dict[str, int]) -> tuple[dict[str, Any], list[InstanceRow]]:
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
                    **{key: view[key] for key in _STATUS_FIELDS},
                    rss_mb=rss,
                    cpu_percent=cpu,
                    busy_sessions=busy.get(view["name"], 0) if view["kind"] == "opencode" else None,
                    last_sign_s=view.get("last_sign_s"),
                    draining=bool(view.get("draining")),
                    reason=view.get("reason") or "",
                )
            )
        self._cpu.forget_dead()
        return dict(status["supervisor"]), rows

    def _epics(self, store: Store, limits: Limits) -> tuple[list[EpicBlock], int]:
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
                    **{key: getattr(w, key) for key in _WORKER_FIELDS},
                    title=titles.get(w.bead_id, ""),
                    last_message=_last_message(w),
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
