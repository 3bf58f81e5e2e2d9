"""Merkle trees: every branch verifies, every forgery fails, matrices commit as specified."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.hashing import TAG_MERKLE_LEAF, TAG_MERKLE_NODE, tagged_hash, u64_bytes
from consensus.merkle import (
    EMPTY_ROOT,
    LANE_MAX_CHUNK,
    LANE_MIN_CHUNKS,
    PARENTS_MIN,
    chunk_leaf_hashes,
    cols_with_branches,
    extend_levels,
    leaf_hash,
    leaf_hashes,
    matrix_cols_root,
    matrix_leaf_hashes,
    matrix_rows_commitment,
    matrix_rows_root,
    merkle_branch,
    merkle_root,
    node_hash,
    root_of_leaves,
    rows_with_branches,
    tree_levels,
    verify_branch,
    verify_branches,
    verify_row_opening,
)


def payloads(n: int) -> list[bytes]:
    return [f"payload-{i}".encode() for i in range(n)]


@pytest.mark.parametrize("n", range(1, 18))
def test_every_branch_verifies_and_forgeries_fail(n: int) -> None:
    items = payloads(n)
    root = merkle_root(items)
    for index, payload in enumerate(items):
        branch = merkle_branch(items, index)
        assert verify_branch(root, index, n, payload, branch)
        assert not verify_branch(root, index, n, payload + b"!", branch)
        if n > 1:
            other = (index + 1) % n
            assert not verify_branch(root, other, n, payload, branch)
            assert not verify_branch(root, other, n, items[other], branch)
            tampered = [bytes([branch[0][0] ^ 1]) + branch[0][1:], *branch[1:]]
            assert not verify_branch(root, index, n, payload, tampered)
            assert not verify_branch(root, index, n, payload, branch[:-1])
        assert not verify_branch(root, index, n, payload, [*branch, root])
        assert not verify_branch(leaf_hash(0, b""), index, n, payload, branch)


def test_branch_lengths_skip_promoted_levels() -> None:
    items = payloads(5)  # levels 5 -> 3 -> 2 -> 1; leaf 4 is promoted twice
    assert len(merkle_branch(items, 4)) == 1
    assert len(merkle_branch(items, 0)) == 3


def test_tree_shape_by_hand() -> None:
    a, b, c = payloads(3)
    la, lb, lc = leaf_hash(0, a), leaf_hash(1, b), leaf_hash(2, c)
    assert merkle_root([a]) == la
    assert merkle_root([a, b, c]) == node_hash(node_hash(la, lb), lc)
    assert leaf_hash(3, c) == tagged_hash(TAG_MERKLE_LEAF, u64_bytes(3), c)
    assert node_hash(la, lb) == tagged_hash(TAG_MERKLE_NODE, la, lb)


def test_duplicated_last_leaf_changes_the_root() -> None:
    # CVE-2012-2459: with Bitcoin's duplicate-last rule these two roots are equal.
    a, b, c = payloads(3)
    assert merkle_root([a, b, c]) != merkle_root([a, b, c, c])


def test_leaves_commit_to_their_position() -> None:
    a, b = payloads(2)
    assert merkle_root([a, b]) != merkle_root([b, a])
    assert leaf_hash(0, a) != leaf_hash(1, a)


def test_empty_tree() -> None:
    assert merkle_root([]) == EMPTY_ROOT
    assert len(EMPTY_ROOT) == 32
    assert merkle_root([b""]) != EMPTY_ROOT
    with pytest.raises(IndexError):
        merkle_branch([], 0)


@pytest.mark.parametrize(
    ("index", "count", "branch"),
    [(-1, 3, []), (3, 3, []), (0, 0, []), (0, 3, ["not bytes", b"x" * 32]), (0, 3, [b"short"])],
)
def test_verify_branch_is_false_on_garbage(index: int, count: int, branch: list) -> None:
    items = payloads(3)
    assert not verify_branch(merkle_root(items), index, count, items[0], branch)


def test_verify_branch_is_false_for_a_count_that_moves_promotions() -> None:
    items = payloads(3)
    root, branch = merkle_root(items), merkle_branch(items, 2)
    assert verify_branch(root, 2, 3, items[2], branch)
    assert not verify_branch(root, 2, 4, items[2], branch)


def test_matrix_roots_commit_rows_of_a_and_columns_of_b() -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(-64, 64, size=(7, 5), dtype=np.int8)
    b = rng.integers(-64, 64, size=(5, 6), dtype=np.int8)
    assert matrix_rows_root(a) == merkle_root([row.tobytes() for row in a])
    assert matrix_cols_root(b) == merkle_root([b[:, j].tobytes() for j in range(6)])
    assert matrix_cols_root(b) == matrix_rows_root(np.ascontiguousarray(b.T))
    assert matrix_rows_root(a) != matrix_cols_root(a)
    assert matrix_rows_root(a[::2]) == merkle_root([row.tobytes() for row in a[::2]])


def test_int32_rows_hash_little_endian() -> None:
    c = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
    big_endian = c.astype(">i4")
    expected = merkle_root([row.astype("<i4").tobytes() for row in c])
    assert matrix_rows_root(c) == expected
    assert matrix_rows_root(big_endian) == expected
    with pytest.raises(TypeError):
        matrix_rows_root(c.astype(np.int64))
    with pytest.raises(TypeError):
        matrix_rows_root(np.zeros(4, dtype=np.int8))


def test_fast_leaf_path_matches_leaf_hash() -> None:
    x = np.random.default_rng(2).integers(-64, 64, size=(9, 33), dtype=np.int8)
    assert matrix_leaf_hashes(x) == [leaf_hash(i, row.tobytes()) for i, row in enumerate(x)]


def test_fast_leaf_path_matches_leaf_hash_across_batches() -> None:
    """C's rows are framed and hashed in batches of ~512 KiB: 130 rows of 8 KiB span three."""
    c = np.random.default_rng(4).integers(-(2**31), 2**31, size=(130, 2048), dtype=np.int32)
    expected = [leaf_hash(i, row.astype("<i4").tobytes()) for i, row in enumerate(c)]
    assert matrix_leaf_hashes(c) == expected
    assert matrix_leaf_hashes(c[:0]) == []
    # The result_root a miner commits, with the leaves it serves C's tree from.
    assert matrix_rows_commitment(c) == (matrix_rows_root(c), b"".join(expected))


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (0, 8),  # no chunks
        (5, 8),  # one short chunk
        (LANE_MIN_CHUNKS * 8 - 1, 8),  # under the compiled path's threshold: the library
        (LANE_MIN_CHUNKS * 8, 8),  # exactly enough whole chunks: compiled
        (LANE_MIN_CHUNKS * 8 + 3, 8),  # compiled, and a short last chunk by the library
        (100 * 1, 1),  # one-byte chunks
        (2048 * 8192 + 17, 8192),  # C's rows at 2048, plus a tail
        (40 * (LANE_MAX_CHUNK + 1), LANE_MAX_CHUNK + 1),  # chunks too big for the lanes
    ],
)
def test_a_blobs_leaves_are_its_chunks_leaf_hashes(size: int, chunk: int) -> None:
    """Both paths of chunk_leaf_hashes give leaf_hash of each chunk, at every chunk count
    and with or without a short last chunk, from bytes or a memoryview."""
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    expected = [leaf_hash(i, data[o : o + chunk]) for i, o in enumerate(range(0, size, chunk))]
    assert chunk_leaf_hashes(data, chunk) == expected
    assert chunk_leaf_hashes(memoryview(data), chunk) == expected


@pytest.mark.parametrize("count", [LANE_MIN_CHUNKS - 1, LANE_MIN_CHUNKS + 5])
@pytest.mark.parametrize("first", [1, 4095])
def test_a_run_of_chunks_hashes_at_its_own_indices(count: int, first: int) -> None:
    """Chunks ``first …`` of a blob hash as those leaves (each commits to its index), on
    the library path and the compiled one, a short last chunk included."""
    data = np.random.default_rng(count).integers(0, 256, count * 64 - 9, dtype=np.uint8)
    run = data.tobytes()
    expected = [leaf_hash(first + i, run[o : o + 64]) for i, o in enumerate(range(0, len(run), 64))]
    assert chunk_leaf_hashes(run, 64, first) == expected
    assert chunk_leaf_hashes(run, 64, first) != chunk_leaf_hashes(run, 64)
    with pytest.raises(ValueError, match="non-negative"):
        chunk_leaf_hashes(run, 64, -1)


def test_a_blobs_leaves_need_a_positive_chunk_size() -> None:
    with pytest.raises(ValueError, match="chunk size"):
        chunk_leaf_hashes(b"abc", 0)


def test_row_and_column_openings_verify() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(-64, 64, size=(13, 8), dtype=np.int8)
    b = rng.integers(-64, 64, size=(8, 11), dtype=np.int8)
    root_a, root_b = matrix_rows_root(a), matrix_cols_root(b)
    for opening in rows_with_branches(a, [0, 5, 12]):
        assert opening.row == a[opening.index].tobytes()
        assert verify_row_opening(root_a, 13, opening)
        assert not verify_row_opening(root_b, 13, opening)
    for opening in cols_with_branches(b, [0, 10]):
        assert opening.row == b[:, opening.index].tobytes()
        assert verify_row_opening(root_b, 11, opening)


def test_print_2048_square_commitment_time() -> None:
    x = np.random.default_rng(4).integers(-64, 64, size=(2048, 2048), dtype=np.int8)
    matrix_rows_root(x[:4])  # warm up
    start = time.perf_counter()
    root = matrix_rows_root(x)
    rows_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    matrix_cols_root(x)
    cols_ms = (time.perf_counter() - start) * 1e3
    print(f"\n2048x2048 int8 commitment: rows {rows_ms:.1f} ms, columns {cols_ms:.1f} ms")
    assert len(root) == 32


@pytest.mark.parametrize(
    ("old", "new"),
    [(0, 1), (0, 5), (1, 1), (1, 2), (2, 1), (3, 1), (3, 4), (4, 4), (5, 11), (7, 9)],
)
def test_extending_a_tree_equals_building_it_whole(old: int, new: int) -> None:
    """A template grows by appending transactions: extend_levels must give exactly the
    tree (every level) that building it from all the leaves gives."""
    leaves = [leaf_hash(i, p) for i, p in enumerate(payloads(old + new))]
    assert leaf_hashes(payloads(old + new)) == leaves
    assert leaf_hashes(payloads(old + new)[old:], first_index=old) == leaves[old:]
    before = tree_levels(leaves[:old])
    kept = [list(level) for level in before]
    assert extend_levels(before, leaves[old:]) == tree_levels(leaves)
    assert before == kept  # the earlier tree is left as it was


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_verifying_branches_together_agrees_with_one_by_one(data: st.DataObject) -> None:
    """verify_branches must give exactly all(verify_branch ...) for any openings:
    honest ones (tiles of consecutive leaves, any tree size, promotions included),
    and ones with a payload, a sibling, an index or a branch length tampered with."""
    count = data.draw(st.integers(1, 70))
    items = payloads(count)
    root = merkle_root(items)
    start = data.draw(st.integers(0, count - 1))
    width = data.draw(st.integers(1, min(16, count - start)))
    openings = [(i, items[i], list(merkle_branch(items, i))) for i in range(start, start + width)]
    if data.draw(st.booleans()):
        openings.append(openings[data.draw(st.integers(0, width - 1))])  # a leaf opened twice
    for _ in range(data.draw(st.integers(0, 2))):
        k = data.draw(st.integers(0, len(openings) - 1))
        index, payload, branch = openings[k]
        how = data.draw(st.sampled_from(["payload", "sibling", "index", "short", "long"]))
        if how == "payload":
            payload = payload + b"!"
        elif how == "sibling" and branch:
            j = data.draw(st.integers(0, len(branch) - 1))
            branch = [*branch[:j], bytes(32), *branch[j + 1 :]]
        elif how == "index":
            index = data.draw(st.integers(-1, count))
        elif how == "short" and branch:
            branch = branch[:-1]
        elif how == "long":
            branch = [*branch, bytes(32)]
        openings[k] = (index, payload, branch)
    expected = all(verify_branch(root, i, count, p, b) for i, p, b in openings)
    assert verify_branches(root, count, openings) == expected


def _reference_levels(leaves: list[bytes], pair=None) -> list[list[bytes]]:
    """Every level by hashing each pair on its own (``tagged_hash``: the specification)."""
    pair = pair or (lambda left, right: tagged_hash(TAG_MERKLE_NODE, left, right))
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        up = [pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        levels.append(up + level[len(level) - 1 :] if len(level) % 2 else up)
    return levels


@pytest.mark.parametrize(
    "n",
    [2 * PARENTS_MIN - 1, 2 * PARENTS_MIN, 2 * PARENTS_MIN + 1, 4 * PARENTS_MIN + 3, 1000, 2049],
)
def test_levels_hashed_side_by_side_are_the_specified_tree(n: int) -> None:
    """Levels of PARENTS_MIN pairs or more are hashed by the compiled BLAKE3, 16 at a
    time: every level, promoted last nodes included, is the one ``tagged_hash`` gives."""
    leaves = [leaf_hash(i, p) for i, p in enumerate(payloads(n))]
    want = _reference_levels(leaves)
    assert tree_levels(leaves) == want
    assert root_of_leaves(leaves) == want[-1][0]
    # Grown from a tree of most of them: the parents from an offset on.
    old = n - 7
    assert extend_levels(tree_levels(leaves[:old]), leaves[old:]) == want


def test_nodes_that_are_not_hashes_are_hashed_one_by_one() -> None:
    """A level with a node of another length (no caller makes one) is hashed pair by
    pair as ``node_hash`` hashes it, never cut into 32-byte pieces."""
    leaves = [leaf_hash(i, p) for i, p in enumerate(payloads(4 * PARENTS_MIN))]
    leaves[5] = leaves[5][:31]
    leaves[6] = leaves[6] + b"!"
    assert tree_levels(leaves) == _reference_levels(leaves, node_hash)


@pytest.mark.parametrize("rows", [0, 1, 2, 3, 5, 16, 17, 33, 64, 95, 130])
def test_a_matrix_root_hashed_in_one_compiled_call_is_the_specified_tree(rows: int) -> None:
    """matrix_rows_root takes every level of the tree in one compiled call (the leaves'
    words never become strings): the root ``tagged_hash`` gives, level by level, at row
    counts whose levels promote a last node at the bottom, the top or in between."""
    x = np.random.default_rng(rows).integers(-(2**31), 2**31, size=(rows, 24), dtype=np.int32)
    leaves = [
        tagged_hash(TAG_MERKLE_LEAF, u64_bytes(i), row.astype("<i4").tobytes())
        for i, row in enumerate(x)
    ]
    want = _reference_levels(leaves)[-1][0] if rows else EMPTY_ROOT
    assert matrix_rows_root(x) == want
    assert root_of_leaves(leaves) == want
