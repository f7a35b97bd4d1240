"""The scripted model's decisions: which script and step answer a request,
and the per-request stats; no HTTP here (that is ``server``).

Room: model.

It is stateless about conversations: the step to play is the number of assistant
messages in the request, so restarts and parallel sessions are harmless. The only state
is what a fault step needs (how often a ``times`` fault has fired, who waits at a
barrier) and the counters served at ``GET /v1/stats``.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from swarm_pool.errors import ScriptError
from swarm_pool.model.scripts import Context, PlannedStep, ScriptBook, context_from_texts

TITLE_MARKER = "title generator"


class DecisionKind(StrEnum):
    """What kind of answer a request gets (also the key of ``Stats.by_kind``)."""

    TITLE = "title"  # OpenCode's title request
    PLAIN = "plain"  # any other request without tools
    STEP = "step"  # the script's next step
    FINAL = "final"  # the script is played out: its final text
    SCRIPT_ERROR = "script_error"  # no script fits the request


def message_text(message: dict[str, Any]) -> str:
    """The text of one chat message (string content or a list of text parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


@dataclass(frozen=True)
class Decision:
    """What to answer one request with."""

    kind: DecisionKind
    ctx: Context
    step_index: int
    script_name: str = ""
    step: PlannedStep | None = None
    text: str = ""


class Stats:
    """Per-request counters, in memory, for tests and the dashboard."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests = 0
        self.by_kind: Counter[str] = Counter()
        self.by_bead: dict[str, dict[str, Any]] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=200)
        self.tools_seen: list[str] = []
        # Script tools the request did not offer (e.g. the MCP server is not connected).
        self.missing_tools: Counter[str] = Counter()

    def record(self, decision: Decision, tools: list[str], session_id: str) -> None:
        step = decision.step
        entry = {
            "time": time.time(),
            "kind": decision.kind,
            "bead_id": decision.ctx.bead_id,
            "session_id": session_id,
            "script": decision.script_name,
            "step": decision.step_index,
            "tool": step.tool if step else None,
            "fault": fault_name(step) if step else None,
        }
        with self._lock:
            self.requests += 1
            self.by_kind[decision.kind] += 1
            if tools:
                self.tools_seen = tools
            if step is not None and step.tool and tools and step.tool not in tools:
                self.missing_tools[step.tool] += 1
            bead = self.by_bead.setdefault(
                decision.ctx.bead_id or "-",
                {"requests": 0, "steps": 0, "last_step": None, "script": "", "sessions": []},
            )
            bead["requests"] += 1
            if decision.kind is DecisionKind.STEP:
                bead["steps"] += 1
                bead["last_step"] = decision.step_index
            if decision.script_name:
                bead["script"] = decision.script_name
            if session_id and session_id not in bead["sessions"]:
                bead["sessions"] = [*bead["sessions"], session_id][-20:]
            self.recent.append(entry)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_s": round(time.time() - self.started, 3),
                "requests": self.requests,
                "by_kind": dict(self.by_kind),
                "by_bead": json.loads(json.dumps(self.by_bead)),
                "tools_seen": list(self.tools_seen),
                "missing_tools": dict(self.missing_tools),
                "threads": threading.active_count(),
                "recent": list(self.recent),
            }


def fault_name(step: PlannedStep) -> str | None:
    if step.hang:
        return "hang"
    if step.malformed:
        return "malformed"
    if step.http_error is not None:
        return f"http_{step.http_error}"
    if step.delay_s:
        return "delay"
    if step.barrier:
        return "barrier"
    return None


class ScriptedModel:
    """The decisions (which script, which step) and the stats; no HTTP here."""

    def __init__(self, book: ScriptBook) -> None:
        self.book = book
        self.stats = Stats()
        self.stop_event = threading.Event()
        # (session or bead, step index) -> fault hits so far, for steps with ``times``.
        self._hits: dict[tuple[str, int], int] = {}
        self._hits_lock = threading.Lock()
        # Barrier name -> requests waiting at it now; a barrier that opened stays open.
        self._waiting: Counter[str] = Counter()
        self._opened: set[str] = set()
        self._barriers = threading.Condition()

    def pass_barrier(
        self, name: str, count: int, timeout_s: float, gone: Callable[[], bool]
    ) -> bool:
        """Wait until ``count`` requests wait at ``name`` at once (then it opens for good);
        False when the deadline passes, the server stops or the client leaves first."""
        deadline = time.monotonic() + timeout_s
        with self._barriers:
            self._waiting[name] += 1
            try:
                while name not in self._opened:
                    if self._waiting[name] >= count:
                        self._opened.add(name)
                        self._barriers.notify_all()
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self.stop_event.is_set() or gone():
                        return False
                    self._barriers.wait(min(0.2, remaining))
                return True
            finally:
                self._waiting[name] -= 1

    def _count_fault(self, key: str, index: int, step: PlannedStep) -> PlannedStep:
        """The step itself while its fault has hits left, else the step without the fault."""
        if step.times is None:
            return step
        with self._hits_lock:
            hits = self._hits.get((key, index), 0)
            if hits < step.times:
                self._hits[(key, index)] = hits + 1
                return step
        return dataclasses.replace(
            step, http_error=None, malformed=False, hang=False, delay_s=0.0, times=None
        )

    def decide(self, body: dict[str, Any], session_id: str = "") -> Decision:
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        system = [message_text(m) for m in messages if m.get("role") in ("system", "developer")]
        users = [message_text(m) for m in messages if m.get("role") == "user"]
        ctx = context_from_texts(users, system, session_id)
        if not body.get("tools"):
            # OpenCode's title request (and any other tool-less side request).
            if any(TITLE_MARKER in s for s in system):
                return Decision(DecisionKind.TITLE, ctx, -1, text=_title(ctx))
            return Decision(DecisionKind.PLAIN, ctx, -1, text=_title(ctx))
        index = sum(1 for m in messages if m.get("role") == "assistant")
        try:
            plan = self.book.plan(ctx)
        except ScriptError as e:
            return Decision(DecisionKind.SCRIPT_ERROR, ctx, index, text=str(e))
        if index < len(plan.steps):
            step = self._count_fault(session_id or ctx.bead_id, index, plan.steps[index])
            return Decision(DecisionKind.STEP, ctx, index, plan.script_name, step=step)
        return Decision(DecisionKind.FINAL, ctx, index, plan.script_name, text=plan.final_text)


def _title(ctx: Context) -> str:
    title = f"{ctx.bead_id} {ctx.title}".strip() if ctx.bead_id else "Scripted session"
    return title[:50]
