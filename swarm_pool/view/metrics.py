"""Swarm metrics from the event log: pure functions over ``StoredEvent`` lists.

Room: view.

Owns the definitions, so they can be checked by hand against a store:

- per epic (from worker and session events): an attempt is one ``worker_spawned``; its
  *duration* is its outcome event's ``duration_ms`` when recorded, else the outcome's
  timestamp minus the spawn's (outcomes: ``worker_completed``, ``worker_failed``,
  ``worker_needs_review``; the first one per bead and attempt); p50/p95 interpolate
  linearly between the closest ranks. A bead's *outcome* is its latest outcome event,
  counted only when it belongs to the bead's latest attempt (a bead being retried is
  not finished); *success rate* = beads whose outcome is ``worker_completed`` with
  status success / beads with an outcome. *Retries* = ``worker_retried`` events, also
  split by cause (task, infra).
  *Idle to detected* = for each attempt with an outcome, the time from the start of the
  idle stretch its session was in when the outcome was recorded to the outcome; 0 when
  the session was still busy (``swarm_complete`` arrived first); attempts whose session
  reported no status at all are left out.
- per instance: *restarts* = ``instance_restarted`` events; *sessions served* =
  ``worker_spawned`` events naming it; *peak RSS* = the largest RSS seen in
  ``instance_stats`` samples or, for the current run, live (the sum of the kernel's
  per-process high-water marks over the tree: an upper bound, as the processes need
  not peak together); *mean CPU* = the mean of the samples' ``cpu_percent`` when there
  are any, else the current run's CPU time over its wall time. Each figure says where
  it came from (``*_source``: "samples", "live", "samples+live").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from swarm_pool.store.events import FailureCause
from swarm_pool.store.recorder import StoredEvent

OUTCOME_TYPES = frozenset({"worker_completed", "worker_failed", "worker_needs_review"})
# What `metrics` reads from the store: everything the definitions above use.
METRIC_EVENT_TYPES = (
    "worker_spawned",
    "worker_retried",
    "worker_queued",
    "worker_completed",
    "worker_failed",
    "worker_needs_review",
    "session_status",
    "instance_started",
    "instance_restarted",
    "instance_exited",
    "instance_stats",
)


@dataclass(frozen=True)
class LiveStats:
    """What psutil knows about an instance's current run (see ``procstats.live_stats``)."""

    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    mean_cpu_percent: float | None = None


@dataclass(frozen=True)
class EpicMetrics:
    epic_id: str
    workers: int
    attempts: int
    finished: int
    succeeded: int
    failed: int
    blocked: int
    needs_review: int
    success_rate: float | None
    retries: int  # both causes
    retries_task: int  # the task's own failures (under workers.max_retries)
    retries_infra: int  # its instance's death, restart or drain
    duration_samples: int
    duration_p50_ms: float | None
    duration_p95_ms: float | None
    idle_samples: int
    idle_to_detected_p50_ms: float | None
    idle_to_detected_p95_ms: float | None
    idle_to_detected_max_ms: float | None


@dataclass(frozen=True)
class InstanceMetrics:
    instance: str
    restarts: int
    exits: int
    sessions_served: int
    rss_samples: int
    peak_rss_mb: float | None
    peak_rss_source: str | None
    mean_cpu_percent: float | None
    cpu_source: str | None
    current_rss_mb: float | None


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-quantile (0..1) with linear interpolation between closest ranks, to 0.1."""
    xs = sorted(values)
    if not xs:
        return None
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 1)


def _get(stored: StoredEvent, name: str, default: Any = None) -> Any:
    return getattr(stored.event, name, default)


def _outcome(stored: StoredEvent) -> str:
    if stored.type == "worker_completed":
        status = _get(stored, "status", "success")
        return {"success": "succeeded", "failed": "failed", "blocked": "blocked"}[status]
    if stored.type == "worker_failed":
        return "failed"
    return "needs_review"


def _idle_to_detected(statuses: Sequence[StoredEvent], detected_at: int) -> int | None:
    """Time from the start of the idle stretch the session was in at ``detected_at``."""
    if not statuses:
        return None
    before = [s for s in statuses if s.timestamp <= detected_at]
    if not before or _get(before[-1], "status") != "idle":
        return 0
    start = before[-1].timestamp
    for s in reversed(before):
        if _get(s, "status") != "idle":
            break
        start = s.timestamp
    return max(0, detected_at - start)


@dataclass
class _EpicScan:
    """What one pass over the ordered events gathers for ``epic_metrics``."""

    spawns: dict[tuple[str, int], StoredEvent] = field(default_factory=dict)
    latest_attempt: dict[str, int] = field(default_factory=dict)
    epic_of: dict[str, str] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    infra_retries: dict[str, int] = field(default_factory=dict)
    first_outcome: dict[tuple[str, int], StoredEvent] = field(default_factory=dict)
    last_outcome: dict[str, StoredEvent] = field(default_factory=dict)
    statuses: dict[str, list[StoredEvent]] = field(default_factory=dict)

    def add(self, s: StoredEvent) -> None:
        if s.type == "session_status":
            self.statuses.setdefault(_get(s, "session_id"), []).append(s)
            return
        bead = _get(s, "bead_id")
        epic = _get(s, "epic_id")
        if not bead or not epic or not s.type.startswith("worker_"):
            return
        attempt = int(_get(s, "attempt", 1))
        if s.type in ("worker_spawned", "worker_retried", "worker_queued"):
            self.latest_attempt[bead] = max(self.latest_attempt.get(bead, 0), attempt)
        if s.type == "worker_spawned":
            self.epic_of[bead] = epic
            self.spawns.setdefault((bead, attempt), s)
        elif s.type == "worker_retried":
            self.retries[epic] = self.retries.get(epic, 0) + 1
            if _get(s, "cause") == FailureCause.INFRA:
                self.infra_retries[epic] = self.infra_retries.get(epic, 0) + 1
        elif s.type in OUTCOME_TYPES:
            self.epic_of.setdefault(bead, epic)
            self.first_outcome.setdefault((bead, attempt), s)
            self.last_outcome[bead] = s

    def outcome_counts(self, beads: Iterable[str]) -> dict[str, int]:
        """Outcomes of the beads whose latest outcome belongs to their latest attempt."""
        counts = {"succeeded": 0, "failed": 0, "blocked": 0, "needs_review": 0}
        for bead in beads:
            last = self.last_outcome.get(bead)
            if last is None or int(_get(last, "attempt", 1)) < self.latest_attempt.get(bead, 1):
                continue
            counts[_outcome(last)] += 1
        return counts

    def timings(self, epic: str) -> tuple[int, list[float], list[float]]:
        """``(attempts, durations, idle-to-detected latencies)`` of the epic's attempts."""
        durations: list[float] = []
        idles: list[float] = []
        attempts = 0
        for (bead, attempt), spawn in self.spawns.items():
            if self.epic_of.get(bead) != epic:
                continue
            attempts += 1
            done = self.first_outcome.get((bead, attempt))
            if done is None:
                continue
            given = _get(done, "duration_ms")
            durations.append(
                float(given if given is not None else done.timestamp - spawn.timestamp)
            )
            session = _get(spawn, "session_id")
            latency = _idle_to_detected(self.statuses.get(session, []), done.timestamp)
            if latency is not None:
                idles.append(float(latency))
        return attempts, durations, idles

    def metrics(self, epic: str) -> EpicMetrics:
        beads = sorted(b for b, e in self.epic_of.items() if e == epic)
        counts = self.outcome_counts(beads)
        attempts, durations, idles = self.timings(epic)
        finished = sum(counts.values())
        retries, infra = self.retries.get(epic, 0), self.infra_retries.get(epic, 0)
        return EpicMetrics(
            epic_id=epic,
            workers=len(beads),
            attempts=attempts,
            finished=finished,
            succeeded=counts["succeeded"],
            failed=counts["failed"],
            blocked=counts["blocked"],
            needs_review=counts["needs_review"],
            success_rate=counts["succeeded"] / finished if finished else None,
            retries=retries,
            retries_task=retries - infra,
            retries_infra=infra,
            duration_samples=len(durations),
            duration_p50_ms=percentile(durations, 0.50),
            duration_p95_ms=percentile(durations, 0.95),
            idle_samples=len(idles),
            idle_to_detected_p50_ms=percentile(idles, 0.50),
            idle_to_detected_p95_ms=percentile(idles, 0.95),
            idle_to_detected_max_ms=max(idles) if idles else None,
        )


def epic_metrics(events: Sequence[StoredEvent]) -> list[EpicMetrics]:
    """One ``EpicMetrics`` per epic that has workers, by epic id."""
    scan = _EpicScan()
    for s in sorted(events, key=lambda s: s.seq):
        scan.add(s)
    return [scan.metrics(epic) for epic in sorted(set(scan.epic_of.values()) | set(scan.retries))]


def _source(samples: bool, live: bool) -> str | None:
    if samples and live:
        return "samples+live"
    return "samples" if samples else "live" if live else None


def instance_metrics(
    events: Sequence[StoredEvent], live: Mapping[str, LiveStats] | None = None
) -> list[InstanceMetrics]:
    """One ``InstanceMetrics`` per instance seen in the events or in ``live``, by name."""
    live = live or {}
    restarts: dict[str, int] = {}
    exits: dict[str, int] = {}
    served: dict[str, int] = {}
    rss: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    names: set[str] = set(live)
    for s in events:
        name = _get(s, "instance")
        if not name:
            continue
        if s.type.startswith("instance_"):
            names.add(name)
        if s.type == "instance_restarted":
            restarts[name] = restarts.get(name, 0) + 1
        elif s.type == "instance_exited":
            exits[name] = exits.get(name, 0) + 1
        elif s.type == "worker_spawned":
            names.add(name)
            served[name] = served.get(name, 0) + 1
        elif s.type == "instance_stats":
            rss.setdefault(name, []).append(float(_get(s, "rss_mb")))
            value = _get(s, "cpu_percent")
            if value is not None:
                cpu.setdefault(name, []).append(float(value))
    out = []
    for name in sorted(names):
        now = live.get(name, LiveStats())
        sampled = rss.get(name, [])
        live_peak = now.peak_rss_mb if now.peak_rss_mb is not None else now.rss_mb
        peaks = [*sampled, *([live_peak] if live_peak is not None else [])]
        cpus = cpu.get(name, [])
        if cpus:
            mean_cpu: float | None = sum(cpus) / len(cpus)
        else:
            mean_cpu = now.mean_cpu_percent
        out.append(
            InstanceMetrics(
                instance=name,
                restarts=restarts.get(name, 0),
                exits=exits.get(name, 0),
                sessions_served=served.get(name, 0),
                rss_samples=len(sampled),
                peak_rss_mb=round(max(peaks), 1) if peaks else None,
                peak_rss_source=_source(bool(sampled), live_peak is not None),
                mean_cpu_percent=round(mean_cpu, 1) if mean_cpu is not None else None,
                cpu_source=_source(bool(cpus), not cpus and now.mean_cpu_percent is not None),
                current_rss_mb=now.rss_mb,
            )
        )
    return out


def compute(
    events: Sequence[StoredEvent],
    live: Mapping[str, LiveStats] | None = None,
    *,
    epic_id: str | None = None,
) -> dict[str, Any]:
    """``{"epics": [...], "instances": [...]}`` (JSON-safe), epics limited to ``epic_id``."""
    epics = epic_metrics(events)
    if epic_id is not None:
        epics = [e for e in epics if e.epic_id == epic_id]
    return {
        "epics": [asdict(e) for e in epics],
        "instances": [asdict(i) for i in instance_metrics(events, live)],
    }
