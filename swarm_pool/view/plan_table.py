"""The live table of a ``run``: one row per plan task, redrawn as it moves.

Room: view.

Owns ``PlanTable``, the ``RunDisplay`` the CLI hands to ``swarm.plans.runner`` on a TTY:
task, bead, the task's state, its worker's group and progress, the instance and the
latest note. It starts drawing on the first update, so a run that fails before its
first step (a bad plan, a pool that cannot start) leaves no live display behind.
"""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from swarm_pool.swarm.plans.runner import Runner
from swarm_pool.swarm.status import PollResult


class PlanTable:
    """A rich live table of the run's tasks (only on a TTY)."""

    def __init__(self) -> None:
        self._live: Live | None = None

    def update(self, runner: Runner, result: PollResult | None) -> None:
        if self._live is None:
            self._live = Live(console=Console(), refresh_per_second=4, transient=False)
            self._live.start()
        infos = {w.bead_id: w for w in result.workers()} if result else {}
        table = Table(title=f"{runner.title} ({runner.epic_id})")
        table.add_column("task")
        table.add_column("bead", no_wrap=True)
        for col in ("state", "worker", "progress", "instance", "note"):
            table.add_column(col)
        for t in runner.tasks:
            info = infos.get(t.bead_id)
            table.add_row(
                t.title[:40],
                t.bead_id,
                t.state,
                info.group if info else "-",
                f"{info.progress_percent}%" if info else "-",
                (info.instance if info else t.instance) or "-",
                (t.note or (info.last_message if info else ""))[:50],
            )
        self._live.update(table)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
