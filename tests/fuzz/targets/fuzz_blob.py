"""Blobs a peer serves (node/relay/blobs.py): BLOB_CHUNK and BLOB_RANGE records and the
matrix blobs they assemble into (job operands, results a client fetches).

The first byte picks the decoder (0 mod 3: a BlobChunk record, checked with
``verify_chunk``; 2 mod 3: a BlobRange record, checked with ``verify_range``; both
never raise; 1 mod 3: a matrix blob, ``decode_matrix``, which raises only
``BlobError`` and whose result re-encodes to the same bytes).
"""

from __future__ import annotations

import numpy as np

from consensus.encoding import decode_record, encode_record
from consensus.errors import DecodeError
from node.net.wire import MAX_FRAME, BlobChunk, BlobRange
from node.relay.blobs import BlobError, decode_matrix, encode_matrix, verify_chunk, verify_range
from tests.fuzz.targets import check_as_careful


def test_one_input(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    if data[0] % 3 == 2:
        try:
            reply = decode_record(BlobRange, body, MAX_FRAME)
        except DecodeError:
            return
        if encode_record(reply) != body:
            raise AssertionError("blob range accepted in a non-canonical encoding")
        check_as_careful(BlobRange, body, reply)
        ok = verify_range(reply.root, reply.first, reply.total, reply.chunks, reply.proof)
        assert ok in (True, False)
        return
    if data[0] % 3 == 0:
        try:
            chunk = decode_record(BlobChunk, body, MAX_FRAME)
        except DecodeError:
            return
        if encode_record(chunk) != body:
            raise AssertionError("blob chunk accepted in a non-canonical encoding")
        check_as_careful(BlobChunk, body, chunk)
        ok = verify_chunk(chunk.root, chunk.index, chunk.total, chunk.data, chunk.branch)
        assert ok in (True, False)
        return
    try:
        matrix = decode_matrix(body)
    except BlobError:
        return
    if encode_matrix(matrix) != body:
        raise AssertionError("matrix blob accepted in a non-canonical form")


def seeds() -> list[bytes]:
    from node.relay.blobs import BlobTree, matrix_rows
    from tests.support.corpus import messages

    a = np.arange(-64, 64, dtype=np.int8).reshape(8, 16)
    c = (np.arange(24, dtype=np.int32) * -(2**27)).reshape(4, 6)
    rows, row_size = matrix_rows(a)
    tree = BlobTree(rows, row_size)
    chunk, branch = tree.chunk(5)
    real = BlobChunk(tree.root, 5, tree.total, chunk, branch)
    chunks = [m for m in messages() if type(m) is BlobChunk] + [real]
    range_chunks, proof = tree.range(3, 4)
    # A long range of small chunks too: such a reply is hashed as one buffer.
    long_tree = BlobTree(bytes(range(256)) * 3, 16)
    long_chunks, long_proof = long_tree.range(2, 40)
    ranges = [m for m in messages() if type(m) is BlobRange] + [
        BlobRange(tree.root, 3, tree.total, range_chunks, proof),
        BlobRange(long_tree.root, 2, long_tree.total, long_chunks, long_proof),
    ]
    return [
        *(b"\x00" + encode_record(m) for m in chunks),
        *(b"\x02" + encode_record(m) for m in ranges),
        b"\x01" + encode_matrix(a),
        b"\x01" + encode_matrix(c),
    ]
