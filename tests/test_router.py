"""The router's decision: ready instances only, fewest busy, per-instance limit, policies."""

from __future__ import annotations

import os

from swarm_pool.config import Config
from swarm_pool.pool.router import (
    InstanceView,
    RouteRequest,
    Steadiness,
    active_instances,
    busy_counts,
    choose_instance,
)


def instance(name: str, state: str = "ready", **kw: object) -> InstanceView:
    return InstanceView(name=name, url=f"http://127.0.0.1/{name}", state=state, **kw)  # type: ignore[arg-type]


def test_picks_fewest_busy() -> None:
    pool = [instance("a"), instance("b"), instance("c")]
    chosen = choose_instance(pool, {"a": 2, "b": 1, "c": 3}, RouteRequest(4))
    assert chosen is not None and chosen.name == "b"


def test_ties_are_deterministic_by_name() -> None:
    pool = [instance("b"), instance("a")]
    chosen = choose_instance(pool, {}, RouteRequest(4))
    assert chosen is not None and chosen.name == "a"


def test_only_ready_instances() -> None:
    pool = [
        instance("a", "starting"),
        instance("b", "backoff"),
        instance("c", "fatal"),
        instance("d"),
    ]
    chosen = choose_instance(pool, {"d": 3}, RouteRequest(4))
    assert chosen is not None and chosen.name == "d"
    assert choose_instance(pool[:3], {}, RouteRequest(4)) is None


def test_full_pool_returns_none() -> None:
    pool = [instance("a"), instance("b")]
    assert choose_instance(pool, {"a": 2, "b": 2}, RouteRequest(2)) is None
    chosen = choose_instance(pool, {"a": 2, "b": 1}, RouteRequest(2))
    assert chosen is not None and chosen.name == "b"


def test_draining_instance_gets_no_new_work() -> None:
    pool = [instance("a", draining=True), instance("b")]
    chosen = choose_instance(pool, {"b": 3}, RouteRequest(4))
    assert chosen is not None and chosen.name == "b"
    assert choose_instance([instance("a", draining=True)], {}, RouteRequest(4)) is None


def test_avoid_is_a_preference_not_a_ban() -> None:
    pool = [instance("a"), instance("b")]
    chosen = choose_instance(pool, {"b": 3}, RouteRequest(4, avoid={"a"}))
    assert chosen is not None and chosen.name == "b"
    chosen = choose_instance([instance("a")], {}, RouteRequest(4, avoid={"a"}))
    assert chosen is not None and chosen.name == "a"


def test_dedicated_instances_are_private() -> None:
    pool = [instance("a"), instance("w1", dedicated_to="bd-abc.1")]
    # least_busy never uses someone's dedicated instance
    chosen = choose_instance(pool, {"a": 0}, RouteRequest(4))
    assert chosen is not None and chosen.name == "a"
    assert choose_instance(pool, {"a": 4}, RouteRequest(4)) is None
    # dedicated routing uses only the worker's own instance
    mine = choose_instance(pool, {}, RouteRequest(4, routing="dedicated", bead_id="bd-abc.1"))
    assert mine is not None and mine.name == "w1"
    assert (
        choose_instance(pool, {}, RouteRequest(4, routing="dedicated", bead_id="bd-abc.2")) is None
    )
    starting = [instance("w1", "starting", dedicated_to="bd-abc.1")]
    assert (
        choose_instance(starting, {}, RouteRequest(4, routing="dedicated", bead_id="bd-abc.1"))
        is None
    )


def test_busy_counts() -> None:
    assert busy_counts(["a", "b", "a", ""]) == {"a": 2, "b": 1}


# --- steadiness: a restarted or flapping instance comes last ----------------------------

NOW = 10_000.0
STEADY = Steadiness(settle_s=30.0, flap_restarts=2, flap_window_s=120.0)


def test_restarted_moments_ago_is_avoided_while_another_is_ready() -> None:
    pool = [instance("a", restarted_at=(NOW - 5,)), instance("b")]
    # b is busier, but a was restarted 5 s ago.
    chosen = choose_instance(pool, {"a": 0, "b": 3}, RouteRequest(4, steadiness=STEADY, now=NOW))
    assert chosen is not None and chosen.name == "b"
    # Once settled (31 s later) the least busy wins again.
    chosen = choose_instance(
        pool, {"a": 0, "b": 3}, RouteRequest(4, steadiness=STEADY, now=NOW + 26)
    )
    assert chosen is not None and chosen.name == "a"


def test_flapping_is_avoided_for_the_whole_flap_window() -> None:
    flapping = instance("a", restarted_at=(NOW - 100, NOW - 60))
    pool = [flapping, instance("b")]
    chosen = choose_instance(pool, {"b": 3}, RouteRequest(4, steadiness=STEADY, now=NOW))
    assert chosen is not None and chosen.name == "b"
    # The first restart leaves the 120 s window: one recent restart, long settled.
    chosen = choose_instance(pool, {"b": 3}, RouteRequest(4, steadiness=STEADY, now=NOW + 21))
    assert chosen is not None and chosen.name == "a"


def test_unsteady_instances_still_take_work_when_nothing_else_can() -> None:
    pool = [instance("a", restarted_at=(NOW - 1,)), instance("b", restarted_at=(NOW - 2, NOW - 3))]
    chosen = choose_instance(pool, {"a": 1}, RouteRequest(4, steadiness=STEADY, now=NOW))
    assert chosen is not None and chosen.name == "b"  # both unsteady: fewest busy
    full = [instance("a", restarted_at=(NOW - 1,)), instance("b", state="backoff")]
    chosen = choose_instance(full, {}, RouteRequest(4, steadiness=STEADY, now=NOW))
    assert chosen is not None and chosen.name == "a"


def test_steadiness_ranks_before_avoid_and_is_off_without_it() -> None:
    pool = [instance("a", restarted_at=(NOW - 1,)), instance("b")]
    chosen = choose_instance(pool, {}, RouteRequest(4, avoid={"b"}, steadiness=STEADY, now=NOW))
    assert chosen is not None and chosen.name == "b"
    chosen = choose_instance(pool, {}, RouteRequest(4, avoid={"b"}, now=NOW))
    assert chosen is not None and chosen.name == "a"
    off = Steadiness(settle_s=0.0, flap_restarts=0, flap_window_s=120.0)
    chosen = choose_instance(pool, {}, RouteRequest(4, steadiness=off, now=NOW))
    assert chosen is not None and chosen.name == "a"


def test_steadiness_comes_from_the_config() -> None:
    config = Config.model_validate(
        {"pool": {"avoid_restarted_s": 7.0, "avoid_flapping_restarts": 3}}
    )
    assert Steadiness.from_config(config) == Steadiness(7.0, 3, 120.0)


def test_instances_beyond_the_active_ones_are_overflow() -> None:
    pool = [instance("oc-1"), instance("oc-2"), instance("oc-3"), instance("oc-4")]

    def pick(busy: dict[str, int], instances: list[InstanceView] = pool) -> str:
        chosen = choose_instance(instances, busy, RouteRequest(4, active=2))
        assert chosen is not None
        return chosen.name

    # Fewest busy among the first two, even when the others are idle.
    assert pick({}) == "oc-1"
    assert pick({"oc-1": 3, "oc-2": 2}) == "oc-2"
    # The overflow takes work only once the active ones are full.
    assert pick({"oc-1": 4, "oc-2": 4, "oc-3": 1}) == "oc-4"
    # An instance that takes no work is not among the active ones: the next one is.
    down = [instance("oc-1", "backoff"), *pool[1:]]
    assert pick({"oc-2": 3, "oc-3": 1}, down) == "oc-3"
    # Without a limit, every instance is active.
    spread = choose_instance(pool, {"oc-1": 3, "oc-2": 2}, RouteRequest(4))
    assert spread is not None and spread.name == "oc-3"


def test_a_steady_overflow_instance_beats_an_unsteady_active_one() -> None:
    now = 1000.0
    pool = [instance("oc-1", restarted_at=(now - 1,)), instance("oc-2"), instance("oc-3")]
    steadiness = Steadiness(settle_s=30, flap_restarts=0, flap_window_s=120)
    chosen = choose_instance(
        pool, {"oc-2": 4}, RouteRequest(4, steadiness=steadiness, now=now, active=2)
    )
    assert chosen is not None and chosen.name == "oc-3"


def test_active_instances_defaults_to_the_cores() -> None:
    assert active_instances(Config()) == len(os.sched_getaffinity(0))
    config = Config.model_validate({"pool": {"active_instances": 3}})
    assert active_instances(config) == 3
