"""A transaction refused only because its sender's earlier nonces are missing is held,
not forgotten (node/relay/txrelay.py ``HeldTxs``): a real node, peers on real sockets.

What it fixes, measured: at 2 s blocks a miner's job_result claims go out one nonce
after another; one refused by a peer in a race (another claim took its job there
first) made that peer refuse every later claim of the miner as a nonce gap and never
ask for it again, so those claims reached the chain only in the miner's own blocks
(10-15 s for a job in `pouw bench market --block-time-ms 2000`)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from consensus.transactions import Transaction
from node.app import INV_BLOCK, INV_CMPCT, INV_TX, Node
from node.net.wire import (
    BlockTxn,
    CompactBlock,
    GetBlockTxn,
    GetData,
    Inv,
    InvItem,
    TxMsg,
)
from node.relay.txrelay import HELD_AHEAD, HELD_PER_SENDER, HELD_TTL_S, HeldTxs
from tests.support.chainkit import ALICE, BOB, CAROL, MID, new_chain, next_block, transfer
from tests.support.nodekit import connected_peer, rpc_call
from tests.support.nodekit import until as _until
from tests.support.p2p_testkit import TestPeer


async def _send_tx(peer: TestPeer, tx: Transaction) -> None:
    """Announce ``tx``, wait for the node to ask for it, and send it."""
    asked = len(peer.of_type(GetData))
    await peer.send(Inv((InvItem(INV_TX, tx.txid),)))
    await peer.wait_for(lambda: len(peer.of_type(GetData)) > asked)
    assert peer.of_type(GetData)[-1].items == (InvItem(INV_TX, tx.txid),)
    await peer.send(TxMsg(tx))


def _announced(peer: TestPeer) -> set[bytes]:
    return {item.hash for m in peer.of_type(Inv) for item in m.items if item.kind == INV_TX}


async def _held(node: Node) -> Any:
    return (await rpc_call(node, "getinfo"))["result"]["tx_relay"]["held_for_nonce_gaps"]


async def test_later_nonces_are_held_until_the_earlier_one_comes_then_relayed_in_order(node):
    a, b, watcher = [await connected_peer(node) for _ in range(3)]
    zeroth, first, second, third = (
        transfer(ALICE, BOB, 500 + n, n, chain_id=MID.chain_id) for n in range(4)
    )
    admitted: list[bytes] = []
    node.txs.on_admitted(admitted.append)
    await _send_tx(a, third)  # the later nonces first
    await _send_tx(a, second)
    await _until(lambda: len(node.txs.held) == 2)
    assert await _held(node) == 2
    assert not admitted and second.txid not in node.mempool
    # Announced again by another peer: not asked for, it is here already.
    await b.send(Inv((InvItem(INV_TX, second.txid),)))
    await b.sync()
    assert not b.of_type(GetData)
    # Nonce 0 comes: admitted, while 2 and 3 still wait for 1, held as they were.
    await _send_tx(a, zeroth)
    await watcher.wait_for(lambda: zeroth.txid in _announced(watcher))
    assert admitted == [zeroth.txid] and len(node.txs.held) == 2
    await _send_tx(a, first)
    await watcher.wait_for(lambda: {first.txid, second.txid, third.txid} <= _announced(watcher))
    assert admitted == [zeroth.txid, first.txid, second.txid, third.txid]
    assert await _held(node) == 0
    assert any(p.node_id == a.node_id for p in node.p2p.peers), "the sender's peer was dropped"
    for peer in (a, b, watcher):
        await peer.close()


async def test_a_held_transaction_is_admitted_when_a_block_confirms_its_predecessor(node):
    """The earlier nonce never reaches the mempool here (refused in a race, say): the
    block that confirms it releases what was held behind it."""
    a, b = await connected_peer(node), await connected_peer(node)
    first, second = (transfer(ALICE, BOB, 500 + n, n, chain_id=MID.chain_id) for n in range(2))
    await _send_tx(a, second)
    await _until(lambda: second.txid in node.txs.held)
    chain, clock = new_chain()
    clock.now = max(clock.now, node.chain.tip.header.timestamp_ms)
    block = next_block(chain, clock, (first,))
    await a.send(Inv((InvItem(INV_BLOCK, block.hash),)))
    await a.wait_for(
        lambda: any(InvItem(INV_CMPCT, block.hash) in m.items for m in a.of_type(GetData))
    )
    await a.send(CompactBlock(block.header, tuple(tx.txid for tx in block.txs)))
    await a.wait_for_message(GetBlockTxn)
    await a.send(BlockTxn(block.hash, (first,)))
    await _until(lambda: node.chain.tip.hash == block.hash)
    await _until(lambda: second.txid in node.mempool)
    await b.wait_for(lambda: second.txid in _announced(b))
    assert len(node.txs.held) == 0
    await a.close()
    await b.close()


async def test_a_transaction_far_ahead_or_badly_signed_is_refused_and_not_asked_for_again(node):
    a, b = await connected_peer(node), await connected_peer(node)
    far = transfer(ALICE, BOB, 5, HELD_AHEAD + 2, chain_id=MID.chain_id)
    forged = dataclasses.replace(transfer(CAROL, BOB, 5, 1, chain_id=MID.chain_id), fee=6)
    for tx in (far, forged):
        await _send_tx(a, tx)
    await _until(lambda: far.txid in node.txs.rejected and forged.txid in node.txs.rejected)
    assert len(node.txs.held) == 0
    await b.send(Inv((InvItem(INV_TX, far.txid), InvItem(INV_TX, forged.txid))))
    await b.sync()
    assert not b.of_type(GetData)
    await a.close()
    await b.close()


def _fake(sender: bytes, nonce: int, size: int = 200) -> Any:
    class Tx:
        txid = sender + nonce.to_bytes(8, "big")
        encoded = bytes(size)

    return Tx()


class _Peer:
    closing = False


def test_held_transactions_are_bounded_per_sender_in_all_and_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held, peer, now = HeldTxs(), _Peer(), time.monotonic()
    s1, s2 = b"\x01" * 20, b"\x02" * 20
    assert all(held.hold(_fake(s1, n), peer, s1, n, now) for n in range(1, HELD_PER_SENDER + 1))
    assert not held.hold(_fake(s1, 999), peer, s1, 999, now), "a sender's share is bounded"
    assert not held.hold(_fake(s2, 5), peer, s1, 5, now), "the first one for a nonce stays"
    assert held.lowest(s1) == 1 and len(held) == HELD_PER_SENDER
    popped = [held.pop(s1, n)[0].txid for n in range(1, HELD_PER_SENDER + 1)]
    assert popped == [_fake(s1, n).txid for n in range(1, HELD_PER_SENDER + 1)]
    assert len(held) == 0 and not held.holds_for(s1)
    monkeypatch.setattr("node.relay.txrelay.HELD_MAX", 3)
    for n in range(1, 5):
        held.hold(_fake(s2, n), peer, s2, n, now + n)
    assert len(held) == 3 and _fake(s2, 1).txid not in held, "the longest held goes first"
    assert held.expire(now + 3.5 + HELD_TTL_S) == 2  # held at now + 2 and now + 3
    assert len(held) == 1 and held.lowest(s2) == 4
    assert held.pop(s2, 4)[0].txid == _fake(s2, 4).txid
    assert held.bytes == 0
    # A closed peer's session is not kept alive by what it sent.
    held.hold(_fake(s1, 7), peer, s1, 7, now)
    held.forget_peer(peer)  # type: ignore[arg-type]
    assert held.pop(s1, 7)[1] is None
    # Bytes are bounded too: three 256 KiB transactions where two fit.
    monkeypatch.setattr("node.relay.txrelay.HELD_MAX_BYTES", 600 * 1024)
    big = [_fake(s1, n, 256 * 1024) for n in (1, 2, 3)]
    assert [held.hold(tx, peer, s1, n, now) for n, tx in enumerate(big, 1)] == [True] * 3
    assert len(held) == 2 and big[0].txid not in held and held.bytes == 512 * 1024
    too_big = _fake(s2, 1, 700 * 1024)
    assert not held.hold(too_big, peer, s2, 1, now), "one alone over the bound is not held"
    assert len(held) == 2 and held.bytes == 512 * 1024, "nor does it push the others out"


def test_one_peer_holds_at_most_its_share_and_loses_its_own_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer sending gapped transactions from many funded keys filled every held slot
    and pushed out an honest peer's (the longest held went first, whoever sent it).
    Each peer now holds at most HELD_PER_PEER, and past the bounds the peer that holds
    the most loses its longest held."""
    monkeypatch.setattr("node.relay.txrelay.HELD_PER_PEER", 3)
    monkeypatch.setattr("node.relay.txrelay.HELD_MAX", 5)
    held, honest, flooder, now = HeldTxs(), _Peer(), _Peer(), time.monotonic()
    mine = _fake(b"\x09" * 20, 1)
    assert held.hold(mine, honest, b"\x09" * 20, 1, now)
    senders = [bytes([i]) * 20 for i in range(1, 7)]
    took = [held.hold(_fake(s, 1), flooder, s, 1, now + i) for i, s in enumerate(senders, 1)]
    assert took == [True, True, True, False, False, False], "the flooder's share is 3"
    assert mine.txid in held
    other = _Peer()
    for i, s in enumerate(senders[3:5], 10):
        assert held.hold(_fake(s, 2), other, s, 2, now + i)
    # 6 held over a bound of 5: the flooder (3, the most) lost its longest held.
    assert len(held) == 5 and _fake(senders[0], 1).txid not in held
    assert mine.txid in held
