"""Test doubles for the P2P layer, after Bitcoin Core's P2PInterface.

``TestPeer`` is a scriptable remote peer: it connects to a node's /p2p with
plain aiohttp, performs the handshake correctly or wrongly (knobs), sends any
message or raw bytes, and records every message it receives. Tests wait on
events (``wait_for``), never on fixed sleeps.

``RunningNode`` is a real PeerManager served by a real aiohttp app on a free
loopback port, with a ``RecordingHandler`` standing in for the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from consensus.keys import PrivateKey, verify_signature
from node.net.errors import ProtocolViolation
from node.net.p2p import PeerManager
from node.net.peer import PeerSession
from node.net.wire import (
    PROTOCOL_VERSION,
    Auth,
    Close,
    Hello,
    Ping,
    Pong,
    auth_digest,
    decode_message,
    encode_message,
)

CHAIN_ID = 7
GENESIS = bytes(range(32))
TIMEOUT = 5.0


class TestPeer:
    """A remote peer under the test's control."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        port: int,
        *,
        key: PrivateKey | None = None,
        chain_id: int = CHAIN_ID,
        genesis_hash: bytes = GENESIS,
        version: int = PROTOCOL_VERSION,
        listen_port: int = 0,
        bad_auth: bool = False,
        answer_pings: bool = True,
        best_height: int = 0,
        best_work: int = 0,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}/p2p"
        self.key = key or PrivateKey.generate()
        self.node_id = self.key.public_key.data
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.version = version
        self.listen_port = listen_port
        self.bad_auth = bad_auth
        self.answer_pings = answer_pings
        self.best_height = best_height
        self.best_work = best_work
        self.challenge = os.urandom(32)
        self.received: list[Any] = []
        self.undecodable: list[bytes] = []
        self.remote_hello: Hello | None = None
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._changed = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    # ------------------------------------------------------- connection

    async def connect(self) -> TestPeer:
        """Open the WebSocket and start recording what arrives."""
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.url, max_msg_size=0, autoping=True)
        self._reader = asyncio.create_task(self._read())
        return self

    async def send_hello(self) -> None:
        await self.send(
            Hello(
                self.version,
                self.chain_id,
                self.genesis_hash,
                self.best_height,
                self.best_work,
                self.listen_port,
                self.node_id,
                self.challenge,
            )
        )

    async def handshake(self) -> Hello:
        """Hello, then Auth (wrong on purpose with ``bad_auth``); the node's Hello."""
        await self.send_hello()
        hello = await self.wait_for_message(Hello)
        self.remote_hello = hello
        digest = auth_digest(hello.challenge, self.node_id, hello.node_id)
        signature = self.key.sign(digest)
        if self.bad_auth:
            signature = PrivateKey.generate().sign(digest)  # someone else's key
        await self.send(Auth(signature))
        auth = await self.wait_for_message(Auth)
        expected = auth_digest(self.challenge, hello.node_id, self.node_id)
        assert verify_signature(hello.node_id, expected, auth.signature), "node's Auth is bad"
        return hello

    async def sync(self) -> None:
        """Round-trip a ping: everything the node sent before its Pong has arrived."""
        nonce = int.from_bytes(os.urandom(8), "big")
        await self.send(Ping(nonce))
        await self.wait_for(
            lambda: any(type(m) is Pong and m.nonce == nonce for m in self.received)
        )

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # ---------------------------------------------------------- sending

    async def send(self, msg: object) -> None:
        await self.send_raw(encode_message(msg))

    async def send_raw(self, data: bytes) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(data)

    async def send_text(self, text: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(text)

    # -------------------------------------------------------- receiving

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for ws_msg in self._ws:
                if ws_msg.type is aiohttp.WSMsgType.BINARY:
                    try:
                        msg = decode_message(ws_msg.data, max_size=1 << 30)
                    except ProtocolViolation:
                        self.undecodable.append(ws_msg.data)
                    else:
                        self.received.append(msg)
                        if type(msg) is Ping and self.answer_pings:
                            await self.send(Pong(msg.nonce))
                self._notify()
        finally:
            self.close_code = self._ws.close_code
            self.closed.set()
            self._notify()

    def _notify(self) -> None:
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], object], timeout: float = TIMEOUT) -> None:
        """Wait until ``predicate()`` is true (checked whenever something arrives)."""

        async def poll() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(poll(), timeout)

    async def wait_for_message(self, cls: type, timeout: float = TIMEOUT) -> Any:
        """The first received message of type ``cls`` (waiting for it if need be)."""
        await self.wait_for(
            lambda: any(type(m) is cls for m in self.received) or self.closed.is_set(), timeout
        )
        for m in self.received:
            if type(m) is cls:
                return m
        raise AssertionError(f"connection closed before a {cls.__name__}: got {self.received}")

    async def wait_for_close(self, timeout: float = TIMEOUT) -> str | None:
        """Wait until the node closes the connection; the reason of its Close, if it sent one."""
        await asyncio.wait_for(self.closed.wait(), timeout)
        return self.close_reason

    @property
    def close_reason(self) -> str | None:
        closes = [m for m in self.received if type(m) is Close]
        return closes[-1].reason if closes else None

    def of_type(self, cls: type) -> list[Any]:
        return [m for m in self.received if type(m) is cls]


# ------------------------------------------------------------- node side


@dataclass
class RecordingHandler:
    """A PeerHandler that records what it is told; ``on_message_hook`` scripts behaviour."""

    height: int = 0
    work: int = 0
    ready: list[PeerSession] = field(default_factory=list)
    closed: list[PeerSession] = field(default_factory=list)
    messages: list[tuple[PeerSession, Any]] = field(default_factory=list)
    on_message_hook: Callable[[PeerSession, Any], Any] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def local_status(self) -> tuple[int, int]:
        return self.height, self.work

    async def on_peer_ready(self, peer: PeerSession) -> None:
        self.ready.append(peer)
        self.changed.set()

    async def on_message(self, peer: PeerSession, msg: Any) -> None:
        self.messages.append((peer, msg))
        self.changed.set()
        if self.on_message_hook is not None:
            result = self.on_message_hook(peer, msg)
            if asyncio.iscoroutine(result):
                await result

    async def on_peer_closed(self, peer: PeerSession) -> None:
        self.closed.append(peer)
        self.changed.set()


class RunningNode:
    """A PeerManager in a real aiohttp app, on a loopback port bound before it starts."""

    def __init__(self, **kwargs: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.handler = RecordingHandler()
        kwargs.setdefault("key", PrivateKey.generate())
        kwargs.setdefault("chain_id", CHAIN_ID)
        kwargs.setdefault("genesis_hash", GENESIS)
        kwargs.setdefault("handshake_timeout", 3.0)
        kwargs.setdefault("connect_interval", 0.1)
        kwargs.setdefault("reconnect_backoff", 0.2)
        key = kwargs.pop("key")
        chain_id = kwargs.pop("chain_id")
        genesis = kwargs.pop("genesis_hash")
        self.manager = PeerManager(
            key, chain_id, genesis, self.handler, listen_port=self.port, **kwargs
        )
        self.runner: web.AppRunner | None = None

    async def start(self) -> RunningNode:
        app = web.Application()
        self.manager.add_routes(app)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()
        await self.manager.start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:  # stop listening first, as Node.stop does
            for site in list(self.runner.sites):
                await site.stop()
        await self.manager.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        self.sock.close()

    @property
    def node_id(self) -> bytes:
        return self.manager.node_id

    async def wait_until(self, predicate: Callable[[], object], timeout: float = TIMEOUT) -> None:
        """Wait until ``predicate()`` holds; re-checked on every handler event and briefly."""

        async def poll() -> None:
            while not predicate():
                self.handler.changed.clear()
                # Manager-side state (bans, peers) changes without a handler event,
                # so wake up now and then as well.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.handler.changed.wait(), 0.05)

        await asyncio.wait_for(poll(), timeout)

    def peer(self, node_id: bytes) -> PeerSession | None:
        for p in self.manager.peers:
            if p.node_id == node_id:
                return p
        return None
