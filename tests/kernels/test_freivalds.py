"""Freivalds accepts the right product and rejects a single entry off by one."""

import functools
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


# Shapes around the kernels' blocks of eight rows: fewer rows than a block, exact blocks,
# blocks plus a tail, with k (B's rows, the first kernel's blocks) odd too.
ODD_SHAPES = [(1, 1, 1), (7, 9, 5), (8, 8, 8), (9, 17, 3), (15, 8, 16), (17, 33, 31)]


def _job(m, k, n, lo=-64, hi=64, seed=0):
    g = np.random.default_rng(seed)
    a = g.integers(lo, hi, (m, k), dtype=np.int8)
    b = g.integers(lo, hi, (k, n), dtype=np.int8)
    return a, b, (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)


@pytest.mark.parametrize(("m", "k", "n"), ODD_SHAPES)
def test_odd_shapes_accept_the_product_and_reject_any_wrong_corner(m, k, n):
    """Off by one in the first or last row or column, in a block of eight or in the tail
    rows after the last block, is caught in both layouts of B."""
    a, b, c = _job(m, k, n)
    bt = np.ascontiguousarray(b.T)
    assert freivalds_check(a, b, c)
    assert freivalds_check(a, bt, c, b_transposed=True)
    rows = sorted({0, min(7, m - 1), m - 1, m // 2})
    for i in rows:
        for j in sorted({0, n - 1, n // 2}):
            for delta in (1, -1):
                bad = c.copy()
                bad[i, j] += np.int32(delta)
                assert not freivalds_check(a, b, bad), (i, j, delta)
                assert not freivalds_check(a, bt, bad, b_transposed=True), (i, j, delta)


@pytest.mark.parametrize("value", [-128, 127])
def test_extreme_operands_and_extreme_errors(value):
    """All-−128 or all-127 operands (|A·B| = 2^14·k, up to 2^30 at k = 65,536 is exact in
    int32) with C wrong by ±2^31 (the error of highest 2-adic valuation, the hardest in
    Z/2^64) or set to int32's extremes: the right C passes, every wrong one fails."""
    m, k, n = 11, 4096, 13
    a = np.full((m, k), value, dtype=np.int8)
    b = np.full((k, n), value, dtype=np.int8)
    b[::2] = -128  # mixed signs: entries of A·B are ±2^14·k/2 apart
    c = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    assert freivalds_check(a, b, c)
    info = np.iinfo(np.int32)
    for i, j in ((0, 0), (m - 1, n - 1), (8, 5), (10, 0)):
        for wrong in (int(c[i, j]) ^ (1 << 31), info.min, info.max):
            if wrong == c[i, j]:
                continue
            bad = c.copy()
            bad[i, j] = np.int32(np.int64(wrong).astype(np.int32))
            assert not freivalds_check(a, b, bad), (i, j, wrong)


@pytest.mark.parametrize(("m", "k", "n"), ODD_SHAPES)
def test_kernels_compute_z_mod_2_64_exactly(m, k, n):
    """B·x matches unsigned 64-bit NumPy arithmetic for int8 operands at their extremes,
    int32 vectors (the check's) and int64 ones, and four rounds (two pairs of vectors);
    the residual is zero for the right C and non-zero for an error of 2^31 in any row,
    tail rows included."""
    from kernels.freivalds import _any_residual, _times_vectors

    a, b, c = _job(m, k, n, -128, 128, seed=k)
    for dtype in (np.int32, np.int64):
        info = np.iinfo(dtype)
        xs = np.random.default_rng(m).integers(info.min, info.max, (4, n), dtype, endpoint=True)
        u64 = np.uint64
        bx = _times_vectors(b, xs)
        wanted = xs.astype(np.int64).astype(u64) @ b.T.astype(np.int64).astype(u64)
        assert np.array_equal(bx, wanted.astype(np.int64))
        assert not _any_residual(a, bx, c, xs)
    for i in range(m):
        bad = c.copy()
        bad[i, n - 1] ^= np.int32(-(2**31))
        assert _any_residual(a, bx, bad, xs), i


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


def _hottest_loop(asm: str, product: str = "vpmullq") -> list[str]:
    """The instructions of the loop in ``asm`` with the most ``product`` (label to back-jump)."""
    best: list[str] = []
    body: list[str] = []
    for line in asm.splitlines():
        if re.match(r"^\.LBB\d+_\d+:", line):
            body = []
        body.append(line)
        if re.search(r"\bj(ne|nz|b|l)\b", line):
            if sum(product in x for x in body) > sum(product in x for x in best):
                best = body
            body = []
    return best


@functools.cache
def _compiled_asm() -> dict[str, str]:
    """The kernels compiled afresh (uncached, so the assembly is kept) for what the check
    passes them: B·x (int8 B, int32 x) and A·(B·x) with C·x (int8 A, int64 B·x, int32 C
    and x)."""
    from numba import njit

    from kernels import freivalds

    times = njit(parallel=True)(freivalds._times_vectors.py_func)
    residual = njit(parallel=True)(freivalds._any_residual.py_func)
    xs = np.zeros((2, 64), np.int32)
    bx = times(np.zeros((64, 64), np.int8), xs)
    residual(np.zeros((64, 64), np.int8), bx, np.zeros((64, 64), np.int32), xs)
    return {
        "bx": "\n".join(times.inspect_asm().values()),
        "residual": "\n".join(residual.inspect_asm().values()),
    }


def _x86_only() -> None:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the expectation is written for x86-64 targets")


def test_int64_products_are_vectorised_for_the_target():
    """A·(B·x)'s Z/2^64 products are vpmullq where the target has AVX-512DQ (on zmm, or
    ymm where LLVM tunes the CPU for 256-bit vectors: Skylake-SP, Cascade Lake), the
    32-bit vpmuludq 64-bit lanes are built from on AVX2, scalar imul on baseline x86-64.
    test_codegen_targets.py reruns this for older targets."""
    from kernels.isa import compile_target

    _x86_only()
    target = compile_target()
    if "avx512dq" in target.features:
        wanted = re.compile(r"\bvpmullq\b[^\n]*[yz]mm")
    elif "avx2" in target.features:
        wanted = re.compile(r"\bvpmuludq\b[^\n]*ymm")
    else:
        wanted = re.compile(r"\bimulq\b")
    asm = _compiled_asm()["residual"]
    assert wanted.search(asm), f"{target.isa}: no {wanted.pattern} in A·(B·x)"


def test_products_with_x_are_one_32_bit_multiply_each():
    """x's entries are int32, so B·x and C·x multiply 32 by 32 bits into 64 (vpmuldq, one
    µop on every x86 with AVX2) instead of building 64-bit products: on AVX2 that is one
    multiply where a 64-bit product takes three vpmuludq and their shifts and adds."""
    from kernels.isa import compile_target

    _x86_only()
    if "avx2" not in compile_target().features:
        pytest.skip("vpmuldq on ymm needs AVX2 (baseline x86-64 builds it from pmuludq)")
    for name in ("bx", "residual"):
        loop = _hottest_loop(_compiled_asm()[name], "vpmuldq")
        products = [x for x in loop if re.search(r"\bvpmuldq\b[^\n]*[yz]mm", x)]
        assert len(products) >= 16, (name, loop)
        assert not [x for x in loop if re.search(r"\bvpmul(lq|udq)\b", x)], (name, loop)


def test_each_vector_load_feeds_eight_rows():
    """The check is bound by its multiplies, not its loads: the hot loop of A·(B·x) loads
    each zmm of the two rounds' vectors once for eight rows of the matrix (16 vpmullq per
    2 loads). A row at a time it took one 64-bit vector load per product, 1.4-2x slower."""
    from kernels.isa import compile_target

    if "avx512dq" not in compile_target().features:
        pytest.skip("the loop shape is written for AVX-512DQ's vpmullq")
    loop = _hottest_loop(_compiled_asm()["residual"])
    products = [x for x in loop if "vpmullq" in x]
    vector_loads = [x for x in loop if re.search(r"\bvmovdqu64\b\s+-?\d*\(", x)]
    vector_loads += [x for x in products if "(" in x]  # a load folded into the multiply
    assert len(products) >= 16, loop
    assert len(products) >= 8 * len(vector_loads), loop


def _z64(matrix, vector):
    """matrix · vector in Z/2^64 with Python integers, as signed int64 (the oracle)."""
    out = []
    for row in matrix.tolist():
        s = sum(e * v for e, v in zip(row, vector.tolist(), strict=True)) % 2**64
        out.append(s - 2**64 if s >= 2**63 else s)
    return np.array(out, dtype=np.int64)


@pytest.mark.parametrize(("m", "k", "n"), [(1, 1, 1), (9, 65, 7), (17, 130, 66)])
@pytest.mark.parametrize("fill", ["random", "low", "high", "zero"])
def test_a_times_bx_and_c_times_x_match_python_integers(m, k, n, fill):
    """A·(B·x) and C·x, the two sides Freivalds compares, each equal the Python-integer value
    modulo 2^64 for int8 operands at random, −128, 127 or 0, C at int32's extremes, the
    check's own int32 vectors, and shapes past whole blocks of 8 rows and 64 columns."""
    from kernels.freivalds import _times_vectors, random_vectors

    g = np.random.default_rng(m * k * n)
    if fill == "random":
        a = g.integers(-128, 128, (m, k), dtype=np.int8)
        b = g.integers(-128, 128, (k, n), dtype=np.int8)
        c = g.integers(-(2**31), 2**31, (m, n), dtype=np.int32)
    else:
        value = {"low": -128, "high": 127, "zero": 0}[fill]
        a = np.full((m, k), value, dtype=np.int8)
        b = np.full((k, n), value, dtype=np.int8)
        c = np.full((m, n), {"low": -(2**31), "high": 2**31 - 1, "zero": 0}[fill], np.int32)
    xs = random_vectors(2, n, g)
    bx = _times_vectors(b, xs)
    abx = _times_vectors(a, bx)
    cx = _times_vectors(c, xs)
    for t in range(2):
        assert np.array_equal(bx[t], _z64(b, xs[t]))
        assert np.array_equal(abx[t], _z64(a, bx[t]))
        assert np.array_equal(cx[t], _z64(c, xs[t]))


@functools.cache
def _pairs_kernel():
    """rows_times_pair over every whole block of eight rows of C, both rounds; compiled
    once per layout of C (contiguous, strided), not once per test."""
    from numba import njit

    from kernels.zmod64 import rows_times_pair

    @njit
    def blocks_of_eight(c, xs):
        out = np.zeros((2, c.shape[0]), dtype=np.int64)
        for i in range(0, c.shape[0] - 7, 8):
            s = rows_times_pair(c, i, xs, 0)
            for r in range(8):
                out[0, i + r] = s[r]
                out[1, i + r] = s[8 + r]
        return out

    return blocks_of_eight


@pytest.mark.parametrize(("m", "n"), [(8, 1), (8, 2), (16, 7), (9, 66), (24, 129)])
@pytest.mark.parametrize("fill", ["random", "low", "high"])
def test_c_times_x_by_pairs_matches_python_integers(m, n, fill):
    """C·x read two int32 entries at a time (one 8-byte load, halves split in register)
    equals Python integers modulo 2^64 for C and x anywhere in int32 (negative x too,
    though the check's own lie in [0, 2^31)), odd widths included: there every other
    row's pairs sit off an 8-byte boundary and the last column is added on its own. A
    non-contiguous C takes the entry-wise loop and gives the same values."""
    blocks_of_eight = _pairs_kernel()
    g = np.random.default_rng(m * n)
    info = np.iinfo(np.int32)
    if fill == "random":
        c = g.integers(info.min, info.max, (m, n), np.int32, endpoint=True)
        xs = g.integers(info.min, info.max, (2, n), np.int32, endpoint=True)
    else:
        value = info.min if fill == "low" else info.max
        c = np.full((m, n), value, np.int32)
        xs = np.full((2, n), value, np.int32)
    got = blocks_of_eight(c, xs)
    whole = 8 * (m // 8)
    for t in range(2):
        assert np.array_equal(got[t, :whole], _z64(c[:whole], xs[t]))
    strided = np.zeros((m, 2 * n), np.int32)[:, ::2]
    strided[:] = c
    assert np.array_equal(blocks_of_eight(strided, xs), got)


def test_vectors_cover_31_bits_and_a_forked_child_draws_its_own():
    """The check's vectors are int32 over all of [0, 2^31) (the 2^-31 a round rests on
    2^31 consecutive values), differ call to call, and a child forked from a verifier
    does not draw its parent's next vectors (the generator is reseeded in the child)."""
    import os

    from kernels.freivalds import random_vectors

    x = random_vectors(2, 4096)
    assert x.dtype == np.int32 and x.shape == (2, 4096)
    assert x.min() >= 0 and x.min() < 2**26 and x.max() > 2**31 - 2**26
    assert not np.array_equal(random_vectors(2, 4096), random_vectors(2, 4096))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first draw to the parent, then out without cleanup
        os.write(write, random_vectors(1, 64).tobytes())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert len(child) == 256
    assert random_vectors(1, 64).tobytes() != child


def _vnni_or_skip():
    from kernels.isa import compile_target
    from kernels.transcript_cpu import VNNI, available_paths

    if VNNI not in available_paths() or "avx512vl" not in compile_target().features:
        pytest.skip("the target has no AVX-512 VNNI (test_codegen_targets.py compiles it)")
    from kernels import freivalds_vnni

    return freivalds_vnni


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [*ODD_SHAPES, (40, 64, 48), (33, 130, 66), (64, 4, 4), (16, 3, 40), (32, 8, 300)],
)
@pytest.mark.parametrize("fill", ["random", "low", "high"])
def test_vnni_kernels_give_the_portable_values(m, k, n, fill):
    """The VNNI kernels' B·x equals the portable kernel's for x's whole range, and their
    residual is zero for the right C and caught in every row for an error of 2^31 (the
    hardest in Z/2^64), with k and n past whole k-quads and m past whole blocks of 16."""
    from kernels.freivalds import _times_vectors, random_vectors

    fv = _vnni_or_skip()
    g = np.random.default_rng(m * 1000 + k * 10 + n)
    lo, hi = {"random": (-128, 128), "low": (-128, -127), "high": (127, 128)}[fill]
    a = g.integers(lo, hi, (m, k), dtype=np.int8)
    b = g.integers(lo, hi, (k, n), dtype=np.int8)
    c = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    xs = random_vectors(2, n, g)
    xs[:, 0] = 2**31 - 1  # every byte plane at its largest
    y, planes = fv.times_x(b, xs)
    assert np.array_equal(y, _times_vectors(b, xs))
    assert not fv.any_residual(a, y, planes, c, xs)
    for i in range(m):
        bad = c.copy()
        bad[i, (7 * i) % n] ^= np.int32(-(2**31))
        assert fv.any_residual(a, y, planes, bad, xs), i


def test_vnni_path_is_the_one_the_check_takes(monkeypatch):
    """On a VNNI target the default check runs the VNNI kernels (a right product passes,
    one entry off by one fails); ``--isa generic`` (select_path) takes the portable ones."""
    from kernels import transcript_cpu as tc

    fv = _vnni_or_skip()
    calls = []
    residual = fv.any_residual

    def counted(*args):
        calls.append(args[0].shape)
        return residual(*args)

    monkeypatch.setattr(fv, "any_residual", counted)
    a, b, c = _job(48, 72, 40, seed=5)
    bad = c.copy()
    bad[47, 39] += np.int32(1)
    assert freivalds_check(a, b, c)
    assert not freivalds_check(a, b, bad)
    assert calls == [(48, 72), (48, 72)]
    previous = tc.select_path(tc.GENERIC)
    try:
        assert freivalds_check(a, b, c) and not freivalds_check(a, b, bad)
    finally:
        tc.select_path(previous)
    assert len(calls) == 2


def test_read_only_operands_as_a_client_receives_them():
    """Operands decoded from downloaded bytes are read-only views: the check takes them on
    every path as it takes its own arrays, right product and wrong alike."""
    a, b, c = _job(40, 72, 36, seed=9)

    def received(x):
        return np.frombuffer(x.tobytes(), dtype=x.dtype).reshape(x.shape)

    bad = c.copy()
    bad[39, 0] -= np.int32(1)
    assert not received(a).flags.writeable
    assert freivalds_check(received(a), received(b), received(c))
    assert not freivalds_check(received(a), received(b), received(bad))
