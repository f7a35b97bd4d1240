"""The supervisor's decisions for one child, as pure logic with an injectable clock.

``ChildPolicy`` answers three questions and does no I/O: after a failure, restart now,
later (how long: capped exponential backoff with jitter, reset once a run has been stable
for ``stable_after_s``), or never (flapping: more than ``flap_max_restarts`` restarts
within ``flap_window_s`` makes the child ``fatal`` until a manual restart); after a health
check, is it time to restart (``health_failures`` failures in a row *and* no sign of
life, neither an answer nor an event on the instance's SSE stream, for a window that
grows with its busy sessions: busy is not dead); after a memory sample, is the child
fine, draining (over ``max_rss_mb`` for ``memory_checks`` samples in a row: no new work,
restart once idle) or due for a restart now (idle, or draining for longer than
``memory_grace_s``). Tests drive it with a fake clock and a fixed random. Room: pool.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from swarm_pool.config import SupervisorSection

Clock = Callable[[], float]


def backoff_delay(
    attempt: int, *, initial_s: float, max_s: float, jitter: float, rand: float
) -> float:
    """Delay before restart number ``attempt`` (1-based) of a run of failures.

    ``initial_s * 2**(attempt-1)`` capped at ``max_s``, then scaled by a factor drawn
    uniformly from ``[1 - jitter, 1 + jitter]`` (``rand`` in [0, 1)); never above
    ``max_s``, so the cap is a promise.
    """
    if attempt < 1:
        return 0.0
    base = min(max_s, initial_s * float(2 ** min(attempt - 1, 62)))
    jittered = base * (1.0 + jitter * (2.0 * rand - 1.0))
    return max(0.0, min(max_s, jittered))


@dataclass(frozen=True)
class RestartDecision:
    fatal: bool
    delay_s: float
    attempt: int
    reason: str


class MemoryVerdict(Enum):
    OK = "ok"
    DRAINING = "draining"
    RESTART = "restart"


class ChildPolicy:
    def __init__(
        self,
        settings: SupervisorSection,
        *,
        clock: Clock = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.s = settings
        self.clock = clock
        self.rand = rand
        self._restarts: deque[float] = deque()
        self._attempt = 0  # failures in the current unstable run
        self._started_at: float | None = None
        self._health_failures = 0
        self._over_limit = 0
        self.draining_since: float | None = None
        self._last_life: float | None = None

    # --- run lifetime -------------------------------------------------------------

    def started(self) -> None:
        """A new run began (a launch, or the adoption of a live child)."""
        self._started_at = self.clock()
        self._last_life = self._started_at
        self._health_failures = 0
        self._over_limit = 0
        self.draining_since = None

    def uptime(self) -> float:
        return 0.0 if self._started_at is None else self.clock() - self._started_at

    def on_failure(self, reason: str) -> RestartDecision:
        """The child died or must be restarted; how (and whether) to bring it back."""
        now = self.clock()
        if self._started_at is not None and now - self._started_at >= self.s.stable_after_s:
            self._attempt = 0
        self._started_at = None
        while self._restarts and now - self._restarts[0] > self.s.flap_window_s:
            self._restarts.popleft()
        self._restarts.append(now)
        if len(self._restarts) > self.s.flap_max_restarts:
            return RestartDecision(
                fatal=True,
                delay_s=0.0,
                attempt=self._attempt,
                reason=(
                    f"{reason}; {len(self._restarts)} restarts within "
                    f"{self.s.flap_window_s:g}s (limit {self.s.flap_max_restarts}): flapping"
                ),
            )
        self._attempt += 1
        delay = backoff_delay(
            self._attempt,
            initial_s=self.s.backoff_initial_s,
            max_s=self.s.backoff_max_s,
            jitter=self.s.backoff_jitter,
            rand=self.rand(),
        )
        return RestartDecision(fatal=False, delay_s=delay, attempt=self._attempt, reason=reason)

    def reset(self) -> None:
        """A manual restart: forget the history, so a fatal child gets a fresh start."""
        self._restarts.clear()
        self._attempt = 0
        self._started_at = None
        self._health_failures = 0
        self._over_limit = 0
        self.draining_since = None

    # --- readiness ----------------------------------------------------------------

    def note_life(self) -> None:
        """A sign of life: an answer, or an event on the child's stream (any thread)."""
        self._last_life = self.clock()

    def silent_for(self) -> float:
        """Seconds since the last sign of life (since the run began if none yet)."""
        return 0.0 if self._last_life is None else max(0.0, self.clock() - self._last_life)

    def no_progress_window(self, busy: int | None) -> float:
        """How long a child must stay silent before a restart: longer the more busy
        sessions it carries (an unknown count counts as one)."""
        sessions = 1 if busy is None else max(0, busy)
        return self.s.no_progress_s + self.s.no_progress_per_busy_s * sessions

    def on_health(self, ok: bool, *, busy: int | None = 0) -> bool:
        """Record one health check; True when the child must be restarted: the last
        ``health_failures`` checks failed and it showed no sign of life for its window.
        A busy instance answers slowly; as long as it streams events it is not dead."""
        if ok:
            self._health_failures = 0
            self.note_life()
            return False
        self._health_failures += 1
        if self._health_failures < self.s.health_failures:
            return False
        return self.silent_for() >= self.no_progress_window(busy)

    @property
    def health_failures(self) -> int:
        return self._health_failures

    # --- memory -------------------------------------------------------------------

    def on_memory(self, rss_mb: float, busy_sessions: Callable[[], int | None]) -> MemoryVerdict:
        """Record one RSS sample; ``busy_sessions`` is only called when it matters.

        An unknown busy count (None: the instance did not answer) counts as busy, so a
        restart never cuts work short before the grace period.
        """
        limit = self.s.max_rss_mb
        if limit <= 0:
            return MemoryVerdict.OK
        if rss_mb <= limit:
            self._over_limit = 0
            # Once draining we stay draining until the restart: RSS rarely drops for good.
            if self.draining_since is None:
                return MemoryVerdict.OK
        else:
            self._over_limit += 1
            if self.draining_since is None:
                if self._over_limit < self.s.memory_checks:
                    return MemoryVerdict.OK
                self.draining_since = self.clock()
        busy = busy_sessions()
        if busy == 0:
            return MemoryVerdict.RESTART
        if self.clock() - self.draining_since >= self.s.memory_grace_s:
            return MemoryVerdict.RESTART
        return MemoryVerdict.DRAINING

    @property
    def draining(self) -> bool:
        return self.draining_since is not None
