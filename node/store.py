"""The node's chain on disk: one SQLite file, every block import one transaction (and
the job blobs in a second file, see ``_BLOB_SCHEMA``).

The in-memory :class:`~consensus.chain.Chain` is the authority; this module
mirrors it so a restarted node resumes where it stopped without re-validating
anything. Each :meth:`Store.sync` writes, in a single SQLite transaction,
everything the chain changed since the last one: new blocks, status changes,
the active chain above the fork point, the state rows those blocks touched,
their undo records and the tip. A process killed at any instant therefore
leaves either the whole import on disk or none of it, and :meth:`load_chain`
checks that what it reads agrees with itself before trusting it.

Durability: WAL with ``synchronous=NORMAL``. In WAL mode NORMAL never
corrupts the database and never exposes half a transaction, whether the
process or the machine dies; a power loss can only forget the last few
commits, i.e. the last few blocks, which peers send again. FULL would fsync
on every block for a guarantee a blockchain node does not need.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from consensus.blocks import Block, BlockHeader, decode_block, encode_block
from consensus.chain import Chain, Entry, Status
from consensus.errors import DecodeError
from consensus.params import NetworkParams
from consensus.state import (
    State,
    Undo,
    decode_state_value,
    decode_undo,
    encode_state_value,
    encode_undo,
)

log = logging.getLogger("pouw.store")

FILENAME = "chain.sqlite"
SCHEMA_VERSION = 4
"""3: a job's state record carries its claim (claimant, kind, id, bond): the rows of a
version-2 datadir no longer read as job records, so such a datadir is refused.
4: a header's job names its poster (job ids changed): a version-3 datadir holds blocks
that no longer decode, of a chain with another genesis."""
WORK_BYTES = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    hash BLOB NOT NULL UNIQUE,
    height INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    seq INTEGER NOT NULL UNIQUE,
    status TEXT NOT NULL,
    work BLOB NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS active (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    tbl TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS undo (
    hash BLOB PRIMARY KEY,
    data BLOB NOT NULL
);
"""


_BLOB_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    root BLOB NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS kept_blobs (
    root BLOB PRIMARY KEY,
    job_id BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blob_leaves (
    root BLOB PRIMARY KEY,
    leaves BLOB NOT NULL
) WITHOUT ROWID;
"""
"""The blobs (job operands and results) and why each is kept: in a file of their own
(``<chain file stem>.blobs.sqlite``), with its own connection and lock. A blob's bytes
are a file of the blob directory beside it, named by its root (``data`` is then empty);
a row an earlier release wrote holds them in ``data``, and is read from there. Writing a job's
16 MiB C took the lock a block's import needs for up to a second (on the event loop);
in one SQLite file the two writers would queue for the one write lock all the same."""


BLOB_PAGE_SIZE = 65_536
"""The blob file's SQLite page size, SQLite's largest. It was chosen when a job's operand
or C was megabytes in one row (the rows of an earlier release still are): with the
default 4 KiB pages, storing an 8 MiB operand took ~60 ms (2,048 overflow pages, and the
WAL passed its 1,000-page checkpoint on every blob, so each was written twice and
synced); with 64 KiB pages ~7–11 ms. The bytes are now files of the blob directory."""


MIN_FREE_BYTES = 64 << 20
"""Free space a blob must leave on its disk, else DiskFull and nothing is written (as
Bitcoin Core checks before it writes a block file): the node stops taking blobs while
the chain file still has room for blocks."""


class StoreError(Exception):
    """The chain file cannot be used: another network, a newer schema, or inconsistent."""


class DiskFull(OSError):
    """A write found the store's disk full (SQLite's SQLITE_FULL); nothing of it was
    written. An operator frees space; the node answers its clients with this."""


class Store:
    """SQLite persistence of one network's chain, state and job blobs.

    Open it, :meth:`load_chain` once, then :meth:`record` after every
    ``chain.add_block``. Calls are serialized by a lock, so the node may use
    it from a worker thread, but one Store serves one Chain.
    """

    def __init__(self, path: Path, params: NetworkParams) -> None:
        """Open (or create) ``<path>/chain.sqlite``, ``path`` being the node's data
        directory; a ``path`` ending in ``.sqlite`` names the file itself."""
        self.params = params
        path = Path(path)
        self.path = path if path.suffix == ".sqlite" else path / FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._blob_lock = threading.RLock()
        self.blob_path = blob_file(self.path)
        self.blob_dir = blob_dir(self.path)
        self._db = _connect(self.path)
        try:
            self._init_schema()  # a datadir refused here gets no blob file
            self._blob_db = _connect(self.blob_path, BLOB_PAGE_SIZE)
        except BaseException:
            self._db.close()
            raise
        try:
            with self._blob_lock:
                self._blob_db.executescript(_BLOB_SCHEMA)
            self._move_blobs_out()
            self.blob_dir.mkdir(exist_ok=True)
            self._sweep_blob_dir()
        except BaseException:
            self._db.close()
            self._blob_db.close()
            raise
        # The active chain as stored, to find the fork point without a query.
        self._active: list[bytes] | None = None

    def _init_schema(self) -> None:
        # executescript commits first: run it alone (every statement is idempotent).
        with self._lock:
            self._db.executescript(_SCHEMA)
        with self._transaction() as db:
            version = self._meta(db, "schema_version")
            if version is None:
                self._set_meta(db, "schema_version", SCHEMA_VERSION)
                self._set_meta(db, "network", self.params.name)
                self._set_meta(db, "chain_id", self.params.chain_id)
                return
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version}, this node reads version "
                f"{SCHEMA_VERSION}: a datadir of an earlier release, whose chain this one does "
                "not continue (move this file aside and the node starts its network's chain anew)"
            )
        chain_id = self._meta(self._db, "chain_id")
        if chain_id != self.params.chain_id:
            raise StoreError(
                f"{self.path}: holds network {self._meta(self._db, 'network')!r} "
                f"(chain id {chain_id}), not {self.params.name!r}"
            )

    def _move_blobs_out(self) -> None:
        """A datadir of an earlier release keeps its blobs in the chain file: move them to
        the blob file (idempotent: a move cut short is finished at the next open)."""
        with self._lock:
            tables = {
                name
                for (name,) in self._db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                ).fetchall()
            }
        old = [t for t in ("blobs", "kept_blobs") if t in tables]
        if not old:
            return
        with self._blob_lock:
            self._blob_db.execute("ATTACH DATABASE ? AS chain", (str(self.path),))
            try:
                self._blob_db.execute("BEGIN IMMEDIATE")
                for table in old:
                    self._blob_db.execute(
                        f"INSERT OR IGNORE INTO main.{table} SELECT * FROM chain.{table}"
                    )
                self._blob_db.execute("COMMIT")
            finally:
                self._blob_db.execute("DETACH DATABASE chain")
        with self._transaction() as db:
            for table in old:
                db.execute(f"DROP TABLE {table}")

    def _sweep_blob_dir(self) -> None:
        """Remove what a process stopped mid-write left in the blob directory: a file being
        written (``*.tmp``), or a blob's file whose row never committed or was deleted."""
        with self._blob_lock:
            rows = self._blob_db.execute("SELECT root FROM blobs WHERE length(data) = 0")
            kept = {bytes(root).hex() for (root,) in rows.fetchall()}
        for entry in os.scandir(self.blob_dir):
            name = entry.name
            a_blob = len(name) == 64 and not name.strip("0123456789abcdef")
            if name.endswith(".tmp") or (a_blob and name not in kept):
                Path(entry.path).unlink(missing_ok=True)

    # ------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            self._db.close()
        with self._blob_lock:
            self._blob_db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return _immediate(self._db, self._lock)

    def _blob_transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return _immediate(self._blob_db, self._blob_lock)

    @staticmethod
    def _meta(db: sqlite3.Connection, key: str) -> Any:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: Any) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------ loading

    def load_chain(self, clock: Callable[[], int]) -> Chain:
        """The stored chain, or a fresh one (genesis written) if the store is empty.

        Nothing is re-validated: every block was checked when it was added.
        What is checked is that the parts agree (active chain linked and
        ACTIVE, one undo record per active block, tip and state root matching
        the tip header); StoreError says what does not.
        """
        with self._lock:
            if self._meta(self._db, "tip") is None:
                chain = Chain(self.params, clock)
                self._active = []
                self.sync(chain)
                return chain
            try:
                chain = self._read_chain(clock)
            except (DecodeError, ValueError) as err:  # a row that does not decode
                raise self._corrupt(str(err)) from None
            self._active = list(chain.active)
            return chain

    def _corrupt(self, why: str) -> StoreError:
        return StoreError(f"{self.path} is inconsistent: {why}")

    def _drop_side_blocks(
        self, unusable: dict[bytes, str], entries: dict[bytes, Entry], blocks: dict[bytes, Block]
    ) -> None:
        """Delete stored side blocks that can never connect (an earlier release stored
        side blocks over the size limit unchecked, and one that does not decode would
        stop every start) with the side blocks built on them: logged, the rest kept."""
        for h, why in unusable.items():
            log.warning("dropping stored side block %s: %s", h.hex(), why)
        dropped = set(unusable)
        while True:
            children = {h for h, e in entries.items() if e.header.prev_hash in dropped}
            if not children:
                break
            for h in children:
                log.warning("dropping stored side block %s: its parent was dropped", h.hex())
                del entries[h], blocks[h]
            dropped |= children
        with self._transaction() as db:
            db.executemany("DELETE FROM blocks WHERE hash = ?", [(h,) for h in dropped])

    def _read_chain(self, clock: Callable[[], int]) -> Chain:
        db = self._db
        entries: dict[bytes, Entry] = {}
        blocks: dict[bytes, Block] = {}
        rows = db.execute("SELECT hash, seq, status, work, data FROM blocks ORDER BY seq")
        unusable: dict[bytes, str] = {}  # side blocks that can never connect, and why
        for h, seq, status, work, data in rows:
            side = Status(status) is not Status.ACTIVE
            if side and len(data) > self.params.max_block_bytes:
                unusable[h] = f"{len(data)} bytes, over the {self.params.max_block_bytes} limit"
                continue
            try:
                block = decode_block(data)
            except DecodeError as e:
                if side:
                    unusable[h] = f"does not decode: {e}"
                    continue
                raise self._corrupt(f"block {h.hex()} does not decode: {e}") from None
            if block.hash != h:
                raise self._corrupt(f"block stored under {h.hex()} hashes to {block.hash.hex()}")
            entries[h] = Entry(block.header, int.from_bytes(work, "big"), seq, Status(status))
            blocks[h] = block
        if unusable:
            self._drop_side_blocks(unusable, entries, blocks)

        active: list[bytes] = []
        for height, h in db.execute("SELECT height, hash FROM active ORDER BY height"):
            if height != len(active):
                raise self._corrupt(f"active chain has no block at height {len(active)}")
            entry = entries.get(h)
            if entry is None or entry.status is not Status.ACTIVE or entry.header.height != height:
                raise self._corrupt(f"active block {h.hex()} at height {height} is not stored")
            if height and entry.header.prev_hash != active[-1]:
                raise self._corrupt(f"active block at height {height} does not link to its parent")
            active.append(h)
        if not active:
            raise self._corrupt("no active chain")
        n_active = sum(e.status is Status.ACTIVE for e in entries.values())
        if n_active != len(active):
            raise self._corrupt(f"{n_active} blocks marked active, active chain has {len(active)}")

        undos: dict[bytes, Undo] = {}
        for h, data in db.execute("SELECT hash, data FROM undo"):
            try:
                undos[h] = decode_undo(data)
            except DecodeError as e:
                raise self._corrupt(f"undo record of {h.hex()} does not decode: {e}") from None
        if set(undos) != set(active[1:]):
            raise self._corrupt("undo records do not match the active chain")

        tables: dict[str, dict[Any, Any]] = {}
        for tbl, key, value in db.execute("SELECT tbl, key, value FROM state"):
            tables.setdefault(tbl, {})[decode_state_value(key)] = decode_state_value(value)
        tip, root = self._meta(db, "tip"), self._meta(db, "state_root")
        if tip != active[-1]:
            raise self._corrupt("meta tip is not the last active block")
        if root != entries[tip].header.state_root:
            raise self._corrupt("stored state root is not the tip header's state_root")
        next_seq = self._meta(db, "next_seq")
        if not isinstance(next_seq, int) or next_seq <= max(e.seq for e in entries.values()):
            raise self._corrupt("next arrival number is not after every stored block")
        try:
            return Chain.restore(
                self.params, clock, entries, blocks, active, undos, State(tables, root), next_seq
            )
        except ValueError as e:
            raise self._corrupt(str(e)) from None

    # ------------------------------------------------------------ saving

    def record(self, chain: Chain) -> None:
        """Persist what ``chain.add_block`` changed; call it after every add_block.

        Also correct after add_block raised InvalidBlock (the blocks it marked
        invalid are saved), and a no-op after an orphan or a duplicate: the
        chain itself records what changed (``chain.unsaved``).
        """
        self.sync(chain)

    def sync(self, chain: Chain) -> None:
        """Write everything the chain changed since the last sync, in one transaction."""
        with self._lock:
            if self._active is None:
                raise RuntimeError("Store.load_chain must be called before saving a chain")
            old, new = self._active, chain.active
            fork = min(len(old), len(new))
            while fork and old[fork - 1] != new[fork - 1]:
                fork -= 1
            changed = set(chain.unsaved)
            if not changed and fork == len(old) == len(new):
                return
            with self._transaction() as db:
                self._write_entries(db, chain, changed)
                touched = self._write_active(db, chain, old, fork)
                self._write_state(db, chain, touched, full=not old)
                self._set_meta(db, "tip", chain.active[-1])
                self._set_meta(db, "state_root", chain.state.root)
                self._set_meta(db, "next_seq", chain.next_seq)
            self._active = list(new)
            chain.unsaved -= changed

    def _write_entries(self, db: sqlite3.Connection, chain: Chain, changed: set[bytes]) -> None:
        for h in sorted(changed, key=lambda x: chain.entries[x].seq):
            e = chain.entries[h]
            cur = db.execute("UPDATE blocks SET status = ? WHERE hash = ?", (e.status.value, h))
            if cur.rowcount == 0:
                db.execute(
                    "INSERT INTO blocks (hash, height, prev_hash, seq, status, work, data) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        h,
                        e.header.height,
                        e.header.prev_hash,
                        e.seq,
                        e.status.value,
                        e.work.to_bytes(WORK_BYTES, "big"),
                        encode_block(chain.blocks[h]),
                    ),
                )

    def _write_active(
        self, db: sqlite3.Connection, chain: Chain, old: list[bytes], fork: int
    ) -> set[tuple[str, Any]]:
        """Rewrite the active chain and undo rows above ``fork``; the state keys they touch."""
        touched: set[tuple[str, Any]] = set()
        for h in old[fork:]:
            row = db.execute("SELECT data FROM undo WHERE hash = ?", (h,)).fetchone()
            if row is not None:
                touched.update((t, k) for t, k, _ in decode_undo(row[0]).entries)
                db.execute("DELETE FROM undo WHERE hash = ?", (h,))
        db.execute("DELETE FROM active WHERE height >= ?", (fork,))
        for height in range(fork, len(chain.active)):
            h = chain.active[height]
            db.execute("INSERT INTO active (height, hash) VALUES (?, ?)", (height, h))
            if height == 0:
                continue  # genesis has no undo: its state is the starting point
            undo = chain.undos[h]
            touched.update((t, k) for t, k, _ in undo.entries)
            db.execute(
                "INSERT OR REPLACE INTO undo (hash, data) VALUES (?, ?)", (h, encode_undo(undo))
            )
        return touched

    def _write_state(
        self, db: sqlite3.Connection, chain: Chain, touched: set[tuple[str, Any]], full: bool
    ) -> None:
        tables = chain.state.tables
        if full:
            db.execute("DELETE FROM state")
            touched = {(t, k) for t, rows in tables.items() for k in rows}
        for t, k in touched:
            key = encode_state_value(k)
            value = tables.get(t, {}).get(k)
            if value is None:
                db.execute("DELETE FROM state WHERE tbl = ? AND key = ?", (t, key))
            else:
                db.execute(
                    "INSERT OR REPLACE INTO state (tbl, key, value) VALUES (?, ?, ?)",
                    (t, key, encode_state_value(value)),
                )

    # ------------------------------------------------------------ reading

    def block_by_hash(self, block_hash: bytes) -> Block | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM blocks WHERE hash = ?", (block_hash,)
            ).fetchone()
        return None if row is None else decode_block(row[0])

    def header_by_height(self, height: int) -> BlockHeader | None:
        """The active chain's header at ``height`` as stored."""
        with self._lock:
            row = self._db.execute(
                "SELECT b.data FROM active a JOIN blocks b ON b.hash = a.hash WHERE a.height = ?",
                (height,),
            ).fetchone()
        return None if row is None else decode_block(row[0]).header

    def active_hashes(self) -> list[bytes]:
        """The stored active chain's hashes, genesis first."""
        with self._lock:
            rows = self._db.execute("SELECT hash FROM active ORDER BY height").fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------ blobs

    def put_blob(
        self,
        root: bytes,
        data: bytes | memoryview,
        chunk_size: int,
        kept_for: bytes | None = None,
    ) -> None:
        """Keep ``data`` under its content root (the caller has checked the root).

        ``chunk_size`` is how the blob is cut into chunks (node.relay.blobs), needed
        to serve it: its root is over those chunks. ``kept_for``: the job the blob is
        kept for only (see :meth:`keep_blobs`), recorded in the same transaction.

        The bytes go to a file of the blob directory (written under a temporary name,
        renamed in place inside the row's transaction), its row holds the rest. As rows of
        64 KiB pages a 16 MiB blob took 18–20 ms of CPU to store and ~21 ms to delete
        (written to the WAL, copied at its checkpoint, its overflow pages walked to free
        them); as a file ~10 ms and an unlink. DiskFull, and nothing kept, if the disk
        would be left with less than MIN_FREE_BYTES or a write finds it full.
        """
        final = self._blob_file(root)
        tmp = final.with_name(f"{final.name}.{uuid.uuid4().hex}.tmp")
        self._write_blob_file(tmp, data)
        moved = False
        try:
            with self._blob_transaction() as db:
                row = db.execute("SELECT length(data) FROM blobs WHERE root = ?", (root,))
                found = row.fetchone()
                if found is None:
                    db.execute(
                        "INSERT INTO blobs (root, size, chunk_size, data) VALUES (?, ?, ?, ?)",
                        (root, len(data), chunk_size, b""),
                    )
                if found is None or found[0] == 0:  # (again: a lost or damaged file mended)
                    os.replace(tmp, final)
                    moved = found is None
                if kept_for is not None:
                    self._keep(db, [root], kept_for)
        except BaseException:
            if moved:  # its row did not commit
                final.unlink(missing_ok=True)
            raise
        finally:
            tmp.unlink(missing_ok=True)

    def _write_blob_file(self, path: Path, data: bytes | memoryview) -> None:
        size = len(data)
        free = shutil.disk_usage(self.blob_dir).free
        if free - size < MIN_FREE_BYTES:
            raise DiskFull(
                f"the node's disk is full: {free} bytes free, and a blob of {size} bytes "
                f"must leave {MIN_FREE_BYTES}: free space where its datadir is"
            )
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as e:
            path.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(
                    f"the node's disk is full ({e}): free space where its datadir is"
                ) from e
            raise

    def _blob_file(self, root: bytes) -> Path:
        return self.blob_dir / root.hex()

    def _read_blob_file(self, root: bytes, size: int) -> bytes | None:
        """The bytes of a stored blob's file; None, logged, if it is missing or not
        ``size`` bytes long (a disk that lost it: the blob is fetched again, and storing
        it again mends the file)."""
        try:
            data = self._blob_file(root).read_bytes()
        except FileNotFoundError:
            data = None
        if data is None or len(data) != size:
            self._unreadable(root, "missing or damaged")
            return None
        return data

    def _unreadable(self, root: bytes, what: str) -> None:
        """Log the blob whose file could not be read as it should: an error if its row is
        still there (a disk lost the file), nothing worse than a debug line if the blob was
        deleted between the read of its row and of its file (a prune, not a loss)."""
        if self.has_blob(root):
            log.error("the file of blob %s is %s: fetched again", root.hex(), what)
        else:
            log.debug("blob %s was deleted while it was read", root.hex())

    def keep_blobs(self, roots: list[bytes], job_id: bytes) -> None:
        """Record that the blobs ``roots`` (stored or on their way) are kept only for
        ``job_id``, to be pruned once it is done with: the record outlives a restart.
        A blob recorded already keeps its first job."""
        with self._blob_transaction() as db:
            self._keep(db, roots, job_id)

    @staticmethod
    def _keep(db: sqlite3.Connection, roots: list[bytes], job_id: bytes) -> None:
        db.executemany(
            "INSERT OR IGNORE INTO kept_blobs (root, job_id) VALUES (?, ?)",
            [(root, job_id) for root in roots],
        )

    def kept_blobs(self) -> dict[bytes, bytes]:
        """Blob root → the job it is kept for, of every blob recorded by :meth:`keep_blobs`
        (or ``put_blob``'s ``kept_for``) and not deleted since."""
        with self._blob_lock:
            rows = self._blob_db.execute("SELECT root, job_id FROM kept_blobs").fetchall()
        return {bytes(root): bytes(job_id) for root, job_id in rows}

    def delete_blob(self, root: bytes) -> None:
        """Forget the blob ``root`` and why it was kept (nothing happens if it is not
        stored)."""
        with self._blob_lock:  # the file after the rows: a crash between leaves a file
            with self._blob_transaction() as db:  # that the next open removes
                db.execute("DELETE FROM blobs WHERE root = ?", (root,))
                db.execute("DELETE FROM kept_blobs WHERE root = ?", (root,))
                db.execute("DELETE FROM blob_leaves WHERE root = ?", (root,))
            self._blob_file(root).unlink(missing_ok=True)

    def put_blob_leaves(self, root: bytes, leaves: bytes) -> None:
        """Keep the leaf hashes of the stored blob ``root`` (32 bytes a chunk), to serve
        it without reading it whole (node.relay.blobs.StoredBlobTree); nothing if the
        blob is not stored."""
        with self._blob_transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO blob_leaves (root, leaves) "
                "SELECT ?, ? WHERE EXISTS (SELECT 1 FROM blobs WHERE root = ?)",
                (root, leaves, root),
            )

    def blob_leaves_kept(self, root: bytes) -> bool | None:
        """Whether the leaf hashes of the stored blob ``root`` are kept; None if the blob
        is not stored."""
        with self._blob_lock:
            row = self._blob_db.execute(
                "SELECT EXISTS (SELECT 1 FROM blob_leaves WHERE root = ?) FROM blobs "
                "WHERE root = ?",
                (root, root),
            ).fetchone()
        return None if row is None else bool(row[0])

    def get_blob_leaves(self, root: bytes) -> tuple[int, int, bytes] | None:
        """(size, chunk size, leaf hashes) of a stored blob whose leaves are kept, or None."""
        with self._blob_lock:
            row = self._blob_db.execute(
                "SELECT b.size, b.chunk_size, l.leaves FROM blobs b "
                "JOIN blob_leaves l ON l.root = b.root WHERE b.root = ?",
                (root,),
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), bytes(row[2]))

    def read_blob(self, root: bytes, offset: int, length: int) -> bytes | None:
        """``length`` bytes of the stored blob ``root`` from ``offset`` (fewer past its
        end), read without loading the rest of it; None if it is not stored."""
        with self._blob_lock:
            row = self._blob_db.execute(
                "SELECT rowid, length(data), size FROM blobs WHERE root = ?", (root,)
            ).fetchone()
            if row is None:
                return None
            if row[1]:  # an earlier release's row: the bytes are in it
                with self._blob_db.blobopen("blobs", "data", row[0], readonly=True) as blob:
                    if offset >= len(blob):  # (seek past the end raises)
                        return b""
                    blob.seek(offset)
                    return blob.read(length)
        try:
            with open(self._blob_file(root), "rb") as f:
                return os.pread(f.fileno(), max(0, min(length, row[2] - offset)), offset)
        except FileNotFoundError:
            self._unreadable(root, "missing")
            return None

    def get_blob_chunked(self, root: bytes) -> tuple[bytes, int] | None:
        """(data, chunk size) of a stored blob, or None."""
        with self._blob_lock:
            row = self._blob_db.execute(
                "SELECT data, chunk_size, size FROM blobs WHERE root = ?", (root,)
            ).fetchone()
        if row is None:
            return None
        data = bytes(row[0]) if row[0] else self._read_blob_file(root, int(row[2]))
        return None if data is None else (data, int(row[1]))

    def get_blob(self, root: bytes) -> bytes | None:
        found = self.get_blob_chunked(root)
        return None if found is None else found[0]

    def has_blob(self, root: bytes) -> bool:
        with self._blob_lock:
            row = self._blob_db.execute("SELECT 1 FROM blobs WHERE root = ?", (root,)).fetchone()
        return row is not None

    def blob_size(self, root: bytes) -> int | None:
        with self._blob_lock:
            row = self._blob_db.execute("SELECT size FROM blobs WHERE root = ?", (root,)).fetchone()
        return None if row is None else int(row[0])


def _connect(path: Path, page_size: int | None = None) -> sqlite3.Connection:
    """``page_size``: the new file's (a file keeps the page size it was made with)."""
    # Autocommit mode: transactions are opened explicitly (BEGIN IMMEDIATE) so that one
    # block import is exactly one transaction.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        if page_size is not None:  # before WAL: a WAL file's page size is fixed
            db.execute(f"PRAGMA page_size={int(page_size)}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def _immediate(db: sqlite3.Connection, lock: threading.RLock) -> Iterator[sqlite3.Connection]:
    """One write transaction on ``db`` (BEGIN IMMEDIATE … COMMIT, ROLLBACK on error), under
    ``lock``, the lock every use of that connection takes."""
    with lock:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:  # SQLite rolls back by itself after some errors
                db.execute("ROLLBACK")
            if isinstance(e, sqlite3.Error) and e.sqlite_errorcode == sqlite3.SQLITE_FULL:
                raise DiskFull(
                    f"the node's disk is full (SQLite: {e}): free space where its datadir is"
                ) from e
            raise


def blob_file(chain_file: Path) -> Path:
    """The blob file beside a chain file: ``chain.sqlite`` → ``chain.blobs.sqlite``."""
    return chain_file.with_name(chain_file.stem + ".blobs.sqlite")


def blob_dir(chain_file: Path) -> Path:
    """The directory of blobs' bytes beside a chain file: ``chain.sqlite`` →
    ``chain.blobs``, one file a blob, named by its root in hex."""
    return chain_file.with_name(chain_file.stem + ".blobs")
