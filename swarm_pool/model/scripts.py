"""Scripts for the scripted model: what they look like, where they come from,
which step is next.

Room: model.

A script is a list of steps. A step is a tool call (``tool`` + ``args``), a text reply
(``text``), or both in one assistant message; ``each_file`` repeats a step once per
owned literal file, and ``include`` splices in another named script. Any step may carry
a fault: ``delay_s`` (answer late), ``barrier`` (answer only once ``barrier_count``
requests wait at the same named barrier at once: proof that sessions really run side by
side, whatever the machine's load; an HTTP 400 after ``barrier_timeout_s``),
``http_error`` (an error status instead of an answer, optionally with
``retry_after_s``), ``malformed`` (a broken stream chunk) or ``hang`` (never answer);
with ``times: N`` the fault hits only the first N requests of a session for that step,
and the step's tool or text is answered after that (OpenCode retries a failed turn with
the same conversation). Arguments may use placeholders (``{bead_id}``, ``{epic_id}``,
``{worktree}``, ``{file}``, ``{path}``, ...) filled from the worker's contract; an
argument that is exactly ``"{files}"`` or ``"{literal_files}"`` becomes a list. Scripts
come inline from the contract (a plan's ``script``), from a TOML file (by bead id, epic
id, a ``[match]`` glob on the bead id, or ``default``), or from the built-in default
worker script.

Everything here is pure: the server derives the step index from the conversation it is
sent (the number of assistant messages so far), so it keeps no per-session state (only
the ``times`` counters, which a restart resets).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from swarm_pool.errors import ScriptError
from swarm_pool.protocol import (
    COORDINATOR_TOOLS,
    WORKER_TOOLS,
    Contract,
    agent_tool_name,
    find_bead_id,
    find_contract,
)

_GLOB_CHARS = set("*?[]{}")
_PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\}")
# Placeholders whose whole-string use yields a list rather than text.
_LIST_PLACEHOLDERS = ("files", "literal_files")
_MAX_INCLUDE_DEPTH = 8
DEFAULT_SCRIPT = "default"
DEFAULT_FINAL_TEXT = "Done with {bead_id}."


class Step(BaseModel):
    """One assistant turn of a script (or a fault instead of one)."""

    model_config = ConfigDict(extra="forbid")

    tool: str | None = Field(None, min_length=1, description="tool name (ours may be short)")
    args: dict[str, Any] = Field(default_factory=dict)
    text: str | None = None
    each_file: bool = Field(False, description="repeat once per owned literal file")
    include: str | None = Field(None, min_length=1, description="splice a named script")
    delay_s: float = Field(0.0, ge=0, le=3600)
    http_error: int | None = Field(None, ge=400, le=599)
    error_message: str = ""
    retry_after_s: float | None = Field(None, ge=0, description="Retry-After on http_error")
    malformed: bool = False
    hang: bool = False
    barrier: str | None = Field(None, min_length=1, description="a barrier's name")
    barrier_count: int = Field(2, ge=2, le=1000, description="requests the barrier waits for")
    barrier_timeout_s: float = Field(120.0, gt=0, le=3600)
    times: int | None = Field(
        None, ge=1, description="the fault hits only the first N requests of a session"
    )

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        faults = [self.http_error is not None, self.malformed, self.hang]
        if sum(faults) > 1:
            raise ValueError("a step can have only one of http_error, malformed, hang")
        if self.include is not None and (
            self.tool or self.text is not None or any(faults) or self.each_file
        ):
            raise ValueError("an include step cannot also have tool, text, each_file or a fault")
        if not (self.tool or self.text is not None or self.include or any(faults)):
            raise ValueError(
                "a step needs a tool, a text, an include, or a fault (http_error, malformed, hang)"
            )
        if self.args and not self.tool:
            raise ValueError("args given without a tool")
        if self.times is not None and not (any(faults) or self.delay_s):
            raise ValueError("times applies to a fault (http_error, malformed, hang, delay_s)")
        if self.times is not None and not (self.tool or self.text is not None):
            # The step's answer once the faults are used up (a retry is the same turn).
            raise ValueError("a step with times needs a tool or a text to answer afterwards")
        if self.retry_after_s is not None and self.http_error is None:
            raise ValueError("retry_after_s applies to http_error only")
        if self.barrier is not None and not (self.tool or self.text is not None):
            raise ValueError("a barrier step needs a tool or a text to answer once it opens")
        return self


class Script(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: list[Step] = Field(default_factory=list)
    final_text: str = Field(DEFAULT_FINAL_TEXT, description="reply once the steps ran out")


class ScriptFile(BaseModel):
    """The TOML file: ``[scripts.NAME]`` tables and a ``[match]`` table of glob -> name."""

    model_config = ConfigDict(extra="forbid")

    scripts: dict[str, Script] = Field(default_factory=dict)
    match: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_names(self) -> ScriptFile:
        names = set(self.scripts) | {DEFAULT_SCRIPT}
        for pattern, name in self.match.items():
            if name not in names:
                raise ValueError(f"[match] {pattern!r} names unknown script {name!r}")
        for name, script in self.scripts.items():
            for step in script.steps:
                if step.include is not None and step.include not in names:
                    raise ValueError(f"script {name!r} includes unknown script {step.include!r}")
        return self


def _describe(err: ValidationError, where: str) -> str:
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) for p in e["loc"]) or "(top)"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (+{err.error_count() - 3} more)" if err.error_count() > 3 else ""
    return f"bad script in {where}: " + "; ".join(parts) + more


def parse_script_file(data: Mapping[str, Any], where: str = "scripts file") -> ScriptFile:
    try:
        return ScriptFile.model_validate(data)
    except ValidationError as e:
        raise ScriptError(_describe(e, where)) from e


def load_script_file(path: Path) -> ScriptFile:
    """Read and validate a scripts TOML file; ScriptError on any problem."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as e:
        raise ScriptError(f"scripts file not found: {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise ScriptError(f"scripts file {path} is not valid TOML: {e}") from e
    except OSError as e:
        raise ScriptError(f"cannot read scripts file {path}: {e}") from e
    return parse_script_file(data, str(path))


def parse_inline(steps: Iterable[Mapping[str, Any]], where: str = "inline script") -> Script:
    try:
        return Script.model_validate({"steps": list(steps)})
    except ValidationError as e:
        raise ScriptError(_describe(e, where)) from e


def default_worker_script() -> Script:
    """Init, reserve the owned files, write each literal one, report 50%, complete."""
    return Script(
        steps=[
            Step(tool="swarmmail_init", args={"bead_id": "{bead_id}"}),
            Step(
                tool="swarmmail_reserve",
                args={"paths": "{files}", "reason": "scripted worker for {bead_id}"},
            ),
            Step(
                tool="write",
                each_file=True,
                args={
                    "filePath": "{path}",
                    "content": "# {file}\n# written by the swarm-pool scripted model "
                    "for {bead_id} (epic {epic_id}, attempt {attempt})\n",
                },
            ),
            Step(
                tool="swarm_progress",
                args={
                    "bead_id": "{bead_id}",
                    "progress_percent": 50,
                    "message": "wrote {literal_count} file(s)",
                    "attempt": "{attempt}",
                },
            ),
            Step(
                tool="swarm_complete",
                args={
                    "bead_id": "{bead_id}",
                    "summary": "scripted worker wrote {literal_count} file(s) for {bead_id}",
                    "files_touched": "{literal_files}",
                    "attempt": "{attempt}",
                },
            ),
        ]
    )


def is_literal(pattern: str) -> bool:
    return not (set(pattern) & _GLOB_CHARS)


def agent_visible_tool(tool: str) -> str:
    """Our MCP tools may be named short in scripts; the agent sees them prefixed."""
    if tool in WORKER_TOOLS or tool in COORDINATOR_TOOLS:
        return agent_tool_name(tool)
    return tool


@dataclass
class Context:
    """The values placeholders expand to, learned from the conversation."""

    bead_id: str = ""
    epic_id: str = ""
    title: str = ""
    worktree: str = ""
    files: list[str] = field(default_factory=list)
    attempt: int = 1
    session_id: str = ""
    contract: Contract | None = None

    @property
    def literal_files(self) -> list[str]:
        return [f for f in self.files if is_literal(f)]

    def values(self, file: str = "") -> dict[str, Any]:
        path = str(Path(self.worktree) / file) if (self.worktree and file) else file
        return {
            "bead_id": self.bead_id,
            "epic_id": self.epic_id,
            "title": self.title,
            "worktree": self.worktree,
            "attempt": self.attempt,
            "session_id": self.session_id,
            "file": file,
            "path": path,
            "files": list(self.files),
            "literal_files": self.literal_files,
            "literal_count": len(self.literal_files),
        }


def expand(value: Any, values: Mapping[str, Any]) -> Any:
    """Fill placeholders in ``value``; unknown ``{names}`` are left alone (code has braces)."""
    if isinstance(value, str):
        whole = _PLACEHOLDER_RE.fullmatch(value)
        if whole and whole.group(1) in _LIST_PLACEHOLDERS:
            return list(values[whole.group(1)])
        if whole and isinstance(values.get(whole.group(1)), int):
            return values[whole.group(1)]  # "{attempt}" stays a number

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name not in values:
                return m.group(0)
            got = values[name]
            return ", ".join(got) if isinstance(got, list) else str(got)

        return _PLACEHOLDER_RE.sub(sub, value)
    if isinstance(value, list):
        return [expand(v, values) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, values) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class PlannedStep:
    """A concrete step: names and arguments expanded, ready to answer with."""

    tool: str | None
    args: dict[str, Any]
    text: str | None
    delay_s: float
    http_error: int | None
    error_message: str
    retry_after_s: float | None
    malformed: bool
    hang: bool
    times: int | None
    barrier: str | None = None
    barrier_count: int = 2
    barrier_timeout_s: float = 120.0


@dataclass(frozen=True)
class Plan:
    script_name: str
    steps: list[PlannedStep]
    final_text: str


class ScriptBook:
    """The scripts one model server plays: a file's (maybe none) plus the built-in default."""

    def __init__(self, script_file: ScriptFile | None = None, default_delay_s: float = 0.0) -> None:
        self.file = script_file or ScriptFile()
        self.default_delay_s = default_delay_s

    @classmethod
    def from_path(cls, path: Path | None, default_delay_s: float = 0.0) -> ScriptBook:
        return cls(load_script_file(path) if path else None, default_delay_s)

    def named(self, name: str) -> Script:
        if name in self.file.scripts:
            return self.file.scripts[name]
        if name == DEFAULT_SCRIPT:
            return default_worker_script()
        raise ScriptError(f"unknown script {name!r}")

    def select(self, ctx: Context) -> tuple[str, Script]:
        """Inline script, else by bead id, epic id, a [match] glob, else the default."""
        if ctx.contract is not None and ctx.contract.script is not None:
            return "inline", parse_inline(ctx.contract.script, f"inline script of {ctx.bead_id}")
        for key in (ctx.bead_id, ctx.epic_id):
            if key and key in self.file.scripts:
                return key, self.file.scripts[key]
        if ctx.bead_id:
            for pattern, name in self.file.match.items():
                if fnmatch.fnmatchcase(ctx.bead_id, pattern):
                    return name, self.named(name)
        return DEFAULT_SCRIPT, self.named(DEFAULT_SCRIPT)

    def plan(self, ctx: Context) -> Plan:
        name, script = self.select(ctx)
        steps = self._flatten(script.steps, ctx, depth=0)
        return Plan(name, steps, str(expand(script.final_text, ctx.values())))

    def _flatten(self, steps: list[Step], ctx: Context, depth: int) -> list[PlannedStep]:
        if depth > _MAX_INCLUDE_DEPTH:
            raise ScriptError(f"scripts include each other more than {_MAX_INCLUDE_DEPTH} deep")
        out: list[PlannedStep] = []
        for step in steps:
            if step.include is not None:
                out.extend(self._flatten(self.named(step.include).steps, ctx, depth + 1))
                continue
            for file in ctx.literal_files if step.each_file else [""]:
                values = ctx.values(file)
                out.append(
                    PlannedStep(
                        tool=agent_visible_tool(step.tool) if step.tool else None,
                        args=expand(step.args, values),
                        text=expand(step.text, values) if step.text is not None else None,
                        delay_s=step.delay_s or self.default_delay_s,
                        error_message=str(expand(step.error_message, values)),
                        **{key: getattr(step, key) for key in _PLAYED_AS_WRITTEN},
                    )
                )
        return out


# The fault fields of a step that reach the server unchanged (no placeholders in them).
_PLAYED_AS_WRITTEN = (
    "http_error",
    "retry_after_s",
    "malformed",
    "hang",
    "times",
    "barrier",
    "barrier_count",
    "barrier_timeout_s",
)
_WORKDIR_RE = re.compile(r"^\s*Working directory: (?P<dir>/\S.*?)\s*$", re.MULTILINE)


def context_from_texts(
    user_texts: list[str], system_texts: list[str], session_id: str = ""
) -> Context:
    """What the conversation tells us: the contract (or a bare bead id) and the directory."""
    joined = "\n".join(user_texts)
    # The worker prompt is a user message; a caller may also pass it as a system prompt.
    contract = find_contract(joined) or find_contract("\n".join(system_texts))
    ctx = Context(session_id=session_id)
    if contract is not None:
        ctx.contract = contract
        ctx.bead_id = contract.bead_id
        ctx.epic_id = contract.epic_id
        ctx.title = contract.title
        ctx.worktree = contract.worktree
        ctx.files = list(contract.files)
        ctx.attempt = contract.attempt
    else:
        ctx.bead_id = find_bead_id(joined) or ""
        if ctx.bead_id and "." in ctx.bead_id:
            ctx.epic_id = ctx.bead_id.rsplit(".", 1)[0]
    if not ctx.worktree:
        # OpenCode's system prompt states the session directory in its <env> block.
        for text in system_texts:
            m = _WORKDIR_RE.search(text)
            if m:
                ctx.worktree = m.group("dir")
                break
    return ctx
