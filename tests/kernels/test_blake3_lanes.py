"""The compiled BLAKE3 (16 lanes: XOF blocks, or whole messages) against the blake3 library."""

import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.blake3_lanes import (
    DERIVE_KEY_MATERIAL,
    IV,
    KEYED_HASH,
    derive_key_words,
    keyed_xof,
    message_block,
    prefixed_row_hashes,
)
from kernels.noise import L_LABEL, PERM_LABEL


def _xof(key: bytes, message: bytes, first_block: int, nbytes: int) -> bytes:
    words = np.frombuffer(bytes(12) + key, dtype="<u4").astype(np.uint32)  # key at offset 3
    return keyed_xof(words, 3, message_block(message), len(message), first_block, nbytes).tobytes()


@settings(max_examples=60, deadline=None)
@given(
    key=st.binary(min_size=32, max_size=32),
    message=st.binary(max_size=64),
    first_block=st.one_of(st.integers(0, 5000), st.integers(2**32 - 40, 2**32 + 40)),
    nbytes=st.integers(1, 3000),
)
def test_xof_equals_the_library(key, message, first_block, nbytes):
    """Any key, any one-block message (empty to 64 bytes), any whole-block seek (past the
    counter's low word too) and any length, whole groups of 16 blocks or not."""
    expected = blake3.blake3(message, key=key).digest(length=nbytes, seek=64 * first_block)
    assert _xof(key, message, first_block, nbytes) == expected


@pytest.mark.parametrize("label", [PERM_LABEL, L_LABEL])
def test_noise_streams_as_the_verifier_reads_them(label):
    """The verifier's reads: a whole permutation stream (4·k bytes) and a tile's rows of L."""
    key = bytes(range(7, 39))
    for first_block, nbytes in ((0, 4 * 2048), (0, 4 * 64), (16 * 5, 1024), (3, 64)):
        expected = blake3.blake3(label, key=key).digest(length=nbytes, seek=64 * first_block)
        assert _xof(key, label, first_block, nbytes) == expected


def test_a_message_longer_than_a_block_is_refused():
    with pytest.raises(ValueError, match="at most 64 bytes"):
        message_block(bytes(65))


def _rows(msgs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Empty heads, and the messages (all of one length) as rows."""
    rows = np.frombuffer(b"".join(msgs), dtype=np.uint8).reshape(len(msgs), len(msgs[0]))
    return np.zeros((len(msgs), 0), dtype=np.uint8), rows


@pytest.mark.parametrize(
    "length",
    # one block, partial and whole blocks, one chunk and past it, 2^j chunks and not
    [0, 1, 63, 64, 65, 1023, 1024, 1025, 2048, 3 * 1024 + 7, 8 * 1024, 8 * 1024 + 24, 17 * 1024],
)
@pytest.mark.parametrize("count", [1, 16, 21])
def test_whole_messages_hash_as_the_library_does(length, count):
    """16 messages per vector, their chunks merged as BLAKE3's tree does, in all three
    modes (plain, keyed, derived key): the library's digests, and lanes past the last
    message change nothing."""
    rng = np.random.default_rng(length + count)
    msgs = [rng.integers(0, 256, length, dtype=np.uint8).tobytes() for _ in range(count)]
    heads, rows = _rows(msgs)
    key = bytes(rng.integers(0, 256, 32, dtype=np.uint8))
    context = b"pouwnet tests 2026-12-02 lanes"
    modes = [
        (np.array(IV, dtype=np.uint32), 0, [blake3.blake3(m).digest() for m in msgs]),
        (
            np.frombuffer(key, dtype="<u4").astype(np.uint32),
            KEYED_HASH,
            [blake3.blake3(m, key=key).digest() for m in msgs],
        ),
        (
            derive_key_words(context),
            DERIVE_KEY_MATERIAL,
            [blake3.blake3(m, derive_key_context=context.decode()).digest() for m in msgs],
        ),
    ]
    for words, mode, expected in modes:
        got = prefixed_row_hashes(heads, rows, words, mode)
        assert [got[i].astype("<u4").tobytes() for i in range(count)] == expected, mode


def test_a_head_is_hashed_before_its_row():
    """Each row's own head (here a different 8-byte prefix per row) comes first."""
    rng = np.random.default_rng(11)
    rows = rng.integers(0, 256, (5, 1500), dtype=np.uint8)
    heads = rng.integers(0, 256, (5, 8), dtype=np.uint8)
    got = prefixed_row_hashes(heads, rows, np.array(IV, dtype=np.uint32), 0)
    for i in range(5):
        expected = blake3.blake3(heads[i].tobytes() + rows[i].tobytes()).digest()
        assert got[i].astype("<u4").tobytes() == expected
