"""A real in-process Node against scripted wire-protocol peers and its RPC.

The node runs on the "MID" devnet of the consensus tests (one attempt finds a
block), so blocks for gossip tests are mined for real in milliseconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from numba.core.compiler_lock import global_compiler_lock

from consensus.blocks import Block
from consensus.keys import address_to_text
from consensus.market import job_id_of
from consensus.pow import Job, null_job
from consensus.transactions import JobPostPayload, Transaction, encode_tx
from node.app import INV_BLOCK, INV_CMPCT, INV_TX, Node
from node.chain_service import ChainChange
from node.config import NodeConfig
from node.net.wire import (
    BlockBody,
    BlockMsg,
    BlockTxn,
    CompactBlock,
    GetBlockTxn,
    GetData,
    Headers,
    Inv,
    InvItem,
    InvKind,
    TxMsg,
)
from node.relay import compact as compact_module
from tests.support import claimkit as jr
from tests.support.chainkit import (
    ALICE,
    BOB,
    CAROL,
    MID,
    new_chain,
    next_block,
    remine,
    second_winner,
    transfer,
)
from tests.support.nodekit import connected_peer, rpc_call
from tests.support.p2p_testkit import TestPeer

_rng = np.random.default_rng(1515)


def _block_for(node: Node, txs: tuple[Transaction, ...] = ()) -> Block:
    """A valid next block for the node's tip, mined on a private copy of its chain."""
    chain, clock = new_chain()
    # The copy's clock starts at the tip's time, so a long chain is not "in the future".
    clock.now = max(clock.now, node.chain.tip.header.timestamp_ms)
    for h in node.chain.active[1:]:
        chain.add_block(node.chain.blocks[h])
    return next_block(chain, clock, txs)


def _compact(block: Block) -> CompactBlock:
    return CompactBlock(block.header, tuple(tx.txid for tx in block.txs))


async def test_transaction_gossip_is_requested_relayed_and_never_echoed(node):
    a, b = await connected_peer(node), await connected_peer(node)
    tx = transfer(ALICE, BOB, 500, 0, chain_id=MID.chain_id)
    await a.send(Inv((InvItem(INV_TX, tx.txid),)))
    getdata = await a.wait_for_message(GetData)
    assert getdata.items == (InvItem(INV_TX, tx.txid),)
    await a.send(TxMsg(tx))
    await b.wait_for(
        lambda: any(isinstance(m, Inv) and m.items[0].hash == tx.txid for m in b.received)
    )
    assert tx.txid in node.mempool
    await a.sync()
    assert not any(isinstance(m, Inv) for m in a.received), "the tx was echoed to its sender"
    await a.close()
    await b.close()


async def test_a_block_at_the_tip_is_rebuilt_from_the_mempool_and_relayed(node):
    """An announced block is asked for as a compact block (header + txids); the node
    takes what its mempool holds, asks only for the missing transaction, connects
    the block and pushes it, compact, to its other peer."""
    a, b = await connected_peer(node), await connected_peer(node)
    held = transfer(ALICE, BOB, 500, 0, chain_id=MID.chain_id)
    lacked = transfer(BOB, ALICE, 700, 0, chain_id=MID.chain_id)
    await rpc_call(node, "sendtransaction", encode_tx(held).hex())
    block = _block_for(node, (held, lacked))
    await a.send(Inv((InvItem(INV_BLOCK, block.hash),)))
    getdata = await a.wait_for_message(GetData)
    assert getdata.items == (InvItem(INV_CMPCT, block.hash),)
    await a.send(_compact(block))
    ask = await a.wait_for_message(GetBlockTxn)
    assert ask == GetBlockTxn(block.hash, (block.txs.index(lacked),))
    await a.send(BlockTxn(block.hash, (lacked,)))
    assert await b.wait_for_message(CompactBlock) == _compact(block)  # pushed, unasked
    assert node.chain.tip.hash == block.hash and node.chain.height == 1
    assert node.compact.stats.as_dict() == {
        "received": 1, "pushed": 0, "complete": 0, "behind": 0, "txs_fetched": 1,
        "late": 0, "served": 1,
    }  # fmt: skip
    await a.sync()
    assert not any(isinstance(m, CompactBlock) for m in a.received), "echoed to its sender"
    # b asks for the transactions it lacks, and for the block again by GETDATA.
    await b.send(GetBlockTxn(block.hash, (0, 1)))
    assert (await b.wait_for_message(BlockTxn)).txs == block.txs
    await b.send(GetData((InvItem(INV_CMPCT, block.hash),)))
    await b.wait_for(lambda: sum(isinstance(m, CompactBlock) for m in b.received) == 2)
    await a.close()
    await b.close()


async def test_a_peer_that_never_answers_getblocktxn_does_not_hold_the_block_back(node):
    """Peer a pushes a compact block first and never sends the transaction it lacks;
    peer b pushes the same block: b is asked too and its answer connects the block at
    once, not when a's request expires (10 s). a's late answer is forgiven, not banned."""
    a, b, c = [await connected_peer(node) for _ in range(3)]
    lacked = transfer(BOB, ALICE, 700, 0, chain_id=MID.chain_id)
    block = _block_for(node, (lacked,))
    await a.send(_compact(block))
    assert await a.wait_for_message(GetBlockTxn) == GetBlockTxn(block.hash, (0,))
    started = time.monotonic()
    await b.send(_compact(block))
    assert await b.wait_for_message(GetBlockTxn) == GetBlockTxn(block.hash, (0,))
    await b.send(BlockTxn(block.hash, (lacked,)))
    assert await c.wait_for_message(CompactBlock) == _compact(block)  # connected, pushed
    assert time.monotonic() - started < compact_module.REQUEST_TIMEOUT_S
    assert node.chain.tip.hash == block.hash
    await a.send(BlockTxn(block.hash, (lacked,)))  # late: the block came through b
    await a.sync()
    assert node.compact.stats.late == 1 and node.compact.partials == {}
    assert node.p2p.bans() == [] and node.chain.height == 1
    for peer in (a, b, c):
        await peer.close()


async def test_a_block_whose_transactions_are_all_here_needs_no_round_trip(node):
    a = await connected_peer(node)
    tx = transfer(ALICE, BOB, 500, 0, chain_id=MID.chain_id)
    await rpc_call(node, "sendtransaction", encode_tx(tx).hex())
    block = _block_for(node, (tx,))
    await a.send(Inv((InvItem(INV_BLOCK, block.hash),)))
    await a.wait_for_message(GetData)
    await a.send(_compact(block))
    await a.sync()
    assert node.chain.tip.hash == block.hash and tx.txid not in node.mempool
    assert not any(isinstance(m, GetBlockTxn) for m in a.received)
    await a.close()


@pytest.mark.parametrize(
    ("cheat", "reason"),
    [
        ("bad proof", "compact block: proof: Merkle branch of row"),
        ("txids", "txids are not the ones tx_root commits to"),
        ("wrong tx", "blocktxn: transaction 0 is not the one the block names"),
        ("short answer", "blocktxn: 0 transactions for 1 asked"),
        ("bad index", "getblocktxn: index 5 is past the block's last, 0"),
    ],
)
async def test_a_peer_that_cheats_on_compact_blocks_is_banned(node, cheat, reason):
    a = await connected_peer(node)
    tx = transfer(ALICE, BOB, 500, 0, chain_id=MID.chain_id)
    block = _block_for(node, (tx,))
    if cheat == "bad index":
        node.chain.add_block(block)
        await a.send(GetBlockTxn(block.hash, (5,)))
    elif cheat == "bad proof":  # pushed unasked, with a proof that does not hold
        proof = dataclasses.replace(
            block.header.proof, a_rows=bytes(len(block.header.proof.a_rows))
        )
        await a.send(_compact(Block(dataclasses.replace(block.header, proof=proof), block.txs)))
    else:
        await a.send(Inv((InvItem(INV_BLOCK, block.hash),)))
        await a.wait_for_message(GetData)
        if cheat == "txids":
            await a.send(CompactBlock(block.header, (bytes(32),)))
        else:
            await a.send(_compact(block))
            await a.wait_for_message(GetBlockTxn)
            other = transfer(ALICE, BOB, 501, 0, chain_id=MID.chain_id)
            await a.send(BlockTxn(block.hash, (other,) if cheat == "wrong tx" else ()))
    closed = await a.wait_for_close()
    assert closed is not None and reason in closed
    assert node.chain.height == (1 if cheat == "bad index" else 0)
    assert any(reason in b["reason"] for b in node.p2p.bans())


async def test_unrequested_block_gets_the_peer_banned(node):
    a = await connected_peer(node)
    await a.send(BlockMsg(_block_for(node)))
    reason = await a.wait_for_close()
    assert reason is not None and "unrequested block" in reason
    assert any("unrequested block" in b["reason"] for b in node.p2p.bans())
    assert node.chain.height == 0


async def test_a_block_announced_twice_is_asked_for_once_and_its_sender_stays(node):
    """An inv and then a header for the same block: one GetData, one block, no ban
    (a second request would draw a second copy, which is unrequested)."""
    a = await connected_peer(node)
    block = _block_for(node)
    await a.send(Inv((InvItem(INV_BLOCK, block.hash),)))
    await a.wait_for_message(GetData)
    await a.send(Headers((block.header,)))
    await a.sync()
    asks = [
        m
        for m in a.received
        if isinstance(m, GetData) and any(i.hash == block.hash for i in m.items)
    ]
    assert len(asks) == 1
    await a.send(_compact(block))
    await a.sync()
    assert node.chain.height == 1
    assert node.p2p.bans() == [] and not a.closed.is_set()
    await a.close()


async def test_invalid_block_gets_the_peer_banned_and_changes_nothing(node):
    """A compact block whose rebuilt body breaks a rule (here the coinbase claims
    one unit too many, with a valid proof of work) is refused like a whole one."""
    a = await connected_peer(node)
    tx = transfer(ALICE, BOB, 5, 0, chain_id=MID.chain_id)
    good = _block_for(node, (tx,))
    header = dataclasses.replace(good.header, reward=good.header.reward + 1)
    bad = Block(remine(header, null_job(header.prev_hash, MID)), good.txs)
    before = node.chain.state.snapshot()
    await a.send(Inv((InvItem(INV_BLOCK, bad.hash),)))
    await a.wait_for_message(GetData)
    await a.send(_compact(bad))
    await a.wait_for_message(GetBlockTxn)
    await a.send(BlockTxn(bad.hash, bad.txs))
    reason = await a.wait_for_close()
    assert reason is not None and "coinbase claims" in reason
    assert node.chain.height == 0 and any("invalid block" in b["reason"] for b in node.p2p.bans())
    assert node.chain.state.snapshot() == before


async def test_a_node_that_just_banned_a_peer_stops_at_once(tmp_path):
    """Stopping must not wait out its grace period for its own connector: on Python 3.11
    ``asyncio.wait_for`` dropped the cancel that landed as the ban woke the connector, and
    every stop after a ban took 3 s."""
    n = Node(NodeConfig(params=MID, datadir=tmp_path / "node"))
    await n.start()
    try:
        a = await connected_peer(n)
        good = _block_for(n)
        header = dataclasses.replace(good.header, reward=good.header.reward + 1)
        bad = Block(remine(header, null_job(header.prev_hash, MID)), good.txs)
        await a.send(Inv((InvItem(INV_BLOCK, bad.hash),)))
        await a.wait_for_message(GetData)
        await a.send(_compact(bad))
        reason = await a.wait_for_close()
        assert reason is not None and "coinbase claims" in reason
    finally:
        started = time.monotonic()
        await n.stop()
    assert time.monotonic() - started < n.p2p.limits.close_timeout


async def test_rpc_methods_errors_and_auth(node):
    info = await rpc_call(node, "getinfo", token=False)
    assert info["result"]["height"] == 0 and info["result"]["network"] == MID.name
    tx = transfer(ALICE, BOB, 77, 0, chain_id=MID.chain_id)
    denied = await rpc_call(node, "sendtransaction", encode_tx(tx).hex(), token=False)
    assert denied["error"]["code"] == -32001
    ok = await rpc_call(node, "sendtransaction", encode_tx(tx).hex())
    assert ok["result"] == tx.txid.hex()
    again = await rpc_call(node, "gettransaction", tx.txid.hex())
    assert again["result"]["confirmations"] == 0
    account = await rpc_call(node, "getaccount", "pw" + ALICE.address.hex())
    assert account["result"]["next_nonce"] == 1
    replay = transfer(ALICE, BOB, 77, 0, chain_id=MID.chain_id + 1)
    refused = await rpc_call(node, "sendtransaction", encode_tx(replay).hex())
    assert refused["error"]["code"] == -32002 and "replay" in refused["error"]["message"]
    assert (await rpc_call(node, "nosuch"))["error"]["code"] == -32601
    assert (await rpc_call(node, "getblockbyheight", -1))["error"]["code"] == -32602
    assert (await rpc_call(node, "sendtransaction", "zz"))["error"]["code"] == -32602
    assert (await rpc_call(node, "", raw=b"{not json"))["error"]["code"] == -32700
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{node.rpc_port}/metrics") as r,
    ):
        text = await r.text()
    assert "pouw_height 0.0" in text and 'pouw_txs_total{outcome="accepted"} 1.0' in text


async def test_websocket_subscribers_hear_about_new_blocks(node):
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"http://127.0.0.1:{node.rpc_port}/ws") as ws,
    ):
        await ws.send_str("ping")
        assert json.loads((await ws.receive(timeout=5)).data)["event"] == "pong"
        block = _block_for(node)
        await node.process_block(block, source=None)
        event = json.loads((await ws.receive(timeout=5)).data)
        assert event == {"event": "block", "hash": block.hash.hex(), "height": 1, "txs": 0}


async def test_a_websocket_subscriber_that_does_not_read_is_dropped_not_buffered(node, monkeypatch):
    """Events for a /ws subscriber wait in a queue of at most WS_QUEUE_BYTES; one that
    stops reading while events keep coming is closed instead of being buffered without
    bound (a stalled one held ~15 MB a minute), and a reading one is not disturbed."""
    from node.rpc import server

    monkeypatch.setattr(server, "WS_QUEUE_BYTES", 256 * 1024)
    url = f"http://127.0.0.1:{node.rpc_port}/ws"
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as stalled:
        await stalled.send_str("ping")
        assert json.loads((await stalled.receive(timeout=5)).data)["event"] == "pong"
        (sub,) = node.rpc.subscribers.values()
        most = 0
        for i in range(400):  # 50 MB of events, far past every socket buffer
            node.rpc.notify({"event": "test", "i": i, "pad": "x" * 128 * 1024})
            most = max(most, sub.queued_bytes)
            await asyncio.sleep(0)
            if not node.rpc.subscribers:
                break
        assert node.rpc.subscribers == {}, "the stalled subscriber was dropped"
        assert most <= 256 * 1024
    async with aiohttp.ClientSession() as s, s.ws_connect(url) as reader:
        await reader.send_str("ping")
        assert json.loads((await reader.receive(timeout=5)).data)["event"] == "pong"
        node.rpc.notify({"event": "test", "i": 0})
        assert json.loads((await reader.receive(timeout=5)).data) == {"event": "test", "i": 0}


async def test_getblocktimes_with_txids_lists_only_the_newest_blocks_up_to_the_cap(
    node, monkeypatch
):
    """``getblocktimes(count, true)`` lists every txid of the blocks it returns: on a long
    chain one call built a 47 MB reply on the event loop. It returns only as many of
    the newest blocks as hold MAX_REPLY_TXIDS transactions (whole blocks)."""
    from node.rpc import methods

    monkeypatch.setattr(methods, "MAX_REPLY_TXIDS", 3)
    blocks = []
    for nonce in range(3):  # blocks of 2 transfers each
        txs = (transfer(ALICE, BOB, 1, 2 * nonce), transfer(ALICE, BOB, 1, 2 * nonce + 1))
        blocks.append(_block_for(node, txs))
        await node.process_block(blocks[-1], source=None)
    reply = (await rpc_call(node, "getblocktimes", 10, True))["result"]
    assert [b["height"] for b in reply["active"]] == [3]  # 2 txids; one more block: 4 > 3
    assert reply["active"][0]["txids"] == [t.txid.hex() for t in blocks[-1].txs]
    without = (await rpc_call(node, "getblocktimes", 10, False))["result"]
    assert [b["height"] for b in without["active"]] == [0, 1, 2, 3]


async def test_transactions_and_public_keys_are_found_by_index_across_restarts(
    tmp_path, monkeypatch
):
    """``gettransaction`` and ``getpublickey`` scanned every block from the tip on the
    event loop (~0.2 s a call with ~690k transactions on chain). They use an index
    built at start and kept by every chain change, a reorg included."""
    cfg = NodeConfig(params=MID, datadir=tmp_path / "n")
    n = Node(cfg)
    await n.start()
    tx = transfer(ALICE, BOB, 5, 0)
    try:
        first = _block_for(n, (tx,))
        await n.process_block(first, source=None)
        await n.process_block(_block_for(n), source=None)
    finally:
        await n.stop()
    n = Node(cfg)
    await n.start()
    try:
        found = (await rpc_call(n, "gettransaction", tx.txid.hex()))["result"]
        assert (found["height"], found["confirmations"], found["block"]) == (
            1,
            2,
            first.hash.hex(),
        )
        key = (await rpc_call(n, "getpublickey", address_to_text(ALICE.address)))["result"]
        assert key == ALICE.public_key.hex()

        def no_scan(height: int) -> Block:
            raise AssertionError(f"block {height} was read for an unknown id")

        monkeypatch.setattr(n.chain, "block_at", no_scan)
        unknown = await rpc_call(n, "gettransaction", "ab" * 32)
        assert "unknown transaction" in unknown["error"]["message"]
        nokey = await rpc_call(n, "getpublickey", address_to_text(CAROL.address))
        assert "has not sent a transaction" in nokey["error"]["message"]
        monkeypatch.undo()

        # A reorg that takes the block away takes its transaction and key with it.
        n.txindex.chain_changed(ChainChange(connected=(), disconnected=(first,)))
        assert n.txindex.height_of(tx.txid) is None
        assert n.txindex.public_key(ALICE.address) is None
        n.txindex.chain_changed(ChainChange(connected=(first,), disconnected=()))
        assert n.txindex.height_of(tx.txid) == 1
    finally:
        await n.stop()


async def test_restart_keeps_the_chain(tmp_path):
    cfg = NodeConfig(params=MID, datadir=tmp_path / "n")
    n = Node(cfg)
    await n.start()
    block = _block_for(n)
    await n.process_block(block, source=None)
    await n.stop()
    n2 = Node(cfg)
    await n2.start()
    try:
        assert n2.chain.tip.hash == block.hash
    finally:
        await n2.stop()


async def test_a_node_far_behind_syncs_with_a_progress_bar(tmp_path):
    """60 blocks behind: headers first, blocks from the peer, a bar drawn, then done."""
    chain, clock = new_chain()
    blocks = [next_block(chain, clock) for _ in range(1)]
    chain.add_block(blocks[0])
    for _ in range(59):
        b = next_block(chain, clock)
        chain.add_block(b)
        blocks.append(b)
    source = Node(NodeConfig(params=MID, datadir=tmp_path / "source"))
    await source.start()
    try:
        for b in blocks:
            await source.process_block(b, source=None)
        far = Node(
            NodeConfig(
                params=MID,
                datadir=tmp_path / "far",
                peers=[("127.0.0.1", source.p2p_port)],
                progress=True,
            )
        )
        await far.start()
        try:

            async def synced() -> None:
                while far.chain.height < 60:
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(synced(), 60)
            assert far.chain.tip.hash == blocks[-1].hash
            state = far.sync_progress.state()
            assert state["syncing"] is False and state["target"] == 60
            assert far.sync_progress.bars_drawn == 1
        finally:
            await far.stop()
    finally:
        await source.stop()


async def test_two_connected_nodes_each_stop_at_once(tmp_path):
    """When one node stops, its peer redials it at once: a node must stop listening before
    it closes its sessions, or that dial reaches a server that is draining and holds both
    nodes until the handshake times out (10 s)."""
    first = Node(NodeConfig(params=MID, datadir=tmp_path / "first"))
    await first.start()
    try:
        second = Node(
            NodeConfig(
                params=MID, datadir=tmp_path / "second", peers=[("127.0.0.1", first.p2p_port)]
            )
        )
        await second.start()
        try:

            async def connected() -> None:
                while not (first.p2p.peers and second.p2p.peers):
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(connected(), 30)
        finally:
            started = time.monotonic()
            await second.stop()
            second_took = time.monotonic() - started
    finally:
        started = time.monotonic()
        await first.stop()
        first_took = time.monotonic() - started
    limit = first.p2p.limits.close_timeout
    assert second_took < limit and first_took < limit, (second_took, first_took)


async def test_sendtransactions_takes_a_batch_and_answers_each(node):
    good = [transfer(ALICE, BOB, 5, n, chain_id=MID.chain_id) for n in range(3)]
    gap = transfer(ALICE, BOB, 5, 9, chain_id=MID.chain_id)  # nonce 9 after 0..2
    batch = [encode_tx(t).hex() for t in good] + ["zz", encode_tx(gap).hex()]
    out = (await rpc_call(node, "sendtransactions", batch))["result"]
    assert [o.get("txid") for o in out[:3]] == [t.txid.hex() for t in good]
    assert "not hex" in out[3]["error"] and "nonce" in out[4]["error"]
    assert all(t.txid in node.mempool for t in good) and gap.txid not in node.mempool
    too_many = await rpc_call(node, "sendtransactions", ["00"] * 1001)
    assert "at most 1000" in too_many["error"]["message"]
    denied = await rpc_call(node, "sendtransactions", batch[:1], token=False)
    assert denied["error"]["code"] == -32001


async def test_transactions_travel_in_batches_both_ways(node):
    from consensus.encoding import encode_record
    from node.net.wire import TxsMsg, encode_message

    a, b = await connected_peer(node), await connected_peer(node)
    txs = tuple(transfer(ALICE, BOB, 5, n, chain_id=MID.chain_id) for n in range(3))
    assert encode_message(TxsMsg(txs))[3:] == encode_record(TxsMsg(txs))[1:]  # fast path
    await a.send(Inv(tuple(InvItem(INV_TX, t.txid) for t in txs)))
    await a.wait_for_message(GetData)
    await a.send(TxsMsg(txs))  # one frame answers the whole GETDATA
    await a.sync()
    await b.wait_for(lambda: all(t.txid in node.mempool for t in txs))
    await b.send(GetData(tuple(InvItem(INV_TX, t.txid) for t in txs)))
    got = await b.wait_for_message(TxsMsg)
    assert got.txs == txs
    # A batch may not smuggle in a transaction nobody asked for.
    extra = transfer(BOB, ALICE, 1, 0, chain_id=MID.chain_id)
    await a.send(TxsMsg((extra,)))
    reason = await a.wait_for_close()
    assert reason is not None and "unrequested transaction" in reason
    await b.close()


async def test_a_new_tip_pushed_by_a_peer_connects_without_a_request(node):
    a = await connected_peer(node)
    tx = transfer(ALICE, BOB, 500, 0, chain_id=MID.chain_id)
    await rpc_call(node, "sendtransaction", encode_tx(tx).hex())
    block = _block_for(node, (tx,))
    await a.send(_compact(block))
    await a.sync()
    assert node.chain.tip.hash == block.hash
    assert node.compact.stats.pushed == 1 and node.p2p.bans() == []
    assert not any(isinstance(m, GetData) for m in a.received)
    await a.close()


async def test_catching_up_fetches_block_bodies_and_refuses_one_its_header_does_not_commit(node):
    """Headers first: the node holds the headers, so it asks only for the blocks'
    transactions. A body the header does not commit to gets its sender banned and
    poisons nothing: the right body, from another peer, connects the block."""
    chain, clock = new_chain()
    tx = transfer(ALICE, BOB, 5, 0, chain_id=MID.chain_id)
    blocks = [next_block(chain, clock, (tx,))]
    chain.add_block(blocks[0])
    blocks.append(next_block(chain, clock))
    chain.add_block(blocks[1])
    headers = Headers(tuple(b.header for b in blocks))
    wanted = {InvItem(InvKind.BODY, b.hash) for b in blocks}

    cheat = await connected_peer(node)
    await cheat.send(headers)
    assert set((await cheat.wait_for_message(GetData)).items) == wanted
    other = transfer(ALICE, CAROL, 5, 0, chain_id=MID.chain_id)
    await cheat.send(BlockBody(blocks[0].hash, (other,)))
    reason = await cheat.wait_for_close()
    assert reason is not None and "tx_root does not commit" in reason
    assert node.chain.height == 0

    honest = await connected_peer(node)
    await honest.send(headers)
    assert set((await honest.wait_for_message(GetData)).items) == wanted
    for b in blocks:
        await honest.send(BlockBody(b.hash, b.txs))
    await honest.sync()
    assert node.chain.tip.hash == blocks[-1].hash
    assert not any(isinstance(m, BlockMsg) for m in honest.received)

    await honest.send(BlockBody(blocks[0].hash, blocks[0].txs))  # asked for once, sent twice
    reason = await honest.wait_for_close()
    assert reason is not None and "unrequested block body" in reason


async def test_a_compact_block_of_held_transactions_in_the_wrong_order_is_refused(node):
    """All its transactions are in the mempool, so no GETBLOCKTXN: the chain's own
    commitment check refuses the reordered list, bans the sender and keeps nothing,
    and the honest compact block still connects."""
    first = transfer(ALICE, BOB, 500, 0, chain_id=MID.chain_id)
    second = transfer(BOB, ALICE, 700, 0, chain_id=MID.chain_id)
    for tx in (first, second):
        await rpc_call(node, "sendtransaction", encode_tx(tx).hex())
    block = _block_for(node, (first, second))
    cheat = await connected_peer(node)
    await cheat.send(CompactBlock(block.header, (second.txid, first.txid)))
    reason = await cheat.wait_for_close()
    assert reason is not None and "tx_root does not commit" in reason
    assert node.chain.height == 0 and not node.chain.contains(block.hash)
    honest = await connected_peer(node)
    await honest.send(_compact(block))
    await honest.sync()
    assert node.chain.tip.hash == block.hash
    await honest.close()


def _mentions(peer: TestPeer, block_hash: bytes) -> bool:
    """Whether the node told ``peer`` about this block, by inv or compact block."""
    for m in peer.received:
        if isinstance(m, Inv) and any(i.hash == block_hash for i in m.items):
            return True
        if isinstance(m, CompactBlock) and m.header.hash == block_hash:
            return True
    return False


async def _refused(node: Node, cheat: TestPeer, watcher: TestPeer, bad: Block, reason: str) -> None:
    """``cheat`` is banned for ``bad``, which is neither kept nor relayed to ``watcher``."""
    closed = await cheat.wait_for_close()
    assert closed is not None and re.search(reason, closed), closed
    assert any(re.search(reason, b["reason"]) for b in node.p2p.bans())
    assert not node.chain.contains(bad.hash) and bad.hash not in node.chain.blocks
    await watcher.sync()
    assert not _mentions(watcher, bad.hash), "the refused block was relayed"


@pytest.mark.parametrize("path", ["cmpctblock", "block", "headers"])
async def test_a_block_with_a_replaced_result_root_is_refused_and_its_sender_banned(node, path):
    """Someone takes a block and changes only its result_root: the tickets change with
    it, so the proof of work fails, whichever way the copy comes."""
    watcher = await connected_peer(node)
    chain, clock = new_chain()
    first = next_block(chain, clock)
    chain.add_block(first)
    second = next_block(chain, clock)
    variant = Block(dataclasses.replace(first.header, result_root=bytes(range(32))), ())
    cheat = await connected_peer(node)
    if path == "cmpctblock":  # the tip and its variant, both pushed unasked
        await cheat.send(_compact(first))
        await cheat.sync()
        assert node.chain.tip.hash == first.hash
        await cheat.send(_compact(variant))
    elif path == "headers":
        await cheat.send(Headers((variant.header,)))
    else:  # catching up, the node asks for whole blocks: the variant is one of them
        await cheat.send(Headers((first.header, second.header)))
        await cheat.wait_for_message(GetData)
        await cheat.send(Inv((InvItem(INV_BLOCK, variant.hash),)))
        await cheat.wait_for(
            lambda: any(
                isinstance(m, GetData) and InvItem(INV_BLOCK, variant.hash) in m.items
                for m in cheat.received
            )
        )
        await cheat.send(BlockMsg(variant))
    await _refused(
        node, cheat, watcher, variant, "ticket is above the target|null-job block must be zero"
    )
    await watcher.close()


async def test_a_second_block_from_the_same_proof_of_work_gets_its_sender_banned(node):
    """Another winning tile of the attempt that made a block the node holds: a valid
    proof of work, but not a second block. (Every path a peer's block takes ends in
    ``process_block``; a block on an unknown parent is no longer kept as an orphan,
    see tests/node/test_headersync.py, so the compact path is the one to attack.)"""
    watcher = await connected_peer(node)
    chain, clock = new_chain()
    parent = next_block(chain, clock)
    chain.add_block(parent)
    block = next_block(chain, clock)
    twin = second_winner(block)
    cheat = await connected_peer(node)
    for b in (parent, block, twin):  # on the node's tip: connected, then its twin pushed
        await cheat.send(_compact(b))
        if b is not twin:
            await cheat.sync()
    assert node.chain.tip.hash == block.hash
    await _refused(node, cheat, watcher, twin, "duplicate proof of work")
    await watcher.close()


async def test_a_branch_built_on_a_twin_is_followed_and_its_sender_kept(node):
    """The node holds a block; a peer whose half of the network took the block's twin
    and built on it sends that branch, headers first: the twin is needed, so it is
    taken (no ban) and the heavier branch becomes the tip."""
    chain, clock = new_chain()
    other, other_clock = new_chain()
    block = next_block(chain, clock)
    twin = second_winner(block)
    other.add_block(twin)
    other_clock.now = clock.now
    child = next_block(other, other_clock)
    first = await connected_peer(node)
    await first.send(_compact(block))
    await first.sync()
    assert node.chain.tip.hash == block.hash
    peer = await connected_peer(node)
    await peer.send(Headers((twin.header, child.header)))
    wanted = {InvItem(InvKind.BODY, b.hash) for b in (twin, child)}
    assert set((await peer.wait_for_message(GetData)).items) == wanted
    for b in (twin, child):
        await peer.send(BlockBody(b.hash, b.txs))
    await peer.sync()
    assert node.chain.tip.hash == child.hash and node.chain.is_active(twin.hash)
    assert node.p2p.bans() == [] and not peer.closed.is_set()
    await first.close()
    await peer.close()


async def test_getjob_shows_the_bond_the_pending_claim_and_then_the_claim(node):
    """A user sees what claiming an open job costs and who holds it, through RPC."""
    await node.process_block(_block_for(node, (jr.tx(ALICE, 0, jr.POST),)), None)
    job = (await rpc_call(node, "getjob", jr.JOB_ID.hex()))["result"]
    assert (job["status"], job["claim_bond"], job["pending_claim"]) == ("open", jr.BOND, None)
    first = jr.claim(BOB, 0, (jr.JOB_ID, jr.C))
    assert (await rpc_call(node, "sendtransaction", encode_tx(first).hex()))["result"]
    job = (await rpc_call(node, "getjob", jr.JOB_ID.hex()))["result"]
    assert job["pending_claim"] == first.txid.hex()
    rival = jr.claim(CAROL, 0, (jr.JOB_ID, jr.C))
    refused = await rpc_call(node, "sendtransaction", encode_tx(rival).hex())
    assert "is already claimed by pending transaction" in refused["error"]["message"]
    block = _block_for(node, (first,))
    await node.process_block(block, None)
    job = (await rpc_call(node, "getjob", jr.JOB_ID.hex()))["result"]
    assert "claim_bond" not in job and "pending_claim" not in job
    assert (job["status"], job["claimant"], job["claim_kind"], job["claim_id"]) == (
        "mined",
        address_to_text(BOB.address),
        "tx",
        first.txid.hex(),
    )
    assert (job["bond"], job["due"]) == (jr.BOND, block.header.height + MID.challenge_window)
    tx = (await rpc_call(node, "gettransaction", first.txid.hex()))["result"]
    assert tx["payload"] == {
        "claims": [{"job_id": jr.JOB_ID.hex(), "result_root": job["result_root"]}]
    }


def _min_shape_job() -> tuple[JobPostPayload, bytes, np.ndarray, np.ndarray, np.ndarray]:
    """A job of the network's minimum shape posted with jr.REWARD: (post, id, A, B, C)."""
    m, k, n = MID.min_job_shape
    a = _rng.integers(-64, 64, (m, k), dtype=np.int8)
    b = _rng.integers(-64, 64, (k, n), dtype=np.int8)
    spec = Job.from_operands(a, b, ALICE.address).spec  # ALICE posts it
    post = JobPostPayload(m, k, n, spec.root_a, spec.root_b, jr.REWARD, 40)
    c = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    return post, job_id_of(ALICE.address, post, MID), a, b, c


async def test_getmarket_and_pouw_market_show_open_jobs_claims_payments_and_fraud(node):
    """What `pouw market` answers, from a real node: which jobs are open and what they
    pay per GMAC, who claimed what and is due when, who was paid and whose fraud was caught."""
    from click.testing import CliRunner

    from consensus.market import build_fraud_proof
    from node.cli.main import cli

    (post1, job1, _, _, c1), (post2, job2, a2, b2, c2) = _min_shape_job(), _min_shape_job()

    async def market(limit: int = 100) -> dict:
        return (await rpc_call(node, "getmarket", limit))["result"]

    await node.process_block(
        _block_for(node, (jr.tx(ALICE, 0, post1), jr.tx(ALICE, 1, post2))), None
    )
    view = await market()
    assert view["jobs"]["open"] == 2 and view["recent_claims"] == []
    per_gmac = round(jr.REWARD * 1e9 / (512 * 256 * 512), 3)
    assert {
        (r["job_id"], r["fee"], r["fee_per_gmac"], r["expiry"], r["pending_claim"])
        for r in view["open_jobs"]
    } == {
        (job1.hex(), jr.REWARD, per_gmac, 40, None),
        (job2.hex(), jr.REWARD, per_gmac, 40, None),
    }
    honest = jr.claim(BOB, 0, (job1, c1))
    wrong_c2 = c2.copy()
    wrong_c2[1, 2] += 1
    cheat = jr.claim(CAROL, 0, (job2, wrong_c2))
    for t in (honest, cheat):
        assert (await rpc_call(node, "sendtransaction", encode_tx(t).hex()))["result"]
    pending = {r["job_id"]: r["pending_claim"] for r in (await market())["open_jobs"]}
    assert pending == {job1.hex(): honest.txid.hex(), job2.hex(): cheat.txid.hex()}

    claimed_at = node.chain.height + 1
    await node.process_block(_block_for(node, (honest, cheat)), None)
    view = await market()
    assert view["open_jobs"] == [] and view["jobs"]["mined"] == 2
    due = claimed_at + MID.challenge_window
    assert {
        (r["job_id"], r["claimant"], r["claim_kind"], r["bond"], r["due"])
        for r in view["pending_payment"]
    } == {
        (job1.hex(), address_to_text(BOB.address), "tx", jr.BOND, due),
        (job2.hex(), address_to_text(CAROL.address), "tx", jr.BOND, due),
    }
    assert view["claim_fee_per_gmac"] == {
        "count": 2,
        "min": per_gmac,
        "median": per_gmac,
        "max": per_gmac,
    }

    proof = build_fraud_proof(cheat.txid, job2, a2, b2, wrong_c2, 1, 2)
    await node.process_block(_block_for(node, (jr.tx(ALICE, 2, proof),)), None)
    while node.chain.height < due:
        await node.process_block(_block_for(node), None)
    view = await market()
    assert view["pending_payment"] == []
    [caught] = view["fraud_caught"]
    assert (caught["job_id"], caught["claimant"], caught["bond"]) == (
        job2.hex(),
        address_to_text(CAROL.address),
        jr.BOND,
    )
    [paid] = view["recent_payments"]
    assert (paid["job_id"], paid["claimant"], paid["due"]) == (
        job1.hex(),
        address_to_text(BOB.address),
        due,
    )
    assert len((await market(1))["recent_claims"]) == 1
    for bad in (0, 1001, "5"):
        assert (await rpc_call(node, "getmarket", bad))["error"]["code"] == -32602

    # The CLI shows the amounts in coins (8 decimals), as the wallet does; --base-units
    # shows base units, in its JSON too. The fee per GMAC is 7000 / 0.067108864.
    assert jr.REWARD == jr.BOND == 7_000
    where = ["--datadir", str(node.config.datadir)]
    shown = await asyncio.to_thread(CliRunner().invoke, cli, ["market", *where, "--json"])
    assert shown.exit_code == 0, shown.output
    [caught] = json.loads(shown.stdout)["fraud_caught"]
    amounts = ("fee", "bond", "fee_per_gmac")
    assert {k: caught.pop(k) for k in amounts} == dict(
        zip(amounts, ("0.00007000", "0.00007000", "0.00104308"), strict=True)
    )
    assert caught == {k: v for k, v in view["fraud_caught"][0].items() if k not in amounts}
    assert json.loads(shown.stdout)["claim_fee_per_gmac"]["median"] == "0.00104308"
    base = await asyncio.to_thread(
        CliRunner().invoke, cli, ["market", *where, "--json", "--base-units"]
    )
    [caught] = json.loads(base.stdout)["fraud_caught"]
    assert (caught["fee"], caught["bond"], caught["fee_per_gmac"]) == ("7000", "7000", "104308")
    text = await asyncio.to_thread(CliRunner().invoke, cli, ["market", *where])
    assert text.exit_code == 0, text.output
    assert "fraud caught (1)" in text.stdout and "recent payments (1)" in text.stdout
    assert address_to_text(CAROL.address) in text.stdout and "bond 0.00007000" in text.stdout
    assert "(amounts in coins)" in text.stdout


async def test_pouw_job_cancel_refunds_an_expired_job_and_refuses_before_expiry(node, tmp_path):
    """The poster gets the escrow back with one command, once the chain allows it."""
    from click.testing import CliRunner

    from node.cli.main import cli

    wallet = tmp_path / "alice.key"
    wallet.write_text("label:devnet-0")
    post, job_id, *_ = _min_shape_job()
    expiry = node.chain.height + 3
    post = dataclasses.replace(post, expiry_height=expiry)
    job_id = job_id_of(ALICE.address, post, MID)
    await node.process_block(_block_for(node, (jr.tx(ALICE, 0, post),)), None)
    balance = node.chain.state.balance(ALICE.address)
    args = ["job", "cancel", job_id.hex(), "--datadir", str(node.config.datadir)]
    args += ["--wallet", str(wallet), "--json"]

    early = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert early.exit_code == 2 and f"open until height {expiry}" in early.stderr
    assert len(node.mempool) == 0
    while node.chain.height < expiry:
        await node.process_block(_block_for(node), None)
    done = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert done.exit_code == 0, done.output
    cancel = node.mempool.get(bytes.fromhex(json.loads(done.stdout)["cancel_txid"]))
    assert cancel is not None
    await node.process_block(_block_for(node, (cancel,)), None)
    assert (await rpc_call(node, "getjob", job_id.hex()))["result"]["status"] == "cancelled"
    assert node.chain.state.balance(ALICE.address) == balance + jr.REWARD - cancel.fee
    again = await asyncio.to_thread(CliRunner().invoke, cli, args)
    assert again.exit_code == 2 and "is cancelled" in again.stderr


async def test_pouw_job_submit_takes_and_job_status_shows_the_reward_in_coins(node, tmp_path):
    """`--reward 0.0005` escrows 50,000 base units, as `wallet send` reads coins; `job
    status` shows the reward and the bond in coins, or in base units with --base-units."""
    from click.testing import CliRunner

    from node.cli.main import cli

    def pouw(*args: str):
        return CliRunner().invoke(cli, [*args, "--datadir", str(node.config.datadir)])

    wallet = tmp_path / "alice.key"
    wallet.write_text("label:devnet-0")
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, _rng.integers(-64, 64, (64, 128), dtype=np.int8))
    np.save(b, _rng.integers(-64, 64, (128, 32), dtype=np.int8))
    submit = ["job", "submit", "--a", str(a), "--b", str(b), "--wallet", str(wallet), "--json"]

    too_fine = await asyncio.to_thread(pouw, *submit, "--reward", "0.000000001")
    assert too_fine.exit_code == 2 and "--reward '0.000000001' has more than 8 decimals" in (
        too_fine.stderr
    )
    not_whole = await asyncio.to_thread(pouw, *submit, "--reward", "0.5", "--base-units")
    assert not_whole.exit_code == 2
    assert "--reward '0.5' is not a whole number of base units" in not_whole.stderr
    assert len(node.mempool) == 0  # nothing was sent

    done = await asyncio.to_thread(pouw, *submit, "--reward", "0.0005")
    assert done.exit_code == 0, done.output
    posted = json.loads(done.stdout)
    assert posted["reward"] == "0.00050000"
    post = node.mempool.get(bytes.fromhex(posted["txid"]))
    assert post is not None and post.payload.fee == 50_000  # the escrowed reward
    await node.process_block(_block_for(node, (post,)), None)

    text = await asyncio.to_thread(pouw, "job", "status", posted["job_id"][:12])
    assert text.exit_code == 0, text.output
    assert {"reward: 0.00050000", "claim_bond: 0.00050000"} <= set(text.stdout.splitlines())
    base = await asyncio.to_thread(
        pouw, "job", "status", posted["job_id"], "--base-units", "--json"
    )
    status = json.loads(base.stdout)
    assert (status["reward"], status["claim_bond"], status["status"]) == ("50000", "50000", "open")


async def test_the_loop_keeps_turning_while_the_null_job_waits_for_numba(node, monkeypatch):
    """Deriving the null job runs compiled kernels, and a call into Numba waits while any
    other thread compiles (a node's first start on a machine: its warm-up compiles for
    tens of seconds). The miner's work is made off the loop, so RPC and peers go on; a
    block that comes meanwhile moves the work to the new tip's null job."""
    import node.work as work_module

    block = _block_for(node)  # mined before the lock is held: mining loads kernels too

    hold_s = 2.0
    held, release = threading.Event(), threading.Event()

    def hold_the_compiler() -> None:
        with global_compiler_lock:
            held.set()
            release.wait(hold_s)

    def null_job_compiling(prev_hash: bytes, params: object) -> Job:
        with global_compiler_lock:  # as a first call does, to compile or load its kernels
            return null_job(prev_hash, params)  # type: ignore[arg-type]

    monkeypatch.setattr(work_module, "null_job", null_job_compiling)
    holder = threading.Thread(target=hold_the_compiler)
    holder.start()
    try:
        assert held.wait(5)
        started = time.monotonic()
        work = asyncio.create_task(node.work.work())
        await asyncio.sleep(0.05)  # the work starts and waits for the compiler
        assert time.monotonic() - started < hold_s / 2, "the loop stalled on Numba's lock"
        assert not work.done()
        await node.chain_service.process_block(block, None)  # the tip moves meanwhile
    finally:
        release.set()
        holder.join()
    async with asyncio.timeout(30):
        got = await work
    assert node.chain.tip.hash == block.hash
    assert got.template.prev_hash == block.hash
    assert got.job.null and got.job.spec == null_job(block.hash, MID).spec


async def _notice(node: Node) -> None:
    """Wait for the node's warm-up notice to finish (it ends with the warm-up)."""
    (task,) = [t for t in node._tasks if t.get_name() == "warm-up-notice"]
    async with asyncio.timeout(30):
        await task


async def test_a_first_start_that_compiles_the_kernels_says_so(tmp_path, monkeypatch, caplog):
    """A warm-up that outlasts loading is compiling: the node says why it is slow, and
    when it is done; one that only loads says nothing."""
    from node import app

    release = threading.Event()
    monkeypatch.setattr(app, "warm_up", lambda: release.wait(30))  # compiling until released
    monkeypatch.setattr(app, "COMPILING_NOTICE_S", 0.2)
    caplog.set_level("INFO", logger="pouw.node")
    n = Node(NodeConfig(params=MID, datadir=tmp_path / "slow"))
    await n.start()
    try:
        async with asyncio.timeout(10):
            while "compiling the kernels for this CPU" not in caplog.text:
                await asyncio.sleep(0.02)
        assert "kernels compiled in" not in caplog.text
        release.set()
        await _notice(n)
        assert "kernels compiled in" in caplog.text
    finally:
        release.set()
        await n.stop()

    caplog.clear()
    monkeypatch.setattr(app, "warm_up", lambda: None)
    n = Node(NodeConfig(params=MID, datadir=tmp_path / "quick"))
    await n.start()
    try:
        await _notice(n)
        assert "compiling" not in caplog.text and "kernels compiled" not in caplog.text
    finally:
        await n.stop()


async def test_a_block_that_comes_while_the_kernels_compile_waits_off_the_loop(
    tmp_path, monkeypatch
):
    """On a machine's first start the warm-up compiles the verifier's kernels for about a
    minute, and checking a proof meanwhile would wait on Numba's compiler lock: a peer's
    block waits for the warm-up instead of stalling the loop, then is taken."""
    from node import app
    from node.verifier import ProofOfWorkMemo

    compile_now, compiling, release = threading.Event(), threading.Event(), threading.Event()

    def compiling_warm_up() -> None:
        compile_now.wait(10)  # once the test has mined its block (that loads kernels too)
        with global_compiler_lock:
            compiling.set()
            release.wait(5)

    real_check = ProofOfWorkMemo.check

    def check_compiling(self: ProofOfWorkMemo, header: Any) -> int:
        with global_compiler_lock:  # as a first call does, to compile or load its kernels
            return real_check(self, header)

    monkeypatch.setattr(app, "warm_up", compiling_warm_up)
    monkeypatch.setattr(ProofOfWorkMemo, "check", check_compiling)
    n = Node(NodeConfig(params=MID, datadir=tmp_path / "node"))
    await n.start()
    try:
        a = await connected_peer(n)
        block = _block_for(n)
        compile_now.set()
        assert await asyncio.to_thread(compiling.wait, 5)
        await a.send(Inv((InvItem(INV_BLOCK, block.hash),)))
        await a.wait_for_message(GetData)
        await a.send(_compact(block))  # no transaction to fetch: checked on arrival
        gaps = []
        for _ in range(20):  # a second of the loop's life, the block arriving in it
            started = time.monotonic()
            await asyncio.sleep(0.05)
            gaps.append(time.monotonic() - started)
        assert max(gaps) < 0.5, f"the loop stalled {max(gaps):.1f} s on Numba's lock"
        assert n.chain.height == 0  # the block waits for the kernels
        release.set()
        async with asyncio.timeout(10):
            while n.chain.height != 1:
                await asyncio.sleep(0.02)
        assert n.chain.tip.hash == block.hash and n.p2p.bans() == []
        await a.close()
    finally:
        compile_now.set()
        release.set()
        await n.stop()
