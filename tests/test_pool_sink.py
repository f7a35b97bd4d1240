"""The supervisor's event sink retries a failing store with backoff and never latches
off: events emitted during an outage reach the real store once it is back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from swarm_pool.config import Config
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.sink import EventSink
from swarm_pool.store import open_project_store
from swarm_pool.store.events import InstanceReady
from tests.support import wait_for


def test_sink_retries_through_an_outage_and_loses_nothing(tmp_path: Path) -> None:
    paths = ProjectPaths(tmp_path).ensure()
    config = Config()
    outage = {"left": 3}

    def flaky_open() -> Any:
        # The store cannot be opened three times in a row (locked, unwritable disk...).
        if outage["left"] > 0:
            outage["left"] -= 1
            raise OSError("store unavailable")
        return open_project_store(paths, config)

    sink = EventSink(
        paths, config, open_store=flaky_open, backoff_initial_s=0.01, backoff_max_s=0.05
    )
    try:
        for i in range(5):
            sink.emit(InstanceReady(instance=f"i{i}"), f"ready {i}")
        wait_for(lambda: sink.written == 5, 10)
        # Later events after the recovery are written too: the sink never latched off.
        sink.emit(InstanceReady(instance="late"), "late")
        wait_for(lambda: sink.written == 6, 10)
    finally:
        sink.close()
    assert sink.failures == 3 and sink.dropped == 0
    with open_project_store(paths, config) as store:
        names = [e.event.instance for e in store.read(types=["instance_ready"])]  # type: ignore[union-attr]
    assert names == ["i0", "i1", "i2", "i3", "i4", "late"]
