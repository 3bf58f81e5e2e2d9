"""The low-rank correction of the recovery, exact on both of its factor widths."""

import numpy as np
import pytest

from kernels.recover import (
    _narrowed,
    _subtract_low_rank,
    _subtract_low_rank_blocked,
    subtract_low_rank,
)

rng = np.random.default_rng(5)


def _expected(c: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """C' − U·Vᵀ in int64, wrapped to int32 (the ring C' lives in)."""
    exact = c.astype(np.int64) - u.astype(np.int64) @ v.astype(np.int64).T
    return ((exact + 2**31) % 2**32 - 2**31).astype(np.int32)


@pytest.mark.parametrize(
    ("low", "high", "narrow"),
    [(-32768, 32768, True), (-32769, 0, False), (0, 32769, False), (-(2**22), 2**22, False)],
)
def test_correction_is_exact_whichever_width_the_factors_take(low, high, narrow):
    c = rng.integers(-(2**31), 2**31, (48, 40), dtype=np.int32)
    u = rng.integers(low, high, (48, 128)).astype(np.int32)
    v = rng.integers(-32768, 32768, (40, 128)).astype(np.int32)
    u[0, 0], u[1, 1] = low, high - 1  # the bounds themselves
    nu, nv = _narrowed(u, v)
    assert (nu.dtype == np.int16) is narrow and nu.dtype == nv.dtype
    assert np.array_equal(_subtract_low_rank(c, nu, nv), _expected(c, u, v))


@pytest.mark.parametrize(("m", "n", "width"), [(48, 64, 128), (16, 16, 2), (32, 80, 6)])
def test_register_blocked_correction_is_exact_at_the_int16_extremes(m, n, width):
    """Job shapes (16 | m, n) with int16 factors take 16×16 register blocks of pairwise
    int16 multiply-adds; a pair of (−32768)² products sums to 2^31, which wraps in int32
    exactly as the ring does."""
    c = rng.integers(-(2**31), 2**31, (m, n), dtype=np.int32)
    u = rng.integers(-32768, 32768, (m, width)).astype(np.int16)
    v = rng.integers(-32768, 32768, (n, width)).astype(np.int16)
    u[0, :2], v[0, :2] = -32768, -32768
    u[1, :2], v[1, :2] = 32767, -32768
    expected = _expected(c, u, v)
    assert np.array_equal(_subtract_low_rank_blocked(c, u, v), expected)
    assert np.array_equal(subtract_low_rank(c, u, v), expected)


@pytest.mark.parametrize(
    ("m", "k", "n", "r"), [(24, 32, 40, 2), (8, 64, 16, 8), (48, 128, 8, 64), (32, 128, 48, 8)]
)
def test_recovery_is_exact_on_odd_shapes_and_ranks(m, k, n, r):
    """G = A·R_Bᵀ runs on the plain int8 kernel tiled by gcd(m, 16) × gcd(r, 16), and H is
    built from B's rows: C comes out exact whatever m, n and r are."""
    from kernels.noise import add_noise, add_noise_transposed, derive_noise
    from kernels.recover import recover_product

    a = rng.integers(-64, 64, (m, k), dtype=np.int8)
    b = rng.integers(-64, 64, (k, n), dtype=np.int8)
    noise_a, noise_b = derive_noise(bytes(32), m, k, r), derive_noise(bytes(range(32)), n, k, r)
    a_noisy = add_noise(a, noise_a).astype(np.int64)
    c_noisy = (a_noisy @ add_noise_transposed(b, noise_b).astype(np.int64).T).astype(np.int32)
    expected = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    assert np.array_equal(recover_product(c_noisy, a, b, noise_a, noise_b), expected)
