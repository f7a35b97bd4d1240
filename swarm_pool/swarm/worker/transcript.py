"""Workers' transcripts: what a worker's session said and did, kept
after the session.

Room: swarm.worker.

A worker's OpenCode session is deleted once its work is merged (its directory is warm
and reused, or disposed). Before that, ``save`` writes the session's messages to
``.swarm/transcripts/<bead>/attempt-<n>.json`` (private modes, like every state file),
with the bead, attempt, session and instance they came from. ``load`` reads the latest
(or a given) attempt back, and ``summarize``/``render`` turn its messages into what a
reviewer reads: the worker's text, and each tool call with its input and its result.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from swarm_pool.errors import TranscriptNotFoundError
from swarm_pool.git import branch_name
from swarm_pool.paths import DIR_MODE, ProjectPaths, write_private
from swarm_pool.store.events import now_ms

_ATTEMPT_RE = re.compile(r"^attempt-(\d+)\.json$")
# A tool's output longer than this is cut in the readable rendering (never in the file).
_OUTPUT_CHARS = 2000


def _dir(paths: ProjectPaths, bead_id: str) -> Path:
    branch_name(bead_id)  # validates the id before it becomes a path
    return paths.transcripts_dir / bead_id


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)


def save(
    paths: ProjectPaths,
    *,
    bead_id: str,
    attempt: int,
    session_id: str,
    instance: str,
    worktree: str,
    messages: list[dict[str, Any]],
) -> Path:
    """Write the attempt's transcript (replacing an earlier save of it); its path."""
    _private_dir(paths.transcripts_dir)
    folder = _dir(paths, bead_id)
    _private_dir(folder)
    doc = {
        "bead_id": bead_id,
        "attempt": attempt,
        "session_id": session_id,
        "instance": instance,
        "worktree": worktree,
        "saved_at": now_ms(),
        "messages": messages,
    }
    path = folder / f"attempt-{attempt}.json"
    write_private(path, json.dumps(doc, indent=1))
    return path


def attempts(paths: ProjectPaths, bead_id: str) -> list[int]:
    folder = _dir(paths, bead_id)
    if not folder.is_dir():
        return []
    found = (_ATTEMPT_RE.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def load(paths: ProjectPaths, bead_id: str, attempt: int | None = None) -> dict[str, Any]:
    """The saved transcript of the bead's latest (or given) attempt; TranscriptNotFoundError
    when there is none."""
    saved = attempts(paths, bead_id)
    if not saved:
        raise TranscriptNotFoundError(
            f"no transcript saved for {bead_id} (one is saved when its session is deleted, "
            "after its merge)"
        )
    chosen = saved[-1] if attempt is None else attempt
    if chosen not in saved:
        raise TranscriptNotFoundError(
            f"no transcript of attempt {chosen} for {bead_id}; saved attempts: "
            + ", ".join(map(str, saved))
        )
    data: dict[str, Any] = json.loads((_dir(paths, bead_id) / f"attempt-{chosen}.json").read_text())
    return data


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """The transcript as entries a script can read: ``{"role", "kind": "text", "text"}``
    and ``{"role", "kind": "tool", "tool", "status", "input", "output"|"error"}``."""
    entries: list[dict[str, Any]] = []
    for message in doc.get("messages", []):
        info = message.get("info", {}) if isinstance(message, dict) else {}
        role = str(info.get("role", "?"))
        for part in message.get("parts", []) if isinstance(message, dict) else []:
            kind = part.get("type")
            if kind == "text" and part.get("text") and not part.get("synthetic"):
                entries.append({"role": role, "kind": "text", "text": part["text"]})
            elif kind == "tool":
                state = part.get("state", {})
                entry: dict[str, Any] = {
                    "role": role,
                    "kind": "tool",
                    "tool": part.get("tool", ""),
                    "status": state.get("status", ""),
                    "input": state.get("input", {}),
                }
                if "output" in state:
                    entry["output"] = state["output"]
                if "error" in state:
                    entry["error"] = state["error"]
                entries.append(entry)
    return {key: doc.get(key) for key in ("bead_id", "attempt", "session_id", "instance")} | {
        "worktree": doc.get("worktree", ""),
        "entries": entries,
    }


def render(summary: dict[str, Any]) -> str:
    """The readable transcript a reviewer reads."""
    lines = [
        f"transcript of {summary['bead_id']} attempt {summary['attempt']} "
        f"(session {summary['session_id']} on {summary['instance']})",
    ]
    for e in summary["entries"]:
        if e["kind"] == "text":
            lines += ["", f"[{e['role']}]", e["text"].rstrip()]
            continue
        lines += ["", f"[tool {e['tool']}] {e['status']}", "  input: " + json.dumps(e["input"])]
        result = e.get("output", e.get("error"))
        if result is not None:
            text = str(result)
            if len(text) > _OUTPUT_CHARS:
                text = text[:_OUTPUT_CHARS] + f"\n[... {len(text) - _OUTPUT_CHARS} more chars]"
            label = "output" if "output" in e else "error"
            lines.append(f"  {label}:")
            lines += ["    " + ln for ln in text.rstrip().splitlines()]
    return "\n".join(lines) + "\n"
