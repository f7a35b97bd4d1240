"""Forwarding one request to one instance, streaming, with the instance's credentials.

Room: gateway.

It owns the pass-through: the client's method, path, raw query and body go upstream
unchanged except for hop-by-hop headers and ``authorization`` (the gateway's password
is replaced by the instance's). A JSON answer is relayed as the bytes it came in (no
decode and re-encode); a streamed one (SSE, or no length) is relayed chunk by chunk as
it arrives. A connection refused means the instance is restarting:
``InstanceUnavailableError`` (503 with ``Retry-After``), safe for the client to retry
because the request never reached OpenCode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from swarm_pool.errors import GatewayError, InstanceUnavailableError
from swarm_pool.gateway.upstreams import PoolView, Upstream

# RFC 9110 7.6.1 hop-by-hop headers, plus what the gateway sets itself.
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "authorization",
    }
)


def upstream_headers(headers: Mapping[str, str], auth: str) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k.lower() not in _HOP}
    out["authorization"] = auth
    return out


def client_headers(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in _HOP}


async def send(
    view: PoolView,
    up: Upstream,
    method: str,
    path: str,
    query: bytes,
    headers: Mapping[str, str],
    body: bytes,
) -> httpx.Response:
    """Send upstream and return the response with its body not read yet."""
    url = httpx.URL(up.url + path, query=query)
    req = view.client.build_request(
        method, url, headers=upstream_headers(headers, up.auth), content=body
    )
    try:
        return await view.client.send(req, stream=True)
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise InstanceUnavailableError(f"instance {up.name} is not accepting connections") from e
    except httpx.HTTPError as e:
        raise GatewayError(f"instance {up.name} failed: {e!r}") from e


async def relay(resp: httpx.Response) -> Response:
    """Turn an upstream response into the client's, streaming when it streams."""
    headers = client_headers(resp.headers)
    ctype = resp.headers.get("content-type", "")
    if ctype.startswith("text/event-stream") or "content-length" not in resp.headers:
        return StreamingResponse(
            _chunks(resp),
            status_code=resp.status_code,
            headers=headers,
            background=BackgroundTask(resp.aclose),
        )
    try:
        body = b"".join([chunk async for chunk in resp.aiter_raw()])
    except httpx.HTTPError as e:
        raise GatewayError(f"lost the instance while reading its answer: {e!r}") from e
    finally:
        await resp.aclose()
    return Response(body, status_code=resp.status_code, headers=headers)


async def _chunks(resp: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    except httpx.HTTPError:
        # The instance went away mid-stream: end the client's stream; it reconnects.
        return


async def forward(view: PoolView, up: Upstream, request: Request, body: bytes) -> Response:
    resp = await send(
        view,
        up,
        request.method,
        request.url.path,
        request.scope.get("query_string", b""),
        request.headers,
        body,
    )
    return await relay(resp)
