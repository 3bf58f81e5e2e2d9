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
    """G = A·R_Bᵀ is summed 16 rows at a time where they are whole (64 columns at a time
    where 4 | k), and H is built from B's rows: C comes out exact whatever m, n and r are,
    and whatever memory order C', A and B come in."""
    from kernels.noise import add_noise, add_noise_transposed, derive_noise
    from kernels.recover import recover_product

    a = rng.integers(-64, 64, (m, k), dtype=np.int8)
    b = rng.integers(-64, 64, (k, n), dtype=np.int8)
    noise_a, noise_b = derive_noise(bytes(32), m, k, r), derive_noise(bytes(range(32)), n, k, r)
    a_noisy = add_noise(a, noise_a).astype(np.int64)
    c_noisy = (a_noisy @ add_noise_transposed(b, noise_b).astype(np.int64).T).astype(np.int32)
    expected = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    assert np.array_equal(recover_product(c_noisy, a, b, noise_a, noise_b), expected)
    # Any memory order and read-only operands, as a caller may hold them.
    c_fortran, a_fortran = np.asfortranarray(c_noisy), np.asfortranarray(a)
    b_read_only = np.frombuffer(b.tobytes(), dtype=np.int8).reshape(b.shape)
    recovered = recover_product(c_fortran, a_fortran, b_read_only, noise_a, noise_b)
    assert np.array_equal(recovered, expected)


def _reference_h(b, noise_a, noise_b) -> np.ndarray:
    """H = R_A·B' in int64 from dense R_A and B' = B + E_B."""
    k = b.shape[0]
    l_b = noise_b.L.astype(np.int64)
    b_noisy = b.astype(np.int64) + l_b[:, noise_b.p].T - l_b[:, noise_b.q].T
    r_a = np.zeros((noise_a.rank, k), dtype=np.int64)
    r_a[noise_a.p, np.arange(k)] += 1
    r_a[noise_a.q, np.arange(k)] -= 1
    return r_a @ b_noisy


@pytest.mark.parametrize(
    ("k", "n", "r"), [(2048, 256, 64), (32, 40, 2), (128, 8, 64), (96, 1000, 4)]
)
@pytest.mark.parametrize(("parts", "width"), [(1, 64), (3, 64), (5, 1024), (8, 128)])
def test_h_is_the_same_however_its_rows_and_columns_are_split(k, n, r, parts, width):
    """H is summed by runs of B's rows into partial sums, each run's columns cut in
    blocks: every split, empty runs and a last narrow block included, gives R_A·B'."""
    from kernels.noise import derive_noise
    from kernels.recover import _noisy_row_sums, noisy_row_sums

    b = rng.integers(-64, 64, (k, n), dtype=np.int8)
    b[0, 0], b[-1, -1] = -64, 63
    noise_a, noise_b = derive_noise(bytes(32), 8, k, r), derive_noise(bytes(range(32)), n, k, r)
    lt_b = np.ascontiguousarray(noise_b.L.T)
    args = (b, lt_b, noise_b.p, noise_b.q, noise_a.p, noise_a.q)
    expected = _reference_h(b, noise_a, noise_b)
    assert np.array_equal(_noisy_row_sums(*args, parts, width), expected)
    assert np.array_equal(noisy_row_sums(*args), expected)


def test_paired_factors_are_the_narrowed_ones_and_flag_any_entry_past_int16():
    """U and V paired in one pass equal the stacked, narrowed factors as the register
    blocks read them; an entry of G or H one past either int16 bound is flagged (the
    int32 path then runs), the bounds themselves are not."""
    from kernels.recover import _narrowed, _paired_factors, _panels, _stacked

    m, n, r = 48, 32, 8
    g = rng.integers(-32768, 32768, (m, r)).astype(np.int32)
    h = rng.integers(-32768, 32768, (r, n)).astype(np.int32)
    l_a = rng.integers(-32, 32, (m, r), dtype=np.int8)
    l_b = rng.integers(-32, 32, (n, r), dtype=np.int8)
    g[0, 0], g[1, 1], h[2, 3], h[3, 4] = -32768, 32767, -32768, 32767
    u, v = _narrowed(*_stacked(g, l_a, h, l_b))
    uw, vp, fits = _paired_factors(g, l_a, h, l_b)
    assert fits and u.dtype == np.int16
    assert np.array_equal(uw, u.view(np.uint32))
    assert np.array_equal(vp, _panels(v.view(np.uint32)))
    for value in (32768, -32769, 2**31 - 1, -(2**31)):
        for which in (g, h):
            saved = which[1, 2]
            which[1, 2] = value
            assert not _paired_factors(g, l_a, h, l_b)[2], value
            which[1, 2] = saved


def test_recovery_is_exact_when_g_leaves_int16():
    """Operands chosen against the noise push G = A·R_Bᵀ past int16 (r = 2, k = 1024:
    every entry of a row adds up with one sign): the recovery takes the int32 factors
    and C is still exact, on a shape the paired path would otherwise take."""
    from kernels.noise import add_noise, add_noise_transposed, derive_noise
    from kernels.recover import _low_rank_parts, recover_product

    m, k, n, r = 16, 1024, 16, 2
    noise_a, noise_b = derive_noise(bytes(32), m, k, r), derive_noise(bytes(range(32)), n, k, r)
    column = np.where(noise_b.p == 0, 63, -64).astype(np.int8)
    a = np.tile(column, (m, 1))
    b = rng.integers(-64, 64, (k, n), dtype=np.int8)
    g, _ = _low_rank_parts(a, b, noise_a, noise_b)
    assert np.abs(g).max() > 32767
    a_noisy = add_noise(a, noise_a).astype(np.int64)
    b_noisy_t = add_noise_transposed(b, noise_b).astype(np.int64)
    c_noisy = (a_noisy @ b_noisy_t.T).astype(np.int32)
    expected = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    assert np.array_equal(recover_product(c_noisy, a, b, noise_a, noise_b), expected)


@pytest.mark.parametrize(
    ("m", "k", "r"), [(2048, 2048, 64), (32, 128, 8), (40, 200, 4), (16, 66, 2), (5, 64, 8)]
)
def test_g_sums_a_s_columns_as_the_dense_product_does(m, k, r):
    """G = A·R_Bᵀ from the column sums equals the product by the dense ±1 matrix R_B, at
    A's extremes and on shapes with rows past the last 16, columns past the last 64 and
    k not a multiple of 4 (no word view: every column one at a time)."""
    from kernels.noise import derive_noise
    from kernels.recover import _low_rank_parts

    a = rng.integers(-64, 64, (m, k), dtype=np.int8)
    a[0], a[-1, : k // 2] = -64, 63
    noise_a, noise_b = derive_noise(bytes(32), m, k, r), derive_noise(bytes(range(32)), 16, k, r)
    r_b = np.zeros((r, k), dtype=np.int64)
    r_b[noise_b.p, np.arange(k)] += 1
    r_b[noise_b.q, np.arange(k)] -= 1
    b = np.zeros((k, 16), dtype=np.int8)
    g, _ = _low_rank_parts(a, b, noise_a, noise_b)
    assert np.array_equal(g, a.astype(np.int64) @ r_b.T)
