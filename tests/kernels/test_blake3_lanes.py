"""The compiled BLAKE3 XOF (16 output blocks per step) against the blake3 library."""

import blake3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.blake3_lanes import keyed_xof, message_block
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
