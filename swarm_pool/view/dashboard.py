"""The dashboard's picture: a rich renderable built from one ``Snapshot`` and
nothing else.

Room: view.

Owns the four panels (instances, workers by epic, active reservations, last events),
their columns, colours and formats. It is a pure function of plain data, so a test can
render a hand-made snapshot, and ``--once`` and the live view draw the same thing.
Failures are red, conflicts magenta, blocked or waiting work yellow.
"""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from swarm_pool.pool.state import InstanceState
from swarm_pool.store.slots import counts_by_instance, describe_counts
from swarm_pool.view.snapshot import EpicBlock, EventLevel, Snapshot

LEVEL_STYLES = {
    EventLevel.FAILURE: "bold red",
    EventLevel.CONFLICT: "bold magenta",
    EventLevel.WARNING: "yellow",
    EventLevel.GOOD: "green",
    EventLevel.INFO: "",
}
STATE_STYLES: dict[str, str] = {
    InstanceState.READY: "green",
    InstanceState.STARTING: "cyan",
    InstanceState.UNHEALTHY: "yellow",
    InstanceState.BACKOFF: "yellow",
    InstanceState.FATAL: "bold red",
    InstanceState.STOPPED: "dim",
}
GROUP_STYLES = {
    "in_progress": "cyan",
    "blocked": "yellow",
    "pending": "dim",
    "failed": "bold red",
    "completed_needs_review": "magenta",
    "completed": "green",
}
GROUP_LABELS = {"completed_needs_review": "needs review", "in_progress": "running"}


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _num(value: float | int | None, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _clock(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000))


def header(snap: Snapshot, quit_hint: bool = False) -> Text:
    sup = snap.supervisor
    text = Text()
    # Two lines: the short, fixed-width facts first, so the terminal never wraps them
    # apart; then the supervisor and the project path, which may be long and wrap.
    text.append("swarm-pool", style="bold")
    if quit_hint:
        text.append("  (q quits; the pool keeps running)", style="dim")
    text.append(f"  seq {snap.last_seq}  {_clock(snap.taken_at)}")
    if sup.get("pid") is not None:
        sandbox = sup.get("sandbox") or "off"
        text.append(f"  sandbox {sandbox}", style="green" if sandbox != "off" else "yellow")
    text.append("\n")
    if sup.get("pid") is None:
        text.append("no pool", style="dim")
    elif sup.get("running"):
        text.append(f"supervisor {sup['pid']} {sup.get('phase') or ''}".rstrip(), style="green")
    else:
        text.append(f"supervisor {sup['pid']} not running", style="bold red")
    text.append(f"  {snap.project}")
    for host in snap.hosts:
        # Several hosts: one line each, a dead one in red.
        text.append(f"\nhost {host['name']}", style="bold")
        if host["stale"]:
            text.append(f"  SILENT {host['last_beat_s']}s", style="bold red")
        else:
            text.append(f"  beat {host['last_beat_s']}s ago", style="green")
        text.append(
            f"  capacity {host['capacity']}  in flight {host['in_flight']}"
            f"  load {host['load']:.2f}  "
            + " ".join(f"{i['name']}:{i['state']}/{i['busy']}" for i in host["instances"])
        )
    for problem in snap.problems:
        text.append(f"\n{problem}", style="bold red")
    return text


def instances_panel(snap: Snapshot) -> Panel:
    table = Table(expand=True, box=None, pad_edge=False)
    for name, justify in (
        ("instance", "left"),
        ("state", "left"),
        ("port", "right"),
        ("pid", "right"),
        ("RSS MB", "right"),
        ("CPU %", "right"),
        ("busy", "right"),
        ("restarts", "right"),
        ("uptime", "right"),
        ("last sign", "right"),
        ("slots", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    slots = counts_by_instance(snap.slots)
    for inst in snap.instances:
        state = Text(inst.state, style=STATE_STYLES.get(inst.state, ""))
        if inst.draining:
            state.append(" draining", style="yellow")
        if inst.reason and inst.state != InstanceState.READY:
            state.append(f" {inst.reason[:40]}", style="dim")
        name = inst.name if inst.kind == "opencode" else f"{inst.name} ({inst.kind})"
        table.add_row(
            name,
            state,
            _num(inst.port),
            _num(inst.pid),
            _num(inst.rss_mb, "{:.0f}"),
            _num(inst.cpu_percent, "{:.1f}"),
            _num(inst.busy_sessions),
            Text(str(inst.restarts), style="yellow" if inst.restarts else ""),
            fmt_duration(inst.uptime_s),
            fmt_duration(inst.last_sign_s),
            _slots_text(slots.get(inst.name, {})),
        )
    body: RenderableType = table if snap.instances else Text("no pool running", style="dim")
    return Panel(body, title=f"instances ({len(snap.instances)})", title_align="left")


def _slots_text(counts: dict[str, int]) -> Text:
    """The instance's warm worktree slots: busy, free and (yellow) dirty."""
    text = Text(describe_counts(counts))
    if counts.get("dirty"):
        text.stylize("yellow")
    return text


def _epic_title(block: EpicBlock) -> Text:
    done = block.counts.get("completed", 0)
    text = Text(f"{block.epic_id}", style="bold")
    if block.title:
        text.append(f"  {block.title}")
    parts = [
        f"{n} {GROUP_LABELS.get(g, g)}" for g, n in sorted(block.counts.items()) if g != "completed"
    ]
    text.append(f"  {done}/{block.total} done", style="green" if done == block.total else "")
    if parts:
        text.append(f", {', '.join(parts)}")
    return text


def _workers_table(block: EpicBlock) -> Table:
    # Fixed widths, so the tables of several epics line up.
    table = Table(expand=True, box=None, pad_edge=False)
    table.add_column("bead", ratio=2, no_wrap=True, overflow="ellipsis")
    table.add_column("status", width=12, no_wrap=True, overflow="ellipsis")
    table.add_column("%", width=4, justify="right", no_wrap=True)
    table.add_column("instance", width=10, no_wrap=True, overflow="ellipsis")
    table.add_column("attempt", width=7, justify="right", no_wrap=True)
    table.add_column("duration", width=8, justify="right", no_wrap=True)
    table.add_column("last message", ratio=3, no_wrap=True, overflow="ellipsis")
    for w in block.workers:
        # Merged implies completed (and reviewed): say the most advanced state.
        label = "merged" if w.merged else GROUP_LABELS.get(w.group, w.group)
        bead = Text(w.bead_id)
        if w.title:
            bead.append(f" {w.title}", style="dim")
        table.add_row(
            bead,
            Text(label, style=GROUP_STYLES.get(w.group, "")),
            f"{w.progress_percent}%",
            w.instance or "-",
            str(w.attempt),
            fmt_duration(None if w.duration_ms is None else w.duration_ms / 1000),
            w.last_message,
        )
    if block.hidden:
        table.add_row(Text(f"... {block.hidden} more", style="dim"))
    return table


def workers_panel(snap: Snapshot) -> Panel:
    title = "workers by epic"
    if snap.other_epics:
        title += f" (+{snap.other_epics} older epics)"
    if not snap.epics:
        return Panel(Text("no workers yet", style="dim"), title=title, title_align="left")
    parts: list[RenderableType] = []
    for block in snap.epics:
        parts += [_epic_title(block), _workers_table(block)]
    return Panel(Group(*parts), title=title, title_align="left")


def reservations_panel(snap: Snapshot) -> Panel:
    count = len(snap.reservations) + snap.reservations_hidden
    if not snap.reservations:
        return Panel(Text("none", style="dim"), title="active reservations (0)", title_align="left")
    table = Table(expand=True, box=None, pad_edge=False)
    table.add_column("holder", no_wrap=True)
    table.add_column("patterns", ratio=1, overflow="fold")
    table.add_column("mode", no_wrap=True)
    table.add_column("bead", no_wrap=True)
    table.add_column("expires in", justify="right", no_wrap=True)
    for r in snap.reservations:
        table.add_row(
            r.holder,
            ", ".join(r.patterns),
            "exclusive" if r.exclusive else "shared",
            r.bead_id or "-",
            fmt_duration(r.expires_in_s),
        )
    if snap.reservations_hidden:
        table.add_row(Text(f"... {snap.reservations_hidden} more", style="dim"))
    return Panel(table, title=f"active reservations ({count})", title_align="left")


def events_panel(snap: Snapshot) -> Panel:
    if not snap.events:
        return Panel(Text("no events", style="dim"), title="last events", title_align="left")
    table = Table(expand=True, box=None, pad_edge=False, show_header=False)
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("time", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("what", ratio=1, no_wrap=True, overflow="ellipsis")
    for e in snap.events:
        style = LEVEL_STYLES.get(e.level, "")
        table.add_row(str(e.seq), _clock(e.timestamp), Text(e.type, style=style), e.text)
    return Panel(table, title="last events", title_align="left")


def render(snap: Snapshot, *, quit_hint: bool = False) -> RenderableType:
    """The whole frame: header, then the four panels top to bottom."""
    head = header(snap, quit_hint)
    if not snap.store_present:
        head.append("\nno store yet: nothing has been recorded in this project", style="dim")
    return Group(
        head,
        instances_panel(snap),
        workers_panel(snap),
        reservations_panel(snap),
        events_panel(snap),
    )
