"""What the engine remembers of the pool's instances between ticks.

Room: swarm (the engine loop). ``InstanceMemory`` keeps, per instance name, when its
process last went away or was replaced (from the store's instance events and from the
pool state's pids and states), the pid it last had, whether its sessions still need
reconciling with the store (after the engine's start, or after the instance came back
from a restart: a kill can leave a session created but never recorded or prompted), and
the pid its ``min_slots`` slots were opened for. The engine's loop is ``loop.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swarm_pool.pool.router import InstanceView
from swarm_pool.pool.state import GONE
from swarm_pool.store.events import InstanceEvent, now_ms
from swarm_pool.swarm.context import SwarmContext

_INSTANCE_EVENTS = ["instance_exited", "instance_started", "instance_fatal", "instance_stopped"]


@dataclass
class InstanceMemory:
    """The instances as the engine last saw them (module docstring)."""

    gone_at: dict[str, int] = field(default_factory=dict)  # name -> ms it last went away
    pids: dict[str, int | None] = field(default_factory=dict)
    seq: int = 0  # the last instance event read
    reconciled: bool = False  # the reconciliation at the engine's start ran
    unreconciled: set[str] = field(default_factory=set)
    slots_opened: dict[str, int | None] = field(default_factory=dict)  # name -> its pid

    def track(self, ctx: SwarmContext, instances: list[InstanceView]) -> None:
        """Note which instances went away or were replaced since the last tick."""
        now = now_ms()
        # Several hosts: instance names repeat from host to host, so another host's
        # instance events say nothing about ours; the pool state's pids and states do.
        instance_events = [] if ctx.multi_host else _INSTANCE_EVENTS
        for stored in ctx.store.read(types=instance_events, after_seq=self.seq):
            self.seq = max(self.seq, stored.seq)
            if not isinstance(stored.event, InstanceEvent):
                continue
            name = stored.event.instance
            self.gone_at[name] = max(self.gone_at.get(name, 0), stored.timestamp)
        seen = set()
        for inst in instances:
            seen.add(inst.name)
            old = self.pids.get(inst.name)
            replaced = inst.name in self.pids and old is not None and inst.pid != old
            if replaced or inst.state in GONE:
                self.gone_at[inst.name] = now
                self.unreconciled.add(inst.name)
            self.pids[inst.name] = inst.pid
        for name in list(self.pids):
            if name not in seen:  # removed from the pool (scale down)
                self.gone_at[name] = now
                del self.pids[name]
