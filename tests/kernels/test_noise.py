"""Noise derivation (PROTOCOL §3): deterministic, bounded, low rank, seekable."""

import numpy as np
import pytest

from kernels.noise import (
    add_noise,
    add_noise_transposed,
    derive_factor_rows,
    derive_noise,
    derive_permutation,
    expand_noise,
)

SEED = bytes(range(32))


def test_same_seed_same_noise_other_seed_other_noise():
    a = derive_noise(SEED, 32, 256, 64)
    b = derive_noise(SEED, 32, 256, 64)
    c = derive_noise(bytes(32), 32, 256, 64)
    assert np.array_equal(a.L, b.L) and np.array_equal(a.p, b.p)
    assert not np.array_equal(a.L, c.L)


def test_factor_ranges_and_distinct_rows():
    f = derive_noise(SEED, 64, 4096, 64)
    assert f.L.min() == -32 and f.L.max() == 31  # 4096 draws cover the whole range
    assert f.p.min() >= 0 and f.p.max() < 64 and f.q.min() >= 0 and f.q.max() < 64
    assert np.all(f.p != f.q)
    # every column of R is used roughly uniformly (a broken expansion skews this)
    counts = np.bincount(f.p, minlength=64)
    assert counts.min() > 20 and counts.max() < 120


def test_dense_noise_is_the_gather_and_has_rank_r():
    f = derive_noise(SEED, 96, 256, 16)
    e = expand_noise(f)
    i, c = 5, 77
    assert e[i, c] == f.L[i, f.p[c]] - f.L[i, f.q[c]]
    assert e.min() >= -63 and e.max() <= 63
    assert np.linalg.matrix_rank(e.astype(np.float64)) <= 16


def test_verifier_rows_match_the_miners_rows():
    f = derive_noise(SEED, 128, 64, 64)
    assert np.array_equal(derive_factor_rows(SEED, 48, 16, 64), f.L[48:64])
    p, q = derive_permutation(SEED, 64, 64)
    assert np.array_equal(p, f.p) and np.array_equal(q, f.q)


def test_noisy_operand_fits_int8_at_the_extremes():
    f = derive_noise(SEED, 16, 1024, 64)
    lo = add_noise(np.full((16, 1024), -64, dtype=np.int8), f)
    hi = add_noise(np.full((16, 1024), 63, dtype=np.int8), f)
    e = expand_noise(f).astype(np.int16)
    assert np.array_equal(lo.astype(np.int16), e - 64)
    assert np.array_equal(hi.astype(np.int16), e + 63)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: derive_noise(b"short", 4, 64, 64), "32 bytes"),
        (lambda: derive_noise(SEED, 4, 64, 48), "power of two"),
        (lambda: derive_noise(SEED, 4, 64, 1), "power of two"),
        (lambda: derive_noise(SEED, 0, 64, 64), "positive"),
        (lambda: derive_factor_rows(SEED, -1, 4, 64), "row range"),
    ],
)
def test_bad_noise_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("k", "n"),
    [
        (192, 80),  # not multiples of the 64 block: partial blocks, 8-row words
        (136, 8),  # k = 64·2 + 8: a last block of one word per column
        (100, 24),  # 8 ∤ k: the byte-wise build
        (512, 520),  # n×k ≥ 2^18: the multi-threaded build of x + E
    ],
)
def test_noisy_operands_equal_the_numpy_gather(k, n):
    """x + E and the fused Bᵀ + E_Bᵀ both equal x + L[:, p] − L[:, q] computed by NumPy."""
    rng = np.random.default_rng(4)
    b = rng.integers(-64, 64, (k, n), dtype=np.int8)  # k×n
    b[0] = -64
    b[-1] = 63
    f = derive_noise(SEED, n, k, 64)
    gather = f.L[:, f.p].astype(np.int16) - f.L[:, f.q]
    expected = (b.T.astype(np.int16) + gather).astype(np.int8)
    assert np.array_equal(add_noise(np.ascontiguousarray(b.T), f), expected)
    assert np.array_equal(add_noise_transposed(b, f), expected)
    with pytest.raises(ValueError, match="does not match"):
        add_noise_transposed(b.T, f)


@pytest.mark.parametrize(
    ("rows", "r"), [(1, 2), (3, 4), (17, 64), (16, 128), (2048, 64), (5, 65536)]
)
@pytest.mark.parametrize("seed", [SEED, b"\xff" * 32], ids=["counting", "all-ones"])
def test_factors_follow_the_stream_layout(rows, r, seed):
    """L[i, s] = (byte i·r + s of the L stream & 63) − 32, the stream being the library's
    XOF, for lengths that end mid-block and mid-task (the miner's is compiled, read
    1 KiB a task across threads)."""
    import blake3

    raw = np.frombuffer(blake3.blake3(b"pouwnet/noise/L", key=seed).digest(length=rows * r), "u1")
    f = derive_noise(seed, rows, 64, r)
    assert f.L.dtype == np.int8 and f.L.shape == (rows, r)
    assert np.array_equal(f.L, ((raw & 63).astype(np.int16) - 32).reshape(rows, r))


@pytest.mark.parametrize("r", [2, 64, 256, 1024, 65536])
def test_permutation_follows_the_stream_layout(r):
    """p = x mod r, q = (p + 1 + y mod (r − 1)) mod r from the perm stream's u16 pairs."""
    import blake3

    k = 4096
    raw = np.frombuffer(blake3.blake3(b"pouwnet/noise/perm", key=SEED).digest(length=4 * k), "<u2")
    x, y = raw[0::2].astype(np.int64), raw[1::2].astype(np.int64)
    p, q = derive_permutation(SEED, k, r)
    assert p.dtype == np.int32 and q.dtype == np.int32
    assert np.array_equal(p, x % r)
    assert np.array_equal(q, (x % r + 1 + y % (r - 1)) % r)


@pytest.mark.parametrize("r", [2, 4, 64, 128, 4096, 65536])
def test_permutation_is_exact_for_every_16_bit_word(r):
    """y mod (r − 1) is a multiply by a magic constant: exact for every u16 y and x."""
    from kernels.noise import permutation_from_stream

    every = np.arange(65536, dtype="<u2")
    raw = np.empty(2 * every.size, dtype="<u2")
    raw[0::2], raw[1::2] = every, every[::-1]
    p, q = permutation_from_stream(raw.view(np.uint8), r)
    x, y = every.astype(np.int64), every[::-1].astype(np.int64)
    assert np.array_equal(p, x % r)
    assert np.array_equal(q, (x % r + 1 + y % (r - 1)) % r)


@pytest.mark.parametrize("r", [2, 4, 64, 128, 256])
def test_permutation_as_bytes_is_the_same_permutation(r):
    """The byte form (the verifier's permute indices) holds the same p and q for every
    u16 x and y, up to r = 256."""
    from kernels.noise import permutation_bytes

    every = np.arange(65536, dtype="<u2")
    raw = np.empty(2 * every.size, dtype="<u2")
    raw[0::2], raw[1::2] = every[::-1], every
    p, q = permutation_bytes(raw.view(np.uint8), r)
    x, y = every[::-1].astype(np.int64), every.astype(np.int64)
    assert p.dtype == np.uint8 and q.dtype == np.uint8
    assert np.array_equal(p, x % r)
    assert np.array_equal(q, (x % r + 1 + y % (r - 1)) % r)
