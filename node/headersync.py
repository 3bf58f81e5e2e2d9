"""Headers-first download: how a node that is behind catches up.

A peer with more work is asked for headers after our block locator. Each
header's proof of work is checked as it arrives (one tile, under a
millisecond): a peer cannot make us download blocks of a chain it did not
mine. Verified headers queue for download; their blocks are asked of several
peers at once in a bounded window (``DOWNLOAD_WINDOW`` ahead of our tip, at
most ``PER_PEER_INFLIGHT`` per peer, the least loaded peer that has the block
first) and connected strictly in height order as they arrive. Only their
bodies are asked for (``GETDATA(BODY)`` → ``BLOCKBODY``): the header, with its
~18 KiB proof, is here already. A request that stalls for ``STALL_SECONDS``
goes to another peer.

While catching up, the node writes blocks to its store in batches (see
``Node.process_block``) and downloads whole blocks: it holds none of their
transactions, so compact blocks would only add a round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

from consensus.blocks import Block, BlockHeader
from consensus.chain import headers_after
from consensus.errors import InvalidBlock
from consensus.validation import check_header_pow
from node.errors import ProtocolViolation
from node.peer import PeerSession
from node.sync_progress import SyncProgress
from node.wire import (
    MAX_HEADERS,
    BlockBody,
    GetHeaders,
    Headers,
    InvItem,
    InvKind,
    headers_reply,
)

if TYPE_CHECKING:
    from node.node import Node

log = logging.getLogger("pouw.node")

INV_BLOCK = int(InvKind.BLOCK)
INV_BODY = int(InvKind.BODY)
DOWNLOAD_WINDOW = 256
"""Blocks requested ahead of the connected tip."""
PER_PEER_INFLIGHT = 32
STALL_SECONDS = 10.0
HEADERS_PER_BREATH = 100
"""Downloads start (and the event loop runs) after every this many verified headers."""


class HeaderSync:
    """The headers-first download of one node (see the module docstring)."""

    def __init__(self, node: Node, progress: SyncProgress) -> None:
        self.node = node
        self.progress = progress
        self.pending: dict[bytes, BlockHeader] = {}
        """Verified headers whose blocks are not connected yet."""
        self.queue: deque[bytes] = deque()
        """Their hashes, in height order: the order blocks are connected in."""
        self.inflight: dict[bytes, tuple[PeerSession, float]] = {}
        self.downloaded: dict[bytes, Block] = {}
        self.target = 0
        """The height we are catching up to (0 when not catching up)."""

    @property
    def catching_up(self) -> bool:
        return bool(self.queue and self.target)

    def knows(self, block_hash: bytes) -> bool:
        """Whether the block is already verified as a header or on its way."""
        return block_hash in self.pending or block_hash in self.inflight

    def builds_on(self, block_hash: bytes) -> bool:
        """Whether a header of the download (its proof of work checked) has this parent."""
        return any(header.prev_hash == block_hash for header in self.pending.values())

    # ------------------------------------------------------------ headers

    async def on_getheaders(self, peer: PeerSession, msg: GetHeaders) -> None:
        """Answer with the active chain's headers after the locator (up to ``stop``)."""
        headers = headers_after(self.node.chain, msg.locator, MAX_HEADERS)
        if msg.stop != bytes(32):
            for i, hd in enumerate(headers):
                if hd.hash == msg.stop:
                    headers = headers[: i + 1]
                    break
        await peer.send(headers_reply(headers))

    async def on_headers(self, peer: PeerSession, msg: Headers) -> None:
        """Verify new headers' proofs, queue their blocks, and ask for the rest."""
        chain, params = self.node.chain, self.node.params
        prev_known = True
        added = 0
        for header in msg.headers:
            h = header.hash
            if chain.contains(h) or h in self.pending:
                continue
            if header.prev_hash not in chain.entries and header.prev_hash not in self.pending:
                prev_known = False
                break
            try:
                check_header_pow(header, params)
            except InvalidBlock as e:
                raise ProtocolViolation(f"headers: invalid proof of work: {e}") from None
            self.pending[h] = header
            self.queue.append(h)
            added += 1
            self.target = max(self.target, header.height)
            if added % HEADERS_PER_BREATH == 0:
                self.schedule()
                await asyncio.sleep(0)
        if not prev_known:
            # The peer's chain forked below our locator's resolution: ask again.
            await peer.send(GetHeaders(tuple(chain.locator()), bytes(32)))
            return
        peer.best_height = max(peer.best_height, msg.headers[-1].height if msg.headers else 0)
        if msg.headers and msg.headers[-1].height < peer.best_height:
            # A reply stops at MAX_HEADERS or MAX_HEADERS_BYTES: ask for the rest.
            await peer.send(GetHeaders((msg.headers[-1].hash,), bytes(32)))
        if added:
            self.progress.update(chain.height, self.target)
            log.info(
                "headers: %d new from %s, syncing to height %d", added, peer.address, self.target
            )
        self.schedule()

    # ------------------------------------------------------------ blocks

    def schedule(self) -> None:
        """Ask peers for the next blocks of the download window, up to
        PER_PEER_INFLIGHT each, the least loaded peer that has the block first."""
        if not self.queue:
            return
        node = self.node
        peers = [p for p in node.p2p.peers if p.best_height > node.chain.height]
        if not peers:
            return
        load = {id(p): 0 for p in peers}
        for p, _ in self.inflight.values():
            if id(p) in load:
                load[id(p)] += 1
        free = sum(max(0, PER_PEER_INFLIGHT - n) for n in load.values())
        inflight, downloaded, pending = self.inflight, self.downloaded, self.pending
        batches: dict[int, tuple[PeerSession, list[InvItem]]] = {}
        now = time.monotonic()
        for i, h in enumerate(self.queue):
            if i >= DOWNLOAD_WINDOW or free <= 0:
                break  # a block arriving frees one slot: the scan stops right there
            if h in inflight or h in downloaded or node.compact.pending(h):
                continue
            height = pending[h].height
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
        header = self.pending.get(h)
        if header is None:
            return  # connected meanwhile, or the download was dropped
        self.inflight.pop(h, None)
        self.downloaded[h] = Block(header, msg.txs)
        await self._connect_downloaded(peer)

    async def on_block(self, peer: PeerSession, block: Block) -> bool:
        """Take a block of the download; False if it is not one we queued."""
        h = block.hash
        if h not in self.pending:
            return False
        self.inflight.pop(h, None)
        if block.header != self.pending[h]:
            raise ProtocolViolation("block does not match its announced header")
        self.downloaded[h] = block
        await self._connect_downloaded(peer)
        return True

    async def _connect_downloaded(self, peer: PeerSession) -> None:
        node = self.node
        while self.queue and self.queue[0] in self.downloaded:
            h = self.queue.popleft()
            block = self.downloaded.pop(h)
            self.pending.pop(h, None)
            try:
                await node.process_block(block, source=peer)
            except ProtocolViolation:
                self.forget()
                raise
        self.schedule()
        if self.target:
            self.progress.update(node.chain.height, self.target)
        if not self.queue and self.target:
            node.flush_store()
            log.info("sync: at height %d", node.chain.height)
            self.target = 0

    def forget(self) -> None:
        """Drop the whole download (its peer sent a block that failed)."""
        self.queue.clear()
        self.pending.clear()
        self.downloaded.clear()
        self.inflight.clear()

    # ------------------------------------------------------------ peers

    def not_found(self, peer: PeerSession, block_hash: bytes) -> None:
        if self.inflight.get(block_hash, (None, 0.0))[0] is peer:
            del self.inflight[block_hash]

    def peer_closed(self, peer: PeerSession) -> None:
        for h, (p, _) in list(self.inflight.items()):
            if p is peer:
                del self.inflight[h]
        self.schedule()

    def expire(self) -> None:
        """Give stalled requests to another peer (housekeeping, once a second)."""
        now = time.monotonic()
        for h, (peer, t) in list(self.inflight.items()):
            if now - t > STALL_SECONDS:
                del self.inflight[h]
                log.info("block %s stalled at %s: asking another peer", h.hex()[:16], peer.address)
        self.schedule()
