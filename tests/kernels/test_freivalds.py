"""Freivalds accepts the right product and rejects a single entry off by one."""

import platform
import re

import numpy as np
import pytest

from kernels.freivalds import FALSE_ACCEPT_LOG2, freivalds_check

rng = np.random.default_rng(11)
A = rng.integers(-64, 64, (96, 192), dtype=np.int8)
B = rng.integers(-64, 64, (192, 80), dtype=np.int8)
C = (A.astype(np.int64) @ B.astype(np.int64)).astype(np.int32)


def test_false_accept_bound_meets_the_protocol():
    assert FALSE_ACCEPT_LOG2 <= -60


def test_accepts_the_right_product_in_both_layouts():
    assert freivalds_check(A, B, C)
    assert freivalds_check(A, np.ascontiguousarray(B.T), C, b_transposed=True)


@pytest.mark.parametrize(("i", "j", "delta"), [(0, 0, 1), (95, 79, -1), (40, 3, 2**31 - 1)])
def test_rejects_one_wrong_entry(i, j, delta):
    bad = C.copy()
    bad[i, j] = np.int32((int(bad[i, j]) + delta + 2**31) % 2**32 - 2**31)
    assert not freivalds_check(A, B, bad)
    assert not freivalds_check(A, np.ascontiguousarray(B.T), bad, b_transposed=True)


@pytest.mark.parametrize("rounds", [1, 2, 3])
def test_any_round_count_and_more_rows_than_columns(rounds):
    """Two rounds take the fused two-accumulator loop, others a loop per round; m > k
    and m < k split the B·x and C·x rows of one parallel region differently."""
    a = rng.integers(-64, 64, (200, 48), dtype=np.int8)
    b = rng.integers(-64, 64, (48, 30), dtype=np.int8)
    c = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    for x, y, z in ((a, b, c), (A, B, C)):
        assert freivalds_check(x, y, z, rounds=rounds)
        bad = z.copy()
        bad[-1, -1] ^= np.int32(1 << 30)
        assert not freivalds_check(x, y, bad, rounds=rounds)


def test_rejects_a_power_of_two_error():
    # The hardest errors for arithmetic mod 2^64 are high powers of two.
    bad = C.copy()
    bad[7, 7] ^= np.int32(-(2**31))
    assert not freivalds_check(A, B, bad)


def test_shape_errors_are_named():
    with pytest.raises(ValueError, match="inner dimensions"):
        freivalds_check(A, B[:100], C)
    with pytest.raises(ValueError, match="int32"):
        freivalds_check(A, B, C.astype(np.int64))


def test_int64_products_are_vectorised_for_the_target():
    """Freivalds' Z/2^64 products are vpmullq on zmm where the target has AVX-512DQ, the
    32-bit vpmuludq 64-bit lanes are built from on AVX2, scalar imul on baseline x86-64.
    test_codegen_targets.py reruns this for AVX2 and baseline targets."""
    from numba import njit

    from kernels import freivalds
    from kernels.isa import compile_target

    target = compile_target()
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the expectation is written for x86-64 targets")
    fresh = njit(parallel=True)(freivalds._bx_and_cx.py_func)  # uncached: its assembly is kept
    fresh(np.zeros((64, 64), np.int8), np.zeros((4, 64), np.int32), np.zeros((2, 64), np.int64))
    asm = "\n".join(fresh.inspect_asm().values())
    if "avx512dq" in target.features:
        wanted = re.compile(r"\bvpmullq\b[^\n]*zmm")
    elif "avx2" in target.features:
        wanted = re.compile(r"\bvpmuludq\b[^\n]*ymm")
    else:
        wanted = re.compile(r"\bimulq\b")
    assert wanted.search(asm), f"{target.isa}: no {wanted.pattern} in Freivalds' matvec"
