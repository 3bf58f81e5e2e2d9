"""Numba CPU kernels for the noisy product and its tile transcripts (PROTOCOL §4).

One routine, :func:`_tile_packed`, computes one h×w hash tile over the whole
k dimension in r-wide chunks and folds the tile (:func:`fold_tile`) after every
chunk. The miner runs it over every tile in parallel; the verifier runs it,
through :func:`tile_product`, over the single tile a proof opens. There is no
second implementation of the transcript.

Speed comes from one register-blocked microkernel, ``acc[mr×16] += A·B`` over
a run of k, built on the x86 ``pmaddwd`` pattern: operands are widened to int16
and taken in k-pairs, so one 256-bit multiply-add does 16 exact int16 products
and adds them pairwise into 8 int32 lanes. A row's k-pair (two int16 = one
int32) is broadcast; B' is packed per 16-column panel as, for each k-pair, the
16 columns' pairs side by side (two ymm registers). Every product and pair sum
is < 2^15·2 and every chunk sum < 2^31, so the int32 arithmetic is exact and
bit-identical to the reference. Numba cannot express that loop so that LLVM
keeps 12 vector accumulators in registers, so the microkernel is written as a
small LLVM-IR intrinsic; it uses only generic IR (sext, mul, shuffle, add),
which LLVM's x86 backend turns into vpmaddwd on AVX2 (and into correct, slower
code on any other target).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.params import TRANSCRIPT_ROTATION, TRANSCRIPT_WORDS

_MASK32 = np.uint64(0xFFFFFFFF)
_ROT_L = np.uint64(TRANSCRIPT_ROTATION)
_ROT_R = np.uint64(32 - TRANSCRIPT_ROTATION)

PANEL = 16
"""Columns per packed B' panel (= microkernel width: two 8×int32 registers)."""
MAX_MR = 6
"""Rows per microkernel call: 6 rows × 2 registers = 12 accumulators of the 16 ymm."""


# ---------------------------------------------------------------- microkernel

_I16 = ir.IntType(16)
_I32 = ir.IntType(32)
_V16I16 = ir.VectorType(_I16, 16)
_V16I32 = ir.VectorType(_I32, 16)
_V8I32 = ir.VectorType(_I32, 8)
_EVEN = ir.Constant(_V8I32, [2 * i for i in range(8)])
_ODD = ir.Constant(_V8I32, [2 * i + 1 for i in range(8)])
_SPLAT0 = ir.Constant(_V8I32, [0] * 8)


def _pmaddwd(builder: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """<8 x i32> lane j = x[2j]·y[2j] + x[2j+1]·y[2j+1] (int16 inputs), as generic IR."""
    p = builder.mul(builder.sext(x, _V16I32), builder.sext(y, _V16I32))
    return builder.add(builder.shuffle_vector(p, p, _EVEN), builder.shuffle_vector(p, p, _ODD))


def _make_microkernel(mr: int):  # type: ignore[no-untyped-def]
    """Intrinsic ``mk(acc, acc_off, ldc, a16, a_off, lda, bp, b_off, npairs)``.

    acc[acc_off + i·ldc + j] (int32, i < mr, j < 16) += Σ_{p<npairs} Σ_{e<2}
    a16[a_off + i·lda + 2p + e] · bp[b_off + 32p + 2j + e]. Offsets and strides
    are in elements; a_off must be even (k-pairs are read as one int32).
    """

    @intrinsic
    def mk(typingctx, acc, acc_off, ldc, a16, a_off, lda, bp, b_off, npairs):  # type: ignore[no-untyped-def]
        ip = types.intp
        sig = types.void(acc, ip, ip, a16, ip, ip, bp, ip, ip)

        def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
            acc_v, acc_off, ldc, a_v, a_off, lda, b_v, b_off, npairs = args
            aty, bty, cty = signature.args[3], signature.args[6], signature.args[0]
            acc_p = builder.gep(context.make_array(cty)(context, builder, acc_v).data, [acc_off])
            a_p = builder.gep(context.make_array(aty)(context, builder, a_v).data, [a_off])
            b_p = builder.gep(context.make_array(bty)(context, builder, b_v).data, [b_off])

            def c(v: int) -> ir.Constant:
                return ir.Constant(ldc.type, v)

            # Accumulators live in allocas that mem2reg turns into registers.
            acc_ptrs, acc_vars = [], []
            for i in range(mr):
                for half in range(2):
                    ptr = builder.gep(acc_p, [builder.add(builder.mul(ldc, c(i)), c(8 * half))])
                    ptr = builder.bitcast(ptr, _V8I32.as_pointer())
                    var = cgutils.alloca_once(builder, _V8I32)
                    builder.store(builder.load(ptr, align=4), var)
                    acc_ptrs.append(ptr)
                    acc_vars.append(var)
            a_rows = [
                builder.bitcast(builder.gep(a_p, [builder.mul(lda, c(i))]), _I32.as_pointer())
                for i in range(mr)
            ]
            with cgutils.for_range(builder, npairs) as loop:
                p = loop.index
                b_row = builder.gep(b_p, [builder.mul(p, c(2 * PANEL))])
                b = [
                    builder.load(
                        builder.bitcast(builder.gep(b_row, [c(16 * half)]), _V16I16.as_pointer()),
                        align=2,
                    )
                    for half in range(2)
                ]
                for i in range(mr):
                    pair = builder.load(builder.gep(a_rows[i], [p]), align=4)
                    vec = builder.insert_element(
                        ir.Constant(_V8I32, ir.Undefined), pair, ir.Constant(_I32, 0)
                    )
                    splat = builder.shuffle_vector(vec, ir.Constant(_V8I32, ir.Undefined), _SPLAT0)
                    a = builder.bitcast(splat, _V16I16)
                    for half in range(2):
                        var = acc_vars[2 * i + half]
                        builder.store(
                            builder.add(builder.load(var), _pmaddwd(builder, a, b[half])), var
                        )
            for ptr, var in zip(acc_ptrs, acc_vars):
                builder.store(builder.load(var), ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return mk


_mk1, _mk2, _mk3, _mk4, _mk5, _mk6 = (_make_microkernel(mr) for mr in range(1, MAX_MR + 1))


@njit(nogil=True, cache=True, inline="always")
def _microkernel(mr, acc, acc_off, ldc, a16, a_off, lda, bp, b_off, npairs):  # type: ignore[no-untyped-def]
    if mr == 6:
        _mk6(acc, acc_off, ldc, a16, a_off, lda, bp, b_off, npairs)
    elif mr == 5:
        _mk5(acc, acc_off, ldc, a16, a_off, lda, bp, b_off, npairs)
    elif mr == 4:
        _mk4(acc, acc_off, ldc, a16, a_off, lda, bp, b_off, npairs)
    elif mr == 3:
        _mk3(acc, acc_off, ldc, a16, a_off, lda, bp, b_off, npairs)
    elif mr == 2:
        _mk2(acc, acc_off, ldc, a16, a_off, lda, bp, b_off, npairs)
    else:
        _mk1(acc, acc_off, ldc, a16, a_off, lda, bp, b_off, npairs)


# ---------------------------------------------------------------- packing


@njit(nogil=True, cache=True)
def _padded_width(w: int) -> int:
    return (w + PANEL - 1) // PANEL * PANEL


@njit(nogil=True, cache=True)
def _pack_a_rows(a: np.ndarray, a16: np.ndarray, row0: int, rows: int) -> None:
    """a16[row0:row0+rows] = a[row0:row0+rows] widened to int16 (k-pairs then read as int32)."""
    for i in range(row0, row0 + rows):
        for kk in range(a.shape[1]):
            a16[i, kk] = a[i, kk]


@njit(nogil=True, cache=True)
def _pack_b_strip(bt_strip: np.ndarray, bp: np.ndarray) -> None:
    """bp (wp/16, k/2, 32) int16 ← one tile column's B'ᵀ strip (w×k); padding columns are 0.

    bp[q, p, 2j + e] = B'ᵀ[16q + j, 2p + e]: a k-pair of 16 columns is one contiguous row.
    """
    w, k = bt_strip.shape
    bp[:] = 0
    for j in range(w):
        q, jj = j // PANEL, j % PANEL
        for p in range(k // 2):
            bp[q, p, 2 * jj] = bt_strip[j, 2 * p]
            bp[q, p, 2 * jj + 1] = bt_strip[j, 2 * p + 1]


# ---------------------------------------------------------------- transcript


@njit(nogil=True, cache=True, inline="always")
def fold_tile(acc: np.ndarray, T: np.ndarray, chunk: int) -> None:
    """T[c mod 16] = rotl32(T[c mod 16], 13) XOR (XOR of the tile's int32 partial sums).

    The fold is deliberately non-linear (XOR + rotate): a linear projection
    of the partial sums could be computed from (uᵀA')(B'v) without doing
    the product (PROTOCOL §4). Zero padding columns of ``acc`` do not change it.
    """
    x = np.int32(0)
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            x ^= acc[i, j]
    slot = chunk % TRANSCRIPT_WORDS
    t = np.uint64(T[slot])
    rot = ((t << _ROT_L) | (t >> _ROT_R)) & _MASK32
    T[slot] = np.uint32(rot ^ (np.uint64(np.uint32(x)) & _MASK32))


@njit(nogil=True, cache=True)
def _tile_packed(
    a16: np.ndarray,
    row0: int,
    bp: np.ndarray,
    step: int,
    r: int,
    acc: np.ndarray,
    T: np.ndarray,
    fold: bool,
) -> None:
    """acc (h×wp int32) += A'[row0:row0+h] · (packed panels bp)ᵀ, in runs of ``step`` along k.

    With ``fold`` the run is one r-chunk and the tile is folded into T after it;
    without (plain product) a run may be the whole k, there being no transcript.
    """
    h, wp = acc.shape
    k, lda = a16.shape[1], a16.shape[1]
    for k0 in range(0, k, step):
        for q in range(wp // PANEL):
            i = 0
            while i < h:  # 16 rows = 6 + 6 + 4
                mr = min(MAX_MR, h - i)
                _microkernel(
                    mr,
                    acc,
                    i * wp + q * PANEL,
                    wp,
                    a16,
                    (row0 + i) * lda + k0,
                    lda,
                    bp,
                    (q * (k // 2) + k0 // 2) * 2 * PANEL,
                    step // 2,
                )
                i += mr
        if fold:
            fold_tile(acc, T, k0 // r)


@njit(nogil=True, cache=True)
def tile_product(
    a_strip: np.ndarray, bt_strip: np.ndarray, r: int, acc: np.ndarray, T: np.ndarray, fold: bool
) -> None:
    """acc (h×w int32) += a_strip (h×k) · bt_stripᵀ (k×w), folding into T after every r-chunk.

    Packs the two strips and runs :func:`_tile_packed`, the miner's tile routine.
    """
    h, k = a_strip.shape
    w = bt_strip.shape[0]
    wp = _padded_width(w)
    a16 = np.empty((h, k), dtype=np.int16)
    _pack_a_rows(a_strip, a16, 0, h)
    bp = np.empty((wp // PANEL, k // 2, 2 * PANEL), dtype=np.int16)
    _pack_b_strip(bt_strip, bp)
    acc_p = np.zeros((h, wp), dtype=np.int32)
    acc_p[:, :w] = acc
    _tile_packed(a16, 0, bp, r if fold else k, r, acc_p, T, fold)
    acc[:, :] = acc_p[:, :w]


@njit(parallel=True, nogil=True, cache=True)
def _tiled_product(
    a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int, fold: bool
) -> tuple[np.ndarray, np.ndarray]:
    m, k = a.shape
    n = bt.shape[0]
    tm, tn = m // h, n // w
    wp = _padded_width(w)
    a16 = np.empty((m, k), dtype=np.int16)
    for ti in prange(tm):
        _pack_a_rows(a, a16, ti * h, h)
    bp = np.empty((tn, wp // PANEL, k // 2, 2 * PANEL), dtype=np.int16)
    for tj in prange(tn):
        _pack_b_strip(bt[tj * w : (tj + 1) * w], bp[tj])
    out = np.empty((m, n), dtype=np.int32)
    T = np.zeros((tm, tn, TRANSCRIPT_WORDS), dtype=np.uint32)
    step = r if fold else k
    # Row-major tile order: each thread's consecutive tiles share one A' strip (L2-resident).
    for t in prange(tm * tn):
        ti = t // tn
        tj = t % tn
        acc = np.zeros((h, wp), dtype=np.int32)
        _tile_packed(a16, ti * h, bp[tj], step, r, acc, T[ti, tj], fold)
        out[ti * h : (ti + 1) * h, tj * w : (tj + 1) * w] = acc[:, :w]
    return out, T


def noisy_product(
    a_noisy: np.ndarray, bt_noisy: np.ndarray, r: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """(C' = A'·B' as int32 m×n, transcripts uint32 (m/h, n/w, 16)).

    ``a_noisy`` is A' (m×k int8) and ``bt_noisy`` is B'ᵀ (n×k int8), both
    C-contiguous; shapes are validated by the caller (:mod:`kernels.attempt`).
    """
    return _tiled_product(a_noisy, bt_noisy, r, h, w, True)  # type: ignore[no-any-return]


def plain_matmul(a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int) -> np.ndarray:
    """A·B with the same loop nest, packing and microkernel and no folds: the baseline."""
    out, _ = _tiled_product(a, bt, r, h, w, False)
    return out  # type: ignore[no-any-return]


def single_tile(a_strip: np.ndarray, bt_strip: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """One tile's (C' block, transcript) — the verifier's path through :func:`tile_product`."""
    acc = np.zeros((a_strip.shape[0], bt_strip.shape[0]), dtype=np.int32)
    T = np.zeros(TRANSCRIPT_WORDS, dtype=np.uint32)
    tile_product(a_strip, bt_strip, r, acc, T, True)
    return acc, T
