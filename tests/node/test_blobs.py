"""Blobs: chunking and per-chunk verification, matrix encoding, and the exchange
between real in-process nodes and scripted peers (PROTOCOL §8, §12)."""

from __future__ import annotations

import asyncio
import dataclasses
import os

import numpy as np
import pytest

from consensus.merkle import matrix_rows_commitment, matrix_rows_root, merkle_root
from node import store as store_module
from node.app import Node
from node.config import NodeConfig
from node.net.wire import MAX_RANGE_CHUNKS, RANGE_BYTES, BlobChunk, BlobGet, BlobGetRange, BlobRange
from node.relay import blobs as blobs_module
from node.relay.blobs import (
    CHUNK_SIZE,
    MAX_CHUNKS,
    BlobError,
    BlobFetchError,
    BlobTree,
    StoredBlobTree,
    assemble,
    blob_root,
    chunk_with_branch,
    decode_matrix,
    encode_matrix,
    matrix_rows,
    range_end,
    range_leaves,
    range_proof,
    split,
    verify_chunk,
    verify_range,
)
from tests.support.chainkit import MID
from tests.support.p2p_testkit import TestPeer

MiB = 1024 * 1024

# ------------------------------------------------------------------ chunking


def test_split_and_root_follow_the_consensus_merkle_tree():
    data = os.urandom(2 * CHUNK_SIZE + 100)
    chunks = split(data)
    assert [len(c) for c in chunks] == [CHUNK_SIZE, CHUNK_SIZE, 100]
    assert b"".join(chunks) == data
    assert blob_root(data) == merkle_root(chunks)
    assert blob_root(data) != blob_root(data[:-1])


def test_empty_and_oversized_blobs_are_refused():
    with pytest.raises(BlobError, match="empty"):
        blob_root(b"")
    with pytest.raises(BlobError, match="empty"):
        split(b"")


def test_a_fetched_blob_is_rebuilt_from_the_leaves_its_ranges_were_checked_with():
    # Enough chunks that a range's leaves are hashed as one buffer (LANE_MIN_CHUNKS).
    data = os.urandom(300 * 1000 + 7)
    tree = BlobTree(data, 1000)
    root, total = tree.root, tree.total
    chunks: dict[int, bytes] = {}
    leaves: dict[int, bytes] = {}
    for first in range(0, total, 40):
        got, proof = tree.range(first, 40)
        found = range_leaves(root, first, total, got, proof)
        assert found is not None and len(found) == len(got)
        chunks.update(enumerate(got, first))
        leaves.update(enumerate(found, first))
        tampered = (got[0][:-1] + bytes([got[0][-1] ^ 1]), *got[1:])
        assert range_leaves(root, first, total, tampered, proof) is None
        assert range_leaves(root, first + 1, total, got, proof) is None, "another index"
    assert leaves == dict(enumerate(tree.levels[0]))
    assert assemble(root, total, chunks, leaves) == data
    with pytest.raises(BlobError, match="do not reassemble"):
        assemble(root, total - 1, chunks, leaves)  # a count that was a lie
    swapped = leaves | {3: leaves[4], 4: leaves[3]}
    with pytest.raises(BlobError, match="do not reassemble"):
        assemble(root, total, chunks, swapped)
    # A leaf missing: the chunks are hashed again, as without leaves.
    assert assemble(root, total, chunks, {i: h for i, h in leaves.items() if i != 5}) == data


def test_a_miners_c_is_served_from_the_leaves_its_result_root_was_computed_with():
    c = np.random.default_rng(5).integers(-(2**31), 2**31, size=(70, 300), dtype=np.int32)
    root, leaves = matrix_rows_commitment(c)
    data, row_bytes = matrix_rows(c)
    tree = BlobTree(data, row_bytes, leaves)
    hashed = BlobTree(data, row_bytes)
    assert tree.root == hashed.root == root and tree.levels == hashed.levels
    assert tree.range(5, 9) == hashed.range(5, 9)
    with pytest.raises(BlobError, match="leaf hashes for 70 chunks"):
        BlobTree(data, row_bytes, leaves[:-32])


def test_every_chunk_verifies_and_any_tampering_fails():
    data = os.urandom(3 * CHUNK_SIZE + 7)
    root = blob_root(data)
    total = len(split(data))
    for i in range(total):
        chunk, n, branch = chunk_with_branch(data, i)
        assert n == total and verify_chunk(root, i, total, chunk, branch)
    chunk, _, branch = chunk_with_branch(data, 1)
    flipped = bytes([chunk[0] ^ 1]) + chunk[1:]
    assert not verify_chunk(root, 1, total, flipped, branch), "tampered chunk"
    assert not verify_chunk(root, 2, total, chunk, branch), "wrong index"
    # A branch does not pin the count down for every index (the left part of
    # the tree has the same shape for 3 and 4 leaves), but the last chunk's does,
    # and the final root check catches whatever a wrong count leaves out.
    assert not verify_chunk(root, 1, 2, chunk, branch), "wrong total"
    assert not verify_chunk(root, 1, 1, chunk, branch), "index past the total"
    chunks = {i: c for i, c in enumerate(split(data))}
    assert assemble(root, total, chunks) == data
    with pytest.raises(BlobError, match="do not reassemble"):
        assemble(root, total - 1, chunks)
    with pytest.raises(BlobError, match="missing 1 of"):
        assemble(root, total + 1, chunks)
    assert not verify_chunk(os.urandom(32), 1, total, chunk, branch), "wrong root"
    assert not verify_chunk(root, 1, total, chunk, branch[:-1]), "short branch"
    assert not verify_chunk(root, 1, total, chunk[:-1], branch), "short chunk"
    assert not verify_chunk(root, 1, 0, chunk, branch)
    assert not verify_chunk(root, 1, MAX_CHUNKS + 1, chunk, branch)
    last, _, last_branch = chunk_with_branch(data, total - 1)
    assert verify_chunk(root, total - 1, total, last, last_branch)
    assert not verify_chunk(root, total - 1, total, last + b"\0", last_branch)
    assert not verify_chunk(root, total - 1, total + 1, last, last_branch), "wrong total"
    assert not verify_chunk(root, total - 1, total - 1, last, last_branch), "wrong total"


def test_a_one_chunk_blob_has_an_empty_branch():
    chunk, total, branch = chunk_with_branch(b"x", 0)
    assert (chunk, total, branch) == (b"x", 1, ())
    assert verify_chunk(blob_root(b"x"), 0, 1, b"x", ())
    with pytest.raises(IndexError):
        chunk_with_branch(b"x", 1)


def test_every_range_of_every_small_tree_verifies_and_tampering_fails():
    # Every shape of the odd-node rule: ranges starting and ending on left and
    # right children and on promoted last nodes, for every count up to 17.
    for total in range(1, 18):
        data = bytes(range(total))
        tree = BlobTree(data, 1)
        for first in range(total):
            for count in range(1, total - first + 1):
                chunks, proof = tree.range(first, count)
                assert chunks == tuple(tree.chunks[first : first + count])
                assert verify_range(tree.root, first, total, chunks, proof), (total, first)
                assert len(proof) <= 2 * total.bit_length()
                flipped = (bytes([chunks[0][0] ^ 1]), *chunks[1:])
                assert not verify_range(tree.root, first, total, flipped, proof)
                if proof:
                    bad = (bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:])
                    assert not verify_range(tree.root, first, total, chunks, bad)
                    assert not verify_range(tree.root, first, total, chunks, proof[:-1])
                assert not verify_range(tree.root, first, total, chunks, (*proof, bytes(32)))
                if first + count < total:
                    assert not verify_range(tree.root, first + 1, total, chunks, proof)
                    assert not verify_range(tree.root, first, total, chunks[:-1], proof)


def test_a_range_is_cut_to_the_byte_budget_and_the_count_cap():
    big = BlobTree(os.urandom(5 * RANGE_BYTES // 4 + 1), RANGE_BYTES // 4)
    chunks, proof = big.range(0, 10)
    assert len(chunks) == 4 and sum(map(len, chunks)) == RANGE_BYTES, "the budget exactly"
    chunks, proof = big.range(3, 1)
    assert chunks == (big.chunks[3],) and verify_range(big.root, 3, 6, chunks, proof)
    many = BlobTree(os.urandom(MAX_RANGE_CHUNKS + 5), 1)
    chunks, proof = many.range(2, MAX_RANGE_CHUNKS + 3)
    assert len(chunks) == MAX_RANGE_CHUNKS
    assert verify_range(many.root, 2, many.total, chunks, proof)


def test_the_range_cut_is_the_walk_over_the_chunks():
    """range_end's arithmetic cuts every range where adding the chunks one by one to
    the byte budget would, the short last chunk and the count caps included."""

    def walked(first, count, lengths, budget, cap):
        end, size = first, 0
        stop = min(len(lengths), first + min(count, cap))
        while end < stop and (end == first or size + lengths[end] <= budget):
            size += lengths[end]
            end += 1
        return end

    for chunk in range(1, 6):
        for last in range(1, chunk + 1):
            for total in range(1, 9):
                lengths = [chunk] * (total - 1) + [last]
                for budget in range(1, 14):
                    for cap in (1, 2, 3, 100):
                        for first in range(total):
                            for count in range(1, total - first + 2):
                                got = range_end(first, count, total, chunk, last, budget, cap)
                                want = walked(first, count, lengths, budget, cap)
                                assert got == want, (chunk, last, total, budget, cap, first, count)


def _tampered_runs(chunks):
    """Replies that put the same bytes (or one byte more) under other chunk boundaries."""
    joined = b"".join(chunks)
    size = len(chunks[0])
    yield (*chunks[:-2], chunks[-2] + chunks[-1])  # the last two as one
    yield (chunks[0] + chunks[1][:1], chunks[1][1:], *chunks[2:])  # a boundary moved
    yield tuple(joined[i : i + size + 1] for i in range(0, len(joined), size + 1))  # recut
    yield (*chunks[:-1], chunks[-1] + b"\0")  # a byte more at the end
    middle = len(chunks) // 2
    flipped = bytes([chunks[middle][0] ^ 1]) + chunks[middle][1:]
    yield (*chunks[:middle], flipped, *chunks[middle + 1 :])


@pytest.mark.parametrize("size", [40 * 64, 40 * 64 - 5])
def test_long_ranges_verify_as_one_buffer_and_recut_ones_fail(size):
    """A range of many equal chunks is hashed as one buffer: it verifies exactly as chunk
    by chunk would, and a reply that cuts the same bytes otherwise, or changes one, fails."""
    data = os.urandom(size)
    tree = BlobTree(data, 64)
    for first, count in ((0, tree.total), (3, 33), (5, tree.total - 5)):
        chunks, proof = tree.range(first, count)
        assert verify_range(tree.root, first, tree.total, chunks, proof)
        for bad in _tampered_runs(chunks):
            assert not verify_range(tree.root, first, tree.total, bad, proof)


def test_a_stored_tree_serves_what_the_whole_tree_does_and_catches_damage_anywhere():
    """Ranges served from the leaves and the stored bytes are the in-memory tree's, chunk
    for chunk and proof for proof, at every cut; one flipped byte anywhere in a range is
    caught (BlobError), on the compiled and the library path alike."""
    data = bytearray(os.urandom(300 * 64 + 17))
    tree = BlobTree(bytes(data), 64)
    stored = StoredBlobTree(len(data), 64, tree.leaves, lambda at, n: bytes(data[at : at + n]))
    assert stored.root == tree.root
    for first, count in ((0, 1), (0, 301), (7, 40), (250, 100), (300, 1), (299, 2), (31, 5)):
        assert stored.range(first, count) == tree.range(first, count), (first, count)
    for at in (0, 64 * 40 + 3, len(data) - 1):
        data[at] ^= 1
        with pytest.raises(BlobError, match="does not match its leaves"):
            stored.range(0, 301)
        with pytest.raises(BlobError, match="does not match its leaves"):
            stored.range(at // 64, 1)
        data[at] ^= 1
    assert stored.range(0, 301) == tree.range(0, 301)


@pytest.mark.parametrize("chunk", [64, 8192])
def test_a_trees_held_bytes_are_what_it_holds(chunk):
    """The serve cache is bounded by the trees' ``held``: it must count what they really
    hold (a tree of 32-byte hashes holds ~2.3 times their bytes), within 10 %."""
    import gc
    import tracemalloc

    data = os.urandom(2 * MiB + 5)
    BlobTree(data, chunk)  # the compiled hashing loaded before we count
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tree = BlobTree(data, chunk)
        gc.collect()
        in_memory = tracemalloc.get_traced_memory()[0] - before
        leaves = tree.leaves
        before = tracemalloc.get_traced_memory()[0]
        stored = StoredBlobTree(len(data), chunk, leaves, lambda at, n: data[at : at + n])
        gc.collect()
        from_leaves = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert abs(tree.held - in_memory) <= 0.1 * in_memory, (tree.held, in_memory)
    assert abs(stored.held - from_leaves) <= 0.1 * from_leaves, (stored.held, from_leaves)


# ------------------------------------------------------------------ matrices


@pytest.mark.parametrize("dtype", [np.int8, np.int32, ">i4"])
def test_matrices_round_trip_and_keep_their_row_root(dtype):
    rng = np.random.default_rng(1)
    x = rng.integers(-64, 64, size=(33, 70)).astype(dtype)
    y = decode_matrix(encode_matrix(x))
    assert y.shape == x.shape and np.array_equal(x, y)
    assert y.dtype in (np.int8, np.int32) and y.flags.writeable
    assert matrix_rows_root(y) == matrix_rows_root(x)


def test_bad_matrices_are_refused_with_a_reason():
    good = encode_matrix(np.ones((4, 5), dtype=np.int8))
    with pytest.raises(BlobError, match="int8 or int32"):
        encode_matrix(np.ones((2, 2), dtype=np.float32))
    with pytest.raises(BlobError, match="2-D"):
        encode_matrix(np.ones(3, dtype=np.int8))
    with pytest.raises(BlobError, match="outside"):
        encode_matrix(np.ones((0, 3), dtype=np.int8))
    with pytest.raises(BlobError, match="needs 34 bytes"):
        decode_matrix(good + b"\0")
    with pytest.raises(BlobError, match="needs 34 bytes"):
        decode_matrix(good[:-1])
    with pytest.raises(BlobError, match="magic"):
        decode_matrix(b"XXXX" + good[4:])
    with pytest.raises(BlobError, match="dtype code"):
        decode_matrix(good[:5] + b"\x02" + good[6:])
    with pytest.raises(BlobError, match="version"):
        decode_matrix(good[:4] + b"\x09" + good[5:])
    with pytest.raises(BlobError, match="header"):
        decode_matrix(good[:10])
    huge = good[:6] + (70_000).to_bytes(4, "little") + good[10:]
    with pytest.raises(BlobError, match="outside"):
        decode_matrix(huge)


# ------------------------------------------------------------------ exchange


@pytest.fixture
async def nodes(tmp_path):
    started: list[Node] = []

    async def make(name: str, peers: list[Node] = ()) -> Node:  # type: ignore[assignment]
        cfg = NodeConfig(
            params=MID,
            datadir=tmp_path / name,
            peers=[("127.0.0.1", p.p2p_port) for p in peers],
        )
        n = Node(cfg)
        await n.start()
        started.append(n)
        return n

    try:
        yield make
    finally:
        for n in reversed(started):
            await n.stop()


async def wait_until(predicate, timeout: float = 10.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), timeout)


async def test_a_blob_put_on_one_node_is_fetched_by_another(nodes):
    a = await nodes("a")
    b = await nodes("b", peers=[a])
    await wait_until(lambda: len(b.p2p.peers) == 1)
    data = os.urandom(1024 * 1024 + 123)
    root = a.put_blob(data)
    assert root == blob_root(data) and not b.store.has_blob(root)
    assert await b.fetch_blob(root, timeout=20) == data
    assert b.store.get_blob(root) == data
    assert await b.fetch_blob(root) == data  # now from its own store
    assert not a.p2p.bans() and not b.p2p.bans()


async def test_a_fetch_faster_than_the_peer_byte_rate_does_not_get_its_server_banned(nodes):
    """The per-peer byte rate guards against floods, but the bytes of blob ranges the
    node asked for are granted, not charged: a fetch that pulls faster than the rate
    (a 128 MiB operand over a fast link against 64 MiB/s) must not ban the honest
    server. Here the rate is 1 MiB/s and 8 MiB are fetched at once."""
    a = await nodes("a")
    b = await nodes("b")
    b.p2p.limits = dataclasses.replace(b.p2p.limits, byte_rate=MiB, byte_burst=2 * MiB)
    b.p2p.add_address("127.0.0.1", a.p2p_port)
    await wait_until(lambda: len(b.p2p.peers) == 1)
    data = os.urandom(8 * MiB)
    root = a.put_blob(data)
    assert await b.fetch_blob(root, timeout=20) == data
    assert b.p2p.bans() == [] and a.p2p.bans() == []
    assert len(b.p2p.peers) == 1


async def test_a_blob_just_put_is_served_without_reading_it_back(nodes, monkeypatch):
    """An operand a client just uploaded is what miners ask for next: the node serves it
    from the tree it built to store it, not from the store, read back and hashed again."""
    a = await nodes("a")
    b = await nodes("b", peers=[a])
    await wait_until(lambda: len(b.p2p.peers) == 1)
    data = os.urandom(300_000)
    root = await asyncio.to_thread(a.blobs.put, data)  # as the upload route does
    reads: list[bytes] = []
    real_read = a.store.get_blob_chunked
    monkeypatch.setattr(a.store, "get_blob_chunked", lambda r: reads.append(r) or real_read(r))
    assert await b.fetch_blob(root, timeout=20) == data
    assert reads == []
    a.blobs.delete(root)  # no longer kept, so no longer served either
    b.store.delete_blob(root)
    with pytest.raises(BlobFetchError, match="does not have it"):
        await asyncio.wait_for(b.fetch_blob(root, timeout=5), 6)


async def test_a_blob_cut_otherwise_than_asked_is_refused_here_and_from_a_peer(nodes):
    """A job's operand is fetched as a blob cut into its rows, whose root is then the
    matrix's row root, so the miner need not hash the rows again: the same bytes stored
    under the root of another cut (a poster naming some other blob as its operand), or
    with another row count, are refused with a clear error from the first reply of a
    peer, before the rest is fetched (nothing is stored), and from the store."""
    a = await nodes("a")
    b = await nodes("b", peers=[a])
    await wait_until(lambda: len(b.p2p.peers) == 1)
    rows = np.arange(64 * 128, dtype=np.int64).astype(np.int8).reshape(64, 128)
    by_rows = a.blobs.put_matrix(rows)
    assert by_rows == matrix_rows_root(rows)
    otherwise = a.blobs.put(rows.tobytes(), chunk_size=256)  # two rows a chunk
    assert await b.blobs.fetch(by_rows, 20, chunk_size=128, chunk_count=64) == rows.tobytes()
    b.store.delete_blob(by_rows)
    served: list[BlobGetRange] = []
    real = a.blobs.on_blob_get_range
    a._handlers[BlobGetRange] = lambda peer, msg: served.append(msg) or real(peer, msg)
    with pytest.raises(BlobFetchError, match="chunks of 256 bytes, not 128"):
        await b.blobs.fetch(otherwise, 20, chunk_size=128)
    with pytest.raises(BlobFetchError, match="has 64 chunks, not 32"):
        await b.blobs.fetch(by_rows, 20, chunk_size=128, chunk_count=32)
    assert [m.first for m in served] == [0, 0]  # one reply each: nothing more was asked
    assert not b.store.has_blob(otherwise) and not b.store.has_blob(by_rows)
    b.store.put_blob(otherwise, rows.tobytes(), 256)
    with pytest.raises(BlobFetchError, match="chunks of 256 bytes, not 128"):
        await b.blobs.fetch(otherwise, 20, chunk_size=128)
    with pytest.raises(BlobFetchError, match="has 32 chunks, not 64"):
        await b.blobs.fetch(otherwise, 20, chunk_count=64)
    assert not b.p2p.bans()


async def test_peers_asking_at_once_for_an_uncached_blob_share_one_read(nodes, monkeypatch):
    """A blob not in the serve cache (after a restart) is read and its tree built once
    however many peers ask for it meanwhile: each build of a 256 MiB blob holds ~0.5 GB,
    and 16 peers asking at once took a node from 0.3 to 2.4 GB."""
    a = await nodes("a")
    data = os.urandom(3 * CHUNK_SIZE)
    root = blob_root(data)
    a.store.put_blob(root, data, CHUNK_SIZE)  # stored, not cached
    reads: list[bytes] = []
    real_read = a.store.get_blob_chunked
    monkeypatch.setattr(a.store, "get_blob_chunked", lambda r: reads.append(r) or real_read(r))
    peers = [await _evil_peer(a) for _ in range(6)]
    try:
        await asyncio.gather(*(p.send(BlobGetRange(root, 0, 1)) for p in peers))
        for p in peers:
            reply = await p.wait_for_message(BlobRange)
            assert reply.total == 3 and reply.chunks == (data[:CHUNK_SIZE],)
        assert reads == [root]
    finally:
        for p in peers:
            await p.close()


async def test_a_peer_that_keeps_missing_the_serve_cache_waits_for_its_turn(nodes, monkeypatch):
    """A blob not in the serve cache is read and hashed whole to serve one chunk: a peer
    asking in turn for blobs that together exceed the cache cost ~390 times a cached
    request each. Each peer may have MISS_RATE such builds a second (MISS_BURST at
    once); past that its request waits, and other peers' do not."""
    monkeypatch.setattr(blobs_module, "MISS_RATE", 0.25)  # the next in 4 s
    monkeypatch.setattr(blobs_module, "MISS_BURST", 1.0)
    a = await nodes("a")
    blobs = [os.urandom(CHUNK_SIZE + i) for i in range(3)]
    for data in blobs:
        a.store.put_blob(blob_root(data), data, CHUNK_SIZE)  # stored, not cached
    thrasher, other = await _evil_peer(a), await _evil_peer(a)
    try:
        await thrasher.send(BlobGetRange(blob_root(blobs[0]), 0, 1))
        await thrasher.wait_for(lambda: thrasher.of_type(BlobRange))
        await thrasher.send(BlobGetRange(blob_root(blobs[1]), 0, 1))  # past its budget
        await other.send(BlobGetRange(blob_root(blobs[2]), 0, 1))
        reply = await other.wait_for_message(BlobRange)
        assert reply.chunks == (blobs[2][:CHUNK_SIZE],), "another peer is served at once"
        # Its own waits (4 s at this rate): still one reply, and no ban.
        assert [m.root for m in thrasher.of_type(BlobRange)] == [blob_root(blobs[0])]
        assert a.p2p.bans() == [] and not thrasher.closed.is_set()
    finally:
        for p in (thrasher, other):
            await p.close()


async def test_a_miss_served_from_kept_leaves_costs_a_tenth_of_one_read_whole(nodes, monkeypatch):
    """A miner fetches the operands of its share of a backlog, most of them out of the
    serve cache. Uploaded blobs keep their leaves, so each miss costs LEAF_MISS_COST of
    the budget: five in a row are served at once where, charged as whole misses, all but
    the first would wait 4 s each (and a miner's requests time out at 10 s)."""
    monkeypatch.setattr(blobs_module, "MISS_RATE", 0.25)
    monkeypatch.setattr(blobs_module, "MISS_BURST", 1.0)
    monkeypatch.setattr(blobs_module, "SERVE_CACHE_BYTES", 1)  # every request a miss
    a = await nodes("a")
    blobs = [os.urandom(CHUNK_SIZE + i) for i in range(5)]
    roots = [a.blobs.put(data) for data in blobs]  # leaves kept, as an upload's
    assert all(a.store.blob_leaves_kept(root) is True for root in roots)
    bare = os.urandom(CHUNK_SIZE)
    a.store.put_blob(blob_root(bare), bare, CHUNK_SIZE)  # stored, leaves not kept
    assert a.store.blob_leaves_kept(blob_root(bare)) is False
    assert a.store.blob_leaves_kept(os.urandom(32)) is None
    miner = await _evil_peer(a)
    try:
        for root in roots:
            await miner.send(BlobGetRange(root, 0, 1))
        await miner.wait_for(lambda: len(miner.of_type(BlobRange)) == 5, timeout=3.0)
        served = {m.root: m.chunks for m in miner.of_type(BlobRange)}
        assert served == {r: (d[:CHUNK_SIZE],) for r, d in zip(roots, blobs, strict=True)}
        assert a.p2p.bans() == [] and not miner.closed.is_set()
    finally:
        await miner.close()


async def test_a_blob_out_of_the_cache_is_served_from_its_leaves_not_read_whole(nodes, monkeypatch):
    """The first miss of a stored blob reads and hashes it whole and keeps its leaf
    hashes beside it; once the blob has left the serve cache, a range is served from
    those leaves and the chunks it holds, not by reading the blob again."""
    monkeypatch.setattr(blobs_module, "SERVE_CACHE_BYTES", 1)  # one tree kept at a time
    a = await nodes("a")
    first, second = os.urandom(50 * 100 + 37), os.urandom(3 * 100)
    roots = [blob_root(first, 100), blob_root(second, 100)]
    for root, data in zip(roots, (first, second), strict=True):
        a.store.put_blob(root, data, 100)  # stored, not cached
    reads: list[bytes] = []
    real_read = a.store.get_blob_chunked
    monkeypatch.setattr(a.store, "get_blob_chunked", lambda r: reads.append(r) or real_read(r))
    peer = await _evil_peer(a)
    try:
        for n, root in enumerate(roots, 1):  # the second pushes the first out of the cache
            await peer.send(BlobGetRange(root, 0, 1))
            await peer.wait_for(lambda n=n: len(peer.of_type(BlobRange)) == n)
        assert reads == roots and a.store.get_blob_leaves(roots[0]) is not None
        bytes_read: list[int] = []
        real_part = a.store.read_blob
        monkeypatch.setattr(
            a.store,
            "read_blob",
            lambda r, at, n: bytes_read.append(n) or real_part(r, at, n),
        )
        await peer.send(BlobGetRange(roots[0], 7, 44))  # to the end, the short last chunk
        await peer.wait_for(lambda: len(peer.of_type(BlobRange)) == 3)
        got = peer.of_type(BlobRange)[2]
        assert (got.first, got.total) == (7, 51) and b"".join(got.chunks) == first[700:]
        assert verify_range(roots[0], 7, 51, got.chunks, got.proof)
        assert reads == roots  # not read whole again: only the chunks asked for
        assert sum(bytes_read) == len(first) - 700
    finally:
        await peer.close()


async def test_a_stored_blob_damaged_on_disk_is_not_served(nodes, monkeypatch, caplog):
    """Chunks read for a range are checked against the stored leaves: a blob damaged on
    disk is answered as one we lack (serving it would get us banned), and logged."""
    monkeypatch.setattr(blobs_module, "SERVE_CACHE_BYTES", 1)
    a = await nodes("a")
    data, other = os.urandom(10 * 100), os.urandom(100)
    root = blob_root(data, 100)
    a.store.put_blob(root, data, 100)
    a.store.put_blob(blob_root(other, 100), other, 100)
    peer = await _evil_peer(a)
    try:
        await peer.send(BlobGetRange(root, 0, 1))  # read whole: its leaves are kept
        await peer.wait_for(lambda: len(peer.of_type(BlobRange)) == 1)
        await peer.send(BlobGetRange(blob_root(other, 100), 0, 1))  # pushes it out
        await peer.wait_for(lambda: len(peer.of_type(BlobRange)) == 2)
        damaged = data[:450] + bytes([data[450] ^ 1]) + data[451:]
        with a.store._blob_transaction() as db:
            db.execute("UPDATE blobs SET data = ? WHERE root = ?", (damaged, root))
        monkeypatch.setattr(a.store, "get_blob_chunked", lambda r: pytest.fail("read whole"))
        await peer.send(BlobGetRange(root, 2, 5))
        await peer.wait_for(lambda: len(peer.of_type(BlobRange)) == 3)
        reply = peer.of_type(BlobRange)[2]
        assert (reply.total, reply.chunks, reply.proof) == (0, (), ())
        assert not peer.closed.is_set() and a.p2p.bans() == []
        assert root not in a.blobs._trees
        assert "does not match its leaves" in caplog.text
        # Cut short on disk (shorter than its size says): the same answer, no crash.
        with a.store._blob_transaction() as db:
            db.execute("UPDATE blobs SET data = ? WHERE root = ?", (data[:300], root))
        await peer.send(BlobGetRange(root, 7, 3))
        await peer.wait_for(lambda: len(peer.of_type(BlobRange)) == 4)
        assert peer.of_type(BlobRange)[3].total == 0 and not peer.closed.is_set()
    finally:
        await peer.close()


async def test_damaged_leaves_are_rebuilt_from_the_blob_and_a_full_disk_fails_no_put(
    nodes, monkeypatch
):
    """Leaves that make another root are not trusted: the blob is read whole, served,
    and its leaves written again. Leaves are an aid: a store that cannot take them (a
    full disk) fails neither the put nor the reply."""
    monkeypatch.setattr(blobs_module, "SERVE_CACHE_BYTES", 1)
    a = await nodes("a")
    data, other = os.urandom(10 * 100), os.urandom(100)
    root = a.blobs.put(data, 100)  # its leaves kept at once
    a.blobs.put(other, 100)  # pushes it out of the cache
    good = a.store.get_blob_leaves(root)
    assert good is not None
    a.store.put_blob_leaves(root, bytes(len(good[2])))  # the right length, wrong hashes
    peer = await _evil_peer(a)
    try:
        await peer.send(BlobGetRange(root, 0, 10))
        await peer.wait_for(lambda: len(peer.of_type(BlobRange)) == 1)
        got = peer.of_type(BlobRange)[0]
        assert got.total == 10 and b"".join(got.chunks) == data
        assert a.store.get_blob_leaves(root) == good

        def full(*_):
            raise store_module.DiskFull("disk full")

        monkeypatch.setattr(a.store, "put_blob_leaves", full)
        third = os.urandom(300)
        assert a.blobs.put(third, 100) == blob_root(third, 100)
        await peer.send(BlobGetRange(blob_root(third, 100), 0, 3))
        await peer.wait_for(lambda: len(peer.of_type(BlobRange)) == 2)
        assert b"".join(peer.of_type(BlobRange)[1].chunks) == third
    finally:
        await peer.close()


async def test_a_result_readied_to_serve_is_served_without_reading_it_back(nodes, monkeypatch):
    """A miner's C, stored under the root it computed, is readied to serve from the
    matrix in memory (``warm``): its client asks for it next, and is served without the
    store being read. One stored under a root that is not its own is never served."""
    a = await nodes("a")
    b = await nodes("b", peers=[a])
    await wait_until(lambda: len(b.p2p.peers) == 1)
    c = np.arange(32 * 48, dtype=np.int32).reshape(32, 48) * 7919
    root = matrix_rows_root(c)
    assert a.blobs.put_matrix(c, None, root) == root
    assert await asyncio.to_thread(a.blobs.warm, c, root)
    reads: list[bytes] = []
    real_read = a.store.get_blob_chunked
    monkeypatch.setattr(a.store, "get_blob_chunked", lambda r: reads.append(r) or real_read(r))
    assert await b.fetch_blob(root, timeout=20) == c.astype("<i4").tobytes()
    assert reads == []
    wrong = bytes(32)
    a.blobs.put_matrix(c + 1, None, wrong)
    assert not await asyncio.to_thread(a.blobs.warm, c + 1, wrong)
    with pytest.raises(BlobFetchError, match="does not have it"):
        await asyncio.wait_for(b.fetch_blob(wrong, timeout=5), 6)


async def test_an_unknown_blob_fails_fast_with_a_clear_error(nodes):
    a = await nodes("a")
    b = await nodes("b", peers=[a])
    await wait_until(lambda: len(b.p2p.peers) == 1)
    missing = os.urandom(32)
    with pytest.raises(BlobFetchError, match=r"not available.*does not have it"):
        await asyncio.wait_for(b.fetch_blob(missing, timeout=5), 6)
    assert not b.p2p.bans(), "saying 'I don't have it' is not misbehaviour"


async def test_a_fetch_with_no_peers_times_out_with_a_clear_error(nodes):
    lonely = await nodes("lonely")
    with pytest.raises(BlobFetchError, match=r"timed out after 0.3s .*no peer answered"):
        await lonely.fetch_blob(os.urandom(32), timeout=0.3)


async def _evil_peer(node: Node) -> TestPeer:
    peer = TestPeer(node.p2p_port, chain_id=MID.chain_id, genesis_hash=node.chain.genesis.hash)
    await peer.connect()
    await peer.handshake()
    await wait_until(lambda: any(p.node_id == peer.node_id for p in node.p2p.peers))
    return peer


async def _serve_ranges(
    peer: TestPeer, data: bytes, chunk_size: int, reply, delay: float = 0.0
) -> None:
    """Answer every BlobGetRange with ``reply(request, honest BlobRange)``, ``delay``
    seconds after it came (a slow or dripping peer)."""
    tree = BlobTree(data, chunk_size)
    answered = 0
    while True:
        await peer.wait_for(lambda n=answered: len(peer.of_type(BlobGetRange)) > n, timeout=30)
        for req in peer.of_type(BlobGetRange)[answered:]:
            await asyncio.sleep(delay)
            chunks, proof = tree.range(req.first, req.count)
            await peer.send(reply(req, BlobRange(req.root, req.first, tree.total, chunks, proof)))
            answered += 1


def _flip_last_byte(req: BlobGetRange, honest: BlobRange) -> BlobRange:
    last = honest.chunks[-1]
    bad = last[:-1] + bytes([last[-1] ^ 1])
    return BlobRange(
        honest.root, honest.first, honest.total, (*honest.chunks[:-1], bad), honest.proof
    )


async def _serve_tampered(peer: TestPeer, data: bytes) -> None:
    """Answer every range with the right proof but one flipped byte in its last chunk."""
    await _serve_ranges(peer, data, CHUNK_SIZE, _flip_last_byte)


async def test_a_peer_serving_a_tampered_chunk_is_banned_and_the_fetch_fails(nodes):
    b = await nodes("b")
    data = os.urandom(CHUNK_SIZE + 10)
    evil = await _evil_peer(b)
    server = asyncio.create_task(_serve_tampered(evil, data))
    try:
        with pytest.raises(BlobFetchError, match="fail verification"):
            await b.fetch_blob(blob_root(data), timeout=10)
        assert "fail verification" in (await evil.wait_for_close() or "")
        assert any("fail verification" in ban["reason"] for ban in b.p2p.bans())
        assert not b.store.has_blob(blob_root(data)), "nothing unverified is stored"
    finally:
        server.cancel()
        await evil.close()


async def test_after_a_tampered_chunk_the_fetch_moves_on_to_an_honest_peer(nodes):
    a = await nodes("a")
    b = await nodes("b")
    data = os.urandom(2 * CHUNK_SIZE + 1)
    root = a.put_blob(data)
    evil = await _evil_peer(b)  # connected first, so asked first
    server = asyncio.create_task(_serve_tampered(evil, data))
    b.p2p.add_address("127.0.0.1", a.p2p_port)
    await wait_until(lambda: len(b.p2p.peers) == 2)
    try:
        assert await b.fetch_blob(root, timeout=20) == data
        assert evil.of_type(BlobGetRange), "the evil peer was asked first"
        assert any("fail verification" in ban["reason"] for ban in b.p2p.bans())
        assert b.store.get_blob(root) == data
    finally:
        server.cancel()
        await evil.close()


def _honest(req: BlobGetRange, honest: BlobRange) -> BlobRange:
    return honest


async def test_a_peer_slower_than_the_floor_is_left_for_the_next_its_chunks_kept(
    nodes, monkeypatch
):
    """A peer connected first answers every range in full and in time for each request,
    but slowly (a drip that would outlast the fetch): once it falls below MIN_PEER_RATE
    the fetch moves on to the honest peer, keeping the chunks it got, and nobody is
    banned."""
    monkeypatch.setattr(blobs_module, "MIN_PEER_RATE", 64 * 1024 * 1024)
    a = await nodes("a")
    b = await nodes("b")
    b.blobs.request_timeout = 1.0
    data = os.urandom(12 * RANGE_BYTES)
    root = a.put_blob(data)
    slow = await _evil_peer(b)  # connected first, so asked first
    server = asyncio.create_task(_serve_ranges(slow, data, CHUNK_SIZE, _honest, delay=0.5))
    b.p2p.add_address("127.0.0.1", a.p2p_port)
    await wait_until(lambda: len(b.p2p.peers) == 2)
    try:
        # 12 replies at 0.5 s each (2 in flight) would take 3 s: past the fetch's 2.5 s.
        assert await b.fetch_blob(root, timeout=2.5) == data
        assert 1 <= len(slow.of_type(BlobGetRange)) < 12, "the slow peer was asked first"
        assert b.p2p.bans() == [] and not slow.closed.is_set()
    finally:
        server.cancel()
        await slow.close()


async def test_a_lone_slow_peer_is_asked_again_while_each_round_brings_chunks(nodes, monkeypatch):
    """The only peer with the blob is slower than the floor: it is left after each
    round, but asked again while it brings chunks, so the fetch completes."""
    monkeypatch.setattr(blobs_module, "MIN_PEER_RATE", 64 * 1024 * 1024)
    b = await nodes("b")
    b.blobs.request_timeout = 1.0
    data = os.urandom(8 * RANGE_BYTES)
    slow = await _evil_peer(b)
    server = asyncio.create_task(_serve_ranges(slow, data, CHUNK_SIZE, _honest, delay=0.2))
    try:
        assert await b.fetch_blob(blob_root(data), timeout=20) == data
        heads = [m for m in slow.of_type(BlobGetRange) if m.first == 0]
        assert len(heads) > 1, "it was left and asked again"
        assert b.p2p.bans() == []
    finally:
        server.cancel()
        await slow.close()


async def test_unrequested_blob_chunks_get_the_peer_banned(nodes):
    b = await nodes("b")
    evil = await _evil_peer(b)
    data = b"unsolicited"
    chunk, total, branch = chunk_with_branch(data, 0)
    await evil.send(BlobChunk(blob_root(data), 0, total, chunk, branch))
    reason = await evil.wait_for_close()
    assert reason is not None and "unrequested blob chunk" in reason
    await evil.close()


async def test_nodes_answer_blob_gets_and_say_when_they_lack_a_blob(nodes):
    a = await nodes("a")
    data = os.urandom(CHUNK_SIZE + 5)
    root = a.put_blob(data)
    peer = await _evil_peer(a)
    try:
        await peer.send(BlobGet(root, 1))
        await peer.send(BlobGet(bytes(32), 0))
        await peer.wait_for(lambda: len(peer.of_type(BlobChunk)) == 2)
        got, missing = peer.of_type(BlobChunk)
        assert (got.index, got.total) == (1, 2)
        assert verify_chunk(root, 1, 2, got.data, got.branch) and got.data == data[CHUNK_SIZE:]
        assert (missing.root, missing.total, missing.data, missing.branch) == (
            bytes(32),
            0,
            b"",
            (),
        )
        await peer.send(BlobGet(root, 2))  # past the end: an honest peer never asks
        reason = await peer.wait_for_close()
        assert reason is not None and "chunk 2 of a blob of 2 chunks" in reason
    finally:
        await peer.close()


async def test_a_matrix_travels_row_by_row_under_its_row_root(nodes):
    from consensus.merkle import matrix_cols_root, matrix_rows_root

    a = await nodes("a")
    b = await nodes("b", peers=[a])
    await wait_until(lambda: len(b.p2p.peers) == 1)
    rng = np.random.default_rng(9)
    c = rng.integers(-(2**31), 2**31, (48, 80), dtype=np.int64).astype(np.int32)
    bm = rng.integers(-64, 64, (64, 32), dtype=np.int8)
    assert a.blobs.put_matrix(c) == matrix_rows_root(c)
    assert a.blobs.put_matrix(np.ascontiguousarray(bm.T)) == matrix_cols_root(bm)
    raw = await b.fetch_blob(matrix_rows_root(c), timeout=20)
    assert np.array_equal(np.frombuffer(raw, dtype="<i4").reshape(48, 80), c)
    raw_b = await b.fetch_blob(matrix_cols_root(bm), timeout=20)
    assert np.array_equal(np.frombuffer(raw_b, dtype=np.int8).reshape(32, 64).T, bm)


# Over two replies' byte budget, so every reply has a proof and the fetcher asks for
# full ranges after the first (3,813 chunks of 1,100 bytes fill RANGE_BYTES).
_CHUNK = 1100
_ROWS = os.urandom(_CHUNK * (2 * (RANGE_BYTES // _CHUNK) + 10))
_TREE = BlobTree(_ROWS, _CHUNK)


def _wrong_proof(req: BlobGetRange, honest: BlobRange) -> BlobRange:
    proof = (bytes([honest.proof[0][0] ^ 1]) + honest.proof[0][1:], *honest.proof[1:])
    return BlobRange(honest.root, honest.first, honest.total, honest.chunks, proof)


def _one_chunk_too_many(req: BlobGetRange, honest: BlobRange) -> BlobRange:
    # Genuine chunks with a valid proof, one more than were asked for (after the first
    # reply, which sets the fetcher's range size).
    if req.first == 0:
        return honest
    end = req.first + req.count + 1
    proof = tuple(range_proof(_TREE.levels, req.first, end - req.first))
    return BlobRange(
        honest.root, req.first, honest.total, tuple(_TREE.chunks[req.first : end]), proof
    )


def _one_chunk_at_a_time(req: BlobGetRange, honest: BlobRange) -> BlobRange:
    # Genuine, but only the first chunk of the ~950 asked for that fit a reply: a peer
    # that drips one valid chunk per request, each in time, would hold a fetch for hours.
    chunks, proof = _TREE.range(req.first, 1)
    return BlobRange(honest.root, req.first, honest.total, chunks, proof)


def _an_empty_chunk(req: BlobGetRange, honest: BlobRange) -> BlobRange:
    return BlobRange(honest.root, req.first, honest.total, (b"", *honest.chunks[1:]), honest.proof)


def _unrequested_range(req: BlobGetRange, honest: BlobRange) -> BlobRange:
    # A genuine range, but from a chunk nobody asked for.
    chunks, proof = _TREE.range(req.first + 1, 1)
    return BlobRange(honest.root, req.first + 1, honest.total, chunks, proof)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (_flip_last_byte, "fail verification against the root"),
        (_wrong_proof, "fail verification against the root"),
        (_one_chunk_too_many, "at most"),
        (_one_chunk_at_a_time, "holds 1 chunks where 953 were asked for and fit"),
        (_an_empty_chunk, "holds an empty chunk"),
        (_unrequested_range, "unrequested blob range from chunk 1"),
    ],
)
async def test_a_hostile_range_gets_the_peer_banned_and_nothing_kept(nodes, reply, reason):
    b = await nodes("b")
    root = _TREE.root
    evil = await _evil_peer(b)
    server = asyncio.create_task(_serve_ranges(evil, _ROWS, _CHUNK, reply))
    try:
        with pytest.raises(BlobFetchError):
            await b.fetch_blob(root, timeout=10)
        assert reason in (await evil.wait_for_close() or "")
        assert any(reason in ban["reason"] for ban in b.p2p.bans())
        assert not b.store.has_blob(root), "nothing unverified is stored"
    finally:
        server.cancel()
        await evil.close()


async def test_a_many_row_blob_crosses_in_a_few_range_messages(nodes):
    a = await nodes("a")
    b = await nodes("b", peers=[a])
    await wait_until(lambda: len(b.p2p.peers) == 1)
    rng = np.random.default_rng(3)
    # 3,000 rows of 1,500 bytes: more than one reply's byte budget, not a multiple of it.
    x = rng.integers(-128, 128, (3000, 1500), dtype=np.int8)
    root = a.blobs.put_matrix(x)
    seen = a.p2p.stats.messages_in
    raw = await b.fetch_blob(root, timeout=20)
    assert raw == x.tobytes()
    asked = a.p2p.stats.messages_in - seen
    replies = -(-x.nbytes // (RANGE_BYTES // 1500 * 1500))  # full replies of whole rows
    assert asked <= replies + 1, f"the serving node saw {asked} messages for a 3,000-row blob"
    assert not a.p2p.bans() and not b.p2p.bans()


async def test_nodes_answer_ranges_and_say_when_they_lack_a_blob(nodes):
    a = await nodes("a")
    data = os.urandom(5000)
    root = a.blobs.put(data, 100)
    peer = await _evil_peer(a)
    try:
        await peer.send(BlobGetRange(root, 7, 20))
        await peer.send(BlobGetRange(bytes(32), 0, 5))
        await peer.wait_for(lambda: len(peer.of_type(BlobRange)) == 2)
        got, missing = peer.of_type(BlobRange)
        assert (got.first, got.total, len(got.chunks)) == (7, 50, 20)
        assert b"".join(got.chunks) == data[700:2700]
        assert verify_range(root, 7, 50, got.chunks, got.proof)
        assert (missing.total, missing.chunks, missing.proof) == (0, (), ())
        await peer.send(BlobGetRange(root, 45, 99))  # cut at the blob's end
        await peer.wait_for(lambda: len(peer.of_type(BlobRange)) == 3)
        assert b"".join(peer.of_type(BlobRange)[2].chunks) == data[4500:]
        await peer.send(BlobGetRange(root, 50, 1))  # past the end: an honest peer never asks
        reason = await peer.wait_for_close()
        assert reason is not None and "chunk 50 of a blob of 50 chunks" in reason
    finally:
        await peer.close()


async def test_a_range_asking_for_no_chunks_gets_the_peer_banned(nodes):
    a = await nodes("a")
    peer = await _evil_peer(a)
    try:
        await peer.send(BlobGetRange(a.blobs.put(b"x"), 0, 0))
        reason = await peer.wait_for_close()
        assert reason is not None and "asks for no chunks" in reason
    finally:
        await peer.close()


async def test_an_urgent_fetch_holds_back_the_ranges_of_the_others(nodes):
    """A download started behind others would share the serving peer with them: while an
    urgent one runs, the others ask for no new range, and they finish after it."""
    b = await nodes("b")
    peer = await _evil_peer(b)
    background = os.urandom(6 * CHUNK_SIZE)  # more than one reply: follow-up ranges
    hurry = os.urandom(CHUNK_SIZE + 5)
    trees = {blob_root(d): BlobTree(d, CHUNK_SIZE) for d in (background, hurry)}
    bg_root, hurry_root = blob_root(background), blob_root(hurry)

    def asked(root: bytes) -> list[BlobGetRange]:
        return [r for r in peer.of_type(BlobGetRange) if r.root == root]

    async def answer(req: BlobGetRange) -> None:
        tree = trees[req.root]
        chunks, proof = tree.range(req.first, req.count)
        await peer.send(BlobRange(req.root, req.first, tree.total, chunks, proof))

    try:
        slow = asyncio.create_task(b.blobs.fetch(bg_root, 30))
        await peer.wait_for(lambda: asked(bg_root))
        fast = asyncio.create_task(b.blobs.fetch(hurry_root, 30, urgent=True))
        await peer.wait_for(lambda: asked(hurry_root))
        await answer(asked(bg_root)[0])  # the background's first range arrives...
        with pytest.raises(TimeoutError):  # ...and it asks for no more while the other runs
            await peer.wait_for(lambda: len(asked(bg_root)) > 1, timeout=1.0)
        await answer(asked(hurry_root)[0])
        assert await asyncio.wait_for(fast, 10) == hurry
        assert not slow.done()
        answered = 1
        while not slow.done():  # the rest of the background, as it asks for it
            arrival = asyncio.create_task(peer.wait_for(lambda n=answered: len(asked(bg_root)) > n))
            await asyncio.wait({arrival, slow}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            arrival.cancel()
            for req in asked(bg_root)[answered:]:
                await answer(req)
                answered += 1
        assert await slow == background
        assert not b.p2p.bans()
    finally:
        await peer.close()


async def test_a_stalled_urgent_fetch_holds_the_others_back_only_briefly(nodes, monkeypatch):
    """A peer that never answers an urgent fetch (or a stream of urgent posts) must not
    stall every other download: they ask for their ranges again after URGENT_HOLD_S."""
    monkeypatch.setattr(blobs_module, "URGENT_HOLD_S", 0.3)
    b = await nodes("b")
    peer = await _evil_peer(b)
    background = os.urandom(6 * CHUNK_SIZE)
    tree = BlobTree(background, CHUNK_SIZE)
    bg_root = blob_root(background)

    def asked() -> list[BlobGetRange]:
        return [r for r in peer.of_type(BlobGetRange) if r.root == bg_root]

    async def answer(req: BlobGetRange) -> None:
        chunks, proof = tree.range(req.first, req.count)
        await peer.send(BlobRange(req.root, req.first, tree.total, chunks, proof))

    stalled = asyncio.create_task(b.blobs.fetch(os.urandom(32), 30, urgent=True))
    try:
        await peer.wait_for(lambda: any(r.root != bg_root for r in peer.of_type(BlobGetRange)))
        slow = asyncio.create_task(b.blobs.fetch(bg_root, 30))
        await peer.wait_for(asked)  # after the hold, with the urgent one still unanswered
        answered = 0
        while not slow.done():
            for req in asked()[answered:]:
                await answer(req)
                answered += 1
            arrival = asyncio.create_task(peer.wait_for(lambda n=answered: len(asked()) > n))
            await asyncio.wait({arrival, slow}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            arrival.cancel()
        assert await slow == background
        assert not stalled.done()
    finally:
        stalled.cancel()
        await peer.close()
