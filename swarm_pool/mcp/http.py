"""The pool's shared MCP server: ``python -m swarm_pool.mcp.http --project DIR --port P``.

Room: mcp.

The supervisor runs it as a pool child (kind ``mcp``), like the scripted model, so a
``kill -9`` is restarted with the same backoff and flap rules. It serves the registry's
tools over the official SDK's streamable HTTP transport at ``/mcp``, stateless and with
JSON answers: no session outlives a request, so a restarted server serves the next call
as if nothing happened. Every request must carry ``Authorization: Bearer <token>``; the
token (``tokens.py``) decides the caller's role and, for a worker, its directory, and
each call runs as that caller (``Runtime.bound``). ``GET /health`` answers the
supervisor's probe. The token secret is read from the pool's private state file, as the
gateway reads its passwords, so it is in no process's environment (``/proc/PID/environ``
keeps a process's initial environment whatever it unsets later);
``$SWARM_POOL_MCP_SECRET`` overrides it for a server run outside a pool.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from mcp.server import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from swarm_pool.errors import CapabilityError, PoolError
from swarm_pool.mcp.runtime import Runtime
from swarm_pool.mcp.server import build_server, configure_logging
from swarm_pool.paths import ProjectPaths
from swarm_pool.pool.serve import loopback_server
from swarm_pool.pool.state import read_state
from swarm_pool.tokens import SECRET_ENV, Principal, verify

log = logging.getLogger("swarm_pool.mcp")

HOST = "127.0.0.1"
MCP_PATH = "/mcp"
_STATE_KEY = "swarm_principal"


def principal_of(ctx: ServerRequestContext[Any]) -> Principal:
    """The caller ``_Authorized`` verified for this request."""
    request = ctx.request
    scope = getattr(request, "scope", None)
    found = scope.get("state", {}).get(_STATE_KEY) if isinstance(scope, dict) else None
    if not isinstance(found, Principal):
        raise CapabilityError("no verified capability token on this call")
    return found


class _Authorized:
    """ASGI wrapper: a request without a valid token never reaches the MCP layer."""

    def __init__(self, manager: StreamableHTTPSessionManager, secret: str) -> None:
        self._manager = manager
        self._secret = secret

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        auth = ""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                auth = value.decode("latin-1")
        scheme, _, token = auth.partition(" ")
        try:
            if scheme.lower() != "bearer" or not token:
                raise CapabilityError("missing capability token (Authorization: Bearer ...)")
            principal = verify(self._secret, token)
        except CapabilityError as e:
            body = json.dumps({"error": str(e)}).encode()
            response = Response(body, status_code=401, media_type="application/json")
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})[_STATE_KEY] = principal
        await self._manager.handle_request(scope, receive, send)


def build_app(runtime: Runtime, secret: str) -> Starlette:
    server = build_server(runtime, principal_of=principal_of)
    manager = StreamableHTTPSessionManager(server, json_response=True, stateless=True)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route(MCP_PATH, _Authorized(manager, secret)),
        ],
        lifespan=lifespan,
    )


def _state_secret(project: Path) -> str:
    try:
        state = read_state(ProjectPaths(project).state_file)
    except PoolError as e:
        log.error("%s", e)
        return ""
    return state.mcp_secret if state is not None else ""


def url(port: int) -> str:
    return f"http://{HOST}:{port}{MCP_PATH}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarm_pool.mcp.http", description=__doc__)
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    configure_logging()
    secret = os.environ.pop(SECRET_ENV, "") or _state_secret(args.project.resolve())
    if not secret:
        print(
            f"swarm_pool.mcp.http: no token secret (pool state or ${SECRET_ENV})",
            file=sys.stderr,
        )
        return 2
    runtime = Runtime(args.project.resolve())
    server = loopback_server(build_app(runtime, secret), args.port)
    log.info("serving the shared MCP server of %s on %s", runtime.cwd, url(args.port))
    try:
        server.run()
    finally:
        runtime.close()
    return 0 if server.started else 1


if __name__ == "__main__":
    raise SystemExit(main())
