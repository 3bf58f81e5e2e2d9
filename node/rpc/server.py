"""JSON-RPC 2.0 over HTTP (``POST /rpc``), a WebSocket feed (``/ws``), ``/metrics``, and
the binary routes other modules register (:meth:`RpcServer.route`).

Read-only methods are open to anyone who can reach the RPC port (127.0.0.1 by
default). Methods that change something need the token from the cookie file
in the datadir, sent as ``Authorization: Bearer <token>`` — bitcoind's model:
whoever can read the datadir may control the node.

Every body gets a JSON-RPC 2.0 reply (a parse error included), except
notifications, which get none (HTTP 204 when nothing is left to answer). What a
caller can make the node do is bounded: bodies of 256 KiB without the token
(4 MiB with it), batches of 1,000 requests whose replies stop growing at 8 MiB,
answered with the event loop free between requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import json
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from aiohttp import WSMsgType, web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from node.metrics import Metrics
from node.net.httpguard import RateLimitedLog, bad_upgrade
from node.store import DiskFull

log = logging.getLogger("pouw.rpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNAUTHORIZED = -32001
REJECTED = -32002  # a valid request the node refused (invalid transaction, unknown block)

REPLY_LIMIT = -32003  # a batch's replies reached MAX_BATCH_REPLY_BYTES: this one is not answered
DISK_FULL = -32004  # the node could not store what the call asked it to (node.store.DiskFull)

MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""A request body with the cookie token (dataset uploads come in ~1 MiB batches)."""
MAX_OPEN_REQUEST_BYTES = 256 * 1024
"""A request body without the token: read-only calls are small, and a stranger's
body is parsed on the event loop."""
MAX_BATCH = 1_000
"""Requests in one JSON-RPC batch."""
MAX_BATCH_REPLY_BYTES = 8 * 1024 * 1024
"""A batch's replies stop growing here (one reply may be bigger alone)."""
BATCH_YIELD = 32
"""A sendtransactions list yields the event loop this often."""


class RpcError(Exception):
    """An error to return to the caller as a JSON-RPC error object.

    ``status`` is the HTTP status a binary route answers it with (400, bad
    params, when None).
    """

    def __init__(
        self, code: int, message: str, data: Any = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data
        self.status = status


Handler = Callable[..., Awaitable[Any]]
RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_hash(text: Any, what: str = "hash") -> bytes:
    """A 32-byte hash from an RPC parameter, or an INVALID_PARAMS error naming it."""
    if not isinstance(text, str):
        raise RpcError(INVALID_PARAMS, f"{what} must be a hex string")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"{what} is not hex") from None
    if len(raw) != 32:
        raise RpcError(INVALID_PARAMS, f"{what} must be 32 bytes")
    return raw


class RpcMethod(NamedTuple):
    """A registered method: its coroutine, whether it needs the token, its signature."""

    handler: Handler
    mutating: bool
    signature: inspect.Signature


WS_SUBSCRIBERS = 128
"""Event-stream subscribers at once; one more is refused (503)."""
WS_QUEUE_BYTES = 1024 * 1024
"""Events waiting for one subscriber, by size; past it (a subscriber that does not read
as fast as events come) it is closed: a stalled one held ~15 MB a minute, unbounded."""
WS_SEND_TIMEOUT = 10.0
"""One event's send to a subscriber may wait this long for its socket to drain."""


class _Subscriber:
    """One /ws client: a bounded queue of events and the task that writes them."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.queue: deque[str] = deque()
        self.queued_bytes = 0
        self.ready = asyncio.Event()
        self.writer = asyncio.create_task(self._write(), name="ws-subscriber")
        self.closing: asyncio.Future[None] | None = None

    def offer(self, text: str) -> bool:
        """Queue an event; False if the subscriber is too far behind (closed then)."""
        if self.closing is not None:
            return False
        if self.queued_bytes + len(text) > WS_QUEUE_BYTES:
            self.close("not reading its events")
            return False
        self.queue.append(text)
        self.queued_bytes += len(text)
        self.ready.set()
        return True

    def close(self, why: str) -> None:
        log.info("closing an event-stream subscriber: %s", why)
        self.writer.cancel()
        self.queue.clear()
        self.queued_bytes = 0
        self.closing = asyncio.ensure_future(_close_quietly(self.ws))

    async def _write(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.queue:
                text = self.queue.popleft()
                self.queued_bytes -= len(text)
                try:
                    async with asyncio.timeout(WS_SEND_TIMEOUT):
                        await self.ws.send_str(text)
                except TimeoutError:
                    self.close(f"an event waited {WS_SEND_TIMEOUT:g}s to be sent")
                    return
                except (ConnectionError, RuntimeError):
                    return


class RpcServer:
    """Dispatches JSON-RPC requests to registered coroutine methods."""

    def __init__(self, token: str, metrics: Metrics) -> None:
        self.token = token
        self.metrics = metrics
        self.methods: dict[str, RpcMethod] = {}
        self.subscribers: dict[web.WebSocketResponse, _Subscriber] = {}
        self._bad_upgrades = RateLimitedLog(log)
        self.routes: list[web.RouteDef] = []
        self.method("help", self.help)

    async def help(self) -> list[dict[str, Any]]:
        """Every method the node answers, with its parameters ([name] when optional) and
        whether it needs the cookie token."""
        return [
            {
                "method": name,
                "params": [
                    p.name if p.default is inspect.Parameter.empty else f"[{p.name}]"
                    for p in m.signature.parameters.values()
                ],
                "needs_token": m.mutating,
            }
            for name, m in sorted(self.methods.items())
        ]

    def method(self, name: str, handler: Handler, *, mutating: bool = False) -> None:
        self.methods[name] = RpcMethod(handler, mutating, inspect.signature(handler))

    def route(self, method: str, path: str, handler: RouteHandler) -> None:
        """Serve ``handler`` at ``path`` on the RPC listener, beside ``/rpc``: behind the
        same Host and Origin guard, counted in the same metrics (as ``METHOD path``). A
        handler that changes something checks the token itself (:meth:`authorized`)."""
        label = f"{method} {path}"

        async def counted(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            outcome = "error"
            try:
                response = await handler(request)
                if response.status < 400:
                    outcome = "ok"
                return response
            finally:
                self.metrics.rpc_requests.labels(label, outcome).inc()
                self.metrics.rpc_seconds.labels(label).observe(time.perf_counter() - started)

        self.routes.append(web.route(method, path, counted))

    async def read(self, name: str, *params: Any) -> Any:
        """Call ``name`` as a caller without the token would (the explorer's way in):
        the same checks and RpcErrors as over HTTP, UNAUTHORIZED for a mutating method."""
        return await self._call(name, list(params), authorized=False)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/rpc", self.handle_http)
        app.router.add_get("/ws", self.handle_ws)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_routes(self.routes)

    def authorized(self, request: web.Request) -> bool:
        """Whether ``request`` carries the cookie token (``Authorization: Bearer``)."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.token)

    async def handle_http(self, request: web.Request) -> web.Response:
        authorized = self.authorized(request)
        limit = MAX_REQUEST_BYTES if authorized else MAX_OPEN_REQUEST_BYTES
        body = await read_body(request, limit)
        if body is None:
            without = "" if authorized else " without the cookie token"
            error = _error(
                None, INVALID_REQUEST, f"request too large: at most {limit} bytes{without}"
            )
            return _json(_encode(error), status=413)
        reply = await self.answer(body, authorized=authorized)
        if reply is None:
            return web.Response(status=204)  # notifications only: nothing to answer
        return _json(reply)

    async def answer(self, body: bytes, *, authorized: bool) -> bytes | None:
        """The JSON reply to one request body, or None when nothing is to be sent
        back (a notification, or a batch of notifications). Every body gets a
        JSON-RPC reply; nothing a caller sends makes this raise."""
        try:
            request = _parse(body)
        except RpcError as e:
            return _encode(_error(None, e.code, e.message))
        if isinstance(request, list):
            return await self._answer_batch(request, authorized)
        reply = await self._dispatch(request, authorized)
        return None if reply is None else _encode(reply)

    async def _answer_batch(self, batch: list[Any], authorized: bool) -> bytes | None:
        """Answer a batch in order, yielding to the event loop after each request. Its
        replies stop growing at MAX_BATCH_REPLY_BYTES: the requests left then are not
        run and get REPLY_LIMIT errors (at most one reply may be bigger alone)."""
        if not batch:
            return _encode(_error(None, INVALID_REQUEST, "invalid request: empty batch"))
        if len(batch) > MAX_BATCH:
            message = (
                f"invalid request: a batch holds at most {MAX_BATCH} requests, not {len(batch)}"
            )
            return _encode(_error(None, INVALID_REQUEST, message))
        parts: list[bytes] = []
        size = 0
        full = False
        for item in batch:
            if full and _request_problem(item) is None and "id" in item:
                encoded = _encode(_reply_limit_error(item["id"]))
            else:
                reply = await self._dispatch(item, authorized)
                await asyncio.sleep(0)  # a big batch does not hold up blocks, peers, callers
                if reply is None:
                    continue
                encoded = _encode(reply)
                if parts and size + len(encoded) > MAX_BATCH_REPLY_BYTES:
                    full = True
                    encoded = _encode(_reply_limit_error(reply["id"]))
            parts.append(encoded)
            size += len(encoded)
        if not parts:
            return None
        return b"[" + b",".join(parts) + b"]"

    async def _dispatch(self, req: Any, authorized: bool) -> dict[str, Any] | None:
        """One request's reply object, or None for a notification (whatever its outcome)."""
        problem = _request_problem(req)
        if problem is not None:
            req_id = req.get("id") if isinstance(req, dict) and _valid_id(req.get("id")) else None
            return _error(req_id, INVALID_REQUEST, f"invalid request: {problem}")
        req_id = req.get("id")
        try:
            result = await self._call(req["method"], req.get("params", []), authorized)
        except RpcError as e:
            reply = _error(req_id, e.code, e.message, e.data)
        else:
            reply = {"jsonrpc": "2.0", "id": req_id, "result": result}
        return reply if "id" in req else None

    async def _call(self, name: str, params: list[Any] | dict[str, Any], authorized: bool) -> Any:
        # Only registered names become label values: a caller cannot grow the series.
        label = name if name in self.methods else "unknown"
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await self._call_method(name, params, authorized)
            outcome = "ok"
            return result
        finally:
            self.metrics.rpc_requests.labels(label, outcome).inc()
            self.metrics.rpc_seconds.labels(label).observe(time.perf_counter() - started)

    async def _call_method(
        self, name: str, params: list[Any] | dict[str, Any], authorized: bool
    ) -> Any:
        method = self.methods.get(name)
        if method is None:
            raise RpcError(
                METHOD_NOT_FOUND, f"method not found: {name[:100]!r} (the method help lists them)"
            )
        if method.mutating and not authorized:
            raise RpcError(UNAUTHORIZED, f"{name} needs the cookie token (Authorization)")
        args, kwargs = _bind(name, method.signature, params)
        try:
            return await method.handler(*args, **kwargs)
        except RpcError:
            raise
        except TypeError:
            # A parameter of the wrong type met an operation deep inside the method:
            # Python's message names internals, so the caller gets a plain one.
            log.debug("RPC %s: wrong parameter type", name, exc_info=True)
            raise RpcError(
                INVALID_PARAMS, f"invalid params: a parameter of {name} has the wrong type"
            ) from None
        except ValueError as e:
            raise RpcError(INVALID_PARAMS, f"invalid params for {name}: {str(e)[:200]}") from None
        except DiskFull as e:
            log.error("RPC %s: %s", name, e)
            raise RpcError(DISK_FULL, str(e)) from None
        except Exception:
            log.exception("RPC %s failed", name)
            raise RpcError(INTERNAL_ERROR, f"internal error in {name}") from None

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        """Subscribers receive {"event": "block"|"tx", ...} notifications as JSON text."""
        ws = web.WebSocketResponse(heartbeat=30)
        if not ws.can_prepare(request).ok:
            self._bad_upgrades(
                logging.INFO, "refused a bad WebSocket upgrade from %s", request.remote
            )
            return bad_upgrade()
        if len(self.subscribers) >= WS_SUBSCRIBERS:
            return web.json_response(
                {"error": f"the event stream has {WS_SUBSCRIBERS} subscribers, the most"},
                status=503,
            )
        await ws.prepare(request)
        sub = self.subscribers[ws] = _Subscriber(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and msg.data.strip() == "ping":
                    sub.offer('{"event": "pong"}')
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            del self.subscribers[ws]
            sub.writer.cancel()
        return ws

    def notify(self, event: dict[str, Any]) -> None:
        if not self.subscribers:
            return
        text = json.dumps(event)
        for ws, sub in list(self.subscribers.items()):
            if not ws.closed:
                sub.offer(text)

    async def close_subscribers(self) -> None:
        for ws, sub in list(self.subscribers.items()):
            sub.writer.cancel()
            await ws.close()
        self.subscribers.clear()

    async def handle_metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed ``limit`` bytes (from
    its Content-Length, before reading any of it, or once more than that has come)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(body: bytes) -> Any:
    """A request body as JSON, or RpcError(PARSE_ERROR) saying why not."""
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise RpcError(
            PARSE_ERROR, f"parse error: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    except UnicodeDecodeError:
        raise RpcError(PARSE_ERROR, "parse error: the body is not UTF-8") from None
    except RecursionError:
        raise RpcError(PARSE_ERROR, "parse error: the body is nested too deeply") from None
    except ValueError:  # the one other refusal: an integer of more than 4,300 digits
        raise RpcError(PARSE_ERROR, "parse error: a number has too many digits") from None


def _refuse_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _request_problem(req: Any) -> str | None:
    """What makes ``req`` not a JSON-RPC 2.0 request object, or None if it is one."""
    if not isinstance(req, dict):
        return "a request is a JSON object"
    if req.get("jsonrpc") != "2.0":
        return 'jsonrpc must be "2.0"'
    if not isinstance(req.get("method"), str):
        return "method must be a string"
    if not isinstance(req.get("params", []), list | dict):
        return "params must be an array or an object"
    if not _valid_id(req.get("id")):
        return "id must be a string, a number or null"
    return None


def _valid_id(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str) or type(value) is int


def _bind(
    name: str, signature: inspect.Signature, params: list[Any] | dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """Check ``params`` against the method's signature: an INVALID_PARAMS error in the
    method's terms (never Python's) if they do not fit."""
    names = list(signature.parameters)
    required = [n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty]
    if isinstance(params, list):
        if len(params) > len(names):
            problem = f"{name} takes at most {len(names)} params, not {len(params)}"
        elif len(params) < len(required):
            problem = f"{name} needs {required[len(params)]!r}"
        else:
            return params, {}
    else:
        unknown = [k for k in params if k not in names]
        missing = [n for n in required if n not in params]
        if unknown:
            problem = f"{name} has no param {unknown[0][:40]!r}"
        elif missing:
            problem = f"{name} needs {missing[0]!r}"
        else:
            return [], params
    raise RpcError(INVALID_PARAMS, f"invalid params: {problem}; {_usage(name, signature)}")


def _usage(name: str, signature: inspect.Signature) -> str:
    """``getblock(block_hash, verbose=true)``: a method's params as a caller writes them."""
    params = [
        n if p.default is inspect.Parameter.empty else f"{n}={json.dumps(p.default)}"
        for n, p in signature.parameters.items()
    ]
    return f"{name}({', '.join(params)})"


def _reply_limit_error(req_id: Any) -> dict[str, Any]:
    limit_mib = MAX_BATCH_REPLY_BYTES >> 20
    message = f"not answered: this batch's replies reached {limit_mib} MiB; send it again alone"
    return _error(req_id, REPLY_LIMIT, message)


async def _close_quietly(ws: web.WebSocketResponse) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.close()


def _error(req_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": req_id, "error": err}


def _encode(reply: dict[str, Any]) -> bytes:
    """A reply object as compact JSON; a result that is not JSON becomes an internal error."""
    try:
        return json.dumps(reply, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError):
        log.exception("an RPC reply is not JSON")
        error = _error(reply.get("id"), INTERNAL_ERROR, "internal error: the reply is not JSON")
        return json.dumps(error).encode()


def route_error(status: int, code: int, message: str) -> web.Response:
    """A binary route's refusal: HTTP ``status`` with ``{"error": {"code", "message"}}``,
    the JSON-RPC error object (so a client reads both kinds of refusal alike)."""
    return _json(_encode({"error": {"code": code, "message": message}}), status=status)


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")
