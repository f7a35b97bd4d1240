"""The gateway's request handling: auth, then one handler per ``RouteKind``.

Room: gateway.

``Gateway`` owns the running state (pool view, session placement, event hub, the store
it persists the session map to) and ``handle``, the one ASGI endpoint every path goes
to: it checks the gateway's own Basic password, matches the route in the routing table
and sends it where the issue's rules say: a new session to the router's choice with
directory affinity, a session's routes to its owner (503 + ``Retry-After`` while the
owner restarts), session statuses from the event-fed status board (an instance is asked
only until its stream is synced), lists merged over every ready instance, events merged
from every instance, health aggregated, directory routes to the directory's home,
anything else to any ready instance. ``build_app`` wraps it in a Starlette app whose
lifespan starts and stops the background tasks. Our errors become HTTP answers here and
nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from swarm_pool.config import Config
from swarm_pool.errors import GatewayError, InstanceUnavailableError, SwarmPoolError
from swarm_pool.gateway import proxy
from swarm_pool.gateway.events import EventHub
from swarm_pool.gateway.merge import merge, merge_health
from swarm_pool.gateway.placement import Placement, resolve_directory
from swarm_pool.gateway.table import Match, RouteKind, RoutingTable
from swarm_pool.gateway.upstreams import PoolView, Upstream
from swarm_pool.gateway.websocket import proxy as ws_proxy
from swarm_pool.paths import ProjectPaths
from swarm_pool.store.core import Store
from swarm_pool.store.sessions import Origin

log = logging.getLogger("swarm_pool.gateway")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
DIRECTORY_HEADER = "x-opencode-directory"
PTY_CONNECT = frozenset({"pty.connect", "v2.pty.connect"})  # OpenCode's WebSocket routes


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _error(status: int, name: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json({"name": name, "data": {"message": message}}, status, headers)


def _sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


class Gateway:
    def __init__(
        self,
        paths: ProjectPaths,
        config: Config,
        *,
        store: Store | None = None,
        table: RoutingTable | None = None,
    ) -> None:
        self.paths = paths
        self.config = config
        self.cwd = str(paths.root)
        self.table = table or RoutingTable.load()
        self.view = PoolView(paths.state_file)
        self.placement = Placement(config.pool.max_sessions_per_instance)
        self.hub = EventHub(self.view, self.placement, self._learned)
        self.store = store
        # One writer thread: store appends are blocking, and keep their order.
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-store")
        self._poller: asyncio.Task[None] | None = None
        # In-flight status snapshots, one per (instance, directory), shared by requests.
        self._syncing: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self.store is not None:
            places = await self._in_writer(self.store.sessions.all)
            for place in places:
                self.placement.learn(place.session_id, place.instance, place.directory)
            log.info("gateway: %d sessions loaded from the store", len(places))
        self.view.refresh()
        self.hub.sync()
        self._poller = asyncio.create_task(self._poll(), name="gateway-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.hub.close()
        await self.view.close()
        self._writer.shutdown(wait=True)

    async def _poll(self) -> None:
        while True:
            if self.view.refresh():
                self.hub.sync()
            await asyncio.sleep(self.config.gateway.state_poll_s)

    async def _in_writer(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    def _learned(self, session_id: str, instance: str, directory: str) -> None:
        self._persist(session_id, instance, directory, "learned")

    def _persist(
        self, session_id: str, instance: str, directory: str, origin: Origin
    ) -> asyncio.Future[Any] | None:
        if self.store is None:
            return None
        store = self.store

        def write() -> None:
            try:
                store.sessions.route(session_id, instance, directory=directory, origin=origin)
            except SwarmPoolError as e:
                log.error("gateway: cannot record session %s: %s", session_id, e)

        return asyncio.get_running_loop().run_in_executor(self._writer, write)

    # --- requests --------------------------------------------------------------------

    def _authorized(self, request: HTTPConnection) -> bool:
        expected = self.view.gateway_auth
        given = request.headers.get("authorization", "")
        return bool(expected) and secrets.compare_digest(given.encode(), expected.encode())

    async def handle(self, request: Request) -> Response:
        if not self._authorized(request):
            challenge = {"www-authenticate": 'Basic realm="opencode"'}
            return Response("Unauthorized", status_code=401, headers=challenge)
        match = self.table.match(request.method, request.url.path)
        try:
            return await self._dispatch(request, match)
        except InstanceUnavailableError as e:
            retry = str(self.config.gateway.retry_after_s)
            return _error(503, "ServiceUnavailable", str(e), {"retry-after": retry})
        except GatewayError as e:
            return _error(502, "BadGateway", str(e))

    async def _dispatch(self, request: Request, match: Match) -> Response:
        kind = match.kind
        if kind is RouteKind.EVENTS:
            return self._events(self._directory(request))
        if kind is RouteKind.GLOBAL_EVENTS:
            return self._events(None)
        body = await request.body()
        if kind is RouteKind.CREATE_SESSION:
            return await self._create_session(request, body)
        if kind is RouteKind.SESSION:
            up = await self._session_owner(match.path_params["sessionID"], request)
            response = await proxy.forward(self.view, up, request, body)
            if match.route is not None and match.route.operation == "session.fork":
                await self._learn_from(response, up, self._directory(request), "gateway")
            return response
        if kind is RouteKind.SESSION_STATUS:
            return await self._session_status(request)
        if kind is RouteKind.MERGED_LIST:
            assert match.route is not None
            return await self._merged(request, match.route.operation)
        if kind is RouteKind.HEALTH:
            return await self._health(request)
        if kind is RouteKind.REQUEST_REPLY:
            name = self.placement.requests.get(match.path_params.get("requestID", ""))
            asker = self.view.instances.get(name or "")
            if asker is None:
                asker = self.placement.home_of(
                    self._directory(request), self.view.instances.values()
                )
            elif not asker.ready:
                raise InstanceUnavailableError(f"instance {asker.name} is restarting")
            return await proxy.forward(self.view, asker, request, body)
        if kind is RouteKind.DIRECTORY:
            up = self.placement.home_of(self._directory(request), self.view.instances.values())
            return await proxy.forward(self.view, up, request, body)
        return await proxy.forward(self.view, self._any_ready(), request, body)

    async def handle_ws(self, websocket: WebSocket) -> None:
        """A WebSocket: OpenCode's PTY connections go to the instance that holds the PTY
        (the same instance its other PTY routes go to); anything else is refused."""
        match = self.table.match("GET", websocket.url.path)
        operation = match.route.operation if match.route is not None else ""
        # A browser cannot send Basic credentials on a WebSocket: OpenCode's single-use
        # ``ticket`` (minted through the gateway) stands in, and the instance checks it.
        allowed = self._authorized(websocket) or "ticket" in websocket.query_params
        if operation not in PTY_CONNECT or not allowed:
            await websocket.close(code=1008)  # before accept: the client gets 403
            return
        try:
            if match.kind is RouteKind.DIRECTORY:
                directory = self._directory(websocket)
                up = self.placement.home_of(directory, self.view.instances.values())
            else:
                up = self._any_ready()
            await ws_proxy(up, websocket)
        except SwarmPoolError as e:
            log.info("refused a PTY WebSocket to %s: %s", websocket.url.path, e)
            with contextlib.suppress(RuntimeError):
                await websocket.close(code=1011)

    def _directory(self, request: HTTPConnection) -> str:
        raw = request.query_params.get("directory") or request.headers.get(DIRECTORY_HEADER)
        return resolve_directory(raw, self.cwd)

    def _any_ready(self) -> Upstream:
        ready = sorted(self.view.ready(), key=lambda u: u.name)
        if not ready:
            raise InstanceUnavailableError("no instance of the pool is ready")
        return ready[0]

    async def _create_session(self, request: Request, body: bytes) -> Response:
        directory = self._directory(request)
        tried: set[str] = set()
        while True:
            candidates = [u for u in self.view.instances.values() if u.name not in tried]
            # Claim the directory now: concurrent creations in other directories then
            # see this instance's load and spread.
            up = self.placement.home_of(directory, candidates)
            try:
                response = await proxy.forward(self.view, up, request, body)
            except InstanceUnavailableError:
                # Refused before OpenCode saw it: another instance may take it.
                tried.add(up.name)
                if len(tried) >= len(self.view.instances):
                    raise
                continue
            await self._learn_from(response, up, directory, "gateway")
            return response

    async def _learn_from(
        self, response: Response, up: Upstream, directory: str, origin: Origin
    ) -> None:
        if response.status_code != 200 or isinstance(response, StreamingResponse):
            return
        try:
            info = json.loads(bytes(response.body))
        except ValueError:
            return
        if isinstance(info, dict) and isinstance(info.get("id"), str):
            sid, where = info["id"], str(info.get("directory") or directory)
            self.placement.learn(sid, up.name, where)
            pending = self._persist(sid, up.name, where, origin)
            if pending is not None:
                await pending

    async def _session_owner(self, session_id: str, request: Request) -> Upstream:
        name = self.placement.owner.get(session_id)
        if name is None:
            name = await self._find_session(session_id, request)
        if name is None:
            # Unknown everywhere: any instance answers OpenCode's own 404.
            return self._any_ready()
        up = self.view.instances.get(name)
        if up is None or not up.ready:
            raise InstanceUnavailableError(
                f"session {session_id} lives on instance {name}, which is restarting",
                retry_after_s=self.config.gateway.retry_after_s,
            )
        return up

    async def _find_session(self, session_id: str, request: Request) -> str | None:
        """The owner of a session the map does not know yet (created on an instance a
        moment ago, or while the gateway was down): the store, else ask every instance."""
        if self.store is not None:
            place = await self._in_writer(self.store.sessions.get, session_id)
            if place is not None:
                self.placement.learn(place.session_id, place.instance, place.directory)
                return str(place.instance)
        headers = {DIRECTORY_HEADER: self._directory(request)}

        async def ask(up: Upstream) -> str | None:
            try:
                resp = await proxy.send(
                    self.view, up, "GET", f"/session/{session_id}", b"", headers, b""
                )
            except GatewayError:
                return None
            await resp.aclose()
            return up.name if resp.status_code == 200 else None

        found = [n for n in await asyncio.gather(*map(ask, self.view.ready())) if n]
        if not found:
            return None
        self.placement.learn(session_id, found[0])
        self._learned(session_id, found[0], "")
        return found[0]

    async def _gather_json(self, request: Request, path: str) -> tuple[list[Any], Response | None]:
        """GET ``path`` (with the request's query and headers) from every ready
        instance: the JSON of each 200 answer, and the first other answer."""
        ready = self.view.ready()
        if not ready:
            raise InstanceUnavailableError("no instance of the pool is ready")
        query = request.scope.get("query_string", b"")

        async def one(up: Upstream) -> tuple[Any, Response | None]:
            try:
                resp = await proxy.send(self.view, up, "GET", path, query, request.headers, b"")
            except GatewayError:
                return None, None
            relayed = await proxy.relay(resp)
            if relayed.status_code == 200 and not isinstance(relayed, StreamingResponse):
                try:
                    return json.loads(bytes(relayed.body)), None
                except ValueError:
                    return None, relayed
            return None, relayed

        results = await asyncio.gather(*map(one, ready))
        answers = [data for data, other in results if other is None and data is not None]
        others = [other for _data, other in results if other is not None]
        return answers, (others[0] if others else None)

    async def _merged(self, request: Request, operation: str) -> Response:
        answers, other = await self._gather_json(request, request.url.path)
        if not answers:
            if other is not None:
                return other
            raise InstanceUnavailableError("no instance of the pool answered")
        raw_limit = request.query_params.get("limit")
        try:
            limit = int(float(raw_limit)) if raw_limit else None
        except ValueError:
            limit = None
        return _json(merge(operation, answers, limit))

    async def _session_status(self, request: Request) -> Response:
        """``GET /session/status`` from the status board: no instance is asked once the
        request's directory is synced on every instance that may hold a session of it
        (a session of that directory known on it, or a status event of it seen)."""
        if any(key != "directory" for key in request.query_params):
            # A workspace, or anything else OpenCode may learn to take: ask them all.
            return await self._merged(request, "session.status")
        ready = self.view.ready()
        if not ready:
            raise InstanceUnavailableError("no instance of the pool is ready")
        directory = self._directory(request)
        board = self.hub.statuses
        holders = self.placement.instances_in.get(directory, set())
        relevant = [u for u in ready if u.name in holders or board.seen(u.name, directory)]
        unsynced = [u for u in relevant if not board.synced(u.name, directory)]
        fetched: dict[str, dict[str, Any]] = {}
        if unsynced:
            answers = await asyncio.gather(*(self._status_of(u, directory) for u in unsynced))
            fetched = dict(zip((u.name for u in unsynced), answers, strict=True))
        out: dict[str, Any] = {}
        for up in relevant:
            found = fetched.get(up.name)
            out.update(board.statuses(up.name, directory) if found is None else found)
        return _json(out)

    async def _status_of(self, up: Upstream, directory: str) -> dict[str, Any]:
        """One instance's statuses of ``directory`` when the board cannot answer yet:
        its stream is connected (sync the board once, then answer from it) or not (ask
        the instance, as long as it takes)."""
        board = self.hub.statuses
        if not board.live(up.name):
            return await self._fetch_status(up, directory)
        key = (up.name, directory)
        task = self._syncing.get(key)
        if task is None:
            task = asyncio.ensure_future(self._sync_status(up, directory))
            self._syncing[key] = task
            task.add_done_callback(lambda _t: self._syncing.pop(key, None))
        # Shielded: a client that goes away does not waste the snapshot for the others.
        snapshot = await asyncio.shield(task)
        if board.synced(up.name, directory):
            return dict(board.statuses(up.name, directory))
        return snapshot  # the stream reconnected meanwhile: this answer is still fresh

    async def _sync_status(self, up: Upstream, directory: str) -> dict[str, Any]:
        epoch = self.hub.statuses.epoch(up.name)
        snapshot = await self._fetch_status(up, directory)
        self.hub.statuses.apply_snapshot(up.name, directory, epoch, snapshot)
        return snapshot

    async def _fetch_status(self, up: Upstream, directory: str) -> dict[str, Any]:
        query = urlencode({"directory": directory}).encode()
        try:
            resp = await proxy.send(self.view, up, "GET", "/session/status", query, {}, b"")
        except GatewayError as e:
            log.info("%s: no session statuses (%s)", up.name, e)
            return {}
        try:
            body = await resp.aread()
        except httpx.HTTPError as e:
            log.info("%s: lost while reading its session statuses (%s)", up.name, e)
            return {}
        finally:
            await resp.aclose()
        try:
            data = json.loads(body) if resp.status_code == 200 else None
        except ValueError:
            data = None
        return data if isinstance(data, dict) else {}

    async def _health(self, request: Request) -> Response:
        answers, _other = await self._gather_json(request, "/global/health")
        merged = merge_health(answers)
        if merged is None:
            raise InstanceUnavailableError("no instance of the pool is healthy")
        return _json(merged)

    def _events(self, directory: str | None) -> Response:
        sub = self.hub.subscribe(directory)
        global_form = directory is None
        heartbeat_s = self.config.gateway.heartbeat_s

        def own(kind: str) -> bytes:
            payload = {"type": kind, "properties": {}}
            data = {"payload": payload} if global_form else payload
            return _sse(json.dumps(data, separators=(",", ":")))

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield own("server.connected")
                while True:
                    try:
                        item = await asyncio.wait_for(sub.queue.get(), heartbeat_s)
                    except TimeoutError:
                        yield own("server.heartbeat")
                        continue
                    if item is None:
                        return
                    yield _sse(item)
            finally:
                self.hub.unsubscribe(sub)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={
                "cache-control": "no-cache, no-transform",
                "x-accel-buffering": "no",
                "x-content-type-options": "nosniff",
            },
        )


def build_app(gateway: Gateway) -> Starlette:
    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    return Starlette(
        routes=[
            Route("/{path:path}", gateway.handle, methods=METHODS),
            WebSocketRoute("/{path:path}", gateway.handle_ws),
        ],
        lifespan=lifespan,
    )
