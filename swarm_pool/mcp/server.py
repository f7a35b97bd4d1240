"""The MCP server itself: the official SDK's low-level ``Server``, over stdio here and
over streamable HTTP in ``http.py`` (the pool's shared server).

Room: mcp.

It publishes the registry's tools (name, description, input schema) and hands every call
to ``Registry.dispatch``, returning the result as JSON text plus structured content.
stdout is the protocol channel: logging goes to stderr, and the SDK's stdio transport
diverts fd 1 so a stray print cannot corrupt the stream.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

from swarm_pool import __version__
from swarm_pool.mcp.coordinator_tools import COORDINATOR_SPECS
from swarm_pool.mcp.registry import Registry, ToolOutcome, ToolSpec
from swarm_pool.mcp.runtime import Runtime
from swarm_pool.mcp.worker_tools import WORKER_SPECS
from swarm_pool.protocol import MCP_SERVER_NAME
from swarm_pool.store import find_project_store
from swarm_pool.tokens import Principal, Role

log = logging.getLogger("swarm_pool.mcp")

LOG_LEVEL_ENV = "SWARM_POOL_MCP_LOG"


def default_specs() -> list[ToolSpec]:
    """Every tool this server offers: the worker tools, then the coordinator tools."""
    return [*WORKER_SPECS, *COORDINATOR_SPECS]


PrincipalOf = Callable[[ServerRequestContext[Any]], Principal]


def worker_tool_names() -> frozenset[str]:
    return frozenset(s.name for s in WORKER_SPECS)


def build_server(
    runtime: Runtime,
    specs: Iterable[ToolSpec] | None = None,
    *,
    principal_of: PrincipalOf | None = None,
) -> Server[Any]:
    """The MCP server. With ``principal_of`` (the shared server), each call runs as the
    caller its capability token names, and a worker is offered the worker tools only."""
    registry = Registry(default_specs() if specs is None else specs)
    tools = [
        types.Tool(name=s.name, description=s.description, input_schema=s.input_schema())
        for s in registry.specs()
    ]
    worker_names = worker_tool_names()
    worker_tools = [t for t in tools if t.name in worker_names]

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        if principal_of is not None and principal_of(ctx).role is Role.WORKER:
            return types.ListToolsResult(tools=worker_tools)
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        caller = runtime
        refused: ToolOutcome | None = None
        if principal_of is not None:
            principal = principal_of(ctx)
            caller = runtime.bound(principal)
            if principal.role is Role.WORKER and params.name not in worker_names:
                refused = ToolOutcome.error(
                    f"{params.name} is a coordinator tool: a worker's token cannot call it"
                    if registry.get(params.name) is not None
                    else f"unknown tool {params.name!r}"
                )
        outcome = refused or await registry.dispatch(caller, params.name, params.arguments)
        return types.CallToolResult(
            content=[types.TextContent(text=outcome.text)],
            structured_content=outcome.result,
            is_error=outcome.is_error,
        )

    return Server(
        MCP_SERVER_NAME,
        version=__version__,
        instructions="swarm-pool tools: file reservations, mail, progress and completion "
        "for agents working on beads.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


async def serve_stdio(runtime: Runtime) -> None:
    server = build_server(runtime)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def configure_logging() -> None:
    level = os.environ.get(LOG_LEVEL_ENV, "WARNING").upper()
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level, logging.WARNING),
        format=f"%(asctime)s swarm-mcp[{os.getpid()}] %(levelname)s %(message)s",
    )


def run(cwd: Path | None = None, *, config_path: Path | None = None) -> None:
    """Serve MCP on stdio until the client closes stdin."""
    configure_logging()
    if config_path is None:
        runtime = Runtime(cwd)
    else:
        runtime = Runtime(cwd, functools.partial(find_project_store, config_path=config_path))
    log.info("serving %s in %s", MCP_SERVER_NAME, runtime.cwd)
    try:
        anyio.run(serve_stdio, runtime)
    except KeyboardInterrupt:
        pass
    finally:
        runtime.close()
