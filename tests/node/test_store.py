"""The SQLite store: a reopened store gives back the chain that was saved, reorgs and
invalid branches included, and a process killed mid-import leaves a consistent file."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from consensus.blocks import Block, encode_block
from consensus.chain import Chain, Status
from consensus.encoding import encode
from consensus.errors import InvalidBlock
from consensus.keys import PrivateKey
from consensus.params import TESTNET
from consensus.pow import null_job
from node import store as store_module
from node.store import BLOB_PAGE_SIZE, FILENAME, DiskFull, Store, StoreError
from tests.support.chainkit import (
    ALICE,
    BOB,
    CAROL,
    MID,
    Clock,
    extend,
    new_chain,
    next_block,
    remine,
    transfer,
)

REPO = Path(__file__).resolve().parents[2]
OTHER_MINER = PrivateKey.from_label("miner-1")


def replay(blocks: list[Block], now: int) -> Chain:
    chain, clock = new_chain()
    clock.now = now
    for b in blocks:
        chain.add_block(b)
    return chain


def view(chain: Chain) -> dict[str, Any]:
    """Everything a restarted node must get back, in comparable form."""
    return {
        "active": list(chain.active),
        "entries": {
            h: (e.header, e.work, e.seq, e.status) for h, e in sorted(chain.entries.items())
        },
        "blocks": set(chain.blocks),
        "undos": {h: (u.entries, u.prev_root) for h, u in chain.undos.items()},
        "state": chain.state.snapshot(),
        "root": chain.state.root,
        "next_seq": chain.next_seq,
    }


@pytest.fixture(scope="module")
def two_branches():
    """Common: 2 blocks. A: 3 blocks with transfers. B: 4 heavier blocks from the same fork."""
    a, ca = new_chain()
    extend(a, ca, 2)
    common = [a.blocks[h] for h in a.active[1:]]
    fork_clock = ca.now
    a_tail = []
    for i in range(3):
        b = next_block(a, ca, (transfer(ALICE, BOB, 1_000 + i, i), transfer(BOB, CAROL, 7, i)))
        a.add_block(b)
        a_tail.append(b)
    b_chain = replay(common, fork_clock)
    cb = Clock(MID)
    cb.now = fork_clock
    b_tail = []
    for i in range(4):
        blk = next_block(b_chain, cb, (transfer(CAROL, ALICE, 3, i),), miner=OTHER_MINER)
        b_chain.add_block(blk)
        b_tail.append(blk)
    return common, a_tail, b_tail, max(ca.now, cb.now) + 10_000


def import_all(store: Store, chain: Chain, blocks: list[Block]) -> None:
    for b in blocks:
        with contextlib.suppress(InvalidBlock):
            chain.add_block(b)
        store.record(chain)


def reopen(path: Path, now: int) -> Chain:
    with Store(path, MID) as store:
        return store.load_chain(lambda: now)


def test_empty_store_starts_at_genesis_and_keeps_it(tmp_path):
    with Store(tmp_path, MID) as store:
        chain = store.load_chain(lambda: 0)
    assert chain.height == 0
    assert (tmp_path / FILENAME).exists()
    again = reopen(tmp_path, 0)
    assert view(again) == view(chain)
    with Store(tmp_path / FILENAME, MID) as store:  # the file named directly: the same store
        assert store.active_hashes() == [chain.genesis.hash]
    assert again.state.root == again.tip.header.state_root


def test_imported_blocks_reload_identically_and_the_chain_goes_on(tmp_path, two_branches):
    common, a_tail, _, now = two_branches
    with Store(tmp_path, MID) as store:
        chain = store.load_chain(lambda: now)
        import_all(store, chain, common + a_tail)
        assert store.header_by_height(3) == a_tail[0].header
        assert store.block_by_hash(a_tail[-1].hash) == a_tail[-1]
    loaded = reopen(tmp_path, now)
    assert loaded.height == 5
    assert loaded.tip.hash == a_tail[-1].hash
    assert view(loaded) == view(chain)
    assert loaded.state.balance(CAROL.address) == MID.prefund_amount + 21

    # The reloaded chain keeps validating and saving new blocks.
    clock = Clock(MID)
    clock.now = now
    with Store(tmp_path, MID) as store:
        chain = store.load_chain(clock)
        more = next_block(chain, clock, (transfer(ALICE, CAROL, 5, 3),))
        chain.add_block(more)
        store.record(chain)
    assert view(reopen(tmp_path, clock.now)) == view(chain)
    assert view(chain) == view(replay([*common, *a_tail, more], clock.now)) | {
        "next_seq": chain.next_seq
    }


def test_a_persisted_reorg_reloads_as_the_in_memory_chain(tmp_path, two_branches):
    common, a_tail, b_tail, now = two_branches
    with Store(tmp_path, MID) as store:
        chain = store.load_chain(lambda: now)
        import_all(store, chain, common + a_tail + b_tail)
    assert chain.tip.hash == b_tail[-1].hash
    loaded = reopen(tmp_path, now)
    assert view(loaded) == view(chain)
    assert all(loaded.entries[b.hash].status is Status.VALID for b in a_tail)
    reference = replay(common + b_tail, now)
    assert loaded.state.snapshot() == reference.state.snapshot()
    assert loaded.state.root == reference.state.root == loaded.tip.header.state_root

    # And back: A grows heavier again, another reorg, saved and reloaded.
    clock = Clock(MID)
    clock.now = now
    side = replay(common + a_tail, now)
    a_more = []
    for _ in range(2):
        b = next_block(side, clock)
        side.add_block(b)
        a_more.append(b)
    with Store(tmp_path, MID) as store:
        chain = store.load_chain(clock)
        import_all(store, chain, a_more)
    assert chain.tip.hash == a_more[-1].hash
    assert view(reopen(tmp_path, clock.now)) == view(chain)


def test_an_invalid_branch_is_saved_invalid_and_the_tip_stays(tmp_path, two_branches):
    common, a_tail, b_tail, now = two_branches
    bad_last = b_tail[-1]
    job = null_job(bad_last.header.prev_hash, MID)
    bad = Block(remine(dataclasses.replace(bad_last.header, state_root=bytes(32)), job), ())
    bad = Block(bad.header, bad_last.txs)
    with Store(tmp_path, MID) as store:
        chain = store.load_chain(lambda: now)
        import_all(store, chain, common + a_tail + b_tail[:-1])
        with pytest.raises(InvalidBlock, match="state_root"):
            chain.add_block(bad)
        store.record(chain)
    loaded = reopen(tmp_path, now)
    assert loaded.entries[bad.hash].status is Status.INVALID
    assert loaded.tip.hash == a_tail[-1].hash
    assert view(loaded) == view(chain)


@pytest.mark.parametrize("damage", ["does not decode", "over the"])
def test_a_stored_side_block_that_can_never_connect_is_dropped_not_fatal(
    tmp_path, two_branches, caplog, damage
):
    """A side block that does not decode, or is over the size limit (an earlier release
    stored such blocks unchecked), stopped every start. It is dropped with the side
    blocks built on it, each logged; the active chain and other side blocks load."""
    common, a_tail, b_tail, now = two_branches
    with Store(tmp_path, MID) as store:
        chain = store.load_chain(lambda: now)
        import_all(store, chain, common + a_tail + b_tail[:2])  # B: a lighter side branch
    data = b"\xc1" * 100 if damage == "does not decode" else b"\x00" * (MID.max_block_bytes + 1)
    with sqlite3.connect(tmp_path / FILENAME) as db:
        db.execute("UPDATE blocks SET data = ? WHERE hash = ?", (data, b_tail[0].hash))
    caplog.set_level("WARNING", logger="pouw.store")
    loaded = reopen(tmp_path, now)
    assert loaded.tip.hash == a_tail[-1].hash and loaded.height == chain.height
    assert b_tail[0].hash not in loaded.entries and b_tail[1].hash not in loaded.entries
    assert set(loaded.entries) == set(chain.entries) - {b_tail[0].hash, b_tail[1].hash}
    assert damage in caplog.text and "its parent was dropped" in caplog.text
    with sqlite3.connect(tmp_path / FILENAME) as db:  # gone from the file: the next start is clean
        left = {h for (h,) in db.execute("SELECT hash FROM blocks")}
    assert b_tail[0].hash not in left and b_tail[1].hash not in left
    caplog.clear()
    assert view(reopen(tmp_path, now)) == view(loaded) and "dropping" not in caplog.text


def test_an_active_block_that_does_not_decode_is_still_a_corrupt_store(tmp_path, two_branches):
    common, a_tail, _, now = two_branches
    with Store(tmp_path, MID) as store:
        import_all(store, store.load_chain(lambda: now), common + a_tail)
    with sqlite3.connect(tmp_path / FILENAME) as db:
        db.execute("UPDATE blocks SET data = ? WHERE hash = ?", (b"\xc1", a_tail[0].hash))
    with pytest.raises(StoreError, match="does not decode"):
        reopen(tmp_path, now)


def test_orphans_connected_by_their_parent_are_all_saved(tmp_path, two_branches):
    common, a_tail, _, now = two_branches
    blocks = common + a_tail
    with Store(tmp_path, MID) as store:
        chain = store.load_chain(lambda: now)
        import_all(store, chain, list(reversed(blocks[1:])))
        assert store.active_hashes() == [chain.genesis.hash]
        import_all(store, chain, blocks[:1])
    assert chain.height == len(blocks)
    assert view(reopen(tmp_path, now)) == view(chain)


def test_blobs_are_kept_by_content_root(tmp_path):
    root, data = bytes(range(32)), b"\x01\x02" * 1000
    with Store(tmp_path, MID) as store:
        assert not store.has_blob(root) and store.get_blob(root) is None
        store.put_blob(root, data, 1024)
        store.put_blob(root, data, 1024)
    with Store(tmp_path, MID) as store:
        assert store.has_blob(root)
        assert store.get_blob(root) == data
        assert store.blob_size(root) == len(data)


def test_why_a_blob_is_kept_outlives_a_restart_and_goes_with_the_blob(tmp_path):
    """A miner's record of the blobs it keeps only for a job (to prune them later) is
    read back after a reopen, keeps a blob's first job, and leaves with the blob."""
    c_root, a_root, b_root = bytes([1] * 32), bytes([2] * 32), bytes([3] * 32)
    job, other = bytes([7] * 32), bytes([8] * 32)
    with Store(tmp_path, MID) as store:
        store.put_blob(c_root, b"c" * 64, 16, kept_for=job)
        store.keep_blobs([a_root, b_root], job)  # operands on their way
        store.keep_blobs([a_root], other)  # recorded already: stays with its job
        store.put_blob(bytes([4] * 32), b"d" * 64, 16)  # the node's own: not recorded
    with Store(tmp_path, MID) as store:
        assert store.kept_blobs() == {c_root: job, a_root: job, b_root: job}
        store.delete_blob(c_root)
        store.delete_blob(b_root)  # never stored: its record goes all the same
        assert store.kept_blobs() == {a_root: job} and not store.has_blob(c_root)


def test_blobs_of_an_earlier_datadir_move_to_the_blob_file(tmp_path):
    """A datadir of an earlier release kept its blobs in the chain file: they are moved
    to the blob file when it is opened (their kept-for records too), and the chain file
    keeps none."""
    with Store(tmp_path, MID) as store:
        store.load_chain(lambda: 0)
    root, job = bytes([7] * 32), bytes([8] * 32)
    db = sqlite3.connect(tmp_path / FILENAME)
    with db:  # the layout before: both tables in the chain file
        db.execute(
            "CREATE TABLE blobs (root BLOB NOT NULL UNIQUE, size INTEGER NOT NULL, "
            "chunk_size INTEGER NOT NULL, data BLOB NOT NULL)"
        )
        db.execute("CREATE TABLE kept_blobs (root BLOB PRIMARY KEY, job_id BLOB NOT NULL)")
        db.execute("INSERT INTO blobs VALUES (?, 5, 16, ?)", (root, b"hello"))
        db.execute("INSERT INTO kept_blobs VALUES (?, ?)", (root, job))
    db.close()
    (tmp_path / "chain.blobs.sqlite").unlink()
    with Store(tmp_path, MID) as store:
        assert store.get_blob(root) == b"hello" and store.kept_blobs() == {root: job}
        assert store.load_chain(lambda: 0).height == 0
    db = sqlite3.connect(tmp_path / FILENAME)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    db.close()
    assert not tables & {"blobs", "kept_blobs"}


def test_a_blob_file_of_small_pages_keeps_working_and_a_new_one_has_large_pages(tmp_path):
    """A new blob file is made with BLOB_PAGE_SIZE pages (megabyte blobs: a fraction of the
    overflow pages and WAL checkpoints of SQLite's 4 KiB default); a blob file an earlier
    release made with 4 KiB pages keeps its page size and still reads and writes."""
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    with Store(old_dir, MID) as store:
        blob_path = store.blob_path
    blob_path.unlink()
    db = sqlite3.connect(blob_path)  # as an earlier release made it
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE blobs (root BLOB NOT NULL UNIQUE, size INTEGER NOT NULL, "
        "chunk_size INTEGER NOT NULL, data BLOB NOT NULL)"
    )
    old_root, old_data = bytes([5] * 32), os.urandom(100_000)
    with db:
        db.execute("INSERT INTO blobs VALUES (?, ?, 4096, ?)", (old_root, len(old_data), old_data))
    db.close()
    big_root, big_data = bytes([6] * 32), os.urandom(1 << 20)
    for path in (old_dir, new_dir):
        with Store(path, MID) as store:
            store.put_blob(big_root, big_data, 4096)
        with Store(path, MID) as store:
            assert store.get_blob(big_root) == big_data
    with Store(old_dir, MID) as store:
        assert store.get_blob(old_root) == old_data
    sizes = {}
    for path in (old_dir, new_dir):
        db = sqlite3.connect(path / "chain.blobs.sqlite")
        sizes[path] = db.execute("PRAGMA page_size").fetchone()[0]
        db.close()
    assert sizes == {old_dir: 4096, new_dir: BLOB_PAGE_SIZE}


def test_a_block_import_does_not_wait_for_a_blob_being_written(tmp_path, two_branches):
    """Storing a job's C (megabytes, on a worker thread) holds the blob file's write lock;
    a block import, on the event loop, writes the chain file and does not wait for it."""
    common, _, _, now = two_branches
    with Store(tmp_path, MID) as store:
        chain = store.load_chain(lambda: now)
        writing, done = threading.Event(), threading.Event()

        def slow_blob_write() -> None:
            with store._blob_transaction() as db:
                db.execute("INSERT INTO blobs VALUES (?, 1, 1, ?)", (bytes(32), b"x"))
                writing.set()
                done.wait(30)

        writer = threading.Thread(target=slow_blob_write)
        writer.start()
        try:
            assert writing.wait(10)
            started = time.monotonic()
            import_all(store, chain, common)
            assert time.monotonic() - started < 5, "the import waited for the blob write"
        finally:
            done.set()
            writer.join(10)
        assert store.has_blob(bytes(32))
    assert reopen(tmp_path, now).tip.hash == chain.tip.hash


def test_a_store_of_another_network_is_refused(tmp_path):
    with Store(tmp_path, MID) as store:
        store.load_chain(lambda: 0)
    with pytest.raises(StoreError, match="not 'testnet'"):
        Store(tmp_path, TESTNET)


@pytest.mark.parametrize("version", [2, 3])
def test_a_datadir_of_an_earlier_chain_format_is_refused(tmp_path, version):
    """Version 2 stored job records without their claim fields, version 3 headers whose
    job has no poster: neither can be read, and the error says what to do."""
    with Store(tmp_path, MID) as store:
        store.load_chain(lambda: 0)
    db = sqlite3.connect(tmp_path / FILENAME)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version,))
    db.close()
    with pytest.raises(StoreError, match=f"schema version {version}, this node reads version 4"):
        Store(tmp_path, MID)


def test_a_tampered_state_root_is_reported(tmp_path, two_branches):
    common, _, _, now = two_branches
    with Store(tmp_path, MID) as store:
        chain = store.load_chain(lambda: now)
        import_all(store, chain, common)
    db = sqlite3.connect(tmp_path / FILENAME)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'state_root'", (bytes(32),))
    db.close()
    with pytest.raises(StoreError, match="state root"):
        reopen(tmp_path, now)


# ------------------------------------------------------------------ crash safety

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from consensus.blocks import decode_block
    from consensus.encoding import decode
    from consensus.errors import InvalidBlock
    from node.store import Store
    from tests.support.chainkit import MID

    datadir, blocks_file, now = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    blocks = [decode_block(b) for b in decode(blocks_file.read_bytes(), 1 << 30)]
    store = Store(datadir, MID)
    chain = store.load_chain(lambda: now)
    print("ready", flush=True)
    for b in blocks:
        if chain.contains(b.hash):
            continue  # saved by an earlier run
        try:
            chain.add_block(b)
        except InvalidBlock:
            pass
        else:
            print("saving", flush=True)
        store.record(chain)
        print(b.hash.hex(), flush=True)
    store.close()
    print("done", flush=True)
    """
)


@pytest.fixture(scope="module")
def crash_blocks():
    """Common 3 blocks, branch A of 6 and a heavier branch B of 7 from the same fork,
    each block full of transfers so that a save writes many rows."""
    senders = [PrivateKey.from_label(f"devnet-{i}") for i in range(8)]

    def branch(chain: Chain, clock: Clock, count: int, base_nonce: list[int], amount: int):
        out = []
        for _ in range(count):
            txs = []
            for s, key in enumerate(senders):
                for _ in range(3):
                    txs.append(transfer(key, senders[(s + 1) % 8], amount, base_nonce[s]))
                    base_nonce[s] += 1
            b = next_block(chain, clock, tuple(txs))
            chain.add_block(b)
            out.append(b)
        return out

    a, ca = new_chain()
    nonces = [0] * 8
    common = branch(a, ca, 3, nonces, 1)
    fork_clock, fork_nonces = ca.now, list(nonces)
    a_tail = branch(a, ca, 6, nonces, 2)
    b_chain = replay(common, fork_clock)
    cb = Clock(MID)
    cb.now = fork_clock
    b_tail = branch(b_chain, cb, 7, list(fork_nonces), 3)
    return common + a_tail + b_tail, b_chain, max(ca.now, cb.now) + 10_000


def check_consistent(datadir: Path, now: int) -> Chain:
    """The store loads (its own checks pass) and a replay of its active blocks agrees."""
    loaded = reopen(datadir, now)
    assert loaded.state.root == loaded.tip.header.state_root
    fresh = replay([loaded.blocks[h] for h in loaded.active[1:]], now)
    assert fresh.tip.hash == loaded.tip.hash
    assert fresh.state.snapshot() == loaded.state.snapshot()
    assert fresh.state.root == loaded.state.root
    return loaded


def test_a_process_killed_mid_import_leaves_a_consistent_store(tmp_path, crash_blocks):
    blocks, expected, now = crash_blocks
    blocks_file = tmp_path / "blocks.bin"
    blocks_file.write_bytes(encode([encode_block(b) for b in blocks]))
    datadir = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(1234)
    kills = 0
    for _ in range(40):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(datadir), str(blocks_file), str(now)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        # Let it save 0 or 1 new block, then kill it: mostly while it saves the
        # next one (a save takes about a millisecond), sometimes anywhere after.
        reported: list[str] = []
        wait_for = rng.randrange(2)
        line = ""
        while True:
            line = child.stdout.readline().strip()
            if line in ("done", ""):
                break
            if line != "saving":
                reported.append(line)
            elif len(reported) >= wait_for:
                break
        finished = line == "done"
        if not finished:
            busy_wait(rng.uniform(0, 0.0015 if kills % 4 else 0.010))
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait(timeout=30)
        child.stdout.close()
        loaded = check_consistent(datadir, now)
        # Whatever record() had returned for before the kill is on disk.
        assert all(bytes.fromhex(h) in loaded.entries for h in reported)
        if finished:
            break
    # 16 blocks at one or two a round: the import is cut many times before it ends.
    assert finished and kills >= 6
    assert loaded.tip.hash == expected.tip.hash
    assert loaded.state.snapshot() == expected.state.snapshot()


def busy_wait(seconds: float) -> None:
    """Sub-millisecond delays that time.sleep would round up."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_blob_is_read_in_part_and_its_leaves_live_and_die_with_it(tmp_path):
    """``read_blob`` reads a byte range of a stored blob (what a range served from its
    leaves needs) and stops at its end; leaf hashes are kept only for a stored blob and
    go when it is deleted."""
    store = Store(tmp_path / FILENAME, MID)
    try:
        data = os.urandom(300_000)
        root = b"r" * 32
        store.put_blob_leaves(root, b"x" * 32)  # no such blob: nothing kept
        assert store.get_blob_leaves(root) is None
        assert store.read_blob(root, 0, 10) is None
        store.put_blob(root, data, 100_000)
        assert store.read_blob(root, 123_456, 1_000) == data[123_456:124_456]
        assert store.read_blob(root, 299_990, 1_000) == data[299_990:]
        store.put_blob_leaves(root, b"l" * 96)
        assert store.get_blob_leaves(root) == (300_000, 100_000, b"l" * 96)
        store.delete_blob(root)
        assert store.get_blob_leaves(root) is None and store.read_blob(root, 0, 1) is None
        store.put_blob(root, data, 100_000)  # stored again: its old leaves are not back
        assert store.get_blob_leaves(root) is None
    finally:
        store.close()


def test_a_blob_is_a_file_named_by_its_root_and_what_a_stopped_write_leaves_is_swept(tmp_path):
    """A blob's bytes are a file of the blob directory named by its root; a file being
    written when the process stopped (``*.tmp``) and a blob's file whose row never
    committed are removed when the store opens again; other files are left alone."""
    root, data = bytes([9] * 32), os.urandom(100_000)
    with Store(tmp_path, MID) as store:
        store.put_blob(root, data, 4096)
        blob_dir = store.blob_dir
    assert (blob_dir / root.hex()).read_bytes() == data
    leftovers = [blob_dir / f"{root.hex()}.0123.tmp", blob_dir / ("ab" * 32)]
    for path in leftovers:
        path.write_bytes(b"half of a blob")
    (blob_dir / "notes.txt").write_text("an operator's")
    (blob_dir / ("z" * 64)).write_text("not a root")
    with Store(tmp_path, MID) as store:
        assert store.get_blob(root) == data
        assert store.read_blob(root, 99_990, 100) == data[99_990:]
        store.delete_blob(root)
        assert not store.has_blob(root) and store.read_blob(root, 0, 1) is None
    assert sorted(p.name for p in blob_dir.iterdir()) == ["notes.txt", "z" * 64]


def test_a_blob_whose_file_was_lost_or_cut_short_reads_as_missing_until_stored_again(
    tmp_path,
):
    """A disk that lost a blob's file, or kept only part of it: the blob reads as not
    stored (its fetch asks peers for it) and storing it again mends the file."""
    root, data = bytes([3] * 32), os.urandom(50_000)
    with Store(tmp_path, MID) as store:
        store.put_blob(root, data, 1000)
        path = store.blob_dir / root.hex()
        for damage in (path.unlink, lambda: path.write_bytes(data[:-1])):
            damage()
            assert store.has_blob(root) and store.get_blob_chunked(root) is None
            store.put_blob(root, data, 1000)
            assert store.get_blob_chunked(root) == (data, 1000)


def test_a_blob_deleted_while_it_is_read_reads_as_gone_without_an_error(
    tmp_path, monkeypatch, caplog
):
    """A prune deletes a blob between a reader's look at its row and at its file: the
    read says "not stored", as after the delete, and logs no lost file; a file lost
    under a row that is still there is still an error."""
    root, data = bytes([5] * 32), os.urandom(50_000)
    with Store(tmp_path, MID) as store:
        file_of = Store._blob_file

        def deleted_first(self, r):  # the prune runs right after the row was read
            monkeypatch.setattr(Store, "_blob_file", file_of)
            self.delete_blob(r)
            return file_of(self, r)

        for read in (lambda: store.get_blob_chunked(root), lambda: store.read_blob(root, 0, 9)):
            store.put_blob(root, data, 1000)
            monkeypatch.setattr(Store, "_blob_file", deleted_first)
            with caplog.at_level("DEBUG", logger="pouw.store"):
                assert read() is None
            assert not store.has_blob(root)
            assert "missing" not in caplog.text and "deleted while it was read" in caplog.text
            caplog.clear()
        store.put_blob(root, data, 1000)
        (store.blob_dir / root.hex()).unlink()
        assert store.read_blob(root, 0, 9) is None and store.get_blob_chunked(root) is None
        assert caplog.text.count("is missing") == 2


def test_a_blob_that_would_fill_the_disk_is_refused_and_nothing_is_kept(tmp_path, monkeypatch):
    root, data = bytes([4] * 32), os.urandom(10_000)
    with Store(tmp_path, MID) as store:
        free = shutil.disk_usage(store.blob_dir).free
        monkeypatch.setattr(store_module, "MIN_FREE_BYTES", free)  # this blob would cross it
        with pytest.raises(DiskFull, match="disk is full"):
            store.put_blob(root, data, 1000, kept_for=bytes(32))
        assert not store.has_blob(root) and store.kept_blobs() == {}
        assert list(store.blob_dir.iterdir()) == []
        monkeypatch.setattr(store_module, "MIN_FREE_BYTES", 0)
        store.put_blob(root, data, 1000)
        assert store.get_blob(root) == data
