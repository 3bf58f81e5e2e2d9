"""The peer manager: who we talk to, the handshake, and what a misbehaving peer costs.

``PeerManager`` accepts WebSockets at ``GET /p2p``, dials peers to keep
``max_outbound`` connections, authenticates every peer (PROTOCOL §12), answers
the housekeeping messages itself (PING/PONG, GETADDR/ADDR, CLOSE) and passes
everything else to the node through the ``PeerHandler`` protocol.

Handshake, the same both ways: each side sends Hello with a fresh random
challenge; each checks the other's version, chain_id and genesis (a mismatch
is refused politely, no ban) and that it has not dialed itself; each then
signs ``auth_digest(peer's challenge, own id, peer's id)`` and verifies the
peer's answer with the node_id from its Hello. Only then is the peer ready.

Bans. A ban is keyed by what identifies the culprit:

* a peer that passed Auth is banned by its node_id, and by its IP;
* a peer that has not (yet) proven its node_id is banned by its IP, and by
  the pair (claimed node_id, IP), so nobody can get an honest node's id
  banned by claiming it and then failing the Auth;
* loopback addresses are never banned as IPs: every node of a local testnet
  connects from 127.0.0.1, and banning it would cut the whole testnet off.
  On loopback a misbehaving peer is banned by node_id (or node_id@IP) only;
  a peer that misbehaves there before saying who it is is just disconnected.

A banned IP is refused before the WebSocket upgrade (HTTP 403); a banned
node_id at the handshake. Bans expire after ``ban_seconds``; the list is
bounded (node.net.bans).

Addresses. An ADDR is read only as fast as the sender's token bucket allows
(``PeerLimits.addr_rate``, ``addr_burst``); the rest is dropped, not punished.
The address book charges each address to the sender's source group, so one
peer can hold only its share of it (node.net.addresses).

Every task (connector, pinger, one per dial and per session) is owned by
the manager and cancelled or awaited by ``stop()``; every per-peer task
catches and logs, so nothing a peer sends can crash the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from consensus.keys import PrivateKey, verify_signature
from node.net.addresses import AddressBook, dialable, source_group
from node.net.bans import BanList
from node.net.errors import HandshakeRefused, ProtocolViolation
from node.net.httpguard import RateLimitedLog, bad_upgrade
from node.net.peer import P2PStats, PeerLimits, PeerSession, is_bulk, is_loopback
from node.net.wire import (
    MAX_ADDRS,
    MAX_INV,
    PROTOCOL_VERSION,
    Addr,
    Auth,
    Close,
    GetAddr,
    Hello,
    Inv,
    InvItem,
    InvKind,
    Message,
    NetAddr,
    Ping,
    Pong,
    auth_digest,
    encode_message,
)

P2P_PATH = "/p2p"


class PeerHandler(Protocol):
    """What the node provides to the peer manager."""

    def local_status(self) -> tuple[int, int]:
        """(best height, best chain work) for our Hello."""
        ...

    async def on_peer_ready(self, peer: PeerSession) -> None:
        """A peer finished the handshake (may raise ProtocolViolation)."""
        ...

    async def on_message(self, peer: PeerSession, msg: Message) -> None:
        """Any message but the handshake and housekeeping ones.

        Raise ProtocolViolation to disconnect the peer (and ban it if ``ban``).
        Messages of one peer are delivered one at a time, in order.
        """
        ...

    async def on_peer_closed(self, peer: PeerSession) -> None:
        """A peer that was ready is gone."""
        ...


class _RemoteClosed(Exception):
    """The peer closed the connection (or sent Close); nothing to answer."""


# ------------------------------------------------------------ peer manager


class PeerManager:
    """Accepts, dials, authenticates and polices peers; see the module docstring."""

    def __init__(
        self,
        key: PrivateKey,
        chain_id: int,
        genesis_hash: bytes,
        handler: PeerHandler,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int,
        bootstrap: Iterable[tuple[str, int]] = (),
        max_outbound: int = 8,
        max_inbound: int = 32,
        max_per_ip: int = 16,
        ban_seconds: float = 600,
        ping_interval: float = 10.0,
        handshake_timeout: float = 10.0,
        log: logging.Logger | None = None,
        limits: PeerLimits | None = None,
        ping_timeout: float | None = None,
        reconnect_backoff: float = 1.0,
        connect_interval: float = 1.0,
        addresses: AddressBook | None = None,
        bans: BanList | None = None,
        connect_only: bool = False,
    ) -> None:
        self.key = key
        self.node_id = key.public_key.data
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.handler = handler
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.bootstrap = list(bootstrap)
        # bitcoind's -connect: dial only the bootstrap peers, never learned addresses, so
        # a testnet's topology stays the one it was started with.
        self.connect_only = connect_only
        self.max_outbound = max_outbound
        self.max_inbound = max_inbound
        self.max_per_ip = max_per_ip
        self.ban_seconds = ban_seconds
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout if ping_timeout is not None else 3 * ping_interval
        self.handshake_timeout = handshake_timeout
        self.connect_interval = connect_interval
        self.log = log or logging.getLogger("pouw.p2p")
        self._bad_upgrades = RateLimitedLog(self.log)
        self.limits = limits or PeerLimits()
        self.stats = P2PStats()
        if addresses is None:
            addresses = AddressBook(base_backoff=reconnect_backoff)
        self.addresses = addresses
        self._bans = bans if bans is not None else BanList()
        self._ready: dict[bytes, PeerSession] = {}
        self._sessions: set[PeerSession] = set()
        self._dialing: set[tuple[str, int]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._service_tasks: list[asyncio.Task[Any]] = []
        self._wake = asyncio.Event()
        self._client: aiohttp.ClientSession | None = None
        self._running = False

    @property
    def _own_addrs(self) -> set[tuple[str, int]]:
        # A property: the node may set listen_port after binding port 0. Other
        # aliases of ourselves are caught by the handshake (same node_id).
        port = self.listen_port
        return {(self.listen_host, port), ("127.0.0.1", port), ("localhost", port)}

    # ---------------------------------------------------------- lifecycle

    def add_routes(self, app: web.Application) -> None:
        """Register ``GET /p2p``, the WebSocket endpoint peers connect to."""
        app.router.add_get(P2P_PATH, self._serve)

    async def start(self) -> None:
        """Start dialing (bootstrap and learned addresses) and pinging peers."""
        if self._running:
            return
        self._running = True
        self._client = aiohttp.ClientSession()
        for host, port in self.bootstrap:
            self.add_address(host, port, source="bootstrap")
        self._service_tasks = [
            self._spawn(self._connect_loop(), "p2p-connector"),
            self._spawn(self._ping_loop(), "p2p-pinger"),
        ]

    async def stop(self) -> None:
        """Close every peer with Close("shutting down"), cancel and await every task."""
        if not self._running:
            return
        self._running = False
        for task in self._service_tasks:
            task.cancel()
        sessions = list(self._sessions)
        for session in sessions:
            session.close_soon("shutting down")
        await asyncio.gather(*(s.wait_closed() for s in sessions), return_exceptions=True)
        # Session tasks now end by themselves (after on_peer_closed); dials are cut short.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.limits.close_timeout + 1.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._client is not None:
            await self._client.close()
            self._client = None
        self.log.info("p2p stopped")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("task %s failed", task.get_name(), exc_info=exc)

    # -------------------------------------------------------------- peers

    @property
    def peers(self) -> list[PeerSession]:
        """Peers that completed the handshake and are not closing."""
        return [s for s in self._ready.values() if not s.closing]

    def broadcast(self, msg: object, exclude: object = None) -> int:
        """Send ``msg`` to every ready peer but ``exclude`` (a peer or peers); how many got it."""
        skip = _as_set(exclude)
        frame, bulk = encode_message(msg), is_bulk(msg)
        sent = 0
        for peer in self.peers:
            if id(peer) not in skip:
                peer.note_inventory(msg)
                sent += peer.send_frame(frame, bulk)
        return sent

    def announce(self, kind: int, hash: bytes, exclude: object = None) -> int:
        """INV one item to every ready peer that does not know it yet; how many were told."""
        skip = _as_set(exclude)
        item = InvItem(InvKind(kind), hash)
        frame = encode_message(Inv((item,)))
        sent = 0
        for peer in self.peers:
            if id(peer) in skip or peer.knows(kind, hash):
                continue
            peer.mark_known(kind, hash)
            sent += peer.send_frame(frame, item.kind == InvKind.TX)
        return sent

    def announce_many(self, kind: int, hashes: list[bytes], exclude: object = None) -> int:
        """One INV per peer with the items it does not know (≤ MAX_INV each); peers told."""
        skip = _as_set(exclude)
        inv_kind = InvKind(kind)
        items = [InvItem(inv_kind, h) for h in hashes]  # one each, shared by every peer's INV
        told = 0
        for peer in self.peers:
            if id(peer) in skip:
                continue
            fresh = [item for item in items if not peer.knows_key(item.key)]
            for start in range(0, len(fresh), MAX_INV):
                batch = fresh[start : start + MAX_INV]
                for item in batch:
                    peer.known.add(item.key)
                peer.send_frame(encode_message(Inv(tuple(batch))), bulk=inv_kind == InvKind.TX)
            told += bool(fresh)
        return told

    def add_address(
        self, host: str, port: int, source: str = "manual", group: str | None = None
    ) -> bool:
        """Remember an address to dial; False if unusable, ours, known already or refused by
        the address book (``group``: the source group it is charged to, see node.net.addresses)."""
        host = host.strip("[]")  # "[::1]" and "::1" are one address
        if not dialable(host, port) or (host, port) in self._own_addrs:
            return False
        added = self.addresses.add(host, port, source, group)
        if added:
            self._wake.set()
        return added

    # --------------------------------------------------------------- bans

    def ban(
        self, peer_or_host: PeerSession | str | bytes, reason: str, seconds: float | None = None
    ) -> None:
        """Ban a peer (see the module docstring for the keys), an IP, or a node_id; disconnect."""
        seconds = self.ban_seconds if seconds is None else seconds
        if isinstance(peer_or_host, PeerSession):
            keys = self._ban_keys(peer_or_host)
        elif isinstance(peer_or_host, bytes):
            keys = [f"node:{peer_or_host.hex()}"]
        else:
            keys = [f"ip:{peer_or_host}"]  # an explicit host ban applies even to loopback
        if not keys:
            self.log.warning("cannot ban %s: loopback peer without a node id", peer_or_host)
            return
        for who in keys:
            self._bans.add(who, reason, seconds)
        self.stats.bans += 1
        self.log.warning("banned %s for %gs: %s", ", ".join(keys), seconds, reason)
        for session in list(self._sessions):
            if self._bans.find(session.host, session.node_id) is not None:
                session.close_soon(f"banned: {reason}")

    def _ban_keys(self, peer: PeerSession) -> list[str]:
        keys = []
        if peer.node_id is not None:
            who = f"node:{peer.node_id.hex()}"
            keys.append(who if peer.authenticated else f"{who}@{peer.host}")
        if not is_loopback(peer.host):
            keys.append(f"ip:{peer.host}")
        return keys

    def is_banned(self, host: str, node_id: bytes | None = None) -> bool:
        """True if this host (as an IP) or node_id is banned now."""
        return self._bans.find(host, node_id) is not None

    def save_bans(self, path: Path) -> None:
        """Write the bans in force to ``path`` (``BanList.load`` reads them back)."""
        self._bans.save(path)

    def bans(self) -> list[dict[str, Any]]:
        """Current bans: who ("node:<hex>", "ip:<host>" or "node:<hex>@<host>"), reason, until."""
        return [{"who": b.who, "reason": b.reason, "until": b.until} for b in self._bans.all()]

    # --------------------------------------------------------- connecting

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        """The /p2p endpoint: refuse banned IPs outright, otherwise run the session."""
        if not self._running:
            return web.Response(status=503, text="p2p is not running")
        host = request.remote or "?"
        ban = self._bans.find(host)  # loopback only if someone banned it by hand
        if ban is not None:
            self.stats.refused += 1
            return web.Response(status=403, text=f"banned: {ban.reason}")
        peername = request.transport.get_extra_info("peername") if request.transport else None
        port = peername[1] if peername else 0
        ws = web.WebSocketResponse(
            max_msg_size=self.limits.max_frame,
            timeout=self.limits.close_timeout,
            compress=False,
            autoping=True,
        )
        if not ws.can_prepare(request).ok:
            self._bad_upgrades(logging.INFO, "refused a bad WebSocket upgrade from %s", host)
            return bad_upgrade()
        await ws.prepare(request)
        session = self._new_session(ws, host, port, "in")
        task = self._spawn(self._run_session(session), f"p2p-session {session.address}")
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:  # the server is going down: so is the session
            task.cancel()
            raise
        return ws

    def _new_session(self, ws: Any, host: str, port: int, direction: str) -> PeerSession:
        return PeerSession(
            ws,
            host=host,
            port=port,
            direction=direction,
            limits=self.limits,
            stats=self.stats,
            log=self.log,
        )

    async def _connect_loop(self) -> None:
        while self._running:
            try:
                self._fill_outbound()
            except Exception:
                self.log.exception("connector failed")
            self._wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that
            # lands as the event is set (a peer closing as the node stops), and stop()
            # then waited out its whole grace period for this loop.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.connect_interval):
                    await self._wake.wait()

    def _fill_outbound(self) -> None:
        if not self._running:
            return
        outbound = [s for s in self._sessions if s.direction == "out"]
        need = self.max_outbound - len(outbound) - len(self._dialing)
        if need <= 0:
            return
        busy = set(self._dialing) | self._own_addrs
        busy |= {s.dial_addr for s in outbound if s.dial_addr is not None}
        busy |= {(s.host, s.listen_port) for s in self._ready.values()}
        for entry in self.addresses.candidates(busy, set(self._ready)):
            if need <= 0:
                break
            if self.connect_only and (entry.host, entry.port) not in self.bootstrap:
                continue
            if self.is_banned(entry.host, entry.node_id):
                continue
            need -= 1
            addr = (entry.host, entry.port)
            self._dialing.add(addr)
            self._spawn(self._dial(addr), f"p2p-dial {entry.host}:{entry.port}")

    async def _dial(self, addr: tuple[str, int]) -> None:
        host, port = addr
        assert self._client is not None
        try:
            url_host = f"[{host}]" if ":" in host else host
            async with asyncio.timeout(self.handshake_timeout):
                ws = await self._client.ws_connect(
                    f"http://{url_host}:{port}{P2P_PATH}",
                    max_msg_size=self.limits.max_frame,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.limits.close_timeout),
                    autoping=True,
                )
        except Exception as e:
            self.log.debug("dial %s:%s failed: %r", host, port, e)
            self.addresses.failed(addr)
            return
        finally:
            self._dialing.discard(addr)
        session = self._new_session(ws, host, port, "out")
        session.dial_addr = addr
        await self._run_session(session)

    # ------------------------------------------------------------ sessions

    async def _run_session(self, session: PeerSession) -> None:
        """Handshake, then read until the end; always ends closed and accounted for."""
        self._sessions.add(session)
        session.start()
        reason = ""
        try:
            self._check_room(session)
            try:
                async with asyncio.timeout(self.handshake_timeout):
                    await self._handshake(session)
            except TimeoutError:
                raise HandshakeRefused("handshake timed out") from None
            self._register(session)
            await self._on_ready(session)
            while (msg := await session.receive()) is not None:
                await self._dispatch(session, msg)
        except _RemoteClosed as e:
            self.log.info("%s closed: %s", session, e)
        except HandshakeRefused as e:
            self.stats.refused += 1
            self.log.info("%s refused: %s", session, e.reason)
            reason = e.reason
        except ProtocolViolation as e:
            self.stats.violations += 1
            self.log.warning("%s misbehaved: %s", session, e.reason)
            reason = e.reason
            if e.ban:
                self.ban(session, e.reason)
        except asyncio.CancelledError:
            reason = "shutting down"
            raise
        except Exception:
            self.log.exception("%s: unexpected error", session)
            reason = "internal error"
        finally:
            await self._end_session(session, reason)

    async def _end_session(self, session: PeerSession, reason: str) -> None:
        with contextlib.suppress(Exception):
            await session.close(reason)
        self._sessions.discard(session)
        self.stats.disconnects += 1
        if session.dial_addr is not None:
            if session.ready:
                self.addresses.disconnected(session.dial_addr, time.time() - session.connected_at)
            else:
                self.addresses.failed(session.dial_addr)
        if session.ready:
            session.ready = False
            if session.node_id is not None and self._ready.get(session.node_id) is session:
                del self._ready[session.node_id]
            try:
                await self.handler.on_peer_closed(session)
            except Exception:
                self.log.exception("on_peer_closed failed for %s", session)
        self._wake.set()

    def _check_room(self, session: PeerSession) -> None:
        if session.direction != "in":
            return
        inbound = [s for s in self._sessions if s.direction == "in" and not s.closing]
        # Loopback is exempt from the per-IP cap: every node of a local testnet
        # connects from 127.0.0.1 (the same reason it is never banned as an IP).
        same_ip = (
            [] if is_loopback(session.host) else [s for s in inbound if s.host == session.host]
        )
        if len(inbound) > self.max_inbound or len(same_ip) > self.max_per_ip:
            raise HandshakeRefused("too many connections")

    async def _handshake(self, session: PeerSession) -> None:
        challenge = os.urandom(32)
        height, work = self.handler.local_status()
        session.send_nowait(
            Hello(
                PROTOCOL_VERSION,
                self.chain_id,
                self.genesis_hash,
                height,
                work,
                self.listen_port,
                self.node_id,
                challenge,
            )
        )
        hello = await self._expect(session, Hello)
        if hello.version != PROTOCOL_VERSION:
            raise HandshakeRefused(
                f"protocol version {hello.version} is not supported (we speak {PROTOCOL_VERSION})"
            )
        if hello.chain_id != self.chain_id:
            raise HandshakeRefused(f"wrong chain_id {hello.chain_id} (this is {self.chain_id})")
        if hello.genesis_hash != self.genesis_hash:
            raise HandshakeRefused(
                f"wrong genesis {hello.genesis_hash.hex()[:16]}… "
                f"(this is {self.genesis_hash.hex()[:16]}…)"
            )
        if hello.node_id == self.node_id:
            if session.dial_addr is not None:
                self.addresses.mark_self(session.dial_addr)
            raise HandshakeRefused("connected to self")
        session.node_id = hello.node_id
        session.listen_port = hello.listen_port
        session.best_height = hello.best_height
        session.best_work = hello.best_work
        session.version = hello.version
        ban = self._bans.find(session.host, hello.node_id)
        if ban is not None:
            raise HandshakeRefused(f"banned: {ban.reason}")
        digest = auth_digest(hello.challenge, self.node_id, hello.node_id)
        session.send_nowait(Auth(self.key.sign(digest)))
        auth = await self._expect(session, Auth)
        if not verify_signature(
            hello.node_id, auth_digest(challenge, hello.node_id, self.node_id), auth.signature
        ):
            raise ProtocolViolation("bad auth signature: the peer does not hold its node_id's key")
        session.authenticated = True

    async def _expect(self, session: PeerSession, cls: type) -> Any:
        msg = await session.receive()
        if msg is None:
            raise _RemoteClosed("connection closed during the handshake")
        if type(msg) is Close:
            raise _RemoteClosed(f"peer said: {msg.reason}")
        if type(msg) is not cls:
            raise ProtocolViolation(
                f"expected {cls.__name__} during the handshake, got {type(msg).__name__}"
            )
        return msg

    def _register(self, session: PeerSession) -> None:
        """Make an authenticated session ready, unless it duplicates a ready one."""
        node_id = session.node_id
        assert node_id is not None
        existing = self._ready.get(node_id)
        if existing is not None and not existing.closing:
            # Close the newer connection. When both nodes dialed each other at
            # once, "newer" may differ on the two ends; then both keep the one
            # dialed by the smaller node_id so that exactly one survives.
            fresh = time.time() - existing.connected_at < self.handshake_timeout
            if fresh and existing.direction != session.direction:
                dialer = node_id if session.direction == "in" else self.node_id
                other = self.node_id if session.direction == "in" else node_id
                if dialer < other:
                    existing.close_soon("duplicate connection")
                else:
                    raise HandshakeRefused("duplicate connection")
            else:
                raise HandshakeRefused("duplicate connection")
        self._ready[node_id] = session
        session.ready = True
        self.stats.handshakes += 1
        if session.dial_addr is not None:
            self.addresses.connected(session.dial_addr, node_id)
        elif session.listen_port:
            group = source_group(session.host, node_id)
            self.add_address(session.host, session.listen_port, source="inbound", group=group)
            self.addresses.connected((session.host, session.listen_port), node_id)

    async def _on_ready(self, session: PeerSession) -> None:
        self.log.info(
            "%s ready (height %d, listening on %s)",
            session,
            session.best_height,
            session.listen_port or "-",
        )
        session.send_nowait(GetAddr())
        session.send_nowait(session.make_ping())
        await self._deliver(self.handler.on_peer_ready(session), session, "on_peer_ready")

    async def _deliver(
        self, call: Coroutine[Any, Any, Any], session: PeerSession, what: str
    ) -> None:
        """Await a handler call: its ProtocolViolation is the peer's fault, the rest ours."""
        try:
            await call
        except ProtocolViolation:
            raise
        except Exception:
            self.log.exception("handler %s failed for %s", what, session)

    async def _dispatch(self, session: PeerSession, msg: Message) -> None:
        if isinstance(msg, Ping):
            session.send_nowait(Pong(msg.nonce))
        elif isinstance(msg, Pong):
            session.pong_received(msg.nonce)
        elif isinstance(msg, GetAddr):
            # Answered once per connection: asking again learns nothing new and
            # would make us send up to MAX_ADDRS addresses per tiny request.
            if not session.addr_answered:
                session.addr_answered = True
                session.send_nowait(Addr(tuple(self._addr_sample(session))))
        elif isinstance(msg, Addr):
            self._on_addr(session, msg)
        elif isinstance(msg, Close):
            raise _RemoteClosed(f"peer said: {msg.reason}")
        elif isinstance(msg, Hello | Auth):
            raise ProtocolViolation(f"unsolicited {type(msg).__name__} after the handshake")
        else:
            await self._deliver(self.handler.on_message(session, msg), session, "on_message")

    def _on_addr(self, session: PeerSession, msg: Addr) -> None:
        """Learn addresses as fast as the sender's token bucket allows; drop the rest.

        An ADDR over MAX_ADDRS never gets here: the decoder refuses it and the
        peer is banned. Each address costs a token whether it is new or not.
        """
        source = f"addr from {session.address}"
        group = source_group(session.host, session.node_id)
        for taken, a in enumerate(msg.addrs):
            if not session.addr_tokens.take():
                dropped = len(msg.addrs) - taken
                self.stats.addrs_dropped += dropped
                self.log.debug("%s: over its address rate, %d addresses dropped", session, dropped)
                return
            self.stats.addrs_received += 1
            self.add_address(a.host, a.port, source=source, group=group)

    def _addr_sample(self, asker: PeerSession) -> list[NetAddr]:
        """Listening peers we know (connected ones first), never the asker itself."""
        seen = {(asker.host, asker.listen_port)}
        found: list[NetAddr] = []
        peers = [p for p in self.peers if p is not asker and p.listen_port]
        pairs = [(p.host, p.listen_port) for p in peers]
        pairs += [(e.host, e.port) for e in self.addresses.good()]
        for pair in pairs:
            if pair not in seen and len(found) < MAX_ADDRS and dialable(*pair):
                seen.add(pair)
                found.append(NetAddr(*pair))
        return found

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            for peer in self.peers:
                try:
                    if peer.ping_overdue(self.ping_timeout):
                        self.log.info("%s: ping timeout", peer)
                        peer.close_soon("ping timeout")
                    elif not peer.ping_outstanding:
                        peer.send_nowait(peer.make_ping())
                except Exception:
                    self.log.exception("ping of %s failed", peer)


def _as_set(exclude: object) -> set[int]:
    if exclude is None:
        return set()
    if isinstance(exclude, PeerSession):
        return {id(exclude)}
    if isinstance(exclude, Iterable):
        return {id(p) for p in exclude}
    return {id(exclude)}
