"""The Numba CPU backend against the NumPy reference, bit for bit.

C' and every tile transcript T must equal :func:`reference_transcripts` exactly
(consensus), for the miner (:func:`noisy_product`), the verifier's single-tile
path (:func:`single_tile`) and the plain baseline (:func:`plain_matmul`). They
run through the microkernel path the compile target selects (int8 vpdpbusd on
AVX-512 VNNI, the portable IR elsewhere); test_codegen_targets.py reruns this
file compiled for older targets, so every path is proven on a VNNI host.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from kernels import transcript_cpu as tc
from kernels.isa import compile_target, multiply_adds
from kernels.noise import NoiseFactors, add_noise, add_noise_transposed, derive_noise
from kernels.params import MAX_K
from tests.support.reference import reference_transcripts

LO, HI = -127, 126  # A', B' entries (int8 operands plus bounded noise)


def _rand(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    return rng.integers(LO, HI, size=(rows, k), endpoint=True, dtype=np.int8)


def _check(a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int) -> None:
    """Miner, verifier and plain baseline all agree with the reference."""
    c_ref, t_ref = reference_transcripts(a, bt, r, h, w)
    c, t = tc.noisy_product(a, bt, r, h, w)
    assert c.dtype == np.int32 and t.dtype == np.uint32
    assert t.shape == t_ref.shape
    np.testing.assert_array_equal(c, c_ref)
    np.testing.assert_array_equal(t, t_ref)
    plain = tc.plain_matmul(a, bt, r, h, w)
    np.testing.assert_array_equal(
        plain, (a.astype(np.int64) @ bt.astype(np.int64).T).astype(np.int32)
    )
    # The verifier's path, on the first and the last tile.
    for ti, tj in {(0, 0), (t.shape[0] - 1, t.shape[1] - 1)}:
        acc, t_tile = tc.single_tile(a[ti * h : (ti + 1) * h], bt[tj * w : (tj + 1) * w], r)
        np.testing.assert_array_equal(acc, c[ti * h : (ti + 1) * h, tj * w : (tj + 1) * w])
        np.testing.assert_array_equal(t_tile, t[ti, tj])


@pytest.mark.parametrize(
    ("m", "k", "n", "r", "h", "w"),
    [
        (32, 192, 48, 64, 16, 16),  # defaults, non-square, 3 chunks
        (64, 128, 64, 64, 16, 16),  # square
        (32, 256, 32, 32, 8, 16),  # h = 8 (one 6-row and one 2-row block), r = 32
        (48, 256, 32, 128, 16, 16),  # r = 128
        (16, 72, 16, 4, 16, 16),  # r = 4: 18 chunks, T slots 0 and 1 are folded twice
        (16, 64, 32, 2, 16, 16),  # smallest rank: 32 chunks of one k-pair
        (24, 128, 40, 64, 12, 8),  # w = 8 < panel: zero padding columns
        (18, 64, 72, 64, 6, 24),  # w = 24: one full and one padded panel
        (32, 64, 32, 64, 32, 32),  # 32 rows = 6·5 + 2, two panels
        (48, 128, 32, 64, 24, 16),  # 24 rows = 16 + 8 (VNNI blocks)
        (21, 96, 16, 32, 7, 16),  # 7 rows = 4 + 2 + 1 (VNNI), 6 + 1 (generic)
        (16, 60, 16, 6, 16, 16),  # r = 6: each chunk ends in a half-empty k-quad
        (16, 100, 32, 10, 16, 16),  # r = 10, two panels
    ],
)
def test_random_matches_reference(m: int, k: int, n: int, r: int, h: int, w: int) -> None:
    rng = np.random.default_rng(m * 1_000_003 + k * 1009 + n + r)
    _check(_rand(rng, m, k), _rand(rng, n, k), r, h, w)


@pytest.mark.parametrize(("va", "vb"), [(LO, LO), (HI, HI), (LO, HI), (HI, LO), (0, 0), (0, HI)])
def test_constant_extremes(va: int, vb: int) -> None:
    m, k, n = 32, 1024, 32  # totals reach 1024·127² ≈ 2^24, chunks 64·127²
    a = np.full((m, k), va, dtype=np.int8)
    bt = np.full((n, k), vb, dtype=np.int8)
    _check(a, bt, 64, 16, 16)


def test_mixed_extremes() -> None:
    rng = np.random.default_rng(7)
    a = rng.choice(np.array([LO, HI], dtype=np.int8), size=(32, 512))
    bt = rng.choice(np.array([LO, HI], dtype=np.int8), size=(48, 512))
    _check(a, bt, 64, 16, 16)


@pytest.mark.parametrize(("va", "vb"), [(127, 127), (-127, 127), (127, -127), (-128, -128)])
def test_full_int8_range_extremes(va: int, vb: int) -> None:
    """B' = 127 is shifted to 255 (the largest unsigned byte), -128 to 0: still exact."""
    a = np.full((16, 256), va, dtype=np.int8)
    bt = np.full((32, 256), vb, dtype=np.int8)
    bt[::3] = 0
    _check(a, bt, 64, 16, 16)


def test_largest_shift_corrections_are_exact() -> None:
    """At the largest k the VNNI kernel's +128-shifted sums reach 65,536·255·127 ≈ 2^31 and
    the plain product's one correction 128·Σ A' ≈ 2^30; the fold's chunk-end corrections
    must come before each fold. Product and transcript must still be exact."""
    k = MAX_K
    a = np.full((16, k), 127, dtype=np.int8)
    a[3] = -127
    bt = np.full((16, k), 127, dtype=np.int8)
    bt[5] = -127
    bt[9, : k // 2] = 0
    _check(a, bt, 64, 16, 16)


def test_every_available_path_gives_the_same_transcript() -> None:
    rng = np.random.default_rng(5)
    a, bt = _rand(rng, 32, 384), _rand(rng, 48, 384)
    c_ref, t_ref = reference_transcripts(a, bt, 64, 16, 16)
    previous = tc.active_path()
    try:
        for path in tc.available_paths():
            tc.select_path(path)
            c, t = tc.noisy_product(a, bt, 64, 16, 16)
            np.testing.assert_array_equal(c, c_ref, err_msg=path)
            np.testing.assert_array_equal(t, t_ref, err_msg=path)
    finally:
        tc.select_path(previous)


def test_active_path_follows_the_compile_target() -> None:
    vnni = compile_target().isa == "avx512_vnni"
    assert tc.active_path() == ("avx512_vnni" if vnni else "generic")
    assert "generic" in tc.available_paths()
    # A path this host lacks (on an AMX host every real path is available) or no path at
    # all is refused, and the active path stays.
    missing = [p for p in (tc.VNNI, tc.AMX) if p not in tc.available_paths()]
    for name in [*missing, "sse2"]:
        with pytest.raises(ValueError, match="cannot run"):
            tc.select_path(name)
        assert tc.active_path() == ("avx512_vnni" if vnni else "generic")


def test_long_k_extreme_no_overflow() -> None:
    """Largest magnitude partial sums (≈ 2^27 at k = 8192) stay exact in int32."""
    k = 8192
    a = np.full((16, k), LO, dtype=np.int8)
    bt = np.full((16, k), LO, dtype=np.int8)
    bt[1::2] = HI
    _check(a, bt, 64, 16, 16)


def test_low_rank_operands() -> None:
    rng = np.random.default_rng(11)
    m, k, n, rank = 48, 256, 32, 2
    small = rng.integers(-5, 5, size=(m, rank)) @ rng.integers(-5, 5, size=(rank, k))
    a = np.clip(small, LO, HI).astype(np.int8)
    small = rng.integers(-5, 5, size=(n, rank)) @ rng.integers(-5, 5, size=(rank, k))
    bt = np.clip(small, LO, HI).astype(np.int8)
    _check(a, bt, 64, 16, 16)


def test_tile_product_accumulates_and_plain_has_no_transcript() -> None:
    rng = np.random.default_rng(3)
    a, bt = _rand(rng, 16, 128), _rand(rng, 16, 128)
    acc = np.ones((16, 16), dtype=np.int32)
    T = np.zeros(16, dtype=np.uint32)
    tc.tile_product(a, bt, 64, acc, T, False)
    np.testing.assert_array_equal(acc, a.astype(np.int64) @ bt.astype(np.int64).T + 1)
    assert not T.any()


def test_fold_tile_matches_protocol() -> None:
    acc = np.array([[-1, 5], [7, -(2**31)]], dtype=np.int32)
    T = np.zeros(16, dtype=np.uint32)
    T[3] = 0x80000001
    tc.fold_tile(acc, T, 19)  # slot 19 mod 16 = 3
    x = np.bitwise_xor.reduce(acc.view(np.uint32).ravel())
    assert T[3] == np.uint32(((0x80000001 << 13) | (0x80000001 >> 19)) & 0xFFFFFFFF) ^ x


def test_microkernel_multiply_add_is_vectorised_for_the_target() -> None:
    """The tile routine's multiply-add is the vector instruction its target calls for.

    The expectation comes from the features Numba compiles for (the host's, or
    NUMBA_CPU_NAME/NUMBA_CPU_FEATURES: test_codegen_targets.py reruns this file
    for older targets): vpmaddwd on ymm for AVX2, int8 vpdpbusd on zmm for
    AVX-512 VNNI, pmaddwd on xmm for the x86-64 baseline, and so on.
    """
    target = compile_target()
    instructions, registers = target.multiply_add
    assert instructions, f"no multiply-add expectation for {target.isa} ({target.cpu})"
    acc, T = np.zeros((16, 16), dtype=np.int32), np.zeros(16, dtype=np.uint32)
    if tc.active_path() == "avx512_vnni":
        from kernels import transcript_vnni as tv

        fresh = njit(tv._tile_packed.py_func)  # not from the cache, so its assembly is kept
        ap, bp = np.zeros((16, 16, 4), np.int8), np.zeros((1, 16, 64), np.uint8)
        xs = np.zeros((1, 1, 16), np.int32)
        fresh(ap, bp, np.zeros((1, 16), np.int32), acc, T, True, xs)
    else:
        fresh = njit(tc._tile_packed.py_func)
        fresh(np.zeros((32, 16, 2), np.int16), np.zeros((1, 32, 32), np.int16), 64, acc, T, True)
    found = multiply_adds(next(iter(fresh.inspect_asm().values())))
    wanted = {(i, r) for i, r in found if i in instructions and r in registers}
    assert wanted, f"{target.isa} ({target.cpu}): expected {sorted(instructions)} on " + (
        f"{sorted(registers)}, the microkernel has {sorted(found)}"
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    r=st.sampled_from([2, 4, 8, 16, 32, 64]),
    h=st.sampled_from([1, 2, 4, 6, 8, 16]),
    w=st.sampled_from([1, 4, 8, 16, 32]),
)
def test_hypothesis_small_shapes(data: st.DataObject, r: int, h: int, w: int) -> None:
    m = h * data.draw(st.integers(1, 3), label="tiles down")
    n = w * data.draw(st.integers(1, 3), label="tiles across")
    k = r * data.draw(st.integers(1, 40 // max(1, r // 4) + 1), label="chunks")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    _check(_rand(rng, m, k), _rand(rng, n, k), r, h, w)


@pytest.mark.parametrize(("k", "r"), [(64, 1), (96, 64), (66, 3)])
def test_rejects_chunks_the_microkernel_would_misread(k: int, r: int) -> None:
    a = np.zeros((16, k), dtype=np.int8)
    with pytest.raises(ValueError):
        tc.noisy_product(a, a, r, 16, 16)
    with pytest.raises(ValueError):
        tc.single_tile(a, a, r)


@pytest.mark.parametrize(
    ("m", "k", "n", "r", "h", "w"),
    [
        (32, 192, 48, 64, 16, 16),
        (24, 128, 40, 64, 12, 8),  # padded panel
        (18, 64, 72, 64, 6, 24),  # one full and one padded panel
        (16, 64, 32, 2, 16, 16),  # 4 ∤ r: B'ᵀ is built
        (16, 96, 32, 32, 16, 16),  # 24 k-quads: a whole packing group of B' and a part
    ],
)
def test_noisy_product_from_clean_b_matches_the_reference(
    m: int, k: int, n: int, r: int, h: int, w: int
) -> None:
    """The miner's path that packs B' = B + E_B from B itself gives the reference's C', T."""
    rng = np.random.default_rng(m + k + n + r)
    a = rng.integers(-64, 64, (m, k), dtype=np.int8)
    b = rng.integers(-64, 64, (k, n), dtype=np.int8)
    b[0] = -64
    b[-1] = 63
    noise_a = derive_noise(bytes(range(32)), m, k, r)
    noise_b = derive_noise(bytes(range(1, 33)), n, k, r)
    a_noisy = add_noise(a, noise_a)
    bt_noisy = add_noise_transposed(b, noise_b)
    c_ref, t_ref = reference_transcripts(a_noisy, bt_noisy, r, h, w)
    c, t = tc.noisy_product_from_b(a_noisy, b, noise_b, r, h, w)
    np.testing.assert_array_equal(c, c_ref)
    np.testing.assert_array_equal(t, t_ref)


def _noisy(x: np.ndarray, noise: NoiseFactors) -> np.ndarray:
    """x + E in plain NumPy, E[i, c] = L[i, p(c)] − L[i, q(c)] (PROTOCOL §3)."""
    lf = noise.L.astype(np.int16)
    return (x + lf[:, noise.p] - lf[:, noise.q]).astype(np.int8)


@pytest.mark.parametrize(
    ("m", "k", "n", "r", "h", "w", "fill"),
    [
        (32, 192, 48, 64, 16, 16, None),  # defaults, 3 chunks
        (48, 128, 32, 4, 16, 16, None),  # r = 4: one quad per chunk
        (16, 256, 72, 128, 16, 24, None),  # one full and one padded panel
        (32, 64, 32, 64, 16, 16, -64),  # extreme operands: A' and B' reach -127
        (32, 64, 32, 64, 16, 16, 63),  # and 126
        (32, 64, 32, 64, 16, 16, 0),  # zero operands: A' = E_A, B' = E_B
        (24, 128, 40, 64, 12, 8, None),  # h ≠ 16: A' is built
        (16, 64, 32, 2, 16, 16, None),  # 4 ∤ r: A' and B'ᵀ are built
        (16, 40, 48, 8, 16, 16, None),  # 10 k-quads: fewer than a packing group of B'
        (16, 104, 40, 8, 16, 8, None),  # 26 k-quads, padded panels
    ],
)
def test_noisy_product_from_clean_operands_matches_the_reference(
    m: int, k: int, n: int, r: int, h: int, w: int, fill: int | None
) -> None:
    """The miner's path that packs A' and B' from the clean A and B (never building A')
    gives the reference's C' and T, for random, extreme and zero operands."""
    rng = np.random.default_rng(m + k + n + r + h)
    if fill is None:
        a = rng.integers(-64, 64, (m, k), dtype=np.int8)
        b = rng.integers(-64, 64, (k, n), dtype=np.int8)
        a[1] = -64
        a[-1] = 63
    else:
        a = np.full((m, k), fill, dtype=np.int8)
        b = np.full((k, n), fill, dtype=np.int8)
    noise_a = derive_noise(bytes(range(32)), m, k, r)
    noise_b = derive_noise(bytes(range(1, 33)), n, k, r)
    a_noisy = _noisy(a, noise_a)
    bt_noisy = _noisy(np.ascontiguousarray(b.T), noise_b)
    c_ref, t_ref = reference_transcripts(a_noisy, bt_noisy, r, h, w)
    c, t = tc.noisy_product_from_clean(a, noise_a, b, noise_b, r, h, w)
    np.testing.assert_array_equal(c, c_ref)
    np.testing.assert_array_equal(t, t_ref)
