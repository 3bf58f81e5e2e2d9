"""Headers-first sync against hostile peers: every header is checked on its parent, and
headers of a chain with no more work than ours are held only up to fixed bounds.

A real in-process Node on the "MID" devnet (one attempt finds a block), scripted
peers over real sockets (tests/support/p2p_testkit.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from consensus.blocks import Block, BlockHeader
from consensus.chain import Chain
from consensus.difficulty import MAX_TARGET
from consensus.keys import PrivateKey
from consensus.pow import null_job, verify_pow
from node.app import Node
from node.config import NodeConfig
from node.net import wire
from node.net.wire import (
    BlockBody,
    BlockMsg,
    CompactBlock,
    GetData,
    GetHeaders,
    Headers,
    Inv,
    InvItem,
    InvKind,
    NotFound,
    header_size_bound,
)
from node.relay import headersync
from tests.support.chainkit import ALICE, BOB, MID, Clock, extend, new_chain, next_block, remine
from tests.support.nodekit import connected_peer
from tests.support.nodekit import until as _until

pytestmark = pytest.mark.timeout(60)


def _private_copy(node: Node) -> tuple[Chain, Clock]:
    """The node's active chain, rebuilt on a chain of our own to mine on."""
    chain, clock = new_chain()
    for h in node.chain.active[1:]:
        chain.add_block(node.chain.blocks[h])
    clock.now = max(clock.now, node.chain.tip.header.timestamp_ms)
    return chain, clock


async def _with_blocks(node: Node, count: int) -> list[Block]:
    chain, clock = _private_copy(node)
    blocks = extend(chain, clock, count)
    for b in blocks:
        await node.process_block(b, source=None)
    assert node.chain.tip.hash == blocks[-1].hash
    return blocks


def _held(node: Node) -> int:
    """Headers the node holds without their blocks: queued and in presyncs."""
    return len(node.sync.pending) + node.sync.presync_held()


def _banned_for(node: Node, reason: str) -> bool:
    return any(reason in b["reason"] for b in node.p2p.bans())


def _not_syncing(node: Node) -> bool:
    return not node.sync.catching_up and node.sync_progress.state()["target"] == 0


async def test_a_header_claiming_the_easiest_target_is_refused_and_its_sender_banned(node):
    """The reported attack: a header at tip + 1 on the tip, target 2^256 − 1 and a real
    block's proof (which holds at that target). The node refuses it, bans the peer,
    does not start catching up, and goes on pushing new tips as compact blocks."""
    await _with_blocks(node, 2)
    tip = node.chain.tip.hash
    chain, clock = _private_copy(node)
    real = next_block(chain, clock)
    forged = dataclasses.replace(real.header, target=MAX_TARGET)
    verify_pow(forged, node.params)  # the proof alone does not tell it apart
    watcher = await connected_peer(node)
    attacker = await connected_peer(node)
    await attacker.send(Headers((forged,)))
    reason = await attacker.wait_for_close()
    assert reason is not None and "target does not follow ASERT" in reason
    assert _banned_for(node, "target does not follow ASERT")
    assert _not_syncing(node) and _held(node) == 0
    assert node.chain.tip.hash == tip and not node.chain.contains(forged.hash)

    # The honest block at that height is still taken, and pushed on as a compact block.
    honest = await connected_peer(node)
    await honest.send(CompactBlock(real.header, ()))
    await watcher.wait_for(
        lambda: any(
            isinstance(m, CompactBlock) and m.header == real.header for m in watcher.received
        )
    )
    assert node.chain.tip.hash == real.hash
    assert not any(isinstance(m, Inv) for m in watcher.received)
    for p in (watcher, honest):
        await p.close()


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("timestamp", "timestamp is not after the median of the last 11 blocks"),
        ("height", "height 7 is not parent height + 1"),
    ],
)
async def test_a_header_breaking_a_rule_with_a_valid_proof_gets_its_sender_banned(
    node, fault, reason
):
    await _with_blocks(node, 2)
    chain, clock = _private_copy(node)
    good = next_block(chain, clock).header
    if fault == "timestamp":
        bad = dataclasses.replace(good, timestamp_ms=node.chain.genesis.header.timestamp_ms)
    else:
        bad = dataclasses.replace(good, height=7)
    bad = remine(bad, null_job(bad.prev_hash, node.params))
    verify_pow(bad, node.params)  # only the rule named is broken
    attacker = await connected_peer(node)
    await attacker.send(Headers((bad,)))
    closed = await attacker.wait_for_close()
    assert closed is not None and reason in closed
    assert _banned_for(node, reason)
    assert _not_syncing(node) and _held(node) == 0 and node.chain.height == 2


async def test_headers_that_connect_to_nothing_are_not_kept_and_a_peer_that_persists_is_banned(
    node,
):
    chain, clock = new_chain()
    far = extend(chain, clock, 6)
    unconnected = Headers(tuple(b.header for b in far[3:]))
    attacker = await connected_peer(node)
    for n in range(headersync.MAX_UNCONNECTING_HEADERS):
        await attacker.send(unconnected)
        # Each is answered with our locator, and nothing is kept.
        await attacker.wait_for(lambda n=n: len(attacker.of_type(GetHeaders)) == n + 1)
        assert _held(node) == 0 and _not_syncing(node)
    await attacker.send(unconnected)
    reason = await attacker.wait_for_close()
    assert reason is not None and "do not connect to any block we know" in reason
    assert _held(node) == 0 and node.chain.height == 0


async def test_empty_or_known_headers_between_unconnecting_ones_do_not_clear_the_count(node):
    """An empty HEADERS (or one of headers the node holds) after every few unconnecting
    replies used to reset the count, so a peer could send 2,000-header replies that
    connect to nothing forever (96 % of a core, never banned); only new headers that
    connect clear it."""
    await _with_blocks(node, 2)
    chain, clock = new_chain()
    far = extend(chain, clock, 6)
    unconnected = Headers(tuple(b.header for b in far[3:]))
    known = Headers((node.chain.blocks[node.chain.active[1]].header,))
    attacker = await connected_peer(node)
    for n in range(headersync.MAX_UNCONNECTING_HEADERS):
        await attacker.send(unconnected)
        await attacker.wait_for(lambda n=n: len(attacker.of_type(GetHeaders)) == n + 1)
        await attacker.send(Headers(()) if n % 2 else known)
        await attacker.sync()
    await attacker.send(unconnected)
    reason = await attacker.wait_for_close()
    assert reason is not None and "do not connect to any block we know" in reason


@pytest.mark.parametrize("answers", [True, False], ids=["answers-empty", "never-answers"])
async def test_compact_blocks_on_unknown_parents_count_as_unconnecting(node, monkeypatch, answers):
    """Each costs the node a decode and a GETHEADERS; a peer that keeps sending them on
    parents nobody knows is banned like one sending unconnecting headers, whether it
    answers each GETHEADERS with nothing or never answers (then each ask waits out
    HEADERS_RESPONSE_S, shortened here, before the next compact block counts)."""
    if not answers:
        monkeypatch.setattr(headersync, "HEADERS_RESPONSE_S", 0.05)
    chain, clock = new_chain()
    far = extend(chain, clock, 3)
    forged = dataclasses.replace(far[2].header, target=MAX_TARGET)
    attacker = await connected_peer(node)
    for n in range(headersync.MAX_UNCONNECTING_HEADERS):
        await attacker.send(CompactBlock(dataclasses.replace(forged, timestamp_ms=n + 1), ()))
        await attacker.wait_for(lambda n=n: len(attacker.of_type(GetHeaders)) == n + 1)
        if answers:
            await attacker.send(Headers(()))
            await _until(lambda: node.sync.headers_asked == {})
        else:
            (asked_at,) = node.sync.headers_asked.values()
            await _until(lambda at=asked_at: headersync.monotonic() - at > 0.05)
    await attacker.send(CompactBlock(forged, ()))
    reason = await attacker.wait_for_close()
    assert reason is not None and "compact blocks" in reason and "do not connect" in reason
    assert _held(node) == 0 and node.chain.height == 0


async def test_a_branch_announced_faster_than_its_headers_come_does_not_ban_its_peer(node):
    """After a partition heals, a peer that reorganised pushes the new tips of its
    branch as compact blocks, more of them than MAX_UNCONNECTING_HEADERS, before our
    GETHEADERS reaches it: it is asked once (the headers on their way bring every
    parent), not banned, and the node syncs onto its heavier branch."""
    await _with_blocks(node, 2)
    chain, clock = new_chain()
    branch = extend(chain, clock, headersync.MAX_UNCONNECTING_HEADERS + 6, miner=ALICE)
    peer = await connected_peer(node)
    for block in branch[1:]:  # each on a parent the node has not seen
        await peer.send(CompactBlock(block.header, tuple(tx.txid for tx in block.txs)))
    await peer.sync()
    assert len(peer.of_type(GetHeaders)) == 1 and not peer.closed.is_set()
    await peer.send(Headers(tuple(b.header for b in branch)))
    asked = await peer.wait_for_message(GetData)
    assert {item.hash for item in asked.items} == {b.hash for b in branch}
    for block in branch:
        await peer.send(BlockBody(block.hash, block.txs))
    await _until(lambda: node.chain.tip.hash == branch[-1].hash)
    assert node.p2p.bans() == [] and not peer.closed.is_set()


async def test_a_tip_pushed_while_its_headers_were_on_their_way_is_asked_for_after_them(node):
    """A peer pushes a block on a parent we lack (we ask for headers), then its child
    before our ask reaches it: the answer ends at the first block, so the node asks
    again once it is in, and reaches the child instead of mining on a stale tip."""
    await _with_blocks(node, 2)
    chain, clock = new_chain()
    branch = extend(chain, clock, 5, miner=ALICE)
    by_hash = {b.hash: b for b in branch}
    peer = await connected_peer(node)
    for block in branch[3:]:
        await peer.send(CompactBlock(block.header, tuple(tx.txid for tx in block.txs)))
    await peer.sync()
    assert len(peer.of_type(GetHeaders)) == 1  # the second was pushed while we waited
    await peer.send(Headers(tuple(b.header for b in branch[:4])))  # as it stood when asked
    await peer.wait_for(lambda: len(peer.of_type(GetHeaders)) == 2)
    await peer.send(Headers((branch[4].header,)))
    served: set[bytes] = set()
    while len(served) < len(branch):
        asked = await peer.wait_for_message(GetData)
        peer.received.remove(asked)
        for item in asked.items:
            served.add(item.hash)
            await peer.send(BlockBody(item.hash, by_hash[item.hash].txs))
    await _until(lambda: node.chain.tip.hash == branch[-1].hash)
    assert node.p2p.bans() == [] and not peer.closed.is_set()


async def test_a_compact_block_on_an_unknown_parent_keeps_nothing_and_asks_for_headers(node):
    """Its header cannot be checked without its parent, and its proof holds at a made-up
    target of 2^256 − 1: the node keeps nothing, asks for headers (not for the whole
    block, which would be held as an orphan), and refuses the block sent anyway."""
    chain, clock = new_chain()
    far = extend(chain, clock, 3)
    forged = dataclasses.replace(far[2].header, target=MAX_TARGET)
    verify_pow(forged, node.params)
    attacker = await connected_peer(node)
    await attacker.send(CompactBlock(forged, ()))
    asked = await attacker.wait_for_message(GetHeaders)
    assert asked.locator == (node.chain.genesis.hash,)
    assert not attacker.of_type(GetData)
    assert not node.chain.contains(forged.hash) and _held(node) == 0
    await attacker.send(BlockMsg(Block(forged, ())))
    reason = await attacker.wait_for_close()
    assert reason is not None and "unrequested block" in reason
    assert not node.chain.contains(forged.hash) and node.chain.orphans == {}


async def test_a_whole_block_on_an_unknown_parent_is_not_kept_while_catching_up(node):
    """Catching up, the node asks for announced blocks whole; one whose parent it
    lacks (here with a free proof at a made-up target) is not held as an orphan: the
    node asks its sender for headers instead."""
    honest_chain, honest_clock = new_chain()
    ahead = extend(honest_chain, honest_clock, 3)
    honest = await connected_peer(node)
    await honest.send(Headers(tuple(b.header for b in ahead)))
    await honest.wait_for_message(GetData)  # their bodies, which it does not send
    assert node.sync.catching_up
    other, other_clock = new_chain()
    forged = dataclasses.replace(
        extend(other, other_clock, 3, miner=BOB)[2].header, target=MAX_TARGET
    )
    attacker = await connected_peer(node)
    await attacker.send(Inv((InvItem(InvKind.BLOCK, forged.hash),)))
    asked = await attacker.wait_for_message(GetData)
    assert asked.items == (InvItem(InvKind.BLOCK, forged.hash),)
    await attacker.send(BlockMsg(Block(forged, ())))
    await attacker.wait_for_message(GetHeaders)
    assert not node.chain.contains(forged.hash) and node.chain.orphans == {}
    for p in (honest, attacker):
        await p.close()


def _low_work_chain(chain: Chain, clock: Clock, count: int, miner: PrivateKey) -> list[BlockHeader]:
    """``count`` valid headers from genesis with the work of two real blocks and little
    more: blocks 1 and 2 have the genesis target (block 1 starts ASERT's clock), then
    every block comes ten half-lives late, so each target is (nearly) 2^256 − 1 and
    each header (nearly) free to mine."""
    late = 10 * chain.params.asert_half_life_ms
    out = []
    for i in range(count):
        b = next_block(chain, clock, miner=miner, step_ms=None if i == 0 else late)
        chain.add_block(b)
        out.append(b.header)
    return out


async def test_long_chains_with_less_work_than_ours_are_held_only_up_to_the_bounds(
    node, monkeypatch
):
    """Two peers send long chains of headers that pass every rule but never reach our
    tip's work, claiming more to come: what the node holds stays under the per-peer
    and global bounds, it never starts catching up, and each chain is dropped when
    its peer says it has no more."""
    monkeypatch.setattr(headersync, "PRESYNC_HEADERS_PER_PEER", 5)
    monkeypatch.setattr(headersync, "PRESYNC_HEADERS_TOTAL", 8)
    await _with_blocks(node, 3)
    tip = node.chain.tip.hash
    chains = []
    for miner in (ALICE, BOB):  # each peer its own chain
        chain, clock = new_chain()
        chains.append(_low_work_chain(chain, clock, 30, miner))
    assert chains[0][-1].hash != chains[1][-1].hash
    peers = [await connected_peer(node, best_height=10_000) for _ in chains]
    most = 0
    for start in range(0, 30, 10):
        for peer, headers in zip(peers, chains, strict=True):
            asked = len(peer.of_type(GetHeaders))
            await peer.send(Headers(tuple(headers[start : start + 10])))
            await peer.wait_for(lambda p=peer, a=asked: len(p.of_type(GetHeaders)) > a)
            most = max(most, _held(node))
            assert node.sync.presync_held() <= 8
            assert all(len(p.held) <= 5 for p in node.sync.presync.values())
            assert _not_syncing(node) and len(node.sync.pending) == 0
    assert most == 8  # both bounds were reached: the test exercised them
    for peer in peers:
        await peer.send(Headers(()))  # nothing more
        await peer.sync()
    assert _held(node) == 0 and node.sync.presync == {}
    assert node.chain.tip.hash == tip and node.p2p.bans() == []
    for peer in peers:
        await peer.close()


async def test_a_heavier_fork_deeper_than_the_presync_bound_still_syncs(tmp_path, monkeypatch):
    """Honest headers-first sync across a fork: our chain has 4 blocks, the peer's
    8 from genesis. Its first 4 headers have no more work than ours, more than the
    per-peer bound holds; once its 5th proves the work, the node queues what it held,
    asks for the rest again, downloads the blocks and reorganises onto the heavier chain."""
    monkeypatch.setattr(headersync, "PRESYNC_HEADERS_PER_PEER", 3)
    ours, ours_clock = new_chain()
    our_blocks = extend(ours, ours_clock, 4)
    theirs, their_clock = new_chain()
    their_blocks = extend(theirs, their_clock, 8, miner=ALICE)
    assert our_blocks[0].hash != their_blocks[0].hash  # forked at genesis
    async with _synced_from(tmp_path, their_blocks, our_blocks) as (source, behind):
        assert not any(behind.chain.is_active(b.hash) for b in our_blocks)
        assert behind.sync.presync == {} and behind.sync.pending == {}
        assert behind.p2p.bans() == [] and source.p2p.bans() == []


@contextlib.asynccontextmanager
async def _synced_from(
    tmp_path: Path, theirs: list[Block], ours: list[Block]
) -> AsyncIterator[tuple[Node, Node]]:
    """A source node holding ``theirs`` and a node holding ``ours`` that dials it,
    yielded once the second has synced to the source's tip (30 s at most)."""
    source = Node(NodeConfig(params=MID, datadir=tmp_path / "source"))
    await source.start()
    try:
        for b in theirs:
            await source.process_block(b, source=None)
        behind = Node(NodeConfig(params=MID, datadir=tmp_path / "behind"))
        await behind.start()
        try:
            for b in ours:
                await behind.process_block(b, source=None)
            behind.p2p.add_address("127.0.0.1", source.p2p_port)
            await _until(lambda: behind.chain.tip.hash == theirs[-1].hash, 30)
            yield source, behind
        finally:
            await behind.stop()
    finally:
        await source.stop()


def _cap_queue(monkeypatch, header: BlockHeader, queued: int, reply: int) -> int:
    """Shrink the queue to ``queued`` headers like ``header`` and a whole reply to
    ``reply`` of them: the queue's byte bound."""
    size = header_size_bound(header)
    monkeypatch.setattr(headersync, "QUEUE_AHEAD_BYTES", queued * size)
    monkeypatch.setattr(headersync, "MAX_HEADERS_BYTES", reply * size)
    return queued * size


async def test_a_cheap_chain_is_queued_only_up_to_the_bound_and_dropped_when_its_peer_leaves(
    node, monkeypatch
):
    """The reported attack on a fresh node: a peer sends a long chain of valid headers
    that cost nearly nothing to mine (ASERT eases the target after genesis's age) and
    more work than the genesis tip. The node queues them only up to its bound, asks
    the peer for no more, and when the peer leaves drops them all, stops catching up
    and asks its other peers again."""
    chain, clock = new_chain()
    cheap = _low_work_chain(chain, clock, 30, ALICE)
    bound = _cap_queue(monkeypatch, cheap[-1], queued=8, reply=3)
    other = await connected_peer(node, best_height=5, best_work=node.chain.tip.work + 1)
    await other.wait_for(lambda: len(other.of_type(GetHeaders)) == 1)
    attacker = await connected_peer(node, best_height=10_000, best_work=2**200)
    await attacker.wait_for(lambda: len(attacker.of_type(GetHeaders)) == 1)
    await attacker.send(Headers(tuple(cheap[:20])))
    await attacker.wait_for(lambda: attacker.of_type(GetData))  # it asks for the blocks
    await attacker.sync()
    assert node.sync.catching_up
    assert 0 < node.sync.queued_bytes <= bound and len(node.sync.pending) < 20
    assert len(attacker.of_type(GetHeaders)) == 1  # no more asked for: the queue is full
    assert list(node.sync.paused.values()) == [node.sync.queue[-1]]  # to resume from

    await attacker.close()
    await other.wait_for(lambda: len(other.of_type(GetHeaders)) == 2)  # asked again
    assert node.sync.pending == {} and node.sync.queue == deque()
    assert node.sync.queued_bytes == 0 and node.sync.sources == {}
    assert _not_syncing(node) and not node.sync_progress.state()["syncing"]
    assert node.chain.height == 0 and node.p2p.bans() == []
    await other.close()


async def test_a_peer_that_never_sends_the_blocks_of_its_headers_is_disconnected(node, monkeypatch):
    """A peer queues headers and lets every block request stall: after MAX_STALLS
    stalled housekeeping passes it is disconnected (not banned), and its headers
    are dropped."""
    monkeypatch.setattr(headersync, "STALL_SECONDS", 0.05)
    chain, clock = new_chain()
    cheap = _low_work_chain(chain, clock, 6, ALICE)
    staller = await connected_peer(node, best_height=10_000, best_work=2**200)
    await staller.send(Headers(tuple(cheap)))
    reason = await staller.wait_for_close(timeout=headersync.MAX_STALLS * 1.0 + 10)
    assert reason is not None and "stalled block requests" in reason
    await _until(lambda: node.sync.pending == {})
    assert staller.of_type(GetData)  # the blocks were asked for
    assert _not_syncing(node) and node.chain.height == 0 and node.p2p.bans() == []


async def test_a_sync_longer_than_the_queue_asks_for_headers_again_as_blocks_connect(
    tmp_path, monkeypatch
):
    """Honest headers-first sync of 24 blocks through a queue that holds 3 headers and
    replies of 2, so that the node must wait for blocks to connect before it asks for
    more each time: it never queues past its bound, is sent no header twice, and
    still reaches the tip."""
    source_chain, clock = new_chain()
    blocks = extend(source_chain, clock, 24)
    bound = _cap_queue(monkeypatch, blocks[-1].header, queued=3, reply=2)
    monkeypatch.setattr(wire, "MAX_HEADERS_BYTES", 2 * header_size_bound(blocks[-1].header))
    most = paused = 0
    queue = headersync.HeaderSync._queue

    def measured(self: headersync.HeaderSync, *args: Any) -> int:
        nonlocal most, paused
        n = queue(self, *args)
        most = max(most, self.queued_bytes)
        paused += not self.has_room()
        return n

    monkeypatch.setattr(headersync.HeaderSync, "_queue", measured)
    received = 0
    on_headers = headersync.HeaderSync.on_headers

    async def counted(self: headersync.HeaderSync, peer: Any, msg: Headers) -> None:
        nonlocal received
        received += len(msg.headers)
        await on_headers(self, peer, msg)

    monkeypatch.setattr(headersync.HeaderSync, "on_headers", counted)
    async with _synced_from(tmp_path, blocks, []) as (source, behind):
        assert 0 < most <= bound and paused > 0  # the bound held up the download
        assert received == len(blocks)  # none was sent twice: asked only when it fit
        assert behind.sync.pending == {} and behind.sync.queued_bytes == 0
        assert behind.sync.paused == {} and not behind.sync.catching_up
        assert not behind.sync_progress.state()["syncing"]
        assert behind.p2p.bans() == [] and source.p2p.bans() == []


async def test_a_peer_that_lacks_the_blocks_of_its_own_headers_is_disconnected(node):
    """A peer queues headers and answers every request for their blocks with NOTFOUND:
    each reply counts as a stall, and after MAX_STALLS it is disconnected (not
    banned) and its headers dropped, instead of being asked again without end."""
    chain, clock = new_chain()
    cheap = _low_work_chain(chain, clock, 4, ALICE)
    liar = await connected_peer(node, best_height=10_000, best_work=2**200)
    await liar.send(Headers(tuple(cheap)))
    answered = 0

    def asked_again_or_closed(seen: int) -> Callable[[], bool]:
        return lambda: len(liar.of_type(GetData)) > seen or liar.closed.is_set()

    while True:
        await liar.wait_for(asked_again_or_closed(answered))
        if liar.closed.is_set():
            break
        for msg in liar.of_type(GetData)[answered:]:
            answered += 1
            await liar.send(NotFound(msg.items))
    assert "stalled block requests" in (liar.close_reason or "")
    assert answered == headersync.MAX_STALLS  # one stall per NOTFOUND reply
    await _until(lambda: node.sync.pending == {})
    assert _not_syncing(node) and node.p2p.bans() == []


async def test_a_peer_that_delivers_slowly_is_not_taken_for_a_staller(node, monkeypatch):
    """Big blocks on a slow link: requests of a peer that keeps delivering (one block
    every few seconds, even blocks a faster peer delivered first) still pass
    STALL_SECONDS and go to another peer, but the peer is not disconnected; only one
    that has delivered nothing for STALL_SECONDS, found so in MAX_STALLS housekeeping
    passes in a row, is."""
    clock = [1_000.0]
    monkeypatch.setattr(headersync, "monotonic", lambda: clock[0])
    sync = node.sync

    class Slow:
        address = "slow-peer"
        closing = False
        reason: str | None = None

        def close_soon(self, reason: str = "") -> None:
            self.reason = reason

        def take_requested(self, kind: int, block_hash: bytes) -> bool:
            return True  # we asked it for every body it sends

    slow = Slow()
    late = clock[0] - headersync.STALL_SECONDS - 1
    for i in range(headersync.MAX_STALLS + 2):
        # A body we asked it for, of a block another peer delivered first.
        await sync.on_body(slow, BlockBody(bytes([200 + i]) * 32, ()))  # type: ignore[arg-type]
        clock[0] += 3.0
        sync.inflight[bytes([i]) * 32] = (slow, late)
        sync.expire()
        assert bytes([i]) * 32 not in sync.inflight  # its late request moved on
    assert slow.reason is None
    sync.last_block[slow] = clock[0] - headersync.STALL_SECONDS - 1  # nothing since
    for i in range(headersync.MAX_STALLS):
        sync.inflight[bytes([100 + i]) * 32] = (slow, clock[0] - headersync.STALL_SECONDS - 1)
        sync.expire()
        clock[0] += 1.0
    assert slow.reason is not None and "stalled block requests 3 times" in slow.reason
