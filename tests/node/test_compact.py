"""Compact relay on its own: a chain, a mempool lookup and a peer list are all it needs.

It rebuilds a block from what the lookup holds, asks the sender for the rest, and
hands the completed block back to its caller (the node's block intake), connecting
nothing itself.
"""

from __future__ import annotations

from typing import Any

import pytest

from consensus.blocks import Block
from node.net.errors import ProtocolViolation
from node.net.wire import BlockTxn, CompactBlock, GetBlockTxn
from node.relay import compact as compact_module
from node.relay.compact import CompactRelay
from tests.support.chainkit import ALICE, BOB, MID, extend, new_chain, next_block, transfer


class _Peer:
    """The sender of a compact block: every block it sends was asked for."""

    address = "test-peer"

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def take_requested(self, kind: int, block_hash: bytes) -> bool:
        return True

    def mark_known(self, kind: int, block_hash: bytes) -> None:
        pass

    def send_nowait(self, msg: Any) -> None:
        self.sent.append(msg)

    async def send(self, msg: Any) -> None:
        self.sent.append(msg)


def _block_and_relay(pooled: int) -> tuple[Block, CompactRelay]:
    """A block of two transfers on a fresh chain, and a relay over that chain whose
    mempool lookup holds the block's first ``pooled`` transactions."""
    chain, clock = new_chain()
    txs = (
        transfer(ALICE, BOB, 500, 0, chain_id=MID.chain_id),
        transfer(BOB, ALICE, 700, 0, chain_id=MID.chain_id),
    )
    block = next_block(chain, clock, txs)
    pool = {tx.txid: tx for tx in block.txs[:pooled]}
    return block, CompactRelay(chain, pool.get, lambda: [])


def _compact(block: Block) -> CompactBlock:
    return CompactBlock(block.header, tuple(tx.txid for tx in block.txs))


async def test_a_block_whose_transactions_are_pooled_is_handed_back_whole():
    block, relay = _block_and_relay(pooled=2)
    peer = _Peer()
    assert await relay.on_compact_block(peer, _compact(block)) == block
    assert peer.sent == []
    assert not relay.chain.contains(block.hash), "the relay connected the block itself"


async def test_a_missing_transaction_is_asked_for_and_the_completed_block_handed_back():
    block, relay = _block_and_relay(pooled=1)
    peer = _Peer()
    assert await relay.on_compact_block(peer, _compact(block)) is None
    assert peer.sent == [GetBlockTxn(block.hash, (1,))]
    assert relay.on_block_txn(peer, BlockTxn(block.hash, (block.txs[1],))) == block
    with pytest.raises(ProtocolViolation, match="unrequested blocktxn"):
        relay.on_block_txn(peer, BlockTxn(block.hash, (block.txs[1],)))


def _chain_with_rival(own_blocks: int):
    """A chain ``own_blocks`` long and a rival block on its genesis, mined elsewhere
    (the same network, another time): a side block of one block's work."""
    chain, clock = new_chain()
    extend(chain, clock, own_blocks)
    rival_chain, rival_clock = new_chain()
    rival_clock.now = clock.now + 7
    rival = next_block(rival_chain, rival_clock, ())
    return chain, rival


async def test_a_compact_block_lighter_than_our_tip_is_dropped_unasked_and_unpunished():
    """A compact block whose branch has less work than our tip (one forked from an old
    block, where ASERT made the difficulty cheap) is neither rebuilt, asked for, nor
    handed to the chain: nothing is stored. One with as much work as our tip is."""
    chain, rival = _chain_with_rival(own_blocks=compact_module.SIDE_DEPTH + 2)
    relay = CompactRelay(chain, {}.get, lambda: [])
    peer = _Peer()
    assert await relay.on_compact_block(peer, _compact(rival)) is None
    assert peer.sent == [] and relay.partials == {} and not chain.contains(rival.hash)
    assert relay.stats.behind == 1
    level, rival = _chain_with_rival(own_blocks=1)  # the same work as the tip: a race
    relay = CompactRelay(level, {}.get, lambda: [])
    assert await relay.on_compact_block(_Peer(), _compact(rival)) == rival
    recent, rival = _chain_with_rival(own_blocks=2)  # lighter, but a recent fork: kept
    relay = CompactRelay(recent, {}.get, lambda: [])
    assert rival.hash and recent.tip.work > recent.entries[recent.active[1]].work
    assert await relay.on_compact_block(_Peer(), _compact(rival)) == rival
    assert relay.stats.behind == 0


async def test_a_blocktxn_after_we_gave_up_is_ignored_not_punished(monkeypatch):
    """A peer on a slow link answers GETBLOCKTXN after the request expired: its answer
    is dropped quietly. Another peer's, or a second, answer is still unrequested."""
    block, relay = _block_and_relay(pooled=1)
    peer, other = _Peer(), _Peer()
    assert await relay.on_compact_block(peer, _compact(block)) is None
    monkeypatch.setattr(compact_module, "REQUEST_TIMEOUT_S", -1.0)
    relay.expire()
    assert relay.partials == {}
    answer = BlockTxn(block.hash, (block.txs[1],))
    with pytest.raises(ProtocolViolation, match="unrequested blocktxn"):
        relay.on_block_txn(other, answer)
    assert relay.on_block_txn(peer, answer) is None and relay.stats.late == 1
    with pytest.raises(ProtocolViolation, match="unrequested blocktxn"):
        relay.on_block_txn(peer, answer)


async def test_missing_transactions_are_asked_of_up_to_three_peers_and_the_first_answer_wins():
    """Each peer that sends the compact block while its transactions are missing is
    asked for them, up to PEERS_PER_BLOCK peers, each once; the first answer completes
    the block, and the others' answers, now late, are dropped unpunished."""
    block, relay = _block_and_relay(pooled=1)
    peers = [_Peer() for _ in range(compact_module.PEERS_PER_BLOCK + 1)]
    for peer in peers:
        assert await relay.on_compact_block(peer, _compact(block)) is None
    assert await relay.on_compact_block(peers[0], _compact(block)) is None  # again
    asked = GetBlockTxn(block.hash, (1,))
    assert [p.sent for p in peers] == [[asked]] * compact_module.PEERS_PER_BLOCK + [[]]
    answer = BlockTxn(block.hash, (block.txs[1],))
    assert relay.on_block_txn(peers[1], answer) == block
    assert relay.partials == {}
    assert relay.on_block_txn(peers[0], answer) is None
    assert relay.on_block_txn(peers[2], answer) is None and relay.stats.late == 2
    with pytest.raises(ProtocolViolation, match="unrequested blocktxn"):
        relay.on_block_txn(peers[3], answer)  # never asked


async def test_a_block_connected_another_way_forgets_its_pending_requests():
    """The block arrives whole (headers-first sync, or a complete compact block) while
    a peer is still asked for its transactions: the request is dropped, and its late
    answer forgiven."""
    block, relay = _block_and_relay(pooled=1)
    peer = _Peer()
    assert await relay.on_compact_block(peer, _compact(block)) is None
    relay.chain.add_block(block)
    relay.chain_changed(_Connected((block,)))
    assert relay.partials == {}
    assert relay.on_block_txn(peer, BlockTxn(block.hash, (block.txs[1],))) is None
    assert relay.stats.late == 1


class _Connected:
    def __init__(self, blocks: tuple[Block, ...]) -> None:
        self.connected = blocks
