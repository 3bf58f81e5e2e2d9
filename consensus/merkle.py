"""Binary BLAKE3 Merkle trees and matrix commitments (PROTOCOL §2).

- leaf i  = tagged_hash("merkle-leaf", u64(i), payload)
- node    = tagged_hash("merkle-node", left, right)
- a level with an odd number of nodes promotes its last node unchanged to
  the next level;
- the empty tree's root is the constant ``EMPTY_ROOT``.

Why promote instead of duplicating the last node (Bitcoin's rule): with
duplication, the lists [a, b, c] and [a, b, c, c] have the same root
(CVE-2012-2459), so a block with a repeated transaction shares its hash with
the valid block and a node that caches "this hash is invalid" can be split
from the network. Promotion gives every leaf count its own tree shape; leaf
and node hashes have different tags, so a node can never pose as a leaf (the
second-preimage trick on unbalanced trees), and each leaf commits to its
index, so a leaf proven at one position cannot be replayed at another.

A branch lists sibling hashes bottom-up and skips levels where the node was
promoted; a verifier needs the leaf count to know where those levels are.
Matrices commit their rows (A, C) or columns (B, as rows of Bᵀ); a row's
payload is its raw bytes (int8, or int32 little-endian for C).
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from consensus.hashing import (
    CONTEXT_PREFIX,
    HASH_SIZE,
    TAG_MERKLE_EMPTY,
    TAG_MERKLE_LEAF,
    TAG_MERKLE_NODE,
    Hash32,
    tagged_hash,
    tagged_hasher,
    u64_bytes,
)
from kernels.blake3_lanes import (
    DERIVE_KEY_MATERIAL,
    derive_key_words,
    pair_hashes,
    prefixed_row_hashes,
    promoted_tree_root,
)

EMPTY_ROOT: Hash32 = tagged_hash(TAG_MERKLE_EMPTY)
"""Root of a tree with no leaves."""

_LEN8 = (8).to_bytes(8, "little")
_LEN32 = (HASH_SIZE).to_bytes(8, "little")


# Blocks hash tens of thousands of leaves and nodes (tx_root of every block and
# template), so the hashers below feed each message in one update: the same
# bytes as tagged_hash's framing, a third of its calls.
_LEAF = tagged_hasher(TAG_MERKLE_LEAF)
_NODE = tagged_hasher(TAG_MERKLE_NODE)


@cache
def _leaf_key() -> np.ndarray:
    """BLAKE3's context key of the leaf tag (``_LEAF``'s), for the compiled leaf path."""
    return derive_key_words((CONTEXT_PREFIX + TAG_MERKLE_LEAF).encode())


def leaf_hash(index: int, payload: bytes) -> Hash32:
    """Hash of the leaf at ``index`` carrying ``payload``
    (``tagged_hash(TAG_MERKLE_LEAF, u64(index), payload)``)."""
    hasher = _LEAF.copy()
    hasher.update(_LEN8 + u64_bytes(index) + len(payload).to_bytes(8, "little") + payload)
    return hasher.digest()


def leaf_hashes(payloads: Sequence[bytes | memoryview], first_index: int = 0) -> list[Hash32]:
    """``leaf_hash(first_index + i, payloads[i])`` for every i."""
    template = _LEAF
    out = []
    for i, payload in enumerate(payloads, first_index):
        hasher = template.copy()
        hasher.update(
            _LEN8 + i.to_bytes(8, "little") + len(payload).to_bytes(8, "little") + payload
        )
        out.append(hasher.digest())
    return out


def node_hash(left: Hash32, right: Hash32) -> Hash32:
    """Hash of an inner node (same bytes as ``tagged_hash(TAG_MERKLE_NODE, left, right)``)."""
    hasher = _NODE.copy()
    hasher.update(_LEN32 + left + _LEN32 + right)
    return hasher.digest()


PARENTS_MIN = 16
"""Fewer parents than this on a level are hashed by the library, one call each (~1 µs);
more by the compiled BLAKE3, 16 side by side on the calling thread."""


@cache
def _node_key() -> np.ndarray:
    """BLAKE3's context key of the node tag (``_NODE``'s), for the compiled parents."""
    return derive_key_words((CONTEXT_PREFIX + TAG_MERKLE_NODE).encode())


def _parents(level: Sequence[Hash32], first: int) -> list[Hash32]:
    """The parents of ``level`` from parent index ``first`` on (a lone last node is promoted)."""
    start = 2 * first
    pairs = (len(level) - start) // 2
    out = _compiled_parents(level, start, pairs) if pairs >= PARENTS_MIN else None
    if out is None:
        template = _NODE
        out = []
        for i in range(start, len(level) - 1, 2):
            hasher = template.copy()
            hasher.update(_LEN32 + level[i] + _LEN32 + level[i + 1])
            out.append(hasher.digest())
    if len(level) % 2:
        out.append(level[-1])
    return out


def _compiled_parents(level: Sequence[Hash32], start: int, pairs: int) -> list[Hash32] | None:
    """``node_hash(level[i], level[i + 1])`` for the ``pairs`` pairs from ``start``, by the
    compiled BLAKE3 (:func:`kernels.blake3_lanes.pair_hashes`, which
    :func:`_root_of_words` runs on every level). None if the nodes are not all 32 bytes
    long (then the library hashes them as given)."""
    run = level[start : start + 2 * pairs]
    if any(len(node) != HASH_SIZE for node in run):
        return None
    return _digests(pair_hashes(_node_words(b"".join(run)), *_node_frame()))


def _node_words(hashes: bytes) -> np.ndarray:
    """Concatenated 32-byte hashes as (count, 8) words, writable: the one array type the
    compiled tree functions take."""
    return np.frombuffer(hashes, dtype="<u4").reshape(-1, 8).astype(np.uint32)


@cache
def _node_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """An inner node's framing for the compiled BLAKE3: its message is len ‖ left ‖ len ‖
    right under the node tag's context key (``node_hash``'s bytes)."""
    length = np.frombuffer(_LEN32, dtype=np.uint8).copy()
    return length, length, _node_key(), DERIVE_KEY_MATERIAL


def _digests(words: np.ndarray) -> list[Hash32]:
    """The 32-byte hashes of the compiled BLAKE3's (count, 8) output words."""
    digests = words.astype("<u4", copy=False).tobytes()
    return [digests[i : i + HASH_SIZE] for i in range(0, len(digests), HASH_SIZE)]


def tree_levels(leaves: Sequence[Hash32]) -> list[list[Hash32]]:
    """All levels of the tree, leaves first and the root alone last (empty list: no leaves)."""
    if not leaves:
        return []
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        levels.append(_parents(levels[-1], 0))
    return levels


def extend_levels(levels: list[list[Hash32]], leaves: Sequence[Hash32]) -> list[list[Hash32]]:
    """``tree_levels(old + leaves)`` from ``levels == tree_levels(old)``, which is left as it
    is: only the nodes that the new leaves change (the right edge of each level) are
    hashed, O(len(leaves) + log n) instead of O(n)."""
    if not levels or not leaves:
        return tree_levels([*(levels[0] if levels else ()), *leaves])
    out = [levels[0] + list(leaves)]
    changed = len(levels[0])  # the first index of the current level that is new or changed
    depth = 0
    while len(out[-1]) > 1:
        keep = changed // 2  # parents whose two children are both unchanged
        old = levels[depth + 1][:keep] if depth + 1 < len(levels) else []
        out.append(old + _parents(out[-1], keep))
        changed, depth = keep, depth + 1
    return out


def root_of_leaves(leaves: Sequence[Hash32]) -> Hash32:
    """Root over already hashed leaves: every level in one compiled call where there are
    enough of them and all are hashes, else level by level as :func:`tree_levels`."""
    if len(leaves) >= 2 * PARENTS_MIN and all(len(leaf) == HASH_SIZE for leaf in leaves):
        return _root_of_words(_node_words(b"".join(leaves)))
    levels = tree_levels(leaves)
    return levels[-1][0] if levels else EMPTY_ROOT


def _root_of_words(leaves: np.ndarray) -> Hash32:
    """The root over leaf hashes given as (count, 8) little-endian words (the compiled
    BLAKE3's output), every level hashed in one compiled call."""
    if not len(leaves):
        return EMPTY_ROOT
    return promoted_tree_root(leaves, *_node_frame()).astype("<u4").tobytes()


def branch_of(levels: list[list[Hash32]], index: int) -> list[Hash32]:
    """Sibling hashes of leaf ``index``, bottom-up, from precomputed ``tree_levels``."""
    if not levels or not 0 <= index < len(levels[0]):
        raise IndexError(f"leaf {index} is not in a tree of {len(levels[0]) if levels else 0}")
    branch: list[Hash32] = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            branch.append(level[sibling])
        index //= 2
    return branch


def merkle_root(payloads: Sequence[bytes]) -> Hash32:
    """Root of the tree whose leaf i carries ``payloads[i]``."""
    return root_of_leaves(leaf_hashes(payloads))


def merkle_branch(payloads: Sequence[bytes], index: int) -> list[Hash32]:
    """Proof that ``payloads[index]`` is leaf ``index``: sibling hashes, bottom-up."""
    return branch_of(tree_levels(leaf_hashes(payloads)), index)


def root_from_branch(
    index: int, count: int, leaf: Hash32, branch: Sequence[bytes]
) -> Hash32 | None:
    """The root ``branch`` implies for ``leaf`` at ``index`` of ``count``; None if malformed."""
    if not 0 <= index < count:
        return None
    h, used, size, template = leaf, 0, len(branch), _NODE
    while count > 1:
        if index % 2 == 1 or index + 1 < count:
            if used >= size:
                return None
            sibling = branch[used]
            if type(sibling) is not bytes or len(sibling) != HASH_SIZE:
                return None
            used += 1
            hasher = template.copy()  # node_hash, inlined: a header checks ~300 of them
            if index % 2:
                hasher.update(_LEN32 + sibling + _LEN32 + h)
            else:
                hasher.update(_LEN32 + h + _LEN32 + sibling)
            h = hasher.digest()
        index //= 2
        count = (count + 1) // 2
    return h if used == size else None


def verify_branch(
    root: Hash32, index: int, count: int, payload: bytes, branch: Sequence[bytes]
) -> bool:
    """True iff ``payload`` is leaf ``index`` of the ``count``-leaf tree with ``root``.

    Never raises on malformed input: a wrong index, count, payload type or
    branch length is simply False.
    """
    if type(payload) is not bytes or type(root) is not bytes:
        return False
    if type(index) is not int or type(count) is not int:
        return False
    if index < 0 or index >= 2**64:
        return False
    implied = root_from_branch(index, count, leaf_hash(index, payload), branch)
    return implied is not None and hmac.compare_digest(implied, root)


def verify_branches(
    root: Hash32, count: int, openings: Sequence[tuple[int, bytes, Sequence[bytes]]]
) -> bool:
    """``all(verify_branch(root, i, count, payload, branch) for i, payload, branch in
    openings)``, hashing each node of the tree the openings share once.

    A PoUW proof opens h consecutive rows of A and w columns of B: their branches
    share every node above the tile, so checking them one by one hashed the same
    path h (or w) times (~290 hashes a header instead of ~40). The openings are
    walked up together, level by level: a sibling a branch names must equal the
    node computed from the other openings (or named by another branch) at that
    place, so every branch hashes to the root this reaches exactly when it would
    on its own. Never raises on malformed input.
    """
    if type(root) is not bytes or type(count) is not int:
        return False
    nodes: dict[int, Hash32] = {}  # the nodes of the current level we know
    paths: list[list[Any]] = []  # per opening: [index at this level, siblings used, branch]
    for index, payload, branch in openings:
        if type(payload) is not bytes or type(index) is not int or not 0 <= index < count:
            return False
        if index >= 2**64:
            return False
        leaf = leaf_hash(index, payload)
        if nodes.setdefault(index, leaf) != leaf:
            return False  # one leaf opened with two payloads: one of them is wrong
        paths.append([index, 0, branch])
    if not paths:
        return True
    template = _NODE
    while count > 1:
        if len(paths) > 1:
            # Paths that reached the same node go on as one: from here their branches
            # must name the same siblings, or they cannot both reach the root.
            merged: dict[int, list[Any]] = {}
            for path in paths:
                first = merged.setdefault(path[0], path)
                if first is not path and list(path[2][path[1] :]) != list(first[2][first[1] :]):
                    return False
            paths = list(merged.values())
        for path in paths:  # the siblings the branches name, checked against each other
            index, used, branch = path
            if index % 2 == 1 or index + 1 < count:
                if used >= len(branch):
                    return False
                sibling = branch[used]
                if type(sibling) is not bytes or len(sibling) != HASH_SIZE:
                    return False
                if nodes.setdefault(index ^ 1, sibling) != sibling:
                    return False
                path[1] = used + 1
        parents: dict[int, Hash32] = {}
        for path in paths:
            index = path[0]
            parent = index // 2
            if parent not in parents:
                if index % 2 == 1 or index + 1 < count:
                    hasher = template.copy()
                    hasher.update(_LEN32 + nodes[index & ~1] + _LEN32 + nodes[index | 1])
                    parents[parent] = hasher.digest()
                else:
                    parents[parent] = nodes[index]  # the lone last node is promoted
            path[0] = parent
        nodes, count = parents, (count + 1) // 2
    if any(used != len(branch) for _, used, branch in paths):
        return False  # a branch names more siblings than its leaf has
    top = nodes.get(0)
    return top is not None and hmac.compare_digest(top, root)


# --------------------------------------------------------- matrix commitments


def _rows_of(x: np.ndarray) -> np.ndarray:
    """A C-contiguous little-endian view of a 2-D int8 or int32 matrix, or TypeError."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise TypeError("a matrix commitment needs a 2-D numpy array")
    if x.dtype == np.int8:
        return np.ascontiguousarray(x)
    if x.dtype.kind == "i" and x.dtype.itemsize == 4:  # int32 of either byte order
        return np.ascontiguousarray(x, dtype="<i4")
    raise TypeError(f"a matrix commitment needs int8 or int32 entries, got {x.dtype}")


def matrix_leaf_hashes(x: np.ndarray) -> list[Hash32]:
    """Leaf hashes of the rows of ``x`` (int8, or int32 hashed little-endian).

    The fast path: each row's framed message (``leaf_hash``'s bytes: len(index) ‖ index ‖
    len(row) ‖ row) is hashed by the compiled BLAKE3 in :mod:`kernels.blake3_lanes`, 16
    rows per vector (one row per lane) and the batches on every core: 2.2 ms for C's
    2048 rows of 8 KiB on two cores, where one library call per row took 6.2 ms (the
    library hashes a row's 8 chunks side by side, half a zmm's lanes, and each call
    costs ~1.5 µs from Python). ``leaf_hash`` stays the reference; tests hold the two
    equal.
    """
    return _row_leaf_hashes(_rows_of(x).view(np.uint8))


def _row_leaf_hashes(rows: np.ndarray, first_index: int = 0) -> list[Hash32]:
    """``leaf_hash(first_index + i, rows[i])`` for the rows of a C-contiguous 2-D uint8
    array, compiled."""
    return _digests(_row_leaf_words(rows, first_index))


def _row_leaf_words(rows: np.ndarray, first_index: int = 0) -> np.ndarray:
    """:func:`_row_leaf_hashes` as the compiled BLAKE3's (count, 8) output words."""
    count, width = rows.shape
    heads = np.empty((count, 24), dtype=np.uint8)
    heads[:, :8] = np.frombuffer(_LEN8, dtype=np.uint8)
    indices = np.arange(first_index, first_index + count, dtype="<u8")
    heads[:, 8:16] = indices.view(np.uint8).reshape(count, 8)
    heads[:, 16:] = np.frombuffer(width.to_bytes(8, "little"), dtype=np.uint8)
    return prefixed_row_hashes(heads, rows, _leaf_key(), DERIVE_KEY_MATERIAL)


LANE_MIN_CHUNKS = 32
"""Fewer whole chunks than this are hashed by the library: the compiled path's parallel
region costs more than it saves on a few."""
LANE_MAX_CHUNK = 64 * 1024
"""Larger chunks are hashed by the library, which already hashes a chunk's 1 KiB BLAKE3
chunks side by side; the compiled path frames 16 of them in a buffer meant for L2."""


def chunk_leaf_hashes(
    data: bytes | memoryview, chunk_size: int, first_index: int = 0
) -> list[Hash32]:
    """``leaf_hash(first_index + i, chunk i)`` for ``data`` cut into ``chunk_size``-byte
    chunks, the last possibly shorter: the leaves of a blob (``first_index`` 0) or of a
    run of its chunks. A matrix blob's chunks are its rows (8 KiB for C's at 2048),
    hashed as :func:`matrix_leaf_hashes` hashes them."""
    if chunk_size < 1:
        raise ValueError(f"chunk size must be positive, got {chunk_size}")
    if first_index < 0:
        raise ValueError(f"first chunk index must be non-negative, got {first_index}")
    view = memoryview(data).cast("B")
    whole = len(view) // chunk_size
    if whole < LANE_MIN_CHUNKS or chunk_size > LANE_MAX_CHUNK:
        cuts = range(0, len(view), chunk_size)
        return leaf_hashes([view[i : i + chunk_size] for i in cuts], first_index)
    rows = np.frombuffer(view, dtype=np.uint8, count=whole * chunk_size)
    leaves = _row_leaf_hashes(rows.reshape(whole, chunk_size), first_index)
    if len(view) > whole * chunk_size:
        leaves.append(leaf_hash(first_index + whole, bytes(view[whole * chunk_size :])))
    return leaves


def matrix_rows_root(x: np.ndarray) -> Hash32:
    """Commitment to a matrix by its rows (A, and C's ``result_root``): the leaves' words
    go from one compiled call to the next, never through 32-byte strings."""
    return _root_of_words(_row_leaf_words(_rows_of(x).view(np.uint8)))


def matrix_rows_commitment(x: np.ndarray) -> tuple[Hash32, bytes]:
    """``matrix_rows_root(x)`` and the leaf hashes of its rows, concatenated (32 bytes a
    row): what a node serving ``x`` as a blob builds its tree from, without hashing
    its megabytes again."""
    words = _row_leaf_words(_rows_of(x).view(np.uint8))
    return _root_of_words(words), words.astype("<u4", copy=False).tobytes()


def matrix_cols_root(b: np.ndarray) -> Hash32:
    """Commitment to a matrix by its columns, i.e. the rows of bᵀ (B)."""
    return matrix_rows_root(b.T)


@dataclass(frozen=True)
class RowOpening:
    """One opened row: its index, its bytes and its branch against the matrix root."""

    index: int
    row: bytes
    branch: tuple[Hash32, ...]


def rows_with_branches(x: np.ndarray, indices: Sequence[int]) -> list[RowOpening]:
    """Open rows ``indices`` of ``x`` against ``matrix_rows_root(x)`` (tree built once)."""
    rows = _rows_of(x)
    levels = tree_levels(matrix_leaf_hashes(rows))
    return [RowOpening(i, rows[i].tobytes(), tuple(branch_of(levels, i))) for i in indices]


def cols_with_branches(b: np.ndarray, indices: Sequence[int]) -> list[RowOpening]:
    """Open columns ``indices`` of ``b`` against ``matrix_cols_root(b)``."""
    return rows_with_branches(b.T, indices)


def verify_row_opening(root: Hash32, count: int, opening: RowOpening) -> bool:
    """True iff ``opening`` is row ``opening.index`` of the ``count``-row matrix with ``root``."""
    return verify_branch(root, opening.index, count, opening.row, opening.branch)
