"""How the pool's own HTTP children (the shared MCP server, the gateway) serve their ASGI
app: uvicorn on 127.0.0.1 only, with uvloop and httptools when installed, no access log
and no ``X-Forwarded-*`` handling (loopback, nothing in front of them), and a one-second
graceful shutdown, since an event stream never ends on its own. One place, so the two
children cannot drift apart on any of these. Room: pool.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import uvicorn
from starlette.types import ASGIApp

from swarm_pool.pool.instance import HOST


def loopback_server(
    app: ASGIApp, port: int, *, ws: Literal["none", "websockets-sansio"] = "none"
) -> uvicorn.Server:
    """A uvicorn server for ``app`` on ``127.0.0.1:port`` (``ws``: WebSocket support)."""
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=HOST,
            port=port,
            loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            http="httptools" if importlib.util.find_spec("httptools") else "h11",
            ws=ws,
            lifespan="on",
            access_log=False,
            proxy_headers=False,
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
    )
