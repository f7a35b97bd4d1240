"""The supervisor's decisions (backoff, flapping, health, memory) with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarm_pool.config import SupervisorSection
from swarm_pool.pool.policy import ChildPolicy, MemoryVerdict, backoff_delay


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings(**kw: object) -> SupervisorSection:
    base: dict[str, object] = {
        "backoff_initial_s": 0.5,
        "backoff_max_s": 8.0,
        "backoff_jitter": 0.0,
        "stable_after_s": 60.0,
        "flap_max_restarts": 5,
        "flap_window_s": 120.0,
        "health_failures": 3,
        "max_rss_mb": 100,
        "memory_checks": 3,
        "memory_grace_s": 300.0,
    }
    base.update(kw)
    return SupervisorSection.model_validate(base)


def policy(clock: FakeClock, rand: float = 0.5, **kw: object) -> ChildPolicy:
    return ChildPolicy(settings(**kw), clock=clock, rand=lambda: rand)


# --- backoff --------------------------------------------------------------------------


def test_backoff_doubles_then_caps() -> None:
    delays = [backoff_delay(n, initial_s=0.5, max_s=8.0, jitter=0.0, rand=0.5) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_jitter_bounds() -> None:
    low = backoff_delay(3, initial_s=1.0, max_s=100.0, jitter=0.2, rand=0.0)
    high = backoff_delay(3, initial_s=1.0, max_s=100.0, jitter=0.2, rand=0.999999)
    assert low == pytest.approx(3.2)
    assert high == pytest.approx(4.8, rel=1e-5)


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    initial=st.floats(min_value=0, max_value=100),
    cap=st.floats(min_value=0, max_value=1000),
    jitter=st.floats(min_value=0, max_value=1),
    rand=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_backoff_never_exceeds_the_cap(
    attempt: int, initial: float, cap: float, jitter: float, rand: float
) -> None:
    delay = backoff_delay(attempt, initial_s=initial, max_s=cap, jitter=jitter, rand=rand)
    assert 0.0 <= delay <= cap


def test_consecutive_failures_back_off_exponentially() -> None:
    clock = FakeClock()
    p = policy(clock)
    delays = []
    for _ in range(4):
        p.started()
        clock.advance(1)  # a short, unstable run
        decision = p.on_failure("crashed")
        assert not decision.fatal
        delays.append(decision.delay_s)
        clock.advance(decision.delay_s)
    assert delays == [0.5, 1.0, 2.0, 4.0]


def test_backoff_resets_after_a_stable_run() -> None:
    clock = FakeClock()
    p = policy(clock)
    for _ in range(3):
        p.started()
        clock.advance(1)
        p.on_failure("crashed")
    p.started()
    clock.advance(61)  # longer than stable_after_s
    assert p.on_failure("crashed").delay_s == 0.5


# --- flapping -------------------------------------------------------------------------


def test_more_than_r_restarts_within_the_window_is_fatal() -> None:
    clock = FakeClock()
    p = policy(clock, flap_max_restarts=3, flap_window_s=60)
    for _ in range(3):
        p.started()
        clock.advance(2)
        assert not p.on_failure("crashed").fatal
    p.started()
    clock.advance(2)
    decision = p.on_failure("crashed")
    assert decision.fatal
    assert "flapping" in decision.reason and "crashed" in decision.reason


def test_restarts_outside_the_window_do_not_count() -> None:
    clock = FakeClock()
    p = policy(clock, flap_max_restarts=2, flap_window_s=10, stable_after_s=1000)
    for _ in range(6):
        p.started()
        clock.advance(6)  # two restarts fit in any 10 s window, never three
        assert not p.on_failure("crashed").fatal


def test_manual_reset_clears_fatal_history() -> None:
    clock = FakeClock()
    p = policy(clock, flap_max_restarts=1, flap_window_s=60)
    p.on_failure("a")
    assert p.on_failure("b").fatal
    p.reset()
    decision = p.on_failure("c")
    assert not decision.fatal and decision.delay_s == 0.5


# --- health ---------------------------------------------------------------------------


def test_k_health_failures_in_a_row_restart() -> None:
    # No no-progress window: the count alone decides.
    p = policy(FakeClock(), health_failures=3, no_progress_s=0.0, no_progress_per_busy_s=0.0)
    assert not p.on_health(False)
    assert not p.on_health(False)
    assert not p.on_health(True)  # a success resets the count
    assert not p.on_health(False)
    assert not p.on_health(False)
    assert p.on_health(False)


# --- memory ---------------------------------------------------------------------------


class BusyCounter:
    def __init__(self, value: int | None) -> None:
        self.value = value
        self.calls = 0

    def __call__(self) -> int | None:
        self.calls += 1
        return self.value


def test_memory_under_the_limit_is_fine_and_never_asks_busy() -> None:
    p = policy(FakeClock())
    busy = BusyCounter(5)
    for _ in range(10):
        assert p.on_memory(99.0, busy) is MemoryVerdict.OK
    assert busy.calls == 0 and not p.draining


def test_memory_over_k_times_restarts_when_idle() -> None:
    p = policy(FakeClock(), memory_checks=3)
    idle = BusyCounter(0)
    assert p.on_memory(150, idle) is MemoryVerdict.OK
    assert p.on_memory(150, idle) is MemoryVerdict.OK
    assert idle.calls == 0
    assert p.on_memory(150, idle) is MemoryVerdict.RESTART


def test_memory_spikes_that_do_not_last_k_checks_are_ignored() -> None:
    p = policy(FakeClock(), memory_checks=3)
    idle = BusyCounter(0)
    for rss in (150, 150, 90, 150, 150, 90):
        assert p.on_memory(rss, idle) is MemoryVerdict.OK


def test_memory_busy_instance_drains_then_restarts_after_grace() -> None:
    clock = FakeClock()
    p = policy(clock, memory_checks=2, memory_grace_s=300)
    busy = BusyCounter(2)
    assert p.on_memory(150, busy) is MemoryVerdict.OK
    assert p.on_memory(150, busy) is MemoryVerdict.DRAINING
    assert p.draining
    clock.advance(200)
    assert p.on_memory(150, busy) is MemoryVerdict.DRAINING
    busy.value = 1
    clock.advance(101)
    assert p.on_memory(150, busy) is MemoryVerdict.RESTART


def test_memory_draining_restarts_as_soon_as_idle() -> None:
    clock = FakeClock()
    p = policy(clock, memory_checks=1)
    busy = BusyCounter(1)
    assert p.on_memory(150, busy) is MemoryVerdict.DRAINING
    clock.advance(5)
    busy.value = 0
    # Even a dip under the limit does not cancel the drain: the restart is still due.
    assert p.on_memory(80, busy) is MemoryVerdict.RESTART


def test_unknown_busy_count_counts_as_busy() -> None:
    clock = FakeClock()
    p = policy(clock, memory_checks=1, memory_grace_s=10)
    unknown = BusyCounter(None)
    assert p.on_memory(150, unknown) is MemoryVerdict.DRAINING
    clock.advance(10)
    assert p.on_memory(150, unknown) is MemoryVerdict.RESTART


def test_memory_limit_zero_disables() -> None:
    p = policy(FakeClock(), max_rss_mb=0, memory_checks=1)
    assert p.on_memory(10_000, BusyCounter(0)) is MemoryVerdict.OK


def test_a_new_run_clears_drain_and_counts() -> None:
    p = policy(FakeClock(), memory_checks=2)
    busy = BusyCounter(1)
    p.on_memory(150, busy)
    p.on_memory(150, busy)
    assert p.draining
    p.started()
    assert not p.draining
    assert p.on_memory(150, busy) is MemoryVerdict.OK


# --- busy is not dead -------------------------------------------------------------------


def test_no_progress_window_grows_with_busy_sessions() -> None:
    p = policy(FakeClock(), no_progress_s=15.0, no_progress_per_busy_s=30.0)
    assert p.no_progress_window(0) == 15.0
    assert p.no_progress_window(1) == 45.0
    assert p.no_progress_window(3) == 105.0
    assert p.no_progress_window(None) == 45.0  # unknown counts as busy


def test_failed_checks_alone_do_not_restart_an_instance_that_streams_events() -> None:
    clock = FakeClock()
    p = policy(clock, health_failures=3, no_progress_s=15.0, no_progress_per_busy_s=30.0)
    p.started()
    # Ten minutes of timed-out health checks (about 3 s each), while the instance's
    # stream keeps delivering events: busy, not dead.
    for _ in range(200):
        clock.advance(3.0)
        p.note_life()
        assert not p.on_health(False, busy=2)
    assert p.health_failures == 200
    # Then silence: no restart before the window of 2 busy sessions (75 s) is over...
    for _ in range(24):
        clock.advance(3.0)
        assert not p.on_health(False, busy=2)
    assert p.silent_for() == pytest.approx(72.0)
    clock.advance(3.0)
    assert p.on_health(False, busy=2)


def test_idle_silent_instance_restarts_after_the_short_window() -> None:
    clock = FakeClock()
    p = policy(clock, health_failures=3, no_progress_s=15.0, no_progress_per_busy_s=30.0)
    p.started()
    results = []
    for _ in range(6):
        clock.advance(3.0)
        results.append(p.on_health(False, busy=0))
    # K=3 failures reached at 9 s, but the 15 s window of silence only at 15 s.
    assert results == [False, False, False, False, True, True]


def test_an_answer_is_a_sign_of_life_and_resets_the_count() -> None:
    clock = FakeClock()
    p = policy(clock, health_failures=2, no_progress_s=10.0, no_progress_per_busy_s=0.0)
    p.started()
    clock.advance(20.0)
    assert p.silent_for() == 20.0
    assert not p.on_health(True)  # a (possibly slow) answer
    assert p.silent_for() == 0.0 and p.health_failures == 0
    clock.advance(5.0)
    assert not p.on_health(False) and not p.on_health(False)  # silent 5 s < 10 s
    clock.advance(5.0)
    assert p.on_health(False)
    p.started()  # a new run starts with a clean slate
    assert p.silent_for() == 0.0 and p.health_failures == 0
