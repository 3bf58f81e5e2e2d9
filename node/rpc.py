"""JSON-RPC 2.0 over HTTP (``POST /rpc``), a WebSocket feed (``/ws``) and ``/metrics``.

Read-only methods are open to anyone who can reach the RPC port (127.0.0.1 by
default). Methods that change something need the token from the cookie file
in the datadir, sent as ``Authorization: Bearer <token>`` — bitcoind's model:
whoever can read the datadir may control the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from node import collector

log = logging.getLogger("pouw.rpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
UNAUTHORIZED = -32001
REJECTED = -32002  # a valid request the node refused (invalid transaction, unknown block)

MAX_REQUEST_BYTES = 4 * 1024 * 1024
BATCH_YIELD = 32
"""A JSON-RPC batch (or a sendtransactions list) yields the event loop this often."""
COOKIE_NAME = ".cookie"


class RpcError(Exception):
    """An error to return to the caller as a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


Handler = Callable[..., Awaitable[Any]]


def write_cookie(datadir: Path) -> str:
    """A fresh random token in ``<datadir>/.cookie``, readable by the owner only."""
    token = secrets.token_hex(32)
    path = datadir / COOKIE_NAME
    path.write_text(token)
    path.chmod(0o600)
    return token


def read_cookie(datadir: Path) -> str:
    path = datadir / COOKIE_NAME
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise ValueError(
            f"no RPC cookie at {path}: is the node running with that datadir?"
        ) from None


class Metrics:
    """Prometheus metrics of one node (its own registry: several nodes may share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("pouw_height", "Height of the active chain tip", registry=r)
        self.peers = Gauge("pouw_peers", "Connected peers", registry=r)
        self.mempool = Gauge("pouw_mempool_txs", "Transactions in the mempool", registry=r)
        self.hashrate = Gauge("pouw_hashrate_macs", "Miner speed in MAC/s", registry=r)
        self.blocks = Counter("pouw_blocks", "Blocks by outcome", ["outcome"], registry=r)
        self.txs = Counter("pouw_txs", "Transactions by outcome", ["outcome"], registry=r)
        # Counted per transaction: the labelled children are looked up once.
        self.txs_accepted = self.txs.labels("accepted")
        self.txs_rejected = self.txs.labels("rejected")
        self.bans = Counter("pouw_bans", "Peers banned", registry=r)
        self.mined = Counter("pouw_blocks_mined", "Blocks mined by this node", registry=r)
        self.gc_seconds = Gauge(
            "pouw_gc_pause_seconds", "Seconds spent in cyclic garbage collection", registry=r
        )
        self.gc_seconds.set_function(collector.pause_seconds)


class RpcServer:
    """Dispatches JSON-RPC requests to registered coroutine methods."""

    def __init__(self, token: str, metrics: Metrics) -> None:
        self.token = token
        self.metrics = metrics
        self.methods: dict[str, tuple[Handler, bool]] = {}
        self.subscribers: set[web.WebSocketResponse] = set()
        self._sends: set[asyncio.Task[None]] = set()

    def method(self, name: str, handler: Handler, *, mutating: bool = False) -> None:
        self.methods[name] = (handler, mutating)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/rpc", self.handle_http)
        app.router.add_get("/ws", self.handle_ws)
        app.router.add_get("/metrics", self.handle_metrics)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.token)

    async def handle_http(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            return _json(_error(None, INVALID_REQUEST, "request too large"), status=413)
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _json(_error(None, PARSE_ERROR, "parse error: body is not JSON"))
        authorized = self._authorized(request)
        if isinstance(body, list):
            if not body:
                return _json(_error(None, INVALID_REQUEST, "empty batch"))
            replies = []
            for i, item in enumerate(body):
                replies.append(await self._dispatch(item, authorized))
                if i % BATCH_YIELD == BATCH_YIELD - 1:
                    await asyncio.sleep(0)  # a big batch does not hold up blocks and peers
            return _json([r for r in replies if r is not None])
        reply = await self._dispatch(body, authorized)
        return _json(reply if reply is not None else {})

    async def _dispatch(self, req: Any, authorized: bool) -> dict[str, Any] | None:
        if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or "method" not in req:
            return _error(None, INVALID_REQUEST, "invalid request: need jsonrpc '2.0' and method")
        req_id = req.get("id")
        name = req["method"]
        params = req.get("params", [])
        if not isinstance(name, str) or name not in self.methods:
            return _error(req_id, METHOD_NOT_FOUND, f"method not found: {name!r}")
        handler, mutating = self.methods[name]
        if mutating and not authorized:
            return _error(req_id, UNAUTHORIZED, f"{name} needs the cookie token (Authorization)")
        if not isinstance(params, list | dict):
            return _error(req_id, INVALID_PARAMS, "params must be an array or an object")
        try:
            result = await (handler(*params) if isinstance(params, list) else handler(**params))
        except RpcError as e:
            return _error(req_id, e.code, e.message, e.data)
        except TypeError as e:
            return _error(req_id, INVALID_PARAMS, f"invalid params for {name}: {e}")
        except ValueError as e:
            return _error(req_id, INVALID_PARAMS, str(e))
        except Exception:
            log.exception("RPC %s failed", name)
            return _error(req_id, INTERNAL_ERROR, f"internal error in {name}")
        if "id" not in req:
            return None  # a notification gets no reply
        return {"jsonrpc": "2.0", "id": req_id, "result": result}

    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        """Subscribers receive {"event": "block"|"tx", ...} notifications as JSON text."""
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        self.subscribers.add(ws)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and msg.data.strip() == "ping":
                    await ws.send_str('{"event": "pong"}')
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
        finally:
            self.subscribers.discard(ws)
        return ws

    def notify(self, event: dict[str, Any]) -> None:
        if not self.subscribers:
            return
        text = json.dumps(event)
        for ws in list(self.subscribers):
            if ws.closed:
                self.subscribers.discard(ws)
                continue
            task = asyncio.ensure_future(_send_quietly(ws, text))
            self._sends.add(task)  # keep a reference until it is done
            task.add_done_callback(self._sends.discard)

    async def close_subscribers(self) -> None:
        for ws in list(self.subscribers):
            await ws.close()
        self.subscribers.clear()

    async def handle_metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _send_quietly(ws: web.WebSocketResponse, text: str) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(text)


def _error(req_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": req_id, "error": err}


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status)
