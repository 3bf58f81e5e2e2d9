"""Compact block relay: a new block crosses each link as its header and txids.

By the time a block is found, its transactions have already been relayed to
every node, decoded, signature-checked and kept in the mempool. Sending the
block whole would make every peer receive, decode and hash them all again:
under load that was the largest single cost of a node besides signatures.
So, as in Bitcoin's BIP 152, a block travels as a ``CMPCTBLOCK`` (header +
txids): a node rebuilds it from its mempool (and the transactions of the last
few blocks it connected, for a competing block at the same height), asks
``GETBLOCKTXN`` for the ones it lacks and completes the block with the
``BLOCKTXN`` answer. Each peer that sends the block while it is incomplete is asked
(up to ``PEERS_PER_BLOCK``), and the first answer wins: a peer that is first with a
block and then never answers cannot hold it back until its request expires.

A node that connects a new tip *pushes* the compact block to every peer that
does not know it yet, before writing it to disk (BIP 152's high-bandwidth
mode): an announcement and its request would add a round trip per hop, and
every millisecond of propagation is a chance for a stale block. Side
branches and blocks met while catching up are announced by INV instead, and
an INV is answered with ``GETDATA(CMPCT_BLOCK)``.

Checks before any work: the header must pass every header rule on its parent
(``Chain.check_header``: the ASERT target, timestamps, height and the proof
of work, one tile, a millisecond; a peer cannot make up headers that pass),
and before asking for missing transactions the txids must be the ones the
header's tx_root commits to (a block rebuilt whole has that checked by the
chain, once). The rebuilt
block then takes the same path as a whole block (the node's block intake):
every rule is checked, and the signatures of transactions that did not come
from the mempool are verified.

A node that is catching up (headers-first sync) still downloads whole
blocks: it holds none of their transactions.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from consensus.blocks import Block, BlockHeader
from consensus.errors import InvalidBlock
from consensus.merkle import merkle_root
from consensus.transactions import Transaction
from node.net.errors import ProtocolViolation, header_violation
from node.net.peer import PeerSession
from node.net.wire import (
    BlockTxn,
    CompactBlock,
    GetBlockTxn,
    GetHeaders,
    InvItem,
    InvKind,
    NotFound,
    encode_message,
)

if TYPE_CHECKING:
    from consensus.chain import Chain

INV_BLOCK = int(InvKind.BLOCK)
INV_CMPCT = int(InvKind.CMPCT_BLOCK)
RECENT_BLOCKS = 8
"""Connected blocks whose transactions may rebuild a competing block."""
FRAMES_KEPT = 8
"""CMPCTBLOCK frames kept: every peer asks for a new block at about the same time."""
SIDE_DEPTH = 6
"""A compact block lighter than our tip is still kept if it is at most this many blocks
below the tip's height (a race, where timestamps alone make the work differ)."""
GIVEN_UP_KEPT = 64
"""Requests given up on (block, peer) whose late BLOCKTXN is still forgiven (the newest)."""
PEERS_PER_BLOCK = 3
"""Peers a block's missing transactions may be asked of at once (BIP 152's three): a
peer that sends the compact block first and never answers GETBLOCKTXN would otherwise
hold the block back from us until the request expires, whoever else sends it."""
REQUEST_TIMEOUT_S = 10.0
"""A CMPCTBLOCK or BLOCKTXN not delivered this long is given up. The block is
not lost: the next block's announcement finds its parent missing and the node
catches up through headers."""


@dataclass
class _Partial:
    """A compact block waiting for the transactions asked with GETBLOCKTXN."""

    peer: PeerSession
    header: BlockHeader
    txids: tuple[bytes, ...]
    txs: list[Transaction | None]
    missing: tuple[int, ...]
    asked: float = field(default_factory=time.monotonic)


@dataclass
class CompactStats:
    """What compact relay did (getinfo's ``compact``)."""

    received: int = 0
    """Compact blocks received."""
    pushed: int = 0
    """...of which a peer sent unasked (its new tip)."""
    complete: int = 0
    """...of which every transaction was already here."""
    behind: int = 0
    """...of which were dropped: their branch had less work than our tip."""
    txs_fetched: int = 0
    """Transactions asked for with GETBLOCKTXN."""
    late: int = 0
    """BLOCKTXN answers that came after we gave up their request (ignored)."""
    served: int = 0
    """Compact blocks sent to peers."""

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class ConnectedBlocks(Protocol):
    """A change of the active chain (``node.chain_service.ChainChange``), as compact
    relay reads it."""

    @property
    def connected(self) -> tuple[Block, ...]: ...


class CompactRelay:
    """The compact-block side of one node's gossip (see the module docstring)."""

    def __init__(
        self,
        chain: Chain,
        mempool_get: Callable[[bytes], Transaction | None],
        peers: Callable[[], list[PeerSession]],
        unconnecting: Callable[[PeerSession, BlockHeader], bool] | None = None,
    ) -> None:
        """``mempool_get``: a pooled transaction by txid (``Mempool.get``); ``peers``:
        the connected peers, to push a new tip to; ``unconnecting``: told of a compact
        block whose parent is not in the chain, says whether to ask its peer for the
        headers in between (the header sync counts those on no header it knows, and
        raises ProtocolViolation past its limit)."""
        self.chain = chain
        self._mempool_get = mempool_get
        self._peers = peers
        self._unconnecting = unconnecting
        self.asked: dict[bytes, tuple[PeerSession, float]] = {}
        self.partials: dict[bytes, list[_Partial]] = {}
        """Blocks waiting for transactions, each asked of up to PEERS_PER_BLOCK peers."""
        # Requests for a block's transactions we stopped waiting for (it expired, or
        # another peer completed the block): the peer's late answer is dropped, not
        # punished as unrequested.
        self._given_up: OrderedDict[tuple[bytes, PeerSession], None] = OrderedDict()
        self.stats = CompactStats()
        self._frames: OrderedDict[bytes, bytes] = OrderedDict()
        self._recent: OrderedDict[bytes, dict[bytes, Transaction]] = OrderedDict()

    # ------------------------------------------------------------ asking

    def pending(self, block_hash: bytes) -> bool:
        """Whether this block is on its way as a compact block."""
        return block_hash in self.asked or block_hash in self.partials

    def request(self, peer: PeerSession, hashes: list[bytes]) -> None:
        """Ask ``peer`` for these announced blocks as compact blocks."""
        now = time.monotonic()
        for h in hashes:
            self.asked[h] = (peer, now)
        peer.request(InvItem(InvKind.CMPCT_BLOCK, h) for h in hashes)

    # ------------------------------------------------------------ receiving

    async def on_compact_block(self, peer: PeerSession, msg: CompactBlock) -> Block | None:
        """The block rebuilt from what we hold, for the block intake; None if we lack
        transactions (asked for) or have nothing to do with it."""
        chain = self.chain
        header = msg.header
        h = header.hash
        if not peer.take_requested(INV_CMPCT, h):
            self.stats.pushed += 1  # a peer's new tip, sent without being asked
        peer.mark_known(INV_BLOCK, h)
        if self.asked.get(h, (None, 0.0))[0] is peer:
            del self.asked[h]
        self.stats.received += 1
        if chain.contains(h):
            return None
        waiting = self.partials.get(h, ())
        if len(waiting) >= PEERS_PER_BLOCK or any(w.peer is peer for w in waiting):
            return None  # asked of enough peers already, or of this one
        if header.prev_hash not in chain.entries:
            # Not on top of anything we have, so its header cannot be checked: keep
            # nothing (a whole block asked for now would be held as an orphan on its
            # proof alone, which a made-up target makes free) and ask this peer for
            # the headers in between, which headers-first sync checks one by one.
            # Counted with unconnecting headers replies when it asks (not while the
            # peer's answer to an earlier ask is on its way): answering costs a
            # GETHEADERS and a decode, so a peer cannot make it free to repeat.
            if self._unconnecting is None or self._unconnecting(peer, header):
                await peer.send(GetHeaders(tuple(chain.locator()), bytes(32)))
            return None
        try:
            checked = chain.check_header(header)  # every header rule, before any other work
        except InvalidBlock as e:
            raise header_violation("compact block", e) from None
        if checked.work < chain.tip.work and header.height + SIDE_DEPTH < chain.height:
            # A branch lighter than ours, forked deeper than a race's: keeping it would
            # let any peer store side blocks without end, forked from an old block
            # whose difficulty ASERT has since made cheap (Bitcoin keeps an unrequested
            # block only with as much work as its tip). A recent fork costs about a
            # whole block's work (ASERT eases little over a few blocks), and its blocks
            # may differ in work from ours only by their timestamps: kept. Not
            # misbehaviour; if the branch ever grows heavier, the child's compact block
            # finds no parent and headers-first sync fetches it.
            self.stats.behind += 1
            return None
        txs, missing = self._fill(msg.txids)
        if not missing:
            # The chain checks the txids against tx_root before it keeps anything.
            self.stats.complete += 1
            self._forget_requests(h)
            return Block(header, tuple(txs))  # type: ignore[arg-type]
        # Before asking the peer for what we lack: is that what the header names?
        if merkle_root(list(msg.txids)) != header.tx_root:
            raise ProtocolViolation("compact block: its txids are not the ones tx_root commits to")
        self.stats.txs_fetched += len(missing)
        self.partials.setdefault(h, []).append(
            _Partial(peer, header, msg.txids, txs, tuple(missing))
        )
        peer.send_nowait(GetBlockTxn(h, tuple(missing)))
        return None

    def on_block_txn(self, peer: PeerSession, msg: BlockTxn) -> Block | None:
        """The transactions a compact block lacked: the completed block, for the intake;
        None for an answer to a request we gave up on (a slow link, not a lie)."""
        h = msg.block_hash
        waiting = self.partials.get(h, [])
        partial = next((w for w in waiting if w.peer is peer), None)
        if partial is None and (h, peer) in self._given_up:
            del self._given_up[(h, peer)]
            self.stats.late += 1
            return None
        if partial is None:
            raise ProtocolViolation("unrequested blocktxn")
        waiting.remove(partial)
        if not waiting:
            del self.partials[h]
        if len(msg.txs) != len(partial.missing):
            raise ProtocolViolation(
                f"blocktxn: {len(msg.txs)} transactions for {len(partial.missing)} asked"
            )
        for i, tx in zip(partial.missing, msg.txs, strict=True):
            if tx.txid != partial.txids[i]:
                raise ProtocolViolation(f"blocktxn: transaction {i} is not the one the block names")
            partial.txs[i] = tx
        self._forget_requests(h)
        return Block(partial.header, tuple(partial.txs))  # type: ignore[arg-type]

    def _fill(self, txids: tuple[bytes, ...]) -> tuple[list[Transaction | None], list[int]]:
        """The block's transactions we hold (None where we do not), and where they lack."""
        mempool_get = self._mempool_get
        recent = list(self._recent.values())
        txs: list[Transaction | None] = []
        missing: list[int] = []
        for i, txid in enumerate(txids):
            tx = mempool_get(txid)
            if tx is None:
                for known in recent:
                    tx = known.get(txid)
                    if tx is not None:
                        break
                else:
                    missing.append(i)
            txs.append(tx)
        return txs, missing

    def chain_changed(self, change: ConnectedBlocks) -> None:
        """Keep connected blocks' transactions for rebuilding a competitor of them."""
        for block in change.connected:
            self._forget_requests(block.hash)  # it may have come another way
            if block.txs:
                self._recent[block.hash] = {tx.txid: tx for tx in block.txs}
                while len(self._recent) > RECENT_BLOCKS:
                    self._recent.popitem(last=False)

    def not_found(self, peer: PeerSession, item: InvItem) -> None:
        """The peer no longer has a block we asked for (compact, or its transactions)."""
        if item.kind == InvKind.CMPCT_BLOCK and self.asked.get(item.hash, (None, 0.0))[0] is peer:
            del self.asked[item.hash]
        if item.kind == InvKind.BLOCK:
            self._drop_partials(lambda w: w.peer is peer and w.header.hash == item.hash)

    def peer_closed(self, peer: PeerSession) -> None:
        for h, (p, _) in list(self.asked.items()):
            if p is peer:
                del self.asked[h]
        self._drop_partials(lambda w: w.peer is peer)
        for key in [key for key in self._given_up if key[1] is peer]:
            del self._given_up[key]

    def expire(self) -> None:
        """Give up requests that were never answered (housekeeping, once a second)."""
        limit = time.monotonic() - REQUEST_TIMEOUT_S
        for h, (_, asked) in list(self.asked.items()):
            if asked < limit:
                del self.asked[h]
        for w in self._drop_partials(lambda w: w.asked < limit):
            self._give_up(w.header.hash, w.peer)

    def _drop_partials(self, which: Callable[[_Partial], bool]) -> list[_Partial]:
        """Forget the partial blocks ``which`` selects; those forgotten."""
        dropped = []
        for h, waiting in list(self.partials.items()):
            keep = [w for w in waiting if not which(w)]
            dropped += [w for w in waiting if which(w)]
            if keep:
                self.partials[h] = keep
            else:
                del self.partials[h]
        return dropped

    def _forget_requests(self, block_hash: bytes) -> None:
        """The block is here: stop waiting for its transactions, and forgive the late
        answers of the peers still asked."""
        for waiting in self.partials.pop(block_hash, ()):
            self._give_up(block_hash, waiting.peer)

    def _give_up(self, block_hash: bytes, peer: PeerSession) -> None:
        self._given_up[(block_hash, peer)] = None
        while len(self._given_up) > GIVEN_UP_KEPT:
            self._given_up.popitem(last=False)

    # ------------------------------------------------------------ serving

    def push(self, block_hash: bytes, exclude: PeerSession | None) -> int:
        """Send our new tip as a CMPCTBLOCK to every peer but ``exclude`` that lacks it;
        how many peers it went to."""
        sent = 0
        for peer in self._peers():
            if peer is not exclude and not peer.knows(INV_BLOCK, block_hash):
                self.serve(peer, block_hash)
                sent += 1
        return sent

    def serve(self, peer: PeerSession, block_hash: bytes) -> None:
        """Send a block we have as a CMPCTBLOCK."""
        frame = self._frames.get(block_hash)
        if frame is None:
            block = self.chain.blocks[block_hash]
            frame = encode_message(CompactBlock(block.header, tuple(tx.txid for tx in block.txs)))
            self._frames[block_hash] = frame
            while len(self._frames) > FRAMES_KEPT:
                self._frames.popitem(last=False)
        peer.mark_known(INV_BLOCK, block_hash)
        peer.send_frame(frame)
        self.stats.served += 1

    def on_get_block_txn(self, peer: PeerSession, msg: GetBlockTxn) -> None:
        """Answer with the transactions at the asked indexes of a block we have."""
        block = self.chain.blocks.get(msg.block_hash)
        if block is None:
            peer.send_nowait(NotFound((InvItem(InvKind.BLOCK, msg.block_hash),)))
            return
        indexes = msg.indexes
        if any(b <= a for a, b in itertools.pairwise(indexes)):
            raise ProtocolViolation("getblocktxn: indexes are not ascending")
        if indexes and indexes[-1] >= len(block.txs):
            raise ProtocolViolation(
                f"getblocktxn: index {indexes[-1]} is past the block's last, {len(block.txs) - 1}"
            )
        txs: tuple[Any, ...] = tuple(block.txs[i] for i in indexes)
        peer.send_nowait(BlockTxn(msg.block_hash, txs))
