"""The chain service: one place where blocks join the chain, are written down, and
the rest of the node hears of it.

``process_block`` validates a block (``consensus.chain.Chain.add_block``) and, if
it is good, tells the listeners the wiring registered, in the block flow's order
(docs/architecture.md): a new tip is pushed to peers first (each checks it
itself, and a relay waiting on our disk would only add to every stale race), the
miner drops its template, the store writes it, then the connected listeners
(compact relay, mempool, the RPC's event stream) hear of the change and, unless
it was pushed, the block is announced. The service knows none of them: a
listener is a plain callable, so nothing here imports the components it feeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from consensus.blocks import Block
from consensus.chain import AddResult, Chain
from consensus.errors import DuplicateProofOfWork, InvalidBlock
from node.net.errors import header_violation
from node.net.wire import GetHeaders

if TYPE_CHECKING:
    from node.metrics import Metrics
    from node.net.peer import PeerSession
    from node.store import Store

log = logging.getLogger("pouw.node")

BLOCK_TIMES_KEPT = 10_000
STORE_BATCH_S = 0.25
"""While catching up, blocks are written to the store in one transaction this often."""


@dataclass(frozen=True)
class ChainChange:
    """What one block did to the active chain."""

    connected: tuple[Block, ...]
    """Blocks that joined it, in order."""
    disconnected: tuple[Block, ...]
    """Blocks that left it (a reorg): their transactions go back to the mempool."""


Relay = Callable[[bytes, "PeerSession | None"], int]
"""Tells peers of a block (its hash; the peer it came from, None for our own); how many
peers it reached."""
TipListener = Callable[[], None]
"""Hears that the tip moved, before the store write (the miner: stop the old attempt)."""
ChangeListener = Callable[[ChainChange], None]
"""Hears what a block connected and disconnected, after the store write."""


class SyncView(Protocol):
    """Headers-first sync, as the chain service sees it (``follow_download``)."""

    @property
    def catching_up(self) -> bool:
        """Whether blocks of a chain with more work than ours are being downloaded."""
        ...

    def builds_on(self, block_hash: bytes) -> bool:
        """Whether the branch being downloaded builds on this block."""
        ...


class _NoDownload:
    """No headers-first download: nothing is being caught up, no branch built on."""

    catching_up = False

    def builds_on(self, block_hash: bytes) -> bool:
        return False


class ChainService:
    """The chain, its store writes and its listeners (see the module docstring)."""

    def __init__(self, chain: Chain, store: Store, metrics: Metrics) -> None:
        self.chain = chain
        self.store = store
        self.metrics = metrics
        self.sync: SyncView = _NoDownload()
        self.block_times: dict[bytes, float] = {}  # first seen (s), for propagation metrics
        self._store_dirty = False
        self._store_synced = 0.0
        self._pushers: list[Relay] = []
        self._announcers: list[Relay] = []
        self._tip_listeners: list[TipListener] = []
        self._change_listeners: list[ChangeListener] = []

    # ------------------------------------------------------------ listeners

    def follow_download(self, sync: SyncView) -> None:
        """Ask ``sync`` whether the node is catching up (store writes are batched, a new
        tip is announced, not pushed) and whether its branch needs a block.

        The download feeds this service its blocks (``process_block``), so it is built
        after the service and registered here, as the listeners are; until then no
        download is under way.
        """
        self.sync = sync

    def push_new_tips_with(self, push: Relay) -> None:
        """``push`` sends a new tip to peers at once, before it is written down."""
        self._pushers.append(push)

    def announce_blocks_with(self, announce: Relay) -> None:
        """``announce`` tells peers of a good block that was not pushed (a side block,
        a block connected while catching up), after it is written down."""
        self._announcers.append(announce)

    def on_tip_changed(self, listener: TipListener) -> None:
        """``listener`` hears that blocks joined the active chain, before the store write."""
        self._tip_listeners.append(listener)

    def on_chain_changed(self, listener: ChangeListener) -> None:
        """``listener`` hears what joined and left the active chain, after the store write;
        listeners hear in the order they were added."""
        self._change_listeners.append(listener)

    # ------------------------------------------------------------ blocks

    async def process_block(self, block: Block, source: PeerSession | None) -> AddResult | None:
        """Validate and add a block from a peer (or our miner); relay it if it is good.

        A bad block from a peer raises ``ProtocolViolation`` (the peer is banned); our
        own is logged and dropped. None if the block was not taken (unknown parent).
        """
        if source is not None and block.header.prev_hash not in self.chain.entries:
            # Its header cannot be checked without its parent: keep nothing (an
            # orphan would be held on its proof alone, which a made-up target
            # makes free) and ask for the headers in between, checked one by one.
            await source.send(GetHeaders(tuple(self.chain.locator()), bytes(32)))
            return None
        h = block.hash
        if h not in self.block_times:
            self.block_times[h] = time.time()
            while len(self.block_times) > BLOCK_TIMES_KEPT:
                del self.block_times[next(iter(self.block_times))]
        started = time.perf_counter()
        try:
            try:
                result = self.chain.add_block(block)
            except DuplicateProofOfWork:
                if not self.sync.builds_on(h):
                    raise
                # A second block of a proof of work, but the branch we are downloading
                # builds on it: it is needed, and most work decides (Chain docs).
                result = self.chain.add_block(block, built_upon=True)
        except InvalidBlock as e:
            self.metrics.blocks.labels("rejected").inc()
            self.store.record(self.chain)
            log.warning("rejected block %s from %s: %s", h.hex()[:16], _who(source), e)
            if source is not None:
                raise header_violation("invalid block", e) from None
            return None
        if result.status == "duplicate":
            return result
        self.metrics.block_import.observe(time.perf_counter() - started)
        catching_up = self.sync.catching_up
        pushed = result.status == "connected" and self.chain.tip.hash == h and not catching_up
        relayed_to = 0
        if pushed:
            relayed_to = sum(push(h, source) for push in self._pushers)
        if result.connected:
            for listener in self._tip_listeners:
                listener()  # the miner stops on the old tip now, not after the disk write
        if catching_up:
            # Catching up: one store transaction per STORE_BATCH_S, not per block. A
            # crash loses at most that much, which is downloaded again on restart.
            self._store_dirty = True
            self.flush_store_when_due()
        else:
            stored = time.perf_counter()
            self.store.record(self.chain)
            self.metrics.block_store.observe(time.perf_counter() - stored)
        self.metrics.blocks.labels("accepted").inc()
        if result.status == "orphan":
            return result
        self._chain_changed(result)
        if not pushed:
            relayed_to = sum(announce(h, source) for announce in self._announcers)
        if relayed_to:  # announced to at least one peer: a node alone relays nothing
            self.metrics.blocks.labels("relayed").inc()
        return result

    def flush_store(self) -> None:
        """Write what the chain changed since the last store write (see process_block)."""
        if self._store_dirty:
            self.store.sync(self.chain)
            self._store_dirty = False
        self._store_synced = time.monotonic()

    def flush_store_when_due(self) -> None:
        """``flush_store`` if the last write is ``STORE_BATCH_S`` old."""
        if time.monotonic() - self._store_synced >= STORE_BATCH_S:
            self.flush_store()

    def _chain_changed(self, result: AddResult) -> None:
        if not result.connected:
            return
        change = ChainChange(
            tuple(self.chain.blocks[h] for h in result.connected), result.disconnected
        )
        self.metrics.height.set(self.chain.height)
        for listener in self._change_listeners:
            listener(change)
        if result.reorged:
            log.info("reorg: %d blocks replaced", result.reorged)
            self.metrics.reorgs.inc()
            self.metrics.reorg_blocks.inc(result.reorged)


def _who(peer: PeerSession | None) -> str:
    return "this node" if peer is None else peer.address
