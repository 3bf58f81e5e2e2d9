"""One connection to one peer: framing, rate limits, a send queue and inventory memory.

A ``PeerSession`` wraps an established aiohttp WebSocket (either direction).
Reading is pull-based (``receive``, called by one task, the peer manager's
reader); writing goes through a bounded queue drained by the session's own
writer task, so a slow or stalled peer fills its own queue, never blocks the
node, and is disconnected when the queue overflows. The handshake and what
messages mean are the peer manager's business (node/net/p2p.py).

Lifecycle: ``start()`` starts the writer; ``close(reason)`` (idempotent, from
any task) flushes what is queued for a moment, sends ``Close(reason)`` best
effort, closes the socket and stops the writer; ``wait_closed()`` waits for
that to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import WebSocketError, WSCloseCode, WSMsgType

from node.net.errors import ProtocolViolation
from node.net.wire import (
    MAX_FRAME,
    MAX_HANDSHAKE_FRAME,
    MAX_INV,
    BlobChunk,
    BlobRange,
    BlockBody,
    BlockMsg,
    BlockTxn,
    Close,
    CompactBlock,
    GetData,
    Inv,
    InvItem,
    InvKind,
    Message,
    Ping,
    TxMsg,
    TxsMsg,
    decode_message,
    encode_message,
)

InvKey = tuple[int, bytes]
"""(kind, hash) of an inventory item; kind 1 = tx, 2 = block."""

MiB = 1024 * 1024
MAX_REQUESTED = 50_000
MAX_GRANTED_BYTES = 4 * MAX_FRAME
"""Most reply bytes granted to a peer at once (``PeerSession.grant``)."""
REQUEST_FORGET_S = 120.0
"""Beyond MAX_REQUESTED outstanding requests, those older than this are forgotten."""


@dataclass(frozen=True)
class PeerLimits:
    """Per-peer limits. The defaults leave room for a full block sync from one peer."""

    max_frame: int = MAX_FRAME
    msg_rate: float = 5_000.0
    """Messages per second allowed on average (a relayed transaction is ~2 messages)..."""
    msg_burst: float = 20_000.0
    """...and in a burst."""
    byte_rate: float = 64 * MiB
    byte_burst: float = 2 * MAX_FRAME
    """At least one frame of max_frame bytes must always fit."""
    addr_rate: float = 0.1
    """Addresses per second taken from a peer's ADDR messages on average (Bitcoin Core's)..."""
    addr_burst: float = 1000.0
    """...and in a burst (one full ADDR); beyond, the addresses are dropped, not the peer."""
    send_queue_msgs: int = 10_000
    send_queue_bytes: int = 4 * MAX_FRAME
    """Beyond either, the peer is not reading: it is disconnected (not banned)."""
    known_size: int = 20_000
    """How many inventory items per peer are remembered as known to it."""
    flush_timeout: float = 1.0
    """How long close() lets queued messages go out before the Close frame."""
    close_timeout: float = 2.0


@dataclass
class P2PStats:
    """Counters for the whole peer manager (every session adds to the same object)."""

    handshakes: int = 0
    refused: int = 0
    disconnects: int = 0
    bans: int = 0
    violations: int = 0
    addrs_dropped: int = 0
    """Addresses from ADDR messages ignored because their sender exceeded its rate."""
    addrs_received: int = 0
    """Addresses from ADDR messages taken in (known ones included)."""
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    by_type: dict[tuple[str, int], list[int]] = field(default_factory=dict, repr=False)
    """(direction "in"/"out", message type byte) → [messages, bytes], for the metrics."""

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if isinstance(v, int)}

    def count(self, direction: str, frame: bytes) -> None:
        """One frame sent or received, by its message type (frame = msgpack [type, record])."""
        msg_type = frame[1] if len(frame) > 1 and frame[1] < 0x80 else -1
        entry = self.by_type.get((direction, msg_type))
        if entry is None:
            entry = self.by_type[(direction, msg_type)] = [0, 0]
        entry[0] += 1
        entry[1] += len(frame)


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; ``take`` says whether there were enough."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic()

    def take(self, amount: float = 1.0) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class KnownSet:
    """A set that forgets its oldest entries beyond ``maxsize`` (LRU by insertion/use)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[InvKey, None] = OrderedDict()

    def add(self, key: InvKey) -> None:
        items = self._items
        if key in items:
            items.move_to_end(key)
            return
        items[key] = None
        if len(items) > self.maxsize:
            items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 (also IPv4-mapped) and "localhost"."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def is_bulk(msg: object) -> bool:
    """Whether a message may wait behind blocks, headers and control messages:
    transactions, inventory and requests that only name transactions, blob chunks
    and ranges."""
    t = type(msg)
    if t is TxMsg or t is TxsMsg or t is BlobChunk or t is BlobRange:
        return True
    if t is Inv or t is GetData:
        return all(item.kind == InvKind.TX for item in msg.items)  # type: ignore[attr-defined]
    return False


def _key(kind: int, hash_: bytes) -> InvKey:
    return (int(kind), bytes(hash_))


class PeerSession:
    """An established WebSocket to one peer, before and after the handshake."""

    def __init__(
        self,
        ws: Any,
        *,
        host: str,
        port: int,
        direction: str,
        limits: PeerLimits | None = None,
        stats: P2PStats | None = None,
        log: logging.Logger | None = None,
    ) -> None:
        if direction not in ("in", "out"):
            raise ValueError(f"direction is 'in' or 'out', not {direction!r}")
        self.ws = ws
        self.host = host
        self.port = port
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.direction = direction
        self.limits = limits or PeerLimits()
        self.stats = stats or P2PStats()
        self.log = log or logging.getLogger("pouw.p2p")
        # Filled in by the handshake.
        self.node_id: bytes | None = None
        self.listen_port = 0
        self.best_height = 0
        self.best_work = 0
        self.version = 0
        self.authenticated = False
        """True once the peer proved it holds the key of ``node_id`` (its Auth verified)."""
        self.ready = False
        self.dial_addr: tuple[str, int] | None = None
        """For outbound sessions: the (host, port) we dialed."""
        self.connected_at = time.time()
        self.latency_ms: float | None = None
        self.known = KnownSet(self.limits.known_size)
        self.requested: dict[InvKey, float] = {}
        self.close_reason: str | None = None
        self.addr_answered = False
        self.addr_tokens = TokenBucket(self.limits.addr_rate, self.limits.addr_burst)
        self._ping_nonce: int | None = None
        self._ping_sent = 0.0
        self._msg_bucket = TokenBucket(self.limits.msg_rate, self.limits.msg_burst)
        self._byte_bucket = TokenBucket(self.limits.byte_rate, self.limits.byte_burst)
        self._granted = 0
        """Bytes of replies we asked this peer for (``grant``): not charged to its rate."""
        # Two lanes: blocks, headers, pings and control go ahead of bulk traffic
        # (transactions, their inventory, blob chunks), so a block never waits
        # behind thousands of queued transactions on its way to a peer.
        self._urgent: deque[bytes] = deque()
        self._bulk: deque[bytes] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._queued_bytes = 0
        self._overflowed = False
        self._writer: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        who = self.node_id.hex()[:12] if self.node_id else "?"
        return f"<peer {self.address} {self.direction} {who}>"

    # ----------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the writer task (once)."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name=f"p2p-writer {self}")

    @property
    def closing(self) -> bool:
        return self._close_task is not None

    def close_soon(self, reason: str = "") -> None:
        """Begin closing (see ``close``) without waiting; safe from synchronous code."""
        if self._close_task is None:
            self.close_reason = reason
            self._close_task = asyncio.create_task(self._close(reason), name=f"p2p-close {self}")

    async def close(self, reason: str = "") -> None:
        """Send Close(reason) if we can, close the socket and stop the writer. Idempotent."""
        self.close_soon(reason)
        assert self._close_task is not None
        await asyncio.shield(self._close_task)

    async def wait_closed(self) -> None:
        if self._close_task is not None:
            await asyncio.shield(self._close_task)

    async def _close(self, reason: str) -> None:
        limits = self.limits
        writer = self._writer
        if writer is not None and not writer.done() and not self._overflowed:
            # Let the last replies (say our Hello before a refusal) reach the peer first.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(limits.flush_timeout):
                    await self._idle.wait()
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
        if reason and not self.ws.closed:
            frame = encode_message(Close.because(reason))
            with contextlib.suppress(Exception):
                async with asyncio.timeout(limits.flush_timeout):
                    await self.ws.send_bytes(frame)
                self._count_out(frame)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(limits.close_timeout):
                await self.ws.close()

    # ------------------------------------------------------------- sending

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in the send queue."""
        return self._queued_bytes

    def send_frame(self, frame: bytes, bulk: bool = False) -> bool:
        """Queue an encoded frame (``bulk`` ones go after every urgent one);
        False (and the peer is being closed) if it cannot be."""
        if self._close_task is not None:
            return False
        limits = self.limits
        over_count = len(self._urgent) + len(self._bulk) >= limits.send_queue_msgs
        over_bytes = self._queued_bytes > 0 and (
            self._queued_bytes + len(frame) > limits.send_queue_bytes
        )
        if over_count or over_bytes:
            self._overflowed = True
            self.log.warning("%s: send queue overflow, disconnecting", self)
            self.close_soon("send queue overflow (peer not reading)")
            return False
        self._queued_bytes += len(frame)
        (self._bulk if bulk else self._urgent).append(frame)
        self._idle.clear()
        self._wake.set()
        return True

    def send_nowait(self, msg: object) -> bool:
        """Queue a message (and remember inventory it carries as known to this peer)."""
        self.note_inventory(msg)
        return self.send_frame(encode_message(msg), is_bulk(msg))

    async def send(self, msg: object) -> None:
        """Queue a message for the writer task; never waits for the peer.

        A full queue disconnects the peer (it is not reading) instead of
        blocking the caller. Use ``drain`` to pace a long series of replies.
        """
        self.send_nowait(msg)
        await asyncio.sleep(0)

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until at most half of the byte budget of the send queue is in use."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queued_bytes > self.limits.send_queue_bytes // 2 and not self.closing:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError
            await asyncio.sleep(0.01)

    async def _write_loop(self) -> None:
        urgent, bulk = self._urgent, self._bulk
        try:
            while True:
                while not urgent and not bulk:
                    self._idle.set()
                    self._wake.clear()
                    await self._wake.wait()
                frame = urgent.popleft() if urgent else bulk.popleft()
                try:
                    await self.ws.send_bytes(frame)
                    self._count_out(frame)
                finally:
                    self._queued_bytes -= len(frame)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the connection broke under us
            self.log.debug("%s: send failed: %r", self, e)
            self.close_soon("")

    def _count_out(self, frame: bytes) -> None:
        self.stats.messages_out += 1
        self.stats.bytes_out += len(frame)
        self.stats.count("out", frame)

    # ----------------------------------------------------------- receiving

    async def receive(self) -> Message | None:
        """The next message from the peer, or None once the connection is closed.

        Raises ProtocolViolation for anything the peer may not send: text
        frames, oversized frames, bad frames, or more than its rate allows.
        """
        while True:
            if self._close_task is not None:
                return None
            ws_msg = await self.ws.receive()
            kind = ws_msg.type
            if kind is WSMsgType.BINARY:
                return self._accept(ws_msg.data)
            if kind is WSMsgType.TEXT:
                raise ProtocolViolation("text frame (only binary frames are allowed)")
            if kind is WSMsgType.ERROR:
                exc = ws_msg.data
                if self.ws.close_code == WSCloseCode.MESSAGE_TOO_BIG or (
                    isinstance(exc, WebSocketError) and exc.code == WSCloseCode.MESSAGE_TOO_BIG
                ):
                    raise ProtocolViolation(
                        f"frame exceeds the limit of {self.limits.max_frame} bytes"
                    )
                if isinstance(exc, WebSocketError):
                    raise ProtocolViolation(f"websocket protocol error: {exc}")
                self.log.debug("%s: connection error: %r", self, exc)
                return None
            if kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return None

    def _accept(self, data: bytes) -> Message:
        self.stats.messages_in += 1
        self.stats.bytes_in += len(data)
        self.stats.count("in", data)
        if not self._msg_bucket.take(1):
            raise ProtocolViolation(
                f"rate limit: more than {self.limits.msg_rate:g} messages/s "
                f"(burst {self.limits.msg_burst:g})"
            )
        granted = min(self._granted, len(data))
        self._granted -= granted
        if not self._byte_bucket.take(len(data) - granted):
            raise ProtocolViolation(
                f"rate limit: more than {self.limits.byte_rate:g} bytes/s "
                f"(burst {self.limits.byte_burst:g})"
            )
        if not self.authenticated and len(data) > MAX_HANDSHAKE_FRAME:
            raise ProtocolViolation(
                f"frame of {len(data)} bytes during the handshake "
                f"(the limit before AUTH is {MAX_HANDSHAKE_FRAME})"
            )
        msg = decode_message(data, self.limits.max_frame)
        self.note_inventory(msg)
        return msg

    def grant(self, nbytes: int) -> None:
        """We asked the peer for a reply of up to ``nbytes``: the bytes it sends next are
        not charged to its byte rate, up to that (and MAX_GRANTED_BYTES outstanding).
        A fetch that asks a fast peer for more than the rate allows must not get it
        banned for answering."""
        self._granted = min(self._granted + nbytes, MAX_GRANTED_BYTES)

    def note_inventory(self, msg: object) -> None:
        """Mark the items an Inv, a transaction or block message carries as known to this peer."""
        # Whatever crosses this connection either way is known to the peer: it is
        # never announced back to it.
        if type(msg) is Inv:
            for item in msg.items:
                self.known.add(item.key)
        elif type(msg) is TxMsg:
            self.known.add((int(InvKind.TX), msg.tx.txid))
        elif type(msg) is TxsMsg:
            for tx in msg.txs:
                self.known.add((int(InvKind.TX), tx.txid))
        elif type(msg) is BlockMsg:
            self.known.add((int(InvKind.BLOCK), msg.block.hash))
        elif type(msg) is CompactBlock:
            self.known.add((int(InvKind.BLOCK), msg.header.hash))
        elif type(msg) is BlockTxn or type(msg) is BlockBody:
            for tx in msg.txs:
                self.known.add((int(InvKind.TX), tx.txid))
            if type(msg) is BlockBody:
                self.known.add((int(InvKind.BLOCK), msg.block_hash))

    # ----------------------------------------------------------- inventory

    def mark_known(self, kind: int, hash: bytes) -> None:
        """Remember that the peer has (or has been told about) this item."""
        self.known.add(_key(kind, hash))

    def knows(self, kind: int, hash: bytes) -> bool:
        return _key(kind, hash) in self.known

    def knows_key(self, key: InvKey) -> bool:
        """``knows`` for an (int kind, hash) key already made (``InvItem.key``)."""
        return key in self.known

    def request(self, items: Iterable[InvItem | InvKey]) -> None:
        """Send GETDATA for ``items`` (in batches of MAX_INV) and note when we asked.

        An item already asked of this peer is not asked again: the peer answers
        every request, and a second copy would arrive unrequested.
        """
        now = time.monotonic()
        if len(self.requested) > MAX_REQUESTED:
            # Requests that were never answered (the peer went quiet): forget them.
            limit = now - REQUEST_FORGET_S
            self.requested = {k: t for k, t in self.requested.items() if t >= limit}
        batch: list[InvItem] = []
        for item in items:
            inv = item if isinstance(item, InvItem) else InvItem(InvKind(item[0]), item[1])
            if inv.key in self.requested:
                continue
            self.requested[inv.key] = now
            batch.append(inv)
            if len(batch) == MAX_INV:
                self.send_nowait(GetData(tuple(batch)))
                batch = []
        if batch:
            self.send_nowait(GetData(tuple(batch)))

    def take_requested(self, kind: int, hash: bytes) -> bool:
        """True (and forget the request) if we asked this peer for the item."""
        return self.requested.pop(_key(kind, hash), None) is not None

    def stalled_requests(self, timeout_s: float) -> list[InvKey]:
        """Items asked for more than ``timeout_s`` ago and not delivered yet."""
        limit = time.monotonic() - timeout_s
        return [key for key, asked in self.requested.items() if asked < limit]

    # ------------------------------------------------------------ liveness

    def make_ping(self) -> Ping:
        """A Ping with a fresh nonce; its Pong gives ``latency_ms``."""
        self._ping_nonce = random.getrandbits(64)
        self._ping_sent = time.monotonic()
        return Ping(self._ping_nonce)

    def pong_received(self, nonce: int) -> bool:
        """Record the round trip if ``nonce`` answers our outstanding ping."""
        if self._ping_nonce is None or nonce != self._ping_nonce:
            return False
        self.latency_ms = (time.monotonic() - self._ping_sent) * 1000.0
        self._ping_nonce = None
        return True

    @property
    def ping_outstanding(self) -> bool:
        """True while our last ping has not been answered."""
        return self._ping_nonce is not None

    def ping_overdue(self, timeout_s: float) -> bool:
        """True if a ping has gone unanswered for more than ``timeout_s``."""
        return self._ping_nonce is not None and time.monotonic() - self._ping_sent > timeout_s
