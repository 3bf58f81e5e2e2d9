"""Headers-first download: how a node that is behind catches up.

A peer with more work is asked for headers after our block locator. Each
header is checked against its parent as it arrives, by the same rules as a
block's header (``Chain.check_header``: height, timestamps, the ASERT target
its parent implies, and the proof of work, one tile, under a millisecond), and
a peer that sends one that fails is banned: a peer cannot make us download
blocks of a chain it did not mine.

Only headers of a chain with more work than our active tip are queued for
download; that alone puts the node in its catching-up state. A peer's headers
that have not (yet) shown that much work are its *presync* (after Bitcoin
Core's headers pre-sync): checked one by one against the previous, but held
only up to ``PRESYNC_HEADERS_PER_PEER`` per peer and ``PRESYNC_HEADERS_TOTAL``
in all; past that only the newest header's context is kept. When a header of
the presync brings its chain past our tip's work, the held headers are queued,
and if some were not held the peer is asked for them again. When the peer has
no more headers and its chain never got past our tip, the presync is dropped.
Headers that connect to nothing we know are not kept at all; a peer that sends
more than ``MAX_UNCONNECTING_HEADERS`` such replies (or compact blocks on an unknown
parent) in a row is banned; only a reply with new headers that connect clears the
count, not an empty one or one of headers we hold. A compact block on an unknown
parent asks its peer for the headers in between, and is counted, only while no
GETHEADERS to that peer waits for its answer (for ``HEADERS_RESPONSE_S``): an honest
peer that announces the new tips of a branch faster than its headers reach us (a
reorg after a partition heals pushes them in a burst) is not banned for it. The
newest block it pushed meanwhile is asked for again (and counted, if its parent is
still unknown) once the answer is in, if that answer did not bring it.

The queue itself is bounded: headers are queued up to ``QUEUE_AHEAD_BYTES`` ahead
of the connected tip, and a peer is asked for more headers only while a whole
reply (``MAX_HEADERS_BYTES``) still fits; otherwise the request waits and is sent
as blocks connect. Each queued header remembers the peers that sent it; when the
last of them disconnects, it and every header queued after it are dropped and
the peers that claim more work are asked again from our locator. A peer whose
block requests stall ``MAX_STALLS`` times in a row, with no block delivered in
between, is disconnected: a peer cannot hold the download (or the memory of its
queue) by announcing headers whose blocks it never sends.

Queued headers' blocks are asked of several peers at once in a bounded window
(``DOWNLOAD_WINDOW`` ahead of our tip, at most ``PER_PEER_INFLIGHT`` per peer,
the least loaded peer that has the block first) and connected strictly in
height order as they arrive. Only their
bodies are asked for (``GETDATA(BODY)`` → ``BLOCKBODY``): the header, with its
~18 KiB proof, is here already. A request that stalls for ``STALL_SECONDS``
goes to another peer.

While catching up, the node writes blocks to its store in batches (see
``ChainService.process_block``) and downloads whole blocks: it holds none of their
transactions, so compact blocks would only add a round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import TYPE_CHECKING

from consensus.blocks import Block, BlockHeader
from consensus.chain import Status, headers_after
from consensus.errors import InvalidBlock
from consensus.validation import HeaderContext, check_child_header
from node.net.errors import ProtocolViolation, header_violation
from node.net.peer import PeerSession
from node.net.wire import (
    MAX_HEADERS,
    MAX_HEADERS_BYTES,
    BlockBody,
    GetHeaders,
    Headers,
    InvItem,
    InvKind,
    header_size_bound,
    headers_reply,
)
from node.relay.sync_progress import SyncProgress

if TYPE_CHECKING:
    from consensus.chain import AddResult, Chain
    from consensus.params import NetworkParams

log = logging.getLogger("pouw.node")

INV_BLOCK = int(InvKind.BLOCK)
INV_BODY = int(InvKind.BODY)
DOWNLOAD_WINDOW = 256
"""Blocks requested ahead of the connected tip."""
PER_PEER_INFLIGHT = 32
STALL_SECONDS = 10.0
MAX_STALLS = 3
"""Housekeeping passes in a row that found a peer's block requests stalled while it
had delivered no block for STALL_SECONDS (or NOTFOUND replies for blocks whose
headers it sent us), before it is disconnected (not banned). A peer that delivers,
however slowly (big blocks on a slow link), is not a staller: its late requests
only go to another peer."""
QUEUE_AHEAD_BYTES = 16 * 1024 * 1024
"""Headers queued for download ahead of the connected tip, by their encoded size
(``header_size_bound``): 8 full replies, ~900 headers on devnet, ~240 at
k = 2048. A peer is asked for more only while a whole reply still fits."""
SOURCES_PER_HEADER = 4
"""Peers remembered per queued header as having sent it."""
HEADERS_PER_BREATH = 100
"""Downloads start (and the event loop runs) after every this many verified headers."""
PRESYNC_HEADERS_PER_PEER = 250
"""Headers held per peer that are not (yet) on a chain with more work than ours."""
PRESYNC_HEADERS_TOTAL = 1000
"""...and across all peers. A header carries its proof (h·k + w·k bytes and their
branches): ~18 KiB on devnet, ~70 KiB at k = 2048, so 18 to 70 MB at most."""
MAX_UNCONNECTING_HEADERS = 10
"""HEADERS replies in a row that connect to nothing we know before the peer is banned."""
HEADERS_RESPONSE_S = 10.0
"""A GETHEADERS unanswered this long no longer holds back the next one (nor keeps a
compact block on an unknown parent from being counted)."""


@dataclass
class _Presync:
    """A peer's headers that passed every rule but are not on a chain with more work
    than our tip (yet): the first ``held`` ones, then ``skipped`` checked, not held."""

    last: HeaderContext
    """The newest header checked: the next one must build on it."""
    held: list[HeaderContext] = field(default_factory=list)
    skipped: int = 0


BlockIntake = Callable[[Block, "PeerSession | None"], Awaitable["AddResult | None"]]
"""Validates a block and adds it to the chain, relaying it if it is good
(``ChainService.process_block``)."""


class HeaderSync:
    """The headers-first download of one node (see the module docstring)."""

    def __init__(
        self,
        chain: Chain,
        params: NetworkParams,
        progress: SyncProgress,
        *,
        peers: Callable[[], list[PeerSession]],
        compact_pending: Callable[[bytes], bool],
        process_block: BlockIntake,
        flush_store: Callable[[], None],
    ) -> None:
        """``peers``: the connected peers; ``compact_pending``: whether a block is on its
        way as a compact block (``CompactRelay.pending``), so it is not asked for twice;
        ``process_block``: where downloaded blocks go, in height order; ``flush_store``:
        commits the store writes batched while catching up."""
        self.chain = chain
        self.params = params
        self.progress = progress
        self._peers = peers
        self._compact_pending = compact_pending
        self._process_block = process_block
        self._flush_store = flush_store
        self.pending: dict[bytes, HeaderContext] = {}
        """Checked headers of a chain with more work than ours whose blocks are not
        connected yet."""
        self.queue: deque[bytes] = deque()
        """Their hashes, in height order: the order blocks are connected in."""
        self.inflight: dict[bytes, tuple[PeerSession, float]] = {}
        self.downloaded: dict[bytes, Block] = {}
        self.target = 0
        """The height we are catching up to (0 when not catching up)."""
        self.presync: dict[PeerSession, _Presync] = {}
        self.unconnecting: dict[PeerSession, int] = {}
        """Per peer: HEADERS replies in a row that connected to nothing we know."""
        self.headers_asked: dict[PeerSession, float] = {}
        """Per peer: when we sent it the GETHEADERS it has not answered yet."""
        self.missed: dict[PeerSession, BlockHeader] = {}
        """Per peer: the newest block it pushed on an unknown parent while that
        GETHEADERS was unanswered (or its next one paused), asked for after the answer."""
        self.sources: dict[bytes, list[PeerSession]] = {}
        """Per queued header: the peers that sent it (up to SOURCES_PER_HEADER)."""
        self.queued_bytes = 0
        """``header_size_bound`` of the queued headers, bounded by QUEUE_AHEAD_BYTES."""
        self.paused: dict[PeerSession, bytes] = {}
        """Peers not asked for their next headers while the queue is full: the hash
        to ask after, in the order they were paused."""
        self.stalls: dict[PeerSession, int] = {}
        """Per peer: block requests in a row that stalled (see MAX_STALLS)."""
        self.last_block: dict[PeerSession, float] = {}
        """Per peer: when it last delivered a block of the download."""

    @property
    def catching_up(self) -> bool:
        return bool(self.queue and self.target)

    def knows(self, block_hash: bytes) -> bool:
        """Whether the block is already verified as a header or on its way."""
        return block_hash in self.pending or block_hash in self.inflight

    def builds_on(self, block_hash: bytes) -> bool:
        """Whether a header of the download (its proof of work checked) has this parent."""
        return any(c.header.prev_hash == block_hash for c in self.pending.values())

    # ------------------------------------------------------------ headers

    async def on_getheaders(self, peer: PeerSession, msg: GetHeaders) -> None:
        """Answer with the active chain's headers after the locator (up to ``stop``)."""
        headers = headers_after(self.chain, msg.locator, MAX_HEADERS)
        if msg.stop != bytes(32):
            for i, hd in enumerate(headers):
                if hd.hash == msg.stop:
                    headers = headers[: i + 1]
                    break
        await peer.send(headers_reply(headers))

    async def on_headers(self, peer: PeerSession, msg: Headers) -> None:
        """Check new headers against their parents, queue the blocks of a chain with
        more work than ours, and ask for the rest (see the module docstring)."""
        chain = self.chain
        headers = msg.headers
        self.headers_asked.pop(peer, None)
        for i in range(1, len(headers)):
            if headers[i].prev_hash != headers[i - 1].hash:
                raise ProtocolViolation(f"headers: header {i} does not build on the one before it")
        parent = self._context(peer, headers[0].prev_hash) if headers else None
        if headers and parent is None:
            self.note_unconnecting(peer, "headers: replies")
            # The peer's chain forked below our locator's resolution: ask again.
            await self._get_headers(peer, tuple(chain.locator()))
            return
        if headers and self._known_context(headers[-1].hash) is None:
            # Only a reply that brings new headers clears the count: an empty one, or
            # one of headers we hold, costs nothing to send between unconnecting ones.
            self.unconnecting.pop(peer, None)
        promoted, ask_from, stop = await self._check_headers(peer, headers, parent)
        if headers:
            peer.best_height = max(peer.best_height, headers[-1].height)
        more = bool(headers) and headers[-1].height < peer.best_height and not stop
        presync = self.presync.get(peer)
        if presync is not None and not more:
            # The peer has nothing more, and its chain has no more work than ours.
            del self.presync[peer]
            log.info(
                "headers: dropped %d from %s, a chain with less work than ours",
                len(presync.held) + presync.skipped,
                peer.address,
            )
        # A reply stops at MAX_HEADERS or MAX_HEADERS_BYTES: ask for the rest.
        after = ask_from if ask_from is not None else headers[-1].hash if more else None
        if after is not None:
            await self._ask_after(peer, after)
        await self._ask_for_missed(peer)
        if promoted:
            self.progress.update(chain.height, self.target)
            log.info(
                "headers: %d new from %s, syncing to height %d",
                promoted,
                peer.address,
                self.target,
            )
        self.schedule()

    async def _check_headers(
        self, peer: PeerSession, headers: tuple[BlockHeader, ...], parent: HeaderContext | None
    ) -> tuple[int, bytes | None, bool]:
        """Check each header on its parent; queue those of a chain with more work than
        our tip, hold the others (up to the bounds) in the peer's presync.

        Returns how many headers were queued, the hash to ask the peer for the
        headers after, and whether to stop asking along this reply. The last two
        are set when the presync proved its work past headers it could not hold:
        the peer is asked again from the last one held (from nothing if it held
        none: then the peer is asked again when it sends a new tip, rather than
        in a loop that makes no progress).
        """
        chain, params = self.chain, self.params
        presync = self.presync.get(peer)
        held_total = self.presync_held()
        promoted = checked_count = 0
        for header in headers:
            known = self._known_context(header.hash)
            if known is not None:
                self._add_source(header.hash, peer)
                parent = known
                continue
            assert parent is not None
            try:
                checked = check_child_header(header, parent, params, chain.clock(), chain.check_pow)
            except InvalidBlock as e:
                raise header_violation("headers", e) from None
            if presync is not None and presync.last is not parent:
                held_total -= len(presync.held)
                self.presync.pop(peer, None)  # the peer moved to another branch: start over
                presync = None
            if checked.work > chain.tip.work:
                batch = [checked]
                skipped = False
                if presync is not None:
                    self.presync.pop(peer, None)
                    held_total -= len(presync.held)
                    skipped = presync.skipped > 0
                    # Proven, but past headers we did not hold: those, then the rest again.
                    batch = presync.held if skipped else [*presync.held, checked]
                    presync = None
                queued = self._queue(peer, batch)
                promoted += queued
                if queued < len(batch):
                    # The queue is full: ask again after the last one queued as blocks connect.
                    last = batch[queued - 1].header.hash if queued else batch[0].header.prev_hash
                    self.paused[peer] = last
                    return promoted, None, True
                if skipped:
                    return promoted, batch[-1].header.hash if batch else None, True
            else:
                if presync is None:
                    presync = self.presync[peer] = _Presync(checked)
                presync.last = checked
                if len(presync.held) < PRESYNC_HEADERS_PER_PEER and (
                    held_total < PRESYNC_HEADERS_TOTAL
                ):
                    presync.held.append(checked)
                    held_total += 1
                else:
                    presync.skipped += 1
            parent = checked
            checked_count += 1
            if checked_count % HEADERS_PER_BREATH == 0:
                self.schedule()
                await asyncio.sleep(0)
                h = checked.header.hash
                dropped = presync is None and h not in self.pending and h not in chain.entries
                if peer.closing or self.presync.get(peer) is not presync or dropped:
                    # The peer left, or the download was dropped (forget, or the headers
                    # only a peer that left had sent) meanwhile: what follows has no parent.
                    self.presync.pop(peer, None)
                    return promoted, None, True
                held_total = self.presync_held()  # other peers' replies ran meanwhile
        return promoted, None, False

    def _queue(self, peer: PeerSession, checked: list[HeaderContext]) -> int:
        """Queue the blocks of headers on a chain with more work than ours, sent by
        ``peer``, while the queue is under QUEUE_AHEAD_BYTES: how many were queued."""
        for n, context in enumerate(checked):
            h = context.header.hash
            if h in self.pending:
                # Queued meanwhile from another peer's reply (a presync held it).
                self._add_source(h, peer)
                continue
            if self.queued_bytes >= QUEUE_AHEAD_BYTES:
                return n
            self.pending[h] = context
            self.sources[h] = [peer]
            self.queued_bytes += header_size_bound(context.header)
            self.queue.append(h)
            self.target = max(self.target, context.header.height)
        return len(checked)

    def _add_source(self, block_hash: bytes, peer: PeerSession) -> None:
        """``peer`` sent the header ``block_hash`` too: remember it if it is queued."""
        sources = self.sources.get(block_hash)
        if sources is not None and len(sources) < SOURCES_PER_HEADER and peer not in sources:
            sources.append(peer)

    def has_room(self) -> bool:
        """Whether a whole headers reply still fits in the queue."""
        return self.queued_bytes + MAX_HEADERS_BYTES <= QUEUE_AHEAD_BYTES

    async def _ask_after(self, peer: PeerSession, block_hash: bytes) -> None:
        """Ask ``peer`` for the headers after ``block_hash`` now if a reply fits the
        queue, or once enough blocks have connected (``_resume``)."""
        if self.has_room():
            self.paused.pop(peer, None)
            await self._get_headers(peer, (block_hash,))
        else:
            self.paused[peer] = block_hash

    async def _resume(self) -> None:
        """Send the first paused headers request, if a reply now fits the queue."""
        while self.paused and self.has_room():
            peer = next(iter(self.paused))
            block_hash = self.paused.pop(peer)
            try:
                gone = peer.closing or self._context(peer, block_hash) is None
            except ProtocolViolation:
                gone = True  # its block was found invalid meanwhile
            if gone:
                continue  # the peer left, or what it built on was dropped meanwhile
            await self._get_headers(peer, (block_hash,))
            return

    async def _get_headers(self, peer: PeerSession, locator: tuple[bytes, ...]) -> None:
        """Ask ``peer`` for the headers after ``locator``, noting that we wait for them."""
        self.headers_asked[peer] = monotonic()
        await peer.send(GetHeaders(locator, bytes(32)))

    def _known_context(self, block_hash: bytes) -> HeaderContext | None:
        """The context of a header already in the block tree or queued for download."""
        context = self.pending.get(block_hash)
        if context is not None:
            return context
        entry = self.chain.entries.get(block_hash)
        if entry is None:
            return None
        if entry.status is Status.INVALID:
            raise ProtocolViolation(f"headers: block {block_hash.hex()[:16]} is invalid")
        return self.chain.header_context(block_hash)

    def note_unconnecting(self, peer: PeerSession, what: str) -> None:
        """Count one message from ``peer`` that builds on no block or header we know (a
        headers reply, a compact block); ProtocolViolation past MAX_UNCONNECTING_HEADERS
        in a row (a headers reply with new headers that connect clears the count)."""
        count = self.unconnecting.get(peer, 0) + 1
        if count > MAX_UNCONNECTING_HEADERS:
            raise ProtocolViolation(f"{what}: {count} in a row do not connect to any block we know")
        self.unconnecting[peer] = count

    def block_on_missing_parent(self, peer: PeerSession, header: BlockHeader) -> bool:
        """A compact block from ``peer`` whose parent is not in the chain: whether to ask
        the peer for the headers in between (the caller sends the GETHEADERS).

        Not while a GETHEADERS to the peer is unanswered (``HEADERS_RESPONSE_S``) or its
        next one waits for room in the queue: the headers on their way bring the parent,
        and an honest peer that announces a branch's tips faster than they come must not
        be counted for each (the newest is asked for after the answer, if it did not
        bring it: ``_ask_for_missed``). Otherwise the block is counted with unconnecting
        headers unless its parent is a header we know (queued for download while
        catching up, or the last of the peer's presync): each one counted costs its
        peer a round trip, so repeating them is never free."""
        asked = self.headers_asked.get(peer)
        if peer in self.paused or (asked is not None and monotonic() - asked < HEADERS_RESPONSE_S):
            self.missed[peer] = header
            return False
        if self._context(peer, header.prev_hash) is None:
            self.note_unconnecting(peer, "compact blocks")
        self.headers_asked[peer] = monotonic()
        return True

    async def _ask_for_missed(self, peer: PeerSession) -> None:
        """After ``peer`` answered: ask for the block it pushed while the answer was on its
        way, if the answer did not bring it and no other ask is under way."""
        header = self.missed.get(peer)
        if header is None or peer in self.headers_asked or peer in self.paused:
            return
        del self.missed[peer]
        if header.hash in self.chain.entries or self.knows(header.hash):
            return
        if self.block_on_missing_parent(peer, header):
            await self._get_headers(peer, tuple(self.chain.locator()))

    def _context(self, peer: PeerSession, block_hash: bytes) -> HeaderContext | None:
        """The context of a header a peer's reply builds on: known, or its presync's last."""
        presync = self.presync.get(peer)
        if presync is not None and presync.last.header.hash == block_hash:
            return presync.last
        return self._known_context(block_hash)

    def presync_held(self) -> int:
        """Headers held in presyncs: checked, but not (yet) on a chain with more work."""
        return sum(len(p.held) for p in self.presync.values())

    # ------------------------------------------------------------ blocks

    def schedule(self) -> None:
        """Ask peers for the next blocks of the download window, up to
        PER_PEER_INFLIGHT each, the least loaded peer that has the block first."""
        if not self.queue:
            return
        height = self.chain.height
        peers = [p for p in self._peers() if p.best_height > height]
        if not peers:
            return
        load = {id(p): 0 for p in peers}
        for p, _ in self.inflight.values():
            if id(p) in load:
                load[id(p)] += 1
        free = sum(max(0, PER_PEER_INFLIGHT - n) for n in load.values())
        inflight, downloaded, pending = self.inflight, self.downloaded, self.pending
        batches: dict[int, tuple[PeerSession, list[InvItem]]] = {}
        now = monotonic()
        for i, h in enumerate(self.queue):
            if i >= DOWNLOAD_WINDOW or free <= 0:
                break  # a block arriving frees one slot: the scan stops right there
            if h in inflight or h in downloaded or self._compact_pending(h):
                continue
            height = pending[h].header.height
            best = None
            for p in peers:
                n = load[id(p)]
                fits = n < PER_PEER_INFLIGHT and p.best_height >= height
                if fits and (best is None or n < load[id(best)]):
                    best = p
            if best is None:
                continue
            load[id(best)] += 1
            free -= 1
            inflight[h] = (best, now)
            batches.setdefault(id(best), (best, []))[1].append(InvItem(InvKind.BODY, h))
        for peer, items in batches.values():
            peer.request(items)

    async def on_body(self, peer: PeerSession, msg: BlockBody) -> None:
        """The transactions of a block whose header we hold: the block, then connect."""
        h = msg.block_hash
        if not peer.take_requested(INV_BODY, h):
            raise ProtocolViolation("unrequested block body")
        self._delivered(peer)  # even one another peer delivered first: it is not stalling
        context = self.pending.get(h)
        if context is None:
            return  # connected meanwhile, or the download was dropped
        self.inflight.pop(h, None)
        self.downloaded[h] = Block(context.header, msg.txs)
        await self._connect_downloaded(peer)

    async def on_block(self, peer: PeerSession, block: Block) -> bool:
        """Take a block of the download; False if it is not one we queued."""
        h = block.hash
        if h not in self.pending:
            return False
        self.inflight.pop(h, None)
        if block.header != self.pending[h].header:
            raise ProtocolViolation("block does not match its announced header")
        self._delivered(peer)
        self.downloaded[h] = block
        await self._connect_downloaded(peer)
        return True

    async def _connect_downloaded(self, peer: PeerSession) -> None:
        while self.queue and self.queue[0] in self.downloaded:
            h = self.queue.popleft()
            block = self.downloaded.pop(h)
            self.pending.pop(h, None)
            self.sources.pop(h, None)
            self.queued_bytes -= header_size_bound(block.header)
            try:
                await self._process_block(block, peer)
            except ProtocolViolation:
                self.forget()
                raise
        self.schedule()
        if self.target:
            self.progress.update(self.chain.height, self.target)
        if not self.queue and self.target:
            self._flush_store()
            log.info("sync: at height %d", self.chain.height)
            self.target = 0
        await self._resume()

    def forget(self) -> None:
        """Drop the whole download (its peer sent a block that failed)."""
        self.queue.clear()
        self.pending.clear()
        self.sources.clear()
        self.queued_bytes = 0
        self.downloaded.clear()
        self.inflight.clear()
        self.presync.clear()
        self.paused.clear()
        self._retarget()

    def _drop_from(self, index: int) -> int:
        """Drop the queued headers from ``index`` on (and their blocks): how many."""
        dropped = 0
        while len(self.queue) > index:
            h = self.queue.pop()
            context = self.pending.pop(h)
            self.sources.pop(h, None)
            self.queued_bytes -= header_size_bound(context.header)
            self.downloaded.pop(h, None)
            self.inflight.pop(h, None)
            dropped += 1
        self._retarget()
        return dropped

    def _retarget(self) -> None:
        """The sync target after headers were dropped: the last one still queued."""
        self.target = self.pending[self.queue[-1]].header.height if self.queue else 0
        self.progress.retarget(self.chain.height, self.target)

    # ------------------------------------------------------------ peers

    async def ask_if_ahead(self, peer: PeerSession) -> None:
        """Ask ``peer`` for headers after our locator if its handshake claimed more work
        than our tip (a new peer; the others, when headers only a departed peer sent
        were dropped)."""
        if peer.best_work > self.chain.tip.work:
            await self._get_headers(peer, tuple(self.chain.locator()))

    def not_found(self, peer: PeerSession, hashes: list[bytes]) -> None:
        """The peer does not have these blocks we asked it for. From a peer that sent
        us a block's header, one such reply counts as a stall (see MAX_STALLS)."""
        lied = False
        for block_hash in hashes:
            if self.inflight.get(block_hash, (None, 0.0))[0] is peer:
                del self.inflight[block_hash]
                lied = lied or peer in self.sources.get(block_hash, ())
        if lied:
            self._stalled(peer)

    async def peer_closed(self, peer: PeerSession) -> None:
        """Forget the peer; drop the queued headers only it sent (and those queued
        after them), then ask the peers that claim more work again."""
        self.presync.pop(peer, None)
        self.unconnecting.pop(peer, None)
        self.headers_asked.pop(peer, None)
        self.missed.pop(peer, None)
        self.paused.pop(peer, None)
        self.stalls.pop(peer, None)
        self.last_block.pop(peer, None)
        for h, (p, _) in list(self.inflight.items()):
            if p is peer:
                del self.inflight[h]
        first = None
        for i, h in enumerate(self.queue):
            sources = self.sources[h]
            if peer in sources:
                sources.remove(peer)
                if not sources and first is None:
                    first = i
        if first is not None:
            dropped = self._drop_from(first)
            log.info("headers: dropped %d queued from %s, which left", dropped, peer.address)
            for p in self._peers():
                if p is not peer and not p.closing:
                    await self.ask_if_ahead(p)
        self.schedule()

    def expire(self) -> None:
        """Give stalled requests to another peer, and disconnect a peer whose requests
        stalled MAX_STALLS times in a row (housekeeping, once a second)."""
        now = monotonic()
        stalled: dict[PeerSession, int] = {}
        for h, (peer, t) in list(self.inflight.items()):
            if now - t > STALL_SECONDS:
                del self.inflight[h]
                stalled[peer] = stalled.get(peer, 0) + 1
        for peer, n in stalled.items():
            # Requests sent together stall together: one count per peer per pass, and
            # none for a peer still delivering (slowly: its late requests move on).
            delivering = now - self.last_block.get(peer, float("-inf")) < STALL_SECONDS
            if delivering or not self._stalled(peer):
                log.info("%d block requests stalled at %s: asking another peer", n, peer.address)
        self.schedule()

    def _delivered(self, peer: PeerSession) -> None:
        self.stalls.pop(peer, None)
        self.last_block[peer] = monotonic()

    def _stalled(self, peer: PeerSession) -> bool:
        """Count a stall of ``peer``; past MAX_STALLS in a row, disconnect it (True)."""
        stalls = self.stalls[peer] = self.stalls.get(peer, 0) + 1
        if stalls < MAX_STALLS:
            return False
        log.info("%s stalled block requests %d times: disconnecting", peer.address, stalls)
        peer.close_soon(f"stalled block requests {stalls} times in a row")
        return True
