"""The arguments of the worker tools: one strict pydantic model per tool.

Room: mcp.

These models are both the JSON schema the agent sees in ``tools/list`` and the validator
every call goes through before anything touches the store. ``format_validation_error``
turns pydantic's errors into one sentence an agent can act on ("progress_percent must be
between 0 and 100 (got 150)"), and ``tool_input_schema`` strips pydantic's noise (titles)
from the published schema.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

_AGENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MAX_PATHS = 200
MAX_TEXT = 64 * 1024


class ToolArgs(BaseModel):
    """Base of every tool's arguments: unknown keys are errors, strings are trimmed."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


def _check_paths(values: list[str]) -> list[str]:
    for value in values:
        if not value.strip():
            raise ValueError("paths must not contain empty strings")
        if "\x00" in value:
            raise ValueError("paths must not contain NUL characters")
    return [v.strip() for v in values]


def _check_agent(value: str) -> str:
    if not _AGENT_RE.match(value):
        raise ValueError(
            f"agent name {value!r} is not valid: use 1-64 letters, digits, '.', '_', '-', '@'"
        )
    return value


# swarm_progress and swarm_complete both name the attempt they report on.
Attempt = Annotated[
    int | None,
    Field(
        ge=1,
        description="Your attempt number, from your contract. A report from an older "
        "attempt is recorded as stale and changes nothing.",
    ),
]


class InitArgs(ToolArgs):
    agent_name: str = Field(
        "",
        description="Your agent name (default: worker-<bead id> in a worktree).",
        max_length=64,
    )
    bead_id: str = Field(
        "", description="The bead (subtask) you work on (default: your worktree's bead)."
    )
    epic_id: str = Field("", description="The epic of the bead (checked against the store).")
    task_description: str = Field("", description="What you are about to do (for the log).")

    @field_validator("agent_name")
    @classmethod
    def _agent(cls, value: str) -> str:
        return _check_agent(value) if value else value


class ReserveArgs(ToolArgs):
    paths: list[str] = Field(
        description="Files or glob patterns to reserve, relative to the project root "
        "(e.g. 'src/app.py', 'src/api/**').",
        min_length=1,
        max_length=MAX_PATHS,
    )
    exclusive: bool = Field(True, description="Exclusive reservation (default true).")
    ttl_seconds: int = Field(
        3600, ge=1, le=7 * 24 * 3600, description="Lifetime of the reservation in seconds."
    )
    reason: str = Field("", description="Why you reserve these files.", max_length=1000)

    _paths = field_validator("paths")(_check_paths)


class ReleaseArgs(ToolArgs):
    paths: list[str] = Field(
        default_factory=list,
        description="Patterns to release (as reserved). Omit both paths and "
        "reservation_ids to release everything you hold.",
        max_length=MAX_PATHS,
    )
    reservation_ids: list[str] = Field(
        default_factory=list, description="Reservation ids to release.", max_length=MAX_PATHS
    )

    _paths = field_validator("paths")(_check_paths)


class SendArgs(ToolArgs):
    to: list[str] = Field(
        description="Recipient agent names (e.g. ['coordinator']).",
        min_length=1,
        max_length=50,
    )
    subject: str = Field(description="Subject line.", min_length=1, max_length=200)
    body: str = Field(description="Message body.", max_length=MAX_TEXT)
    importance: Literal["low", "normal", "high", "urgent"] = Field(
        "normal", description="low, normal, high or urgent."
    )
    thread_id: str = Field("", description="Thread to reply in (optional).", max_length=200)
    ack_required: bool = Field(False, description="Ask the recipients to acknowledge.")

    @field_validator("to", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        # Agents often pass a single name; accept it as a one-element list.
        return [value] if isinstance(value, str) else value

    @field_validator("to")
    @classmethod
    def _agents(cls, value: list[str]) -> list[str]:
        return [_check_agent(v.strip()) for v in value]


class InboxArgs(ToolArgs):
    unread_only: bool = Field(False, description="Only messages you have not read yet.")
    limit: int = Field(20, ge=1, le=200, description="At most this many messages.")


class MessageArgs(ToolArgs):
    message_id: str = Field(description="The message id from your inbox.", min_length=1)


class ProgressArgs(ToolArgs):
    bead_id: str = Field(description="Your bead id.", min_length=1)
    progress_percent: int = Field(ge=0, le=100, description="0 to 100.")
    message: str = Field("", description="What you did / are doing.", max_length=MAX_TEXT)
    files_touched: list[str] = Field(
        default_factory=list, description="Files changed so far.", max_length=MAX_PATHS
    )
    attempt: Attempt = None

    _paths = field_validator("files_touched")(_check_paths)


class CompleteArgs(ToolArgs):
    bead_id: str = Field(description="Your bead id.", min_length=1)
    summary: str = Field(description="What you did.", min_length=1, max_length=MAX_TEXT)
    files_touched: list[str] = Field(
        description="Every file you created, changed or deleted, relative to the project root.",
        max_length=MAX_PATHS * 5,
    )
    attempt: Attempt = None

    _paths = field_validator("files_touched")(_check_paths)


def tool_input_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema published for ``model``: pydantic's, minus the titles."""

    def strip(node: Any) -> Any:
        # A string "title" is pydantic's label; a property named "title" has a dict value.
        if isinstance(node, dict):
            return {
                k: strip(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))
            }
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    schema: dict[str, Any] = strip(model.model_json_schema())
    schema.setdefault("properties", {})
    schema["additionalProperties"] = False
    return schema


def _bounds(model: type[BaseModel], field: str) -> tuple[Any, Any]:
    info = model.model_fields.get(field)
    low: Any = None
    high: Any = None
    if info is not None:
        for meta in info.metadata:
            if isinstance(meta, annotated_types.Ge):
                low = meta.ge
            elif isinstance(meta, annotated_types.Gt):
                low = meta.gt
            elif isinstance(meta, annotated_types.Le):
                high = meta.le
            elif isinstance(meta, annotated_types.Lt):
                high = meta.lt
    return low, high


def format_validation_error(model: type[BaseModel], err: ValidationError) -> str:
    """One readable line per problem, joined with '; '."""
    allowed = ", ".join(model.model_fields)
    lines: list[str] = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "arguments"
        field = str(item["loc"][0]) if item["loc"] else ""
        kind = item["type"]
        given = item.get("input")
        if kind == "missing":
            lines.append(f"missing required argument: {loc}")
        elif kind == "extra_forbidden":
            lines.append(f"unknown argument: {loc} (allowed: {allowed})")
        elif kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
            low, high = _bounds(model, field)
            if low is not None and high is not None:
                lines.append(f"{loc} must be between {low} and {high} (got {given!r})")
            else:
                lines.append(f"{loc}: {item['msg']} (got {given!r})")
        elif kind in ("too_short", "string_too_short"):
            least = (item.get("ctx") or {}).get("min_length", 1)
            if kind == "string_too_short" and least == 1:
                lines.append(f"{loc} must not be empty")
            else:
                unit = "item" if kind == "too_short" else "character"
                lines.append(f"{loc} needs at least {least} {unit}{'s' if least != 1 else ''}")
        elif kind in ("too_long", "string_too_long"):
            most = (item.get("ctx") or {}).get("max_length")
            unit = "items" if kind == "too_long" else "characters"
            lines.append(f"{loc} allows at most {most} {unit}")
        elif kind == "value_error":
            # Our own validators: the message is already a sentence.
            msg = str(item["msg"]).removeprefix("Value error, ")
            lines.append(msg if msg.startswith(field) else f"{loc}: {msg}")
        elif kind == "model_type":
            lines.append("arguments must be a JSON object")
        else:
            lines.append(f"{loc}: {item['msg']} (got {given!r})")
    return "invalid arguments: " + "; ".join(lines)
