"""Tool specs and the one place tool calls are validated and their errors mapped.

Room: mcp.

A ``ToolSpec`` ties a tool name to its argument model and an async handler returning a
JSON-safe dict. ``dispatch`` validates the raw arguments (nothing runs on bad input),
calls the handler, and turns every failure into a ``ToolOutcome`` with ``is_error`` set:
our own errors (``SwarmPoolError``) keep their message, anything unexpected becomes
"internal error: ..." plus a traceback on stderr. The server never crashes on a call.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from swarm_pool.errors import SwarmPoolError
from swarm_pool.mcp.runtime import Runtime
from swarm_pool.mcp.schemas import format_validation_error, tool_input_schema

log = logging.getLogger("swarm_pool.mcp")

Handler = Callable[[Runtime, Any], Awaitable[dict[str, Any]]]


class ToolCallError(SwarmPoolError):
    """A tool refused a call for a reason the agent can fix (the message says how)."""


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args: type[BaseModel]
    handler: Handler

    def input_schema(self) -> dict[str, Any]:
        return tool_input_schema(self.args)


@dataclass(frozen=True)
class ToolOutcome:
    result: dict[str, Any]
    is_error: bool = False

    @classmethod
    def error(cls, message: str) -> ToolOutcome:
        return cls({"error": message}, is_error=True)

    @property
    def text(self) -> str:
        if self.is_error:
            return str(self.result["error"])
        return json.dumps(self.result, indent=1, sort_keys=False, default=str)


class Registry:
    def __init__(self, specs: Iterable[ToolSpec]):
        self._specs: dict[str, ToolSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ValueError(f"duplicate tool {spec.name}")
            self._specs[spec.name] = spec

    def specs(self) -> list[ToolSpec]:
        return list(self._specs.values())

    def get(self, name: str) -> ToolSpec | None:
        return self._specs.get(name)

    async def dispatch(
        self, runtime: Runtime, name: str, arguments: Mapping[str, Any] | None
    ) -> ToolOutcome:
        started = time.monotonic()
        spec = self._specs.get(name)
        if spec is None:
            known = ", ".join(self._specs)
            return ToolOutcome.error(f"unknown tool {name!r}; available: {known}")
        try:
            args = spec.args.model_validate(dict(arguments or {}))
        except ValidationError as e:
            outcome = ToolOutcome.error(format_validation_error(spec.args, e))
        except (TypeError, ValueError):
            outcome = ToolOutcome.error("invalid arguments: arguments must be a JSON object")
        else:
            outcome = await self._run(spec, runtime, args)
        elapsed_ms = (time.monotonic() - started) * 1000
        if outcome.is_error:
            log.info("%s refused in %.0f ms: %s", name, elapsed_ms, outcome.text)
        else:
            log.info("%s ok in %.0f ms", name, elapsed_ms)
        return outcome

    async def _run(self, spec: ToolSpec, runtime: Runtime, args: BaseModel) -> ToolOutcome:
        try:
            return ToolOutcome(await spec.handler(runtime, args))
        except SwarmPoolError as e:
            return ToolOutcome.error(str(e) or type(e).__name__)
        except Exception as e:
            log.exception("tool %s failed", spec.name)
            return ToolOutcome.error(f"internal error: {type(e).__name__}: {e}")
