"""Content-addressed blobs: how job operands and results travel (PROTOCOL §8, §12).

A blob is a non-empty byte string of at most ``MAX_BLOB_SIZE`` bytes, cut into
chunks of ``CHUNK_SIZE`` bytes (the last one may be shorter). Its id is the
Merkle root over those chunks with the consensus leaf hashing
(``consensus.merkle``: leaf i = H(i, chunk i)). So every chunk can be checked
against the id on arrival, with its branch, before anything is kept: a peer
that sends one wrong byte is caught at that chunk, not after the whole blob.

This is a transport commitment, not the job commitment: a job commits its
operands by matrix *rows* (``consensus.merkle.matrix_rows_root``). A node
fetches an operand by its blob root, decodes it (``decode_matrix``) and then
checks the row root against the job.

On the wire a node fetches ranges of chunks: ``BlobGetRange(root, first,
count)`` → ``BlobRange(root, first, total, chunks, proof)``, at most
``MAX_RANGE_CHUNKS`` chunks and ``RANGE_BYTES`` of them per reply, with a range
proof (``range_proof``) that every chunk is checked against before any is kept.
A matrix operand of 512 rows crosses in one round trip instead of 512. The
older ``BlobGet(root, index)`` → ``BlobChunk(root, index, total, data, branch)``
is still served. A node that does not hold the blob answers with ``total = 0``
and nothing else: "I don't have it". That is unambiguous because a real blob
always has at least one chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import struct
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from consensus.hashing import HASH_SIZE
from consensus.merkle import (
    LANE_MIN_CHUNKS,
    branch_of,
    chunk_leaf_hashes,
    leaf_hashes,
    node_hash,
    root_of_leaves,
    tree_levels,
    verify_branch,
)
from node.net.errors import ProtocolViolation
from node.net.peer import PeerSession, TokenBucket
from node.net.wire import (
    MAX_RANGE_CHUNKS,
    MAX_RANGE_PROOF,
    RANGE_BYTES,
    BlobChunk,
    BlobGet,
    BlobGetRange,
    BlobRange,
)

log = logging.getLogger("pouw.blobs")

CHUNK_SIZE = 256 * 1024
"""Bytes per chunk of a plain blob (the last chunk may be shorter)."""
MAX_CHUNK_SIZE = 1024 * 1024
"""Longest chunk: a matrix blob's chunk is one row (at most 65,536 int32 = 256 KiB)."""
MAX_BLOB_SIZE = 256 * 1024 * 1024
"""Largest blob a node stores, serves or fetches."""
MAX_CHUNKS = 65_536
"""Most chunks in one blob: a matrix blob has one chunk per row (≤ 65,536 rows)."""


class BlobError(ValueError):
    """A blob (or a matrix encoded as one) is not acceptable: empty, too big, malformed."""


class BlobGone(BlobError):
    """A stored blob deleted while a request for it was being served."""


class BlobFetchError(Exception):
    """A blob could not be fetched from any peer; the message says why. ``wrong``: the
    blob is not of the shape asked for (trying again will not help)."""

    def __init__(self, message: str, wrong: bool = False) -> None:
        super().__init__(message)
        self.wrong = wrong


def check_blob_size(size: int) -> None:
    """BlobError unless ``0 < size <= MAX_BLOB_SIZE``."""
    if size <= 0:
        raise BlobError("an empty blob has no id and is refused")
    if size > MAX_BLOB_SIZE:
        raise BlobError(f"blob of {size} bytes exceeds the limit of {MAX_BLOB_SIZE}")


def split(data: bytes | memoryview, chunk_size: int = CHUNK_SIZE) -> list[bytes]:
    """The chunks of a blob, in order: ``chunk_size`` bytes each, the last possibly shorter."""
    check_blob_size(len(data))
    check_chunk_size(chunk_size)
    return [bytes(data[i : i + chunk_size]) for i in range(0, len(data), chunk_size)]


def check_chunk_size(chunk_size: int) -> None:
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise BlobError(f"chunk size {chunk_size} is outside 1..{MAX_CHUNK_SIZE}")


_OBJECT_BYTES = sys.getsizeof(b"") + 8
"""A bytes object's own bytes beyond its payload, and its slot in a list."""


def levels_held(levels: list[list[bytes]]) -> int:
    """Bytes a Merkle tree's levels hold in memory: each 32-byte hash is a bytes object
    (~2.3 times its payload with its header and list slot)."""
    return sum(len(level) for level in levels) * (HASH_SIZE + _OBJECT_BYTES)


class BlobTree:
    """A blob with its Merkle tree built once, to serve many chunks with their branches."""

    in_memory = True
    """Its chunks are in memory: serving them reads nothing (see StoredBlobTree)."""

    def __init__(
        self, data: bytes | memoryview, chunk_size: int = CHUNK_SIZE, leaves: bytes | None = None
    ) -> None:
        """``leaves``: the chunks' leaf hashes, concatenated, where the caller hashed them
        already (a miner's C, whose result_root it computed): trusted to be ``data``'s."""
        self.chunks = split(data, chunk_size)
        self.chunk_size = chunk_size
        self.size = len(data)
        if leaves is None:
            hashes = chunk_leaf_hashes(data, chunk_size)
        elif len(leaves) != len(self.chunks) * HASH_SIZE:
            raise BlobError(f"{len(leaves)} bytes of leaf hashes for {len(self.chunks)} chunks")
        else:
            hashes = [leaves[i : i + HASH_SIZE] for i in range(0, len(leaves), HASH_SIZE)]
        self.levels = tree_levels(hashes)
        self.root: bytes = self.levels[-1][0]

    @property
    def held(self) -> int:
        """Bytes it holds in memory: its chunks (each a bytes object in a list) and tree."""
        return self.size + len(self.chunks) * _OBJECT_BYTES + levels_held(self.levels)

    @property
    def leaves(self) -> bytes:
        """The chunks' leaf hashes, concatenated: what the store keeps beside the blob."""
        return b"".join(self.levels[0])

    @property
    def total(self) -> int:
        return len(self.chunks)

    def chunk(self, index: int) -> tuple[bytes, tuple[bytes, ...]]:
        """Chunk ``index`` and its branch; IndexError if there is no such chunk."""
        if not 0 <= index < len(self.chunks):
            raise IndexError(f"chunk {index} is not in a blob of {len(self.chunks)} chunks")
        return self.chunks[index], tuple(branch_of(self.levels, index))

    def range(self, first: int, count: int) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        """Up to ``count`` chunks from ``first`` on, cut to ``RANGE_BYTES`` (at least one
        chunk) and ``MAX_RANGE_CHUNKS``, with their range proof; IndexError if there is
        no chunk ``first`` or ``count`` is not positive."""
        if not 0 <= first < len(self.chunks) or count < 1:
            raise IndexError(f"no range of {count} from chunk {first} in {len(self.chunks)}")
        end = range_end(first, count, len(self.chunks), self.chunk_size, len(self.chunks[-1]))
        return tuple(self.chunks[first:end]), tuple(range_proof(self.levels, first, end - first))


class StoredBlobTree:
    """A stored blob's tree rebuilt from the leaf hashes the store keeps beside it, its
    chunks read from the store as they are asked for (``read(offset, length)``).

    A blob out of the serve cache used to be read and hashed whole to serve one range:
    for a 64 MiB blob ~0.09 CPU-s, ~390 times a cached request. With its leaves (32
    bytes a chunk) a miss costs the leaves and the chunks served. Each chunk read is
    checked against its leaf before it goes out (a damaged file must not make us serve
    chunks our peers would ban us for): BlobError if one does not match.
    """

    in_memory = False

    def __init__(
        self, size: int, chunk_size: int, leaves: bytes, read: Callable[[int, int], bytes | None]
    ) -> None:
        check_chunk_size(chunk_size)
        total = -(-size // chunk_size)
        if not 1 <= total <= MAX_CHUNKS or len(leaves) != total * HASH_SIZE:
            raise BlobError(
                f"{len(leaves)} bytes of leaves for a blob of {size} bytes in chunks of "
                f"{chunk_size}"
            )
        self.size, self.chunk_size = size, chunk_size
        step = HASH_SIZE
        self.levels = tree_levels([leaves[i : i + step] for i in range(0, len(leaves), step)])
        self.root: bytes = self.levels[-1][0]
        self._read = read

    @property
    def total(self) -> int:
        return len(self.levels[0])

    @property
    def held(self) -> int:
        """Bytes it holds in memory: its tree (the chunks stay on disk)."""
        return levels_held(self.levels)

    def _length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def _chunks(self, first: int, end: int) -> tuple[bytes, ...]:
        start = first * self.chunk_size
        length = min(self.size, end * self.chunk_size) - start
        data = self._read(start, length)
        if data is None:
            raise BlobGone(f"blob {self.root.hex()[:16]}… is no longer stored")
        if len(data) != length:
            raise BlobError(f"stored blob {self.root.hex()[:16]}… is shorter than its leaves")
        # Every chunk but a blob's last is chunk_size long: the run is hashed as one
        # buffer (16 chunks side by side where they are small), not chunk by chunk.
        if chunk_leaf_hashes(data, self.chunk_size, first) != self.levels[0][first:end]:
            raise BlobError(f"stored blob {self.root.hex()[:16]}… does not match its leaves")
        size = self.chunk_size
        return tuple(data[cut : cut + size] for cut in range(0, length, size))

    def chunk(self, index: int) -> tuple[bytes, tuple[bytes, ...]]:
        """As BlobTree.chunk, the chunk read from the store."""
        if not 0 <= index < self.total:
            raise IndexError(f"chunk {index} is not in a blob of {self.total} chunks")
        return self._chunks(index, index + 1)[0], tuple(branch_of(self.levels, index))

    def range(self, first: int, count: int) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        """As BlobTree.range (the same cut), the chunks read from the store."""
        total = self.total
        if not 0 <= first < total or count < 1:
            raise IndexError(f"no range of {count} from chunk {first} in {total}")
        end = range_end(first, count, total, self.chunk_size, self._length(total - 1))
        return self._chunks(first, end), tuple(range_proof(self.levels, first, end - first))


AnyBlobTree = BlobTree | StoredBlobTree
_R = TypeVar("_R")


def blob_root(data: bytes, chunk_size: int = CHUNK_SIZE) -> bytes:
    """The id of a blob: the Merkle root over its chunks (BlobError if empty or too big)."""
    return BlobTree(data, chunk_size).root


def matrix_rows(x: np.ndarray) -> tuple[memoryview, int]:
    """A matrix as a row-chunked blob: (little-endian row-major bytes, bytes per row).
    The bytes are a view of the matrix (of a little-endian copy where it is not one):
    a 2048² C is not copied whole before it is stored or cut into chunks.

    With one row per chunk and the consensus leaf hashing, the blob's id is the
    matrix's row root (consensus.merkle.matrix_rows_root): a job's root_a,
    root_b (rows of Bᵀ) and a block's result_root are directly the blob ids of
    the operands and the result, and every chunk a peer sends is a row checked
    against the commitment on chain.
    """
    if x.ndim != 2 or x.dtype not in (np.int8, np.int32):
        raise BlobError("a matrix blob holds a 2-D int8 or int32 array")
    rows = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<"))
    return rows.data.cast("B"), rows.shape[1] * rows.itemsize


def chunk_with_branch(data: bytes, index: int) -> tuple[bytes, int, tuple[bytes, ...]]:
    """(chunk ``index``, chunk count, branch against ``blob_root(data)``)."""
    tree = BlobTree(data)
    chunk, branch = tree.chunk(index)
    return chunk, tree.total, branch


def verify_chunk(
    root: bytes, index: int, total: int, chunk: bytes, branch: tuple[bytes, ...] | list[bytes]
) -> bool:
    """True iff ``chunk`` is chunk ``index`` of the ``total``-chunk blob with id ``root``.

    Chunk lengths are checked when the chunks are assembled (every chunk but
    the last as long as chunk 0), and the whole blob's root once more. Never raises.
    """
    if type(total) is not int or type(index) is not int or type(chunk) is not bytes:
        return False
    if not 1 <= total <= MAX_CHUNKS or not 0 <= index < total:
        return False
    if not chunk or len(chunk) > MAX_CHUNK_SIZE:
        return False
    return verify_branch(root, index, total, chunk, list(branch))


def range_end(
    first: int,
    count: int,
    total: int,
    chunk_size: int,
    last_size: int,
    range_bytes: int = RANGE_BYTES,
    max_chunks: int = MAX_RANGE_CHUNKS,
) -> int:
    """The end (exclusive) of the range a reply to ``BlobGetRange(first, count)`` holds, of
    a ``total``-chunk blob whose chunks are ``chunk_size`` bytes but its last
    (``last_size``): from ``first`` on, at most ``count`` and ``max_chunks`` chunks, as
    many as fit in ``range_bytes`` and at least one. Arithmetic, not a walk over chunks:
    every chunk before the last has the same size."""
    stop = min(total, first + min(count, max_chunks))
    end = min(stop, first + max(1, range_bytes // chunk_size))
    if end < stop and end == total - 1 and (end - first) * chunk_size + last_size <= range_bytes:
        end += 1  # the short last chunk fits where a whole one would not
    return end


def range_proof(levels: list[list[bytes]], first: int, count: int) -> list[bytes]:
    """The siblings that rebuild the root from leaves ``first .. first + count - 1``.

    Bottom-up, per level: the left neighbour of the range's first node if that
    node is a right child, then the right neighbour of its last node if that node
    is a left child with a sibling (a lone last node is promoted and needs none).
    At most two hashes a level, however long the range.
    """
    proof: list[bytes] = []
    lo, hi = first, first + count - 1
    for level in levels[:-1]:
        if lo % 2 == 1:
            proof.append(level[lo - 1])
        if hi % 2 == 0 and hi + 1 < len(level):
            proof.append(level[hi + 1])
        lo, hi = lo // 2, hi // 2
    return proof


def _range_leaves(chunks: tuple[bytes, ...] | list[bytes], first: int) -> list[bytes]:
    """``leaf_hashes(chunks, first)``; where the chunks are cut as a blob's are (all as
    long as the first, the last no longer and not empty), hashed as one buffer."""
    size = len(chunks[0])
    last = len(chunks[-1])
    if (
        len(chunks) >= LANE_MIN_CHUNKS
        and 0 < last <= size
        and all(len(c) == size for c in chunks[:-1])
    ):
        return chunk_leaf_hashes(b"".join(chunks), size, first)
    return leaf_hashes(chunks, first)


def _root_from_leaves(
    first: int, total: int, leaves: list[bytes], proof: tuple[bytes, ...]
) -> bytes | None:
    """The root that the leaves of chunks ``first ..`` of a ``total``-chunk blob and
    ``proof`` (``range_proof``) imply; None if malformed (a proof too short or too long).
    ``leaves`` is left as it is."""
    nodes = list(leaves)
    lo, count, used = first, total, 0
    while count > 1:
        hi = lo + len(nodes) - 1
        if lo % 2 == 1:
            if used >= len(proof):
                return None
            nodes.insert(0, proof[used])
            used, lo = used + 1, lo - 1
        if hi % 2 == 0 and hi + 1 < count:
            if used >= len(proof):
                return None
            nodes.append(proof[used])
            used += 1
        # The span now starts on a left child and ends on a right child or on the
        # level's lone last node, which is promoted unchanged.
        parents = [node_hash(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]
        if len(nodes) % 2:
            parents.append(nodes[-1])
        nodes, lo, count = parents, lo // 2, (count + 1) // 2
    return nodes[0] if used == len(proof) else None


def range_leaves(
    root: bytes, first: int, total: int, chunks: tuple[bytes, ...], proof: tuple[bytes, ...]
) -> list[bytes] | None:
    """The leaf hashes of ``chunks`` if they are chunks ``first ..`` of the ``total``-chunk
    blob ``root``, else None; never raises.

    Every chunk is checked: each leaf commits to its index and payload, so a
    proof that rebuilds the root proves them all. The leaves are what a fetch
    rebuilds the whole blob's root from once every range has come (:func:`assemble`),
    instead of hashing megabytes again.
    """
    if type(total) is not int or type(first) is not int or type(root) is not bytes:
        return None
    if not 1 <= total <= MAX_CHUNKS or len(proof) > MAX_RANGE_PROOF:
        return None
    if any(type(c) is not bytes or not 0 < len(c) <= MAX_CHUNK_SIZE for c in chunks):
        return None
    if any(type(h) is not bytes or len(h) != HASH_SIZE for h in proof):
        return None
    if not chunks or first < 0 or first + len(chunks) > total:
        return None
    leaves = _range_leaves(chunks, first)
    implied = _root_from_leaves(first, total, leaves, proof)
    return leaves if implied is not None and hmac.compare_digest(implied, root) else None


def verify_range(
    root: bytes, first: int, total: int, chunks: tuple[bytes, ...], proof: tuple[bytes, ...]
) -> bool:
    """True iff ``chunks`` are chunks ``first ..`` of the ``total``-chunk blob ``root``
    (:func:`range_leaves`). Never raises."""
    return range_leaves(root, first, total, chunks, proof) is not None


def assemble(
    root: bytes, total: int, chunks: dict[int, bytes], leaves: dict[int, bytes] | None = None
) -> bytes:
    """Join verified chunks 0..total-1; BlobError unless they make the blob ``root``.

    ``leaves``: chunk i's leaf hash for every i, as its range was verified
    (:func:`range_leaves`). Leaf i commits to index i and chunk i's bytes, so with the
    chunk lengths checked here the root over them is the joined blob's: it is rebuilt
    from them (a tree over 32-byte hashes) instead of hashing every chunk again, which
    for an 8 MiB operand took ~7 ms of CPU beside ~0.5 ms for the tree.
    """
    missing = [i for i in range(total) if i not in chunks]
    if missing:
        raise BlobError(f"blob {root.hex()[:16]}… is missing {len(missing)} of {total} chunks")
    chunk_size = len(chunks[0])
    if (
        any(len(chunks[i]) != chunk_size for i in range(total - 1))
        or len(chunks[total - 1]) > chunk_size
    ):
        raise BlobError(f"chunks of blob {root.hex()[:16]}… have inconsistent lengths")
    data = b"".join(chunks[i] for i in range(total))
    if leaves is not None and all(i in leaves for i in range(total)):
        implied = root_of_leaves([leaves[i] for i in range(total)])
    else:
        implied = blob_root(data, chunk_size)
    if implied != root:
        raise BlobError(f"chunks do not reassemble into blob {root.hex()[:16]}…")
    return data


# ---------------------------------------------------------------- matrices

MATRIX_MAGIC = b"PWMX"
MATRIX_VERSION = 1
MAX_MATRIX_DIM = 65_536
"""Largest row or column count of an encoded matrix (PROTOCOL §1: k ≤ 65,536)."""
_HEADER = struct.Struct("<4sBBII")  # magic, version, dtype code, rows, cols
MATRIX_HEADER_SIZE = _HEADER.size
"""The bytes an encoded matrix has before its entries (:func:`encode_matrix`)."""
_DTYPES: dict[int, np.dtype] = {1: np.dtype("i1"), 4: np.dtype("<i4")}
_CODES = {np.dtype(np.int8): 1, np.dtype(np.int32): 4}


def encode_matrix(x: np.ndarray) -> bytes:
    """A 2-D int8 or int32 matrix as blob bytes: a 14-byte header, then its entries.

    Header: b"PWMX", version 1, dtype code (1 = int8, 4 = int32), rows and
    columns as little-endian u32. Entries follow row by row (int32
    little-endian). BlobError for anything else.
    """
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise BlobError("only a 2-D numpy array can be encoded as a matrix blob")
    code = _CODES.get(np.dtype(x.dtype).newbyteorder("="))
    if code is None:
        raise BlobError(f"a matrix blob holds int8 or int32 entries, not {x.dtype}")
    rows, cols = x.shape
    _check_dims(rows, cols)
    body = np.ascontiguousarray(x, dtype=_DTYPES[code]).tobytes()
    data = _HEADER.pack(MATRIX_MAGIC, MATRIX_VERSION, code, rows, cols) + body
    check_blob_size(len(data))
    return data


def decode_matrix(data: bytes) -> np.ndarray:
    """The matrix in blob bytes made by ``encode_matrix``; BlobError naming any problem."""
    if len(data) < _HEADER.size:
        raise BlobError(f"matrix blob of {len(data)} bytes is shorter than its header")
    magic, version, code, rows, cols = _HEADER.unpack_from(data)
    if magic != MATRIX_MAGIC:
        raise BlobError("not a matrix blob (bad magic)")
    if version != MATRIX_VERSION:
        raise BlobError(f"matrix blob version {version} is not supported")
    dtype = _DTYPES.get(code)
    if dtype is None:
        raise BlobError(f"matrix blob has unknown dtype code {code}")
    _check_dims(rows, cols)
    expected = _HEADER.size + rows * cols * dtype.itemsize
    if len(data) != expected:
        raise BlobError(
            f"matrix blob of {rows}x{cols} {dtype.name} needs {expected} bytes, has {len(data)}"
        )
    flat = np.frombuffer(data, dtype=dtype, offset=_HEADER.size)
    native = np.int8 if code == 1 else np.int32
    return flat.reshape(rows, cols).astype(native)  # a writable, native-order copy


def _check_dims(rows: int, cols: int) -> None:
    if not (1 <= rows <= MAX_MATRIX_DIM and 1 <= cols <= MAX_MATRIX_DIM):
        raise BlobError(f"matrix of {rows}x{cols} is outside 1..{MAX_MATRIX_DIM} per side")


# ---------------------------------------------------------------- exchange

RANGES_IN_FLIGHT = 2
"""Range requests in flight to one peer at once: one is served while the other travels."""
REQUEST_TIMEOUT = 10.0
"""How long one peer gets to answer one range request before we ask another."""
URGENT_HOLD_S = 2.0
"""How long an urgent fetch holds the others' new range requests, at most: a willing
peer serves a job's operands in well under a second, and a peer that stalls an urgent
fetch (or a stream of urgent ones) must not stall every other download with it."""
MIN_PEER_RATE = 1024 * 1024
"""Bytes a second a peer must deliver, on average after its first REQUEST_TIMEOUT, while
it serves a fetch: a slower one (say one that sends a valid chunk every 9 s, in time
for each request) is left for the next peer, the chunks it sent kept. While the fetch
has time and a round of peers brought chunks, the peers are asked again in order."""
GRANT_BYTES = RANGE_BYTES + 64 * 1024
"""Reply bytes granted per range request (``PeerSession.grant``): chunk data and proof."""
TREE_BUILDS = 2
"""Blob trees built at once to serve (a 256 MiB blob is read and hashed: ~0.5 GB)."""
MISS_RATE = 0.5
"""Whole misses a peer's requests may cost per second on average (a stored blob out of
the serve cache whose leaves are not kept is read and hashed whole: asking in turn for
blobs that together exceed the cache cost ~0.09 CPU-s a request, ~390 times a cached
one)..."""
MISS_BURST = 4.0
"""...and in a burst. A request past them waits for its turn; other peers' do not."""
LEAF_MISS_COST = 0.1
"""What a miss costs of that budget when the blob's leaves are kept (``StoredBlobTree``):
its tree is rebuilt from 32 bytes a chunk, about a tenth of reading and hashing the blob
(34–50 ms for 65,536 leaves against ~0.36 s for 256 MiB; 1 ms against ~12 ms for a job's
8 MiB operand). Charged a whole miss, an honest miner fetching its share of a market
backlog (two operands a job, most out of the cache) waited 2 s a blob past the burst
and its requests timed out while the others took its jobs."""
SERVE_CACHE_BYTES = MAX_BLOB_SIZE
"""Blobs kept in memory with their trees to serve chunks (LRU by bytes)."""
_DRAIN_TIMEOUT = 30.0
_EXPIRED_MAX = 10_000
_Key = tuple[PeerSession, bytes, int]
"""(peer, blob root, first chunk) of a range request."""
_Verified = tuple[BlobRange, list[bytes]]
"""A range reply and the leaf hashes of its chunks, checked against its root."""
_Shape = tuple[bytes, int | None, int | None]
"""(root, chunk size, chunk count) a fetch expects (None: any)."""


class _PeerFailed(Exception):
    """This peer will not give us the blob (lacks it, went away, too slow, lied)."""


class _WrongBlob(Exception):
    """The blob is not the one the caller expects (its chunks are genuine): no peer will do."""


class BlobExchange:
    """Serves BlobGet and BlobGetRange from the store and fetches blobs from peers by ranges.

    The node owns one and forwards the BLOB_* messages and peer closures to
    it. ``peers`` returns the ready peers, in the order they connected: a
    fetch asks them in that order, moving on from each that lacks the blob,
    stalls, disconnects or is caught sending a bad chunk.
    """

    def __init__(
        self,
        store: Any,
        peers: Callable[[], list[PeerSession]],
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        window: int = RANGES_IN_FLIGHT,
    ) -> None:
        self.store = store
        self.peers = peers
        self.request_timeout = request_timeout
        self.window = window
        # Each request with the most chunks its reply may hold.
        self._waiting: dict[_Key, tuple[asyncio.Future[_Verified], int]] = {}
        # Requests we gave up on: a late answer is dropped, not punished as unrequested.
        self._expired: OrderedDict[_Key, None] = OrderedDict()
        self._fetches: dict[_Shape, asyncio.Task[tuple[bytes, int]]] = {}
        # Trees being built to serve, one per root, however many peers ask meanwhile.
        self._building: dict[bytes, asyncio.Task[AnyBlobTree | None]] = {}
        self._builds = asyncio.Semaphore(TREE_BUILDS)
        self._misses: dict[PeerSession, TokenBucket] = {}
        self._trees: OrderedDict[bytes, AnyBlobTree] = OrderedDict()
        self._tree_bytes = 0
        # ``put`` runs on worker threads (an operand upload) and caches the tree it built.
        self._trees_lock = threading.Lock()
        # Urgent fetches under way; while there are any, the others ask for no new range.
        self._urgent = 0
        self._no_urgent = asyncio.Event()
        self._no_urgent.set()
        self._urgent_since = 0.0  # loop time the current run of urgent fetches began

    # ------------------------------------------------------------ local

    def put(
        self, data: bytes | memoryview, chunk_size: int = CHUNK_SIZE, kept_for: bytes | None = None
    ) -> bytes:
        """Store a blob (BlobError if empty or too big); its root. ``kept_for``: the job
        it is kept for only, to prune once that job is done with (the store records it).
        The tree built for its root is kept to serve it (an operand just uploaded is what
        miners ask for next: the first of them need not wait for it to be read back and
        hashed again)."""
        tree = BlobTree(data, chunk_size)
        self.store.put_blob(tree.root, data, chunk_size, kept_for)
        self._keep_leaves(tree.root, tree.leaves)
        self._cache(tree)
        return tree.root

    def put_matrix(
        self, x: np.ndarray, kept_for: bytes | None = None, root: bytes | None = None
    ) -> bytes:
        """Store a matrix as a row-chunked blob; its id is the matrix's row root. ``root``:
        that root, where the caller computed it from ``x`` already (a miner's result_root),
        so that megabytes are not hashed twice; a wrong one is caught when the blob is
        served (``_tree``), never served."""
        data, row_bytes = matrix_rows(x)
        if root is None:
            return self.put(data, row_bytes, kept_for)
        self.store.put_blob(root, data, row_bytes, kept_for)
        return root

    def warm(self, x: np.ndarray, root: bytes, leaves: bytes | None = None) -> bool:
        """Build the tree of matrix ``x``, stored under ``root`` by ``put_matrix`` (a
        miner's C, whose root it computed), to serve it without reading it back: its
        client asks for it next. Off the event loop (megabytes to hash, unless ``leaves``,
        its rows' leaf hashes, come with it); whether ``root`` is ``x``'s (a wrong one is
        logged and never served)."""
        data, row_bytes = matrix_rows(x)
        tree = BlobTree(data, row_bytes, leaves)
        if self._serve(tree, root) is None:
            return False
        self._keep_leaves(root, tree.leaves)
        return True

    def delete(self, root: bytes) -> None:
        """Stop keeping and serving the blob ``root``."""
        with self._trees_lock:
            tree = self._trees.pop(root, None)
            if tree is not None:
                self._tree_bytes -= tree.held
        self.store.delete_blob(root)

    def _cache(self, tree: AnyBlobTree) -> AnyBlobTree:
        """Keep ``tree`` to serve its blob (LRU by bytes); the one kept already, if any."""
        with self._trees_lock:
            kept = self._trees.get(tree.root)
            if kept is not None:  # another request loaded it meanwhile: count it once
                self._trees.move_to_end(tree.root)
                return kept
            self._trees[tree.root] = tree
            self._tree_bytes += tree.held
            while self._tree_bytes > SERVE_CACHE_BYTES and len(self._trees) > 1:
                _, old = self._trees.popitem(last=False)
                self._tree_bytes -= old.held
            return tree

    async def _tree(self, root: bytes, peer: PeerSession | None = None) -> AnyBlobTree | None:
        """The tree of the stored blob ``root`` to serve (None if we lack it): cached, or
        read and built once however many peers ask meanwhile, TREE_BUILDS at a time, and
        for ``peer`` at MISS_RATE."""
        with self._trees_lock:
            tree = self._trees.get(root)
            if tree is not None:
                self._trees.move_to_end(root)
                return tree
        task = self._building.get(root)
        if task is None and peer is not None:
            leaves = await asyncio.to_thread(self.store.blob_leaves_kept, root)
            if leaves is None:
                return None  # a blob we lack costs nothing to say so
            await self._pace_miss(peer, LEAF_MISS_COST if leaves else 1.0)
            task = self._building.get(root)  # another request may have started it
        if task is None:
            task = asyncio.create_task(self._build(root), name=f"blob tree {root.hex()[:16]}")
            self._building[root] = task
            task.add_done_callback(lambda _: self._building.pop(root, None))
        return await asyncio.shield(task)

    async def _pace_miss(self, peer: PeerSession, cost: float) -> None:
        """Wait until ``peer`` may have another tree built, costing ``cost`` whole
        misses (MISS_RATE, MISS_BURST)."""
        bucket = self._misses.get(peer)
        if bucket is None:
            bucket = self._misses[peer] = TokenBucket(MISS_RATE, MISS_BURST)
        while not bucket.take(cost):
            await asyncio.sleep((cost - bucket.tokens) / bucket.rate)

    async def _build(self, root: bytes) -> AnyBlobTree | None:
        async with self._builds:
            stored = await asyncio.to_thread(self._stored_tree, root)
            if stored is not None:
                return self._serve(stored, root)
            found = await asyncio.to_thread(self.store.get_blob_chunked, root)  # as in fetch
            if found is None:
                return None
            data, chunk_size = found
            tree = await asyncio.to_thread(BlobTree, data, chunk_size)  # 256 MiB: a moment
            del data, found
            served = self._serve(tree, root)
            if served is not None:  # its next miss reads the leaves, not the whole blob
                await asyncio.to_thread(self._keep_leaves, root, tree.leaves)
            return served

    def _stored_tree(self, root: bytes) -> StoredBlobTree | None:
        """The blob ``root``'s tree from its stored leaves, if the store has them."""
        found = self.store.get_blob_leaves(root)
        if found is None:
            return None
        size, chunk_size, leaves = found
        try:
            tree = StoredBlobTree(
                size, chunk_size, leaves, lambda at, n: self.store.read_blob(root, at, n)
            )
        except BlobError as e:
            tree, why = None, str(e)
        else:
            why = "they make another root"
        if tree is None or tree.root != root:  # read whole; its leaves are written again
            log.error("stored leaves of blob %s are damaged (%s): read whole", root.hex(), why)
            return None
        return tree

    def _keep_leaves(self, root: bytes, leaves: bytes) -> None:
        """Store the blob's leaf hashes if the store can: without them a later miss only
        reads it whole, as before (a full disk must not fail a put or a reply)."""
        try:
            self.store.put_blob_leaves(root, leaves)
        except Exception as e:
            log.warning("could not keep the leaves of blob %s: %s", root.hex()[:16], e)

    def _serve(self, tree: AnyBlobTree, root: bytes) -> AnyBlobTree | None:
        """Keep ``tree`` to serve as the blob ``root`` if it is that blob's (a corrupt store,
        or a wrong root given to ``put_matrix``, must not make us serve bad chunks)."""
        if tree.root != root:
            log.error("stored blob %s does not match its root: not serving it", root.hex())
            return None
        return self._cache(tree)

    # ------------------------------------------------------------ serving

    async def _drain(self, peer: PeerSession, what: str) -> None:
        # Pace replies to how fast the peer reads instead of queueing the whole blob.
        try:
            await peer.drain(_DRAIN_TIMEOUT)
        except TimeoutError:
            raise ProtocolViolation(f"{what}: peer is not reading its chunks", ban=False) from None

    async def on_blob_get(self, peer: PeerSession, msg: BlobGet) -> None:
        """Answer with the chunk and its branch, or ``total = 0`` if we lack the blob."""
        tree = await self._tree(msg.root, peer)
        if tree is None:
            await peer.send(BlobChunk(msg.root, msg.index, 0, b"", ()))
            return
        if msg.index >= tree.total:
            # An honest peer learns ``total`` from chunk 0 and never asks past it.
            raise ProtocolViolation(f"blob_get: chunk {msg.index} of a blob of {tree.total} chunks")
        await self._drain(peer, "blob_get")
        try:
            chunk, branch = await self._read(tree, tree.chunk, msg.index)
        except BlobError:
            await peer.send(BlobChunk(msg.root, msg.index, 0, b"", ()))
            return
        await peer.send(BlobChunk(msg.root, msg.index, tree.total, chunk, branch))

    async def on_blob_get_range(self, peer: PeerSession, msg: BlobGetRange) -> None:
        """Answer with the chunks asked for (cut to the reply limits) and their range
        proof, or ``total = 0`` if we lack the blob."""
        if msg.count == 0:
            raise ProtocolViolation("blob_get_range: asks for no chunks")
        tree = await self._tree(msg.root, peer)
        if tree is None:
            await peer.send(BlobRange(msg.root, msg.first, 0, (), ()))
            return
        if msg.first >= tree.total:
            raise ProtocolViolation(
                f"blob_get_range: chunk {msg.first} of a blob of {tree.total} chunks"
            )
        await self._drain(peer, "blob_get_range")
        try:
            chunks, proof = await self._read(tree, tree.range, msg.first, msg.count)
        except BlobError:
            await peer.send(BlobRange(msg.root, msg.first, 0, (), ()))
            return
        await peer.send(BlobRange(msg.root, msg.first, tree.total, chunks, proof))

    async def _read(self, tree: AnyBlobTree, read: Callable[..., _R], *args: int) -> _R:
        """``read(*args)`` of ``tree``: at once for one in memory, in a thread for one
        whose chunks are read from the store. A stored blob that does not match its
        leaves is logged, dropped from the cache and its BlobError raised (we then say
        we lack it: serving it would get us banned)."""
        if tree.in_memory:
            return read(*args)
        try:
            return await asyncio.to_thread(read, *args)
        except BlobError as e:
            if isinstance(e, BlobGone):  # deleted since it was looked up: pruned, say
                log.debug("not serving blob %s: %s", tree.root.hex(), e)
            else:
                log.error("not serving blob %s: %s", tree.root.hex(), e)
            with self._trees_lock:
                if self._trees.get(tree.root) is tree:
                    del self._trees[tree.root]
                    self._tree_bytes -= tree.held
            raise

    # ------------------------------------------------------------ receiving

    def on_blob_chunk(self, peer: PeerSession, msg: BlobChunk) -> None:
        """ProtocolViolation: this node fetches by ranges, so no chunk is ever requested."""
        raise ProtocolViolation(f"unrequested blob chunk {msg.index} of {msg.root.hex()[:16]}…")

    def on_blob_range(self, peer: PeerSession, msg: BlobRange) -> None:
        """Hand a requested range to its fetch once every chunk in it is verified;
        ProtocolViolation (and nothing kept) if it is unrequested or any of it is bad."""
        key = (peer, msg.root, msg.first)
        entry = self._waiting.pop(key, None)
        if entry is None:
            if key in self._expired:
                del self._expired[key]
                return
            raise ProtocolViolation(
                f"unrequested blob range from chunk {msg.first} of {msg.root.hex()[:16]}…"
            )
        future, asked = entry
        checked = _range_leaves_or_fault(msg, asked)
        if isinstance(checked, str):
            _fail(future, ProtocolViolation(checked))
            raise ProtocolViolation(checked)
        if not future.done():
            future.set_result((msg, checked))

    def peer_closed(self, peer: PeerSession) -> None:
        """Fail the requests that were waiting on a peer that went away."""
        for key in [k for k in self._waiting if k[0] is peer]:
            _fail(self._waiting.pop(key)[0], _PeerFailed("disconnected"))
        for key in [k for k in self._expired if k[0] is peer]:
            del self._expired[key]
        self._misses.pop(peer, None)

    def close(self) -> None:
        """Cancel fetches in progress (the node is stopping)."""
        for task in list(self._fetches.values()):
            task.cancel()

    # ------------------------------------------------------------ fetching

    async def fetch(
        self,
        root: bytes,
        timeout: float = 60.0,
        urgent: bool = False,
        chunk_size: int | None = None,
        chunk_count: int | None = None,
    ) -> bytes:
        """The blob ``root``, from the store or from peers; BlobFetchError if we cannot get it.

        ``chunk_size``: the blob must be cut into chunks of that size (a matrix's rows:
        then ``root``, the Merkle root over them, is the matrix's row root, checked as the
        blob came, and the caller need not hash the rows again); ``chunk_count``: into
        that many (a matrix's row count). BlobFetchError if not, found from the first
        reply, before the rest is fetched (a job could name a 256 MiB blob as an
        operand it says is a few KiB).

        Concurrent fetches of one root share one download. While an ``urgent`` download is
        under way the others send no new range request: the peers serving them share their
        bandwidth among the requests in flight, so a download started behind a few others
        would take as long as all of them (a job that pays to be served first). Their
        ranges in flight still arrive; their timeouts count the wait, which lasts
        ``URGENT_HOLD_S`` at most.
        """
        if type(root) is not bytes or len(root) != 32:
            raise BlobFetchError("a blob root is 32 bytes")
        # Off the event loop: megabytes to read, behind the store's lock, which a worker
        # thread storing another blob may hold for as long again.
        shape: _Shape = (root, chunk_size, chunk_count)
        found = await asyncio.to_thread(self.store.get_blob_chunked, root)
        if found is None:
            task = self._fetches.get(shape)
            if task is None:
                task = asyncio.create_task(
                    self._fetch(shape, timeout, urgent), name=f"blob {root.hex()[:16]}"
                )
                self._fetches[shape] = task
                task.add_done_callback(lambda t: self._fetch_done(shape, t))
            found = await asyncio.shield(task)
        data, cut = found
        fault = _cut_fault(shape, cut) or _count_fault(shape, -(-len(data) // cut))
        if fault is not None:
            raise BlobFetchError(fault, wrong=True)
        return data

    def _fetch_done(self, shape: _Shape, task: asyncio.Task[tuple[bytes, int]]) -> None:
        self._fetches.pop(shape, None)
        if not task.cancelled():
            task.exception()  # retrieved here too, in case every caller went away

    async def _fetch(self, shape: _Shape, timeout: float, urgent: bool) -> tuple[bytes, int]:
        if not urgent:
            return await self._download(shape, timeout, urgent)
        if not self._urgent:
            self._urgent_since = asyncio.get_running_loop().time()
        self._urgent += 1
        self._no_urgent.clear()
        try:
            return await self._download(shape, timeout, urgent)
        finally:
            self._urgent -= 1
            if not self._urgent:
                self._no_urgent.set()

    async def _download(self, shape: _Shape, timeout: float, urgent: bool) -> tuple[bytes, int]:
        """The blob and its chunk size, from peers, every chunk checked against its root."""
        root = shape[0]
        short = root.hex()[:16] + "…"
        chunks: dict[int, bytes] = {}  # verified chunks, whichever peer sent them
        leaves: dict[int, bytes] = {}  # their leaf hashes, as their ranges were checked
        tried: list[PeerSession] = []
        failures: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        had = 0  # chunks held when the round of peers began
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    peer = await self._next_peer(tried)
                    if peer is None and len(chunks) > had:
                        had, tried = len(chunks), []  # the round brought chunks: again
                        continue
                    if peer is None:
                        why = "; ".join(failures[-8:]) if failures else "no peers connected"
                        raise BlobFetchError(f"blob {short} is not available: {why}")
                    tried.append(peer)
                    try:
                        data, total = await self._fetch_from(peer, shape, chunks, leaves, urgent)
                    except _PeerFailed as e:
                        failures.append(f"{peer.address}: {e}")
                        continue
                    except _WrongBlob as e:
                        raise BlobFetchError(str(e), wrong=True) from None
                    break
        except TimeoutError:
            why = "; ".join(failures[-8:]) if failures else "no peer answered"
            raise BlobFetchError(
                f"timed out after {timeout:g}s fetching blob {short} ({why})"
            ) from None
        await asyncio.to_thread(self.store.put_blob, root, data, len(chunks[0]))
        log.info("fetched blob %s: %d bytes in %d chunks", short, len(data), total)
        return data, len(chunks[0])

    async def _next_peer(self, tried: list[PeerSession]) -> PeerSession | None:
        """The first ready peer not asked yet; waits for one while none is connected."""
        while True:
            peers = self.peers()
            for p in peers:
                if all(p is not t for t in tried):
                    return p
            if peers or tried:
                return None
            await asyncio.sleep(0.05)

    async def _fetch_from(
        self,
        peer: PeerSession,
        shape: _Shape,
        chunks: dict[int, bytes],
        leaves: dict[int, bytes],
        urgent: bool = False,
    ) -> tuple[bytes, int]:
        """Complete ``chunks`` from one peer; the blob and its chunk count.

        The range from chunk 0 is asked of every peer, to learn *its* chunk
        count: a proof does not always pin the count down (the left part of a
        tree has the same shape for several counts), so a count from one peer
        is never used to ask another for chunks it may not have. Every chunk
        is genuine whatever count it came with (its leaf commits to its
        index); the final root check catches a count that was a lie. The
        missing chunks are then asked in ranges sized to fill a reply,
        ``window`` of them in flight (none asked while an urgent fetch runs, unless
        ``urgent``: see :meth:`fetch`), as long as the peer keeps up MIN_PEER_RATE.
        _WrongBlob if the first reply shows a blob of another ``shape``.
        """
        root = shape[0]
        if not urgent:
            await self._yield_to_urgent()
        loop = asyncio.get_running_loop()
        start = loop.time()
        head, head_leaves = await self._request_range(peer, root, 0, MAX_RANGE_CHUNKS)
        total = head.total
        cut = _cut_fault(shape, len(head.chunks[0]))
        if cut is not None:
            raise _WrongBlob(cut)  # chunk 0 is genuine: the blob is not the one expected
        count = _count_fault(shape, total)
        if count is not None:
            raise _PeerFailed(count)  # a proof may not pin the count down: ask the next
        chunks.update(enumerate(head.chunks))
        leaves.update(enumerate(head_leaves))
        per_reply = max(1, min(MAX_RANGE_CHUNKS, RANGE_BYTES // len(head.chunks[0])))
        window = asyncio.Semaphore(self.window)
        delivered = sum(len(c) for c in head.chunks)

        def pace_deadline() -> float:
            return start + self.request_timeout + delivered / MIN_PEER_RATE

        async def one(first: int, count: int) -> None:
            nonlocal delivered
            async with window:
                if not urgent:
                    await self._yield_to_urgent()
                reply, got = await self._request_range(peer, root, first, count)
                if reply.total != total:
                    raise _PeerFailed(f"says the blob has {reply.total} chunks, not {total}")
                chunks.update(enumerate(reply.chunks, first))
                leaves.update(enumerate(got, first))
                delivered += sum(len(c) for c in reply.chunks)
                pace.reschedule(pace_deadline())

        # Every reply holds at least the first chunk it was asked for, so each
        # round leaves fewer chunks missing (a reply may be cut short by its byte budget).
        try:
            async with asyncio.timeout_at(pace_deadline()) as pace:
                while runs := _missing_runs(total, chunks, per_reply):
                    tasks = [asyncio.create_task(one(first, count)) for first, count in runs]
                    try:
                        await asyncio.gather(*tasks)
                    finally:
                        for t in tasks:
                            t.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
        except TimeoutError:
            raise _PeerFailed(
                f"too slow: {delivered} bytes in {loop.time() - start:.1f}s "
                f"(at least {MIN_PEER_RATE} bytes/s after {self.request_timeout:g}s)"
            ) from None
        try:
            return await asyncio.to_thread(assemble, root, total, chunks, leaves), total
        except BlobError as e:
            raise _PeerFailed(str(e)) from None

    async def _yield_to_urgent(self) -> None:
        """Wait while urgent fetches run, ``URGENT_HOLD_S`` from the first at most."""
        if self._no_urgent.is_set():
            return
        left = self._urgent_since + URGENT_HOLD_S - asyncio.get_running_loop().time()
        if left > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._no_urgent.wait()

    async def _request_range(
        self, peer: PeerSession, root: bytes, first: int, count: int
    ) -> _Verified:
        key = (peer, root, first)
        future: asyncio.Future[_Verified] = asyncio.get_running_loop().create_future()
        self._waiting[key] = (future, count)
        try:
            peer.grant(GRANT_BYTES)
            if not peer.send_nowait(BlobGetRange(root, first, count)):
                raise _PeerFailed("disconnected")
            try:
                async with asyncio.timeout(self.request_timeout):
                    reply, leaves = await future
            except TimeoutError:
                raise _PeerFailed(
                    f"no answer for chunks from {first} in {self.request_timeout:g}s"
                ) from None
            except ProtocolViolation as e:
                raise _PeerFailed(f"sent a bad range ({e.reason}); banned") from None
        finally:
            entry = self._waiting.get(key)
            if entry is not None and entry[0] is future:  # no answer came: forget, forgive it
                del self._waiting[key]
                self._expired[key] = None
                while len(self._expired) > _EXPIRED_MAX:
                    self._expired.popitem(last=False)
        if reply.total == 0:
            raise _PeerFailed("does not have it")
        return reply, leaves


def _range_leaves_or_fault(msg: BlobRange, asked: int) -> list[bytes] | str:
    """The leaf hashes of a reply's chunks (none for a "not found" reply) if it is an
    acceptable answer to a request for ``asked`` chunks, else why not."""
    reason = _range_fault(msg, asked)
    if reason is not None:
        return reason
    if msg.total == 0:
        return []
    leaves = range_leaves(msg.root, msg.first, msg.total, msg.chunks, msg.proof)
    if leaves is None:
        last = msg.first + len(msg.chunks) - 1
        return f"blob chunks {msg.first}..{last}/{msg.total} fail verification against the root"
    return leaves


def _range_fault(msg: BlobRange, asked: int) -> str | None:
    """Why a reply to a request for ``asked`` chunks is not acceptable by its shape (the
    chunks are checked against the root after this), or None."""
    n = len(msg.chunks)
    if msg.total == 0:
        if n or msg.proof:
            return "blob range: a 'not found' reply (total 0) must be empty"
        return None
    if n == 0:
        return f"blob range from chunk {msg.first} holds no chunks"
    if not all(msg.chunks):
        return f"blob range from chunk {msg.first} holds an empty chunk"
    if n > asked:
        return f"blob range holds {n} chunks where at most {asked} were asked for"
    size = sum(len(c) for c in msg.chunks)
    if n > 1 and size > RANGE_BYTES:
        return f"blob range of {n} chunks exceeds {RANGE_BYTES} bytes"
    # Every chunk but a blob's last has the size of the reply's first (or the first is the
    # last): an honest reply holds at least this many (BlobTree.range).
    fit = max(1, RANGE_BYTES // len(msg.chunks[0]))
    full = min(asked, MAX_RANGE_CHUNKS, msg.total - msg.first, fit)
    if n < full:
        return f"blob range holds {n} chunks where {full} were asked for and fit"
    return None


def _cut_fault(shape: _Shape, cut: int) -> str | None:
    """Why a blob whose first chunk has ``cut`` bytes is not of ``shape``, or None."""
    root, chunk_size, _ = shape
    if chunk_size is not None and cut != chunk_size:
        return f"blob {root.hex()[:16]}… is cut into chunks of {cut} bytes, not {chunk_size}"
    return None


def _count_fault(shape: _Shape, total: int) -> str | None:
    """Why a blob of ``total`` chunks is not of ``shape``, or None."""
    root, _, chunk_count = shape
    if chunk_count is not None and total != chunk_count:
        return f"blob {root.hex()[:16]}… has {total} chunks, not {chunk_count}"
    return None


def _missing_runs(total: int, chunks: dict[int, bytes], longest: int) -> list[tuple[int, int]]:
    """(first, count) of the runs of chunks below ``total`` not in ``chunks``, each at
    most ``longest`` long."""
    runs: list[tuple[int, int]] = []
    start = None
    for i in range(total + 1):
        if i < total and i not in chunks:
            if start is None:
                start = i
            if i - start + 1 == longest:
                runs.append((start, longest))
                start = None
        elif start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def _fail(future: asyncio.Future[_Verified], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
