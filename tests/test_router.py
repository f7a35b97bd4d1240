"""The router's decision: ready instances only, fewest busy, per-instance limit, policies."""

from __future__ import annotations

from swarm_pool.swarm.router import InstanceSlot, busy_counts, choose_instance


def slot(name: str, state: str = "ready", **kw: object) -> InstanceSlot:
    return InstanceSlot(name=name, url=f"http://127.0.0.1/{name}", state=state, **kw)  # type: ignore[arg-type]


def test_picks_fewest_busy() -> None:
    pool = [slot("a"), slot("b"), slot("c")]
    chosen = choose_instance(pool, {"a": 2, "b": 1, "c": 3}, 4)
    assert chosen is not None and chosen.name == "b"


def test_ties_are_deterministic_by_name() -> None:
    pool = [slot("b"), slot("a")]
    chosen = choose_instance(pool, {}, 4)
    assert chosen is not None and chosen.name == "a"


def test_only_ready_instances() -> None:
    pool = [slot("a", "starting"), slot("b", "backoff"), slot("c", "fatal"), slot("d")]
    chosen = choose_instance(pool, {"d": 3}, 4)
    assert chosen is not None and chosen.name == "d"
    assert choose_instance(pool[:3], {}, 4) is None


def test_full_pool_returns_none() -> None:
    pool = [slot("a"), slot("b")]
    assert choose_instance(pool, {"a": 2, "b": 2}, 2) is None
    chosen = choose_instance(pool, {"a": 2, "b": 1}, 2)
    assert chosen is not None and chosen.name == "b"


def test_draining_instance_gets_no_new_work() -> None:
    pool = [slot("a", draining=True), slot("b")]
    chosen = choose_instance(pool, {"b": 3}, 4)
    assert chosen is not None and chosen.name == "b"
    assert choose_instance([slot("a", draining=True)], {}, 4) is None


def test_avoid_is_a_preference_not_a_ban() -> None:
    pool = [slot("a"), slot("b")]
    chosen = choose_instance(pool, {"b": 3}, 4, avoid={"a"})
    assert chosen is not None and chosen.name == "b"
    chosen = choose_instance([slot("a")], {}, 4, avoid={"a"})
    assert chosen is not None and chosen.name == "a"


def test_dedicated_instances_are_private() -> None:
    pool = [slot("a"), slot("w1", dedicated_to="bd-abc.1")]
    # least_busy never uses someone's dedicated instance
    chosen = choose_instance(pool, {"a": 0}, 4)
    assert chosen is not None and chosen.name == "a"
    assert choose_instance(pool, {"a": 4}, 4) is None
    # dedicated routing uses only the worker's own instance
    mine = choose_instance(pool, {}, 4, routing="dedicated", bead_id="bd-abc.1")
    assert mine is not None and mine.name == "w1"
    assert choose_instance(pool, {}, 4, routing="dedicated", bead_id="bd-abc.2") is None
    starting = [slot("w1", "starting", dedicated_to="bd-abc.1")]
    assert choose_instance(starting, {}, 4, routing="dedicated", bead_id="bd-abc.1") is None


def test_busy_counts() -> None:
    assert busy_counts(["a", "b", "a", ""]) == {"a": 2, "b": 1}
