"""The operand transpose: xᵀ exactly, for every shape and byte a job or a client may hold."""

from __future__ import annotations

import numpy as np
import pytest

from kernels.layout import transposed


@pytest.mark.parametrize(
    "shape",
    [(8, 8), (16, 24), (64, 2048), (2048, 64), (9, 16), (16, 13), (1, 1), (3, 5), (0, 8)],
)
def test_the_transpose_is_exact_for_any_shape(shape):
    """Whole 8×8 blocks in words, other shapes through NumPy: the same bytes either way,
    every int8 value included."""
    x = np.random.default_rng(sum(shape)).integers(-128, 128, shape, dtype=np.int8)
    y = transposed(x)
    assert y.dtype == np.int8 and y.shape == shape[::-1] and y.flags.c_contiguous
    assert np.array_equal(y, x.T)


def test_each_byte_lands_in_its_place():
    """Entries that name their own position: a swap of two bytes, rows or halves shows."""
    i, j = np.indices((40, 48))
    x = ((i * 7 + j * 3) % 256 - 128).astype(np.int8)
    x[5, 9], x[9, 5] = 127, -128
    assert np.array_equal(transposed(x), x.T)
    assert np.array_equal(transposed(transposed(x)), x)


def test_views_and_other_dtypes_are_transposed_too():
    base = np.random.default_rng(1).integers(-128, 128, (64, 96), dtype=np.int8)
    for x in (base[:, ::2], base.T, base[8:40, 16:80], base.astype(np.int32)):
        assert np.array_equal(transposed(x), x.T)


def test_a_matrix_must_be_2d():
    with pytest.raises(ValueError, match="2-D"):
        transposed(np.zeros(8, dtype=np.int8))
