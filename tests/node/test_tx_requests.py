"""Transaction requests are shared out per peer (node/relay/txrelay.py): a real node,
peers on real sockets. What it fixes, measured by a hostile review: one peer
announcing ~100 INVs of 1,000 made-up txids a second and answering no GETDATA held
the whole request window and the wanted queue, so an honest peer's transaction was
never asked for (20 s and counting) and the attacker was never dropped."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from consensus.transactions import Transaction
from node.app import INV_TX, Node
from node.net.wire import MAX_INV, GetData, Inv, InvItem, NotFound, TxMsg
from node.relay.txrelay import PEER_IN_FLIGHT, PEER_WANTED
from tests.support.chainkit import ALICE, BOB, MID, transfer
from tests.support.nodekit import connected_peer
from tests.support.p2p_testkit import TestPeer

FAST = 5.0
"""Seconds an honest transaction may take to be asked for and admitted here (a request
left unanswered is given up only after REQUEST_TIMEOUT_S = 30 s)."""


def _asked(peer: TestPeer, txid: bytes | None = None) -> list[bytes]:
    """The txids the node asked ``peer`` for (only ``txid`` if given)."""
    return [
        item.hash
        for m in peer.of_type(GetData)
        for item in m.items
        if item.kind == INV_TX and (txid is None or item.hash == txid)
    ]


async def _announce_junk(peer: TestPeer, count: int) -> None:
    for start in range(0, count, MAX_INV):
        n = min(MAX_INV, count - start)
        await peer.send(Inv(tuple(InvItem(INV_TX, os.urandom(32)) for _ in range(n))))
    await peer.sync()


async def _until(predicate: Callable[[], object], timeout: float = FAST) -> None:
    """Wait until ``predicate()`` holds (node-side state: re-checked every few ms)."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


async def _deliver(peer: TestPeer, tx: Transaction, node: Node) -> None:
    await peer.wait_for(lambda: _asked(peer, tx.txid), FAST)
    await peer.send(TxMsg(tx))
    await _until(lambda: tx.txid in node.mempool)


async def test_a_peer_that_announces_without_end_cannot_keep_out_an_honest_transaction(node):
    flooder, honest = await connected_peer(node), await connected_peer(node)
    junk = PEER_WANTED + 2 * MAX_INV
    await _announce_junk(flooder, junk)
    # Its share of requests, never the window: PEER_WANTED more wait, the rest dropped.
    await flooder.wait_for(lambda: len(_asked(flooder)) >= PEER_IN_FLIGHT)
    assert len(_asked(flooder)) == PEER_IN_FLIGHT
    assert len(node.txs.wanted) == PEER_WANTED
    assert node.txs.dropped == junk - PEER_WANTED - PEER_IN_FLIGHT
    tx = transfer(ALICE, BOB, 500, 0, chain_id=MID.chain_id)
    await honest.send(Inv((InvItem(INV_TX, tx.txid),)))
    await _deliver(honest, tx, node)
    assert len(_asked(flooder)) == PEER_IN_FLIGHT  # still nothing more of the flooder
    for peer in (flooder, honest):
        await peer.close()


async def test_a_transaction_is_asked_of_the_next_announcer_when_the_first_fails(node):
    """NOTFOUND from the first announcer, or its leaving, sends the request to the next
    peer that announced the transaction."""
    first, second, third = [await connected_peer(node) for _ in range(3)]
    tx0, tx1 = (transfer(ALICE, BOB, 500 + n, n, chain_id=MID.chain_id) for n in range(2))
    for tx in (tx0, tx1):
        await first.send(Inv((InvItem(INV_TX, tx.txid),)))
        await first.wait_for(lambda tx=tx: _asked(first, tx.txid), FAST)
        for spare in (second, third):
            await spare.send(Inv((InvItem(INV_TX, tx.txid),)))
            await spare.sync()
    assert not _asked(second) and not _asked(third)
    await first.send(NotFound((InvItem(INV_TX, tx0.txid),)))
    await _deliver(second, tx0, node)
    await first.close()  # leaves with tx1 unanswered
    await _deliver(second, tx1, node)
    assert not _asked(third)
    for peer in (second, third):
        await peer.close()
