"""A typed httpx client for one ``opencode serve`` instance.

Room: opencode.

It owns auth (HTTP Basic as ``opencode`` with the instance's password), the few routes swarm-pool
uses, and the SSE event stream. Transport errors and bad answers are mapped to
``OpenCodeError`` here, so callers never see httpx exceptions, split the way httpx splits
them by what the caller may do next: never sent (``OpenCodeNotSentError``, safe to try
another instance), sent without an answer (``OpenCodeUnknownOutcomeError``, look first),
or answered with an error status (``OpenCodeStatusError``). The transport is
injectable: unit tests pass ``httpx.MockTransport``; integration tests use a real server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import SSEError, connect_sse

from swarm_pool.errors import (
    OpenCodeError,
    OpenCodeNotSentError,
    OpenCodeStatusError,
    OpenCodeUnknownOutcomeError,
)

USERNAME = "opencode"

# What OpenCode sets up per directory, each on its first use there: the instance state
# (config, project, VCS), the agents, the MCP clients (the relay starts), the tools.
_OPEN_DIRECTORY = ("/path", "/config", "/agent", "/mcp", "/experimental/tool/ids")

# The httpx errors raised before a single byte of the request left (or with no
# connection to send it on): the server cannot have acted on it.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


def transport_error(message: str, error: Exception) -> OpenCodeError:
    """Ours for an httpx transport error: not sent, or an unknown outcome."""
    if isinstance(error, _NOT_SENT):
        return OpenCodeNotSentError(message)
    if isinstance(error, httpx.TransportError):
        return OpenCodeUnknownOutcomeError(message)
    return OpenCodeError(message)


class OpenCodeClient:
    def __init__(
        self,
        base_url: str,
        password: str | None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        auth = httpx.BasicAuth(USERNAME, password) if password else None
        # trust_env=False: an instance is on loopback, and HTTP_PROXY would otherwise
        # carry our Authorization header to the proxy.
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=auth,
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenCodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        directory: str | None = None,
        json: Any = None,
        timeout: float | None = None,
        ok: tuple[int, ...] = (200, 204),
    ) -> httpx.Response:
        params = {"directory": directory} if directory else None
        try:
            resp = self._http.request(
                method,
                path,
                params=params,
                json=json,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as e:
            raise transport_error(f"{method} {self.base_url}{path} failed: {e!r}", e) from e
        if resp.status_code not in ok:
            raise OpenCodeStatusError(
                f"{method} {self.base_url}{path} answered {resp.status_code}: {resp.text[:300]}",
                status_code=resp.status_code,
            )
        return resp

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._request(method, path, **kw)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as e:
            raise OpenCodeError(f"{method} {path} answered non-JSON: {resp.text[:200]}") from e

    # --- health ---------------------------------------------------------------------

    def health(self, timeout: float | None = None) -> dict[str, Any]:
        data = self._json("GET", "/global/health", timeout=timeout)
        if not isinstance(data, dict) or data.get("healthy") is not True:
            raise OpenCodeError(f"instance {self.base_url} is not healthy: {data!r}")
        return data

    # --- sessions -------------------------------------------------------------------

    def create_session(self, directory: str, title: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if title:
            body["title"] = title
        data = self._json("POST", "/session", directory=directory, json=body)
        if not isinstance(data, dict) or "id" not in data:
            raise OpenCodeError(f"POST /session answered without an id: {data!r}")
        return data

    def prompt_async(self, session_id: str, text: str, directory: str | None = None) -> None:
        self._request(
            "POST",
            f"/session/{session_id}/prompt_async",
            directory=directory,
            json={"parts": [{"type": "text", "text": text}]},
        )

    def prompt(
        self, session_id: str, text: str, directory: str | None = None, timeout: float = 600
    ) -> dict[str, Any]:
        """The blocking form: returns when the model has finished answering."""
        data = self._json(
            "POST",
            f"/session/{session_id}/message",
            directory=directory,
            json={"parts": [{"type": "text", "text": text}]},
            timeout=timeout,
        )
        return data if isinstance(data, dict) else {}

    def session_status(self, directory: str | None = None) -> dict[str, dict[str, Any]]:
        """``{session_id: {"type": "busy"|"retry"|...}}``; idle sessions are absent."""
        data = self._json("GET", "/session/status", directory=directory)
        return data if isinstance(data, dict) else {}

    def sessions(self, directory: str | None = None) -> list[dict[str, Any]]:
        """The instance's sessions (those of ``directory`` if given)."""
        data = self._json("GET", "/session", directory=directory)
        return [s for s in data if isinstance(s, dict)] if isinstance(data, list) else []

    def all_sessions(self) -> list[dict[str, Any]]:
        """Every session of the instance, whatever its directory, in one request that
        opens no directory (``GET /session?directory=D`` makes OpenCode set up D, about a
        CPU-second and tens of MB for a directory it has not served)."""
        data = self._json("GET", "/experimental/session")
        return [s for s in data if isinstance(s, dict)] if isinstance(data, list) else []

    def get_session(self, session_id: str, directory: str | None = None) -> dict[str, Any]:
        data = self._json("GET", f"/session/{session_id}", directory=directory)
        return data if isinstance(data, dict) else {}

    def messages(self, session_id: str, directory: str | None = None) -> list[dict[str, Any]]:
        data = self._json("GET", f"/session/{session_id}/message", directory=directory)
        return data if isinstance(data, list) else []

    def abort(self, session_id: str, directory: str | None = None) -> None:
        self._request("POST", f"/session/{session_id}/abort", directory=directory)

    def delete_session(self, session_id: str, directory: str | None = None) -> None:
        self._request("DELETE", f"/session/{session_id}", directory=directory)

    def dispose_directory(self, directory: str) -> None:
        self._request("POST", "/instance/dispose", directory=directory)

    def open_directory(self, directory: str) -> None:
        """Have the instance set ``directory`` up now, before any session there: what
        its first session would otherwise wait for (measured: the first prompt then
        reaches the model as fast as in a directory already served)."""
        for path in _OPEN_DIRECTORY:
            self._request("GET", path, directory=directory)

    # --- mcp, permissions, questions ------------------------------------------------

    def mcp_status(self, directory: str | None = None) -> dict[str, Any]:
        data = self._json("GET", "/mcp", directory=directory)
        return data if isinstance(data, dict) else {}

    def permissions(self, directory: str | None = None) -> list[dict[str, Any]]:
        data = self._json("GET", "/permission", directory=directory)
        return data if isinstance(data, list) else []

    def reply_permission(
        self, request_id: str, reply: str, directory: str | None = None, message: str = ""
    ) -> None:
        if reply not in ("once", "always", "reject"):
            raise OpenCodeError(f"bad permission reply {reply!r}: use once, always or reject")
        body: dict[str, Any] = {"reply": reply}
        if message:
            body["message"] = message
        self._request("POST", f"/permission/{request_id}/reply", directory=directory, json=body)

    def questions(self, directory: str | None = None) -> list[dict[str, Any]]:
        data = self._json("GET", "/question", directory=directory)
        return data if isinstance(data, list) else []

    def reply_question(
        self, request_id: str, answers: list[list[str]], directory: str | None = None
    ) -> None:
        self._request(
            "POST", f"/question/{request_id}/reply", directory=directory, json={"answers": answers}
        )

    # --- events ---------------------------------------------------------------------

    def event_data(
        self, *, global_stream: bool = True, read_timeout: float = 30.0
    ) -> Iterator[str]:
        """Yield the raw ``data`` of each SSE message until the stream ends or fails
        (cheap: a caller that only needs to know the server is alive parses nothing).

        ``/global/event`` carries every directory's events; the server sends heartbeats,
        so a read timeout longer than the heartbeat period detects a dead stream.
        Raises OpenCodeError when the stream cannot be opened or breaks.
        """
        path = "/global/event" if global_stream else "/event"
        timeout = httpx.Timeout(10.0, read=read_timeout)
        try:
            with connect_sse(self._http, "GET", path, timeout=timeout) as source:
                code = source.response.status_code
                if code != 200:
                    raise OpenCodeStatusError(f"GET {path} answered {code}", status_code=code)
                for sse in source.iter_sse():
                    if sse.data:
                        yield sse.data
        except httpx.HTTPError as e:
            raise transport_error(f"event stream {self.base_url}{path} broke: {e!r}", e) from e
        except SSEError as e:
            raise OpenCodeError(f"event stream {self.base_url}{path} broke: {e!r}") from e

    def events(self, *, global_stream: bool = True, read_timeout: float = 30.0) -> Iterator[Any]:
        """Yield decoded bus events (dicts) of ``event_data`` (same errors)."""
        for data in self.event_data(global_stream=global_stream, read_timeout=read_timeout):
            try:
                yield json.loads(data)
            except ValueError:
                continue


def unwrap_event(raw: Any) -> tuple[str, dict[str, Any]] | None:
    """``(type, properties)`` of a bus event from ``/event`` or ``/global/event`` (whose
    events wrap the bus event in ``payload``)."""
    if not isinstance(raw, dict):
        return None
    payload = raw.get("payload") if isinstance(raw.get("payload"), dict) else raw
    if not isinstance(payload, dict):
        return None
    kind = payload.get("type")
    props = payload.get("properties")
    if not isinstance(kind, str):
        return None
    return kind, props if isinstance(props, dict) else {}
