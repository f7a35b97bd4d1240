"""Proxying one WebSocket (OpenCode's PTY ``/pty/{id}/connect`` routes) to one instance.

Room: gateway.

It owns the upstream half: open the instance's WebSocket at the client's path and raw
query with the instance's credentials (the client's ``ticket``, if any, goes up
unchanged: the instance that minted it checks it), accept the client with the
subprotocol the instance chose, then copy frames both ways, text as text and bytes as
bytes, until either side closes; the other side is then closed with the same code.
An instance that refuses the connection is ``InstanceUnavailableError``, one that
refuses the handshake (401, 404, ...) is ``GatewayError`` carrying its status, both
raised before the client is accepted so the caller can still refuse it.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from swarm_pool.errors import GatewayError, InstanceUnavailableError
from swarm_pool.gateway.upstreams import Upstream

_HANDSHAKE_TIMEOUT_S = 10.0


async def _open(up: Upstream, client: WebSocket) -> ClientConnection:
    query = client.scope.get("query_string", b"").decode("latin-1")
    url = up.url.replace("http://", "ws://", 1) + client.url.path + (f"?{query}" if query else "")
    # An empty Sec-WebSocket-Protocol header shows as [""]: not a protocol to ask for.
    protocols = [p for p in client.scope.get("subprotocols") or () if p] or None
    try:
        return await connect(
            url,
            additional_headers={"authorization": up.auth},
            subprotocols=protocols,
            compression=None,  # loopback: deflate would only cost CPU
            max_size=None,
            open_timeout=_HANDSHAKE_TIMEOUT_S,
            proxy=None,
        )
    except InvalidStatus as e:
        raise GatewayError(
            f"instance {up.name} refused the WebSocket: HTTP {e.response.status_code}",
        ) from e
    except (OSError, TimeoutError) as e:
        raise InstanceUnavailableError(
            f"instance {up.name} is not accepting connections ({e})"
        ) from e
    except InvalidHandshake as e:
        raise GatewayError(f"instance {up.name} failed the WebSocket handshake: {e}") from e


async def proxy(up: Upstream, client: WebSocket) -> None:
    upstream = await _open(up, client)
    await client.accept(subprotocol=upstream.subprotocol)
    code = 1000

    async def down() -> None:
        nonlocal code
        try:
            async for message in upstream:
                if isinstance(message, bytes):
                    await client.send_bytes(message)
                else:
                    await client.send_text(message)
        except ConnectionClosed:
            pass
        if upstream.close_code is not None:
            code = upstream.close_code

    async def up_() -> None:
        nonlocal code
        try:
            while True:
                message = await client.receive()
                if message["type"] == "websocket.disconnect":
                    code = int(message.get("code") or 1000)
                    return
                if message.get("bytes") is not None:
                    await upstream.send(message["bytes"])
                elif message.get("text") is not None:
                    await upstream.send(message["text"])
        except (ConnectionClosed, WebSocketDisconnect):
            return

    tasks = [asyncio.create_task(down()), asyncio.create_task(up_())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # 1005/1006 are reserved: never sent in a close frame.
        sendable = code if code not in (1005, 1006) else 1000
        with contextlib.suppress(Exception):
            await upstream.close(sendable)
        with contextlib.suppress(Exception):
            await client.close(sendable)
