"""Numba CPU kernels for the noisy product and its tile transcripts (PROTOCOL §4).

One routine, :func:`_tile_packed`, computes one h×w hash tile over the whole
k dimension in r-wide chunks and folds the tile (:func:`fold_tile`) after every
chunk. The miner runs it over every tile in parallel; the verifier runs it over
the single tile a proof opens, in one compiled call that reads the tile's noise
streams and packs A' and B' from the clean rows (:func:`noisy_tile_transcript_generic`).
There is no second implementation of the transcript.

Speed comes from one register-blocked microkernel shared by the miner, the
verifier and the plain baseline: ``acc[mr×16] += A'·B'`` over the whole k, built
on x86 ``pmaddwd``. Operands are widened to int16 and taken in k-pairs, so one
256-bit multiply-add does 16 int16 products and adds them pairwise into 8 int32
lanes. Each row's k-pair (one int32) is broadcast against two registers of B',
which is packed per 16-column panel with each k-pair's 16 column pairs side by
side; A' is packed per tile strip with each k-pair's h row pairs side by side,
so the ≤6 rows of a block sit at fixed offsets. |products| ≤ 127² < 2^14, pair
sums < 2^15 and every partial sum < 65,536·127² < 2^31, so the int32 arithmetic
is exact and bit-identical to the reference. At each r-chunk end the
microkernel XORs its 12 accumulator registers into 8 lanes (XOR commutes, so
their XOR is the block's), and :func:`fold_tile` folds the tile's XOR into T:
the fold costs ~1/r of the product and the plain product simply skips it.

Numba cannot express that loop so that LLVM keeps 12 vector accumulators in
registers, so the microkernel is a small LLVM-IR intrinsic. It uses only
generic IR (sext, mul, shuffle, add), which LLVM's x86 backend turns into
vpmaddwd on AVX2 (and into correct, slower code on any other target).

That is the portable path. Targets with AVX-512 VNNI get their own at import
(:func:`available_paths`): int8 vpdpbusd on zmm in :mod:`kernels.transcript_vnni`,
the same transcript bit for bit. :func:`noisy_product`, :func:`plain_matmul` and
:func:`single_tile` run the active path; :func:`select_path` changes it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.blake3_lanes import keyed_xof
from kernels.isa import compile_target
from kernels.noise import (
    L_BLOCK,
    L_LEN,
    PERM_BLOCK,
    PERM_LEN,
    NoiseFactors,
    add_noise,
    add_noise_transposed,
    permutation_from_stream,
)
from kernels.params import TRANSCRIPT_WORDS
from kernels.strips import built_noisy_product
from kernels.threads import exclusive
from kernels.tiles import PANEL, check_chunks, copy_block, fold_tile, padded_width
from kernels.validate import check_operand

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


def _make_microkernel(mr: int):
    """Intrinsic ``mk(acc, acc_off, ldc, ap, a_off, lda, bp, b_off, nchunks, cpairs, xs, fold,
    zero)``.

    For each of ``nchunks`` chunks c of ``cpairs`` k-pairs p, for i < mr, j < 16:
    acc[acc_off + i·ldc + j] += Σ_e ap[a_off + 2(p·lda + i) + e] · bp[b_off + 32p + 2j + e]
    (int32), and then, if ``fold``, xs[c, 0, :] ^= the mr×16 partial sums XORed
    lane-wise into 8 int32 (so its XOR is theirs). Offsets count elements (a_off
    is even: a k-pair of A' is read as one int32); lda counts k-pairs. With ``zero`` the
    accumulators start at 0 instead of acc's values, which are then only written.
    """

    @intrinsic
    def mk(tctx, acc, acc_off, ldc, ap, a_off, lda, bp, b_off, nchunks, cpairs, xs, fold, zero):
        ip = types.intp
        sig = types.void(acc, ip, ip, ap, ip, ip, bp, ip, ip, ip, xs, types.boolean, types.boolean)

        def codegen(context, builder, signature, args):
            acc_off, ldc, a_off, lda, b_off, nchunks, cpairs, fold, zero = (
                args[i] for i in (1, 2, 4, 5, 7, 8, 9, 11, 12)
            )

            def ptr(n: int, *offsets: ir.Value, to: ir.Type) -> ir.Value:
                """Pointer of type ``to`` at args[n]'s data + Σ offsets (in its elements)."""
                p = context.make_array(signature.args[n])(context, builder, args[n]).data
                for off in offsets:
                    p = builder.gep(p, [off])
                return builder.bitcast(p, to.as_pointer())

            def c(v: int) -> ir.Constant:
                return ir.Constant(ldc.type, v)

            a_p = ptr(3, a_off, to=_I32)
            b_p = ptr(6, b_off, to=_I16)
            xs_p = ptr(10, to=_V8I32)
            # Accumulators: allocas of <8 x i32> that mem2reg promotes to 2·mr ymm registers.
            acc_ptrs = [
                ptr(0, acc_off, builder.mul(ldc, c(i)), c(8 * half), to=_V8I32)
                for i in range(mr)
                for half in range(2)
            ]
            acc_vars = [
                cgutils.alloca_once_value(builder, ir.Constant(_V8I32, [0] * 8)) for _ in acc_ptrs
            ]
            with builder.if_then(builder.not_(zero)):  # else acc is only written: no read miss
                for p, var in zip(acc_ptrs, acc_vars, strict=True):
                    builder.store(builder.load(p, align=4), var)
            with cgutils.for_range(builder, nchunks) as chunk:
                p0 = builder.mul(chunk.index, cpairs)
                with cgutils.for_range(builder, cpairs) as loop:
                    p = builder.add(p0, loop.index)
                    a_row = builder.gep(a_p, [builder.mul(p, lda)])  # the mr rows' pairs follow
                    b_row = builder.gep(b_p, [builder.mul(p, c(2 * PANEL))])
                    b = [
                        builder.load(
                            builder.bitcast(
                                builder.gep(b_row, [c(16 * half)]), _V16I16.as_pointer()
                            ),
                            align=2,
                        )
                        for half in range(2)
                    ]
                    for i in range(mr):  # broadcast row i's k-pair, multiply-add both halves
                        pair = builder.load(builder.gep(a_row, [c(i)]), align=4)
                        vec = builder.insert_element(ir.Constant(_V8I32, None), pair, _I32(0))
                        a = builder.bitcast(builder.shuffle_vector(vec, vec, _SPLAT0), _V16I16)
                        for half in range(2):
                            var = acc_vars[2 * i + half]
                            total = builder.add(builder.load(var), _pmaddwd(builder, a, b[half]))
                            builder.store(total, var)
                with builder.if_then(fold):  # chunk end: XOR the block's partial sums into xs[c]
                    x_ptr = builder.gep(xs_p, [chunk.index])
                    x = builder.load(x_ptr, align=4)
                    for var in acc_vars:
                        x = builder.xor(x, builder.load(var))
                    builder.store(x, x_ptr, align=4)
            for p, var in zip(acc_ptrs, acc_vars, strict=True):
                builder.store(builder.load(var), p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return mk


_mk1, _mk2, _mk3, _mk4, _mk5, _mk6 = (_make_microkernel(mr) for mr in range(1, MAX_MR + 1))


@njit(nogil=True, cache=True, inline="always")
def _microkernel(
    mr, acc, acc_off, ldc, ap, a_off, lda, bp, b_off, nchunks, chunk_pairs, xs, fold, zero
):
    if mr == 6:
        _mk6(acc, acc_off, ldc, ap, a_off, lda, bp, b_off, nchunks, chunk_pairs, xs, fold, zero)
    elif mr == 5:
        _mk5(acc, acc_off, ldc, ap, a_off, lda, bp, b_off, nchunks, chunk_pairs, xs, fold, zero)
    elif mr == 4:
        _mk4(acc, acc_off, ldc, ap, a_off, lda, bp, b_off, nchunks, chunk_pairs, xs, fold, zero)
    elif mr == 3:
        _mk3(acc, acc_off, ldc, ap, a_off, lda, bp, b_off, nchunks, chunk_pairs, xs, fold, zero)
    elif mr == 2:
        _mk2(acc, acc_off, ldc, ap, a_off, lda, bp, b_off, nchunks, chunk_pairs, xs, fold, zero)
    else:
        _mk1(acc, acc_off, ldc, ap, a_off, lda, bp, b_off, nchunks, chunk_pairs, xs, fold, zero)


# ---------------------------------------------------------------- packing


@njit(nogil=True, cache=True)
def _pack_a_strip(a_strip: np.ndarray, ap: np.ndarray) -> None:
    """ap (k/2, h, 2) int16 ← one tile row's A' strip (h×k): ap[p, i, e] = A'[i, 2p + e].

    A k-pair of a row is one int32 to broadcast, and a k-pair of all h rows is
    contiguous, so the microkernel finds its rows at fixed offsets from one pointer.
    """
    h, k = a_strip.shape
    for i in range(h):
        for p in range(k // 2):
            ap[p, i, 0] = a_strip[i, 2 * p]
            ap[p, i, 1] = a_strip[i, 2 * p + 1]


@njit(nogil=True, cache=True)
def _pack_b_strip(bt_strip: np.ndarray, bp: np.ndarray) -> None:
    """bp (wp/16, k/2, 32) int16 ← one tile column's B'ᵀ strip (w×k); padding columns are 0.

    bp[q, p, 2j + e] = B'ᵀ[16q + j, 2p + e]: a k-pair of 16 columns is one contiguous row.
    """
    w, k = bt_strip.shape
    if w % PANEL:
        bp.fill(0)
    for q in range(bp.shape[0]):
        for p in range(k // 2):
            for jj in range(min(PANEL, w - q * PANEL)):
                bp[q, p, 2 * jj] = bt_strip[q * PANEL + jj, 2 * p]
                bp[q, p, 2 * jj + 1] = bt_strip[q * PANEL + jj, 2 * p + 1]


# ---------------------------------------------------------------- transcript


@njit(nogil=True, cache=True)
def _tile_packed(
    ap: np.ndarray, bp: np.ndarray, r: int, acc: np.ndarray, T: np.ndarray, fold: bool
) -> None:
    """acc (h×wp int32) += (packed strip ap) · (packed panels bp)ᵀ, folding T after every r-chunk.

    The microkernel runs each (≤6-row, 16-column) block over the whole k and, at
    every chunk end, XORs its partial sums lane-wise into xs[c] (1×8 int32);
    XOR being associative and commutative, xs[c] then has the same XOR as the
    tile's h×w partial sums after chunk c, which is what :func:`fold_tile` folds.
    Without ``fold`` (plain product) the whole k is one run and nothing is XORed.
    """
    k = 2 * ap.shape[0]
    xs = np.empty((k // r if fold else 1, 1, 8), dtype=np.int32)
    _tile_into(ap, bp, r, acc.reshape(-1), 0, acc.shape[1], False, T, fold, xs)


@njit(nogil=True, cache=True)
def _tile_into(
    ap: np.ndarray,
    bp: np.ndarray,
    r: int,
    out: np.ndarray,
    off: int,
    ldo: int,
    zero: bool,
    T: np.ndarray,
    fold: bool,
    xs: np.ndarray,
) -> None:
    """:func:`_tile_packed` into out[off + i·ldo + j] (i < h, j < wp; ``out`` flat), which
    it overwrites with ``zero`` (the tiles of C' go straight to C', never through a
    buffer of their own) and adds to otherwise; ``xs`` (≥ chunks × 1 × 8 int32) is
    scratch for the chunk-end XORs."""
    h = ap.shape[1]
    wp = bp.shape[0] * PANEL
    k = 2 * ap.shape[0]
    nchunks = k // r if fold else 1
    xs[:nchunks] = 0
    for q in range(wp // PANEL):
        i = 0
        while i < h:  # 16 rows = 6 + 6 + 4
            mr = min(MAX_MR, h - i)
            _microkernel(
                mr,
                out,
                off + i * ldo + q * PANEL,
                ldo,
                ap,
                2 * i,
                h,
                bp,
                q * (k // 2) * 2 * PANEL,
                nchunks,
                k // 2 // nchunks,
                xs,
                fold,
                zero,
            )
            i += mr
    if fold:
        for c in range(nchunks):
            fold_tile(xs[c], T, c)


@njit(nogil=True, cache=True)
def tile_product(
    a_strip: np.ndarray, bt_strip: np.ndarray, r: int, acc: np.ndarray, T: np.ndarray, fold: bool
) -> None:
    """acc (h×w int32) += a_strip (h×k) · bt_stripᵀ (k×w), folding into T after every r-chunk.

    Packs the two strips and runs :func:`_tile_packed`, the miner's tile routine.
    """
    h, k = a_strip.shape
    check_chunks(k, r)
    w = bt_strip.shape[0]
    wp = padded_width(w)
    ap = np.empty((k // 2, h, 2), dtype=np.int16)
    _pack_a_strip(a_strip, ap)
    bp = np.empty((wp // PANEL, k // 2, 2 * PANEL), dtype=np.int16)
    _pack_b_strip(bt_strip, bp)
    acc_p = np.zeros((h, wp), dtype=np.int32)
    copy_block(acc, acc_p, 0, 0, h, w)
    _tile_packed(ap, bp, r, acc_p, T, fold)
    copy_block(acc_p, acc, 0, 0, h, w)


@njit(nogil=True, cache=True, inline="always")
def _pack_noisy_pairs(
    x: np.ndarray,
    l_raw: np.ndarray,
    l_off: int,
    p: np.ndarray,
    q: np.ndarray,
    r: int,
    out: np.ndarray,
) -> bool:
    """out[c // 2, i, c % 2] ← x[i, c] + E[i, c] (int16), E[i, c] = L[i, p(c)] − L[i, q(c)]
    with row i of L the r raw XOF bytes at l_off + i·r; True if an entry of x lies outside
    the int7 range (out is then written all the same). L = (byte & 63) − 32, so the −32s
    cancel.

    The packed layout is the microkernel's (:func:`_pack_a_strip`, one panel of
    :func:`_pack_b_strip`): the noisy strip is never built. A k-pair's noise comes from
    L's transposed table, whose rows hold one entry for each of x's rows."""
    rows, k = x.shape
    p, q = p.view(np.uint32), q.view(np.uint32)  # in [0, r): no negative-index test in the loop
    lt = np.empty((r, rows), dtype=np.int16)
    for i in range(rows):
        for s in range(r):
            lt[s, i] = l_raw[l_off + i * r + s] & 63
    lo = np.int16(0)
    hi = np.int16(0)
    for i in range(rows):
        for c in range(k):
            v = np.int16(x[i, c])
            lo = min(lo, v)
            hi = max(hi, v)
    for pp in range(k // 2):
        p0, p1, q0, q1 = p[2 * pp], p[2 * pp + 1], q[2 * pp], q[2 * pp + 1]
        for i in range(rows):
            out[pp, i, 0] = np.int16(x[i, 2 * pp]) + lt[p0, i] - lt[q0, i]
            out[pp, i, 1] = np.int16(x[i, 2 * pp + 1]) + lt[p1, i] - lt[q1, i]
    return bool(lo < -64 or hi > 63)


@njit(nogil=True, cache=True)
def noisy_tile_transcript_generic(
    a_rows: np.ndarray,
    b_cols: np.ndarray,
    seeds: np.ndarray,
    ti: int,
    tj: int,
    r: int,
    T: np.ndarray,
) -> bool:
    """T ← the transcript of tile (ti, tj), A' = a_rows + E_A (h×k), B'ᵀ = b_cols + E_Bᵀ
    (w×k), from the clean rows and columns and the two noise seeds (``seeds``: seed_A's
    8 little-endian words, then seed_B's) in one compiled call, on the portable
    microkernel: the permutation streams (4·k bytes each) and the tile's rows of L_A and
    L_B (from byte ti·h·r and tj·w·r) are read by :func:`keyed_xof`, and A' and B' are
    packed straight from the clean rows and the noise. False, with T untouched, if an
    operand entry lies outside the int7 range."""
    h, k = a_rows.shape
    w = b_cols.shape[0]
    check_chunks(k, r)
    wp = padded_width(w)
    ap = np.empty((k // 2, h, 2), dtype=np.int16)
    start = ti * h * r  # L rows begin mid-block unless 64 | h·r
    la = keyed_xof(seeds, 0, L_BLOCK, L_LEN, start // 64, start % 64 + h * r)
    perm = keyed_xof(seeds, 0, PERM_BLOCK, PERM_LEN, 0, 4 * k)
    p, q = permutation_from_stream(perm, r)
    bad = _pack_noisy_pairs(a_rows, la, start % 64, p, q, r, ap)
    bp = np.zeros((wp // PANEL, k // 2, PANEL, 2), dtype=np.int16)  # padding columns are 0
    start = tj * w * r
    lb = keyed_xof(seeds, 8, L_BLOCK, L_LEN, start // 64, start % 64 + w * r)
    perm = keyed_xof(seeds, 8, PERM_BLOCK, PERM_LEN, 0, 4 * k)
    p, q = permutation_from_stream(perm, r)
    for panel in range(wp // PANEL):
        lo = panel * PANEL
        cols = b_cols[lo : min(w, lo + PANEL)]
        bad |= _pack_noisy_pairs(cols, lb, start % 64 + lo * r, p, q, r, bp[panel])
    if bad:
        return False
    acc = np.zeros((h, wp), dtype=np.int32)
    _tile_packed(ap, bp.reshape((wp // PANEL, k // 2, 2 * PANEL)), r, acc, T, True)
    return True


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _tiled_product(
    a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int, fold: bool
) -> tuple[np.ndarray, np.ndarray]:
    m, k = a.shape
    check_chunks(k, r)
    n = bt.shape[0]
    tm, tn = m // h, n // w
    wp = padded_width(w)
    ap = np.empty((tm, k // 2, h, 2), dtype=np.int16)
    for ti in prange(tm):
        _pack_a_strip(a[ti * h : (ti + 1) * h], ap[ti])
    bp = np.empty((tn, wp // PANEL, k // 2, 2 * PANEL), dtype=np.int16)
    for tj in prange(tn):
        _pack_b_strip(bt[tj * w : (tj + 1) * w], bp[tj])
    out = np.empty((m, n), dtype=np.int32)
    flat = out.reshape(-1)
    T = np.zeros((tm, tn, TRANSCRIPT_WORDS), dtype=np.uint32)
    # Row-major tile order: each thread's consecutive tiles share one A' strip (L2-resident).
    # Where w is whole panels a tile goes straight into C'; else through a buffer, whose
    # padding columns must not land in the next tile.
    for t in prange(tm * tn):
        ti = t // tn
        tj = t % tn
        xs = np.empty((k // r if fold else 1, 1, 8), dtype=np.int32)
        if wp == w:
            _tile_into(ap[ti], bp[tj], r, flat, ti * h * n + tj * w, n, True, T[ti, tj], fold, xs)
        else:
            acc = np.empty((h, wp), dtype=np.int32)
            _tile_into(ap[ti], bp[tj], r, acc.reshape(-1), 0, wp, True, T[ti, tj], fold, xs)
            copy_block(acc, out, ti * h, tj * w, h, w)
    return out, T


# ---------------------------------------------------------------- paths

GENERIC = "generic"
VNNI = "avx512_vnni"
AMX = "amx_int8"


def available_paths() -> tuple[str, ...]:
    """The microkernel paths this process's compile target can run; the first is the default.

    ``avx512_vnni`` (int8 vpdpbusd on zmm, :mod:`kernels.transcript_vnni`) where
    the target has AVX-512 VNNI and BW; ``generic`` (this module's portable IR)
    everywhere. Every path gives the same C' and T, bit for bit. ``amx_int8``
    (:mod:`kernels.transcript_amx`) is listed where the target has AMX-INT8 and
    the OS grants tiles, but never first: on the one AMX host measured its attempt was
    slower than VNNI's (:mod:`kernels.transcript_amx`).
    """
    target = compile_target()
    if target.isa != VNNI:
        return (GENERIC,)
    if {"amx-int8", "amx-tile"} <= target.features:
        from kernels.transcript_amx import amx_usable

        if amx_usable():
            return (VNNI, GENERIC, AMX)
    return (VNNI, GENERIC)


_active = available_paths()[0]


def active_path() -> str:
    """The path :func:`noisy_product`, :func:`plain_matmul` and :func:`single_tile` run."""
    return _active


def select_path(name: str) -> str:
    """Run ``name`` from now on in this process (benchmarks compare paths); returns the previous."""
    global _active
    if name not in available_paths():
        raise ValueError(
            f"CPU kernel path {name!r} cannot run on this compile target "
            f"({compile_target().isa}); available: {', '.join(available_paths())}"
        )
    previous, _active = _active, name
    return previous


def _kernels(r: int) -> tuple[Any, Any]:
    """(tiled product, single-tile product) of the active path for chunk width r."""
    # Imported on first use: only targets with the instructions may compile them.
    if _active == AMX and r % 64 == 0:
        from kernels import transcript_amx

        return transcript_amx.tiled_product, transcript_amx.tile_product
    if _active in (VNNI, AMX):  # AMX tiles take k in steps of 64; VNNI takes any r
        from kernels import transcript_vnni

        return transcript_vnni.tiled_product, transcript_vnni.tile_product
    return _tiled_product, tile_product


def noisy_product(
    a_noisy: np.ndarray, bt_noisy: np.ndarray, r: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """(C' = A'·B' as int32 m×n, transcripts uint32 (m/h, n/w, 16)).

    ``a_noisy`` is A' (m×k int8) and ``bt_noisy`` is B'ᵀ (n×k int8), both
    C-contiguous; shapes are validated by the caller (:mod:`kernels.attempt`).
    """
    tiled, _ = _kernels(r)
    c, t = tiled(a_noisy, bt_noisy, r, h, w, True)
    return c, t


def noisy_product_from_b(
    a_noisy: np.ndarray, b: np.ndarray, noise_b: NoiseFactors, r: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """(C', T): :func:`noisy_product` of A' and B' = B + E_B, given the clean B (k×n) and
    its noise.

    The VNNI path packs B' straight from B and L_Bᵀ (when 4 | r): B'ᵀ, a transpose
    that costs ~6 % of the VNNI product, is never built. Other paths build it.
    """
    if _active == VNNI and r % 4 == 0:
        from kernels import transcript_vnni

        lt = np.ascontiguousarray(noise_b.L.T)
        bb = np.ascontiguousarray(b)
        c, t = transcript_vnni.tiled_product_noisy_b(a_noisy, bb, lt, noise_b.p, noise_b.q, r, h, w)
        return c, t
    return noisy_product(a_noisy, add_noise_transposed(b, noise_b), r, h, w)


def noisy_product_from_clean(
    a: np.ndarray,
    noise_a: NoiseFactors,
    b: np.ndarray,
    noise_b: NoiseFactors,
    r: int,
    h: int,
    w: int,
    between_strips: Callable[[], None] | None = None,
    bt: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(C', T) of A' = A + E_A and B' = B + E_B from the clean A (m×k), B (k×n) and their
    noise: :func:`noisy_product_from_b` without A' as an argument. ``bt``: B's transpose
    (the same values), if the caller holds it: the VNNI path may pack B' from it.

    The VNNI path packs A' straight from A as well (when h = 16 and 4 | r), so neither
    noisy operand is ever built: the A' pass costs ~1 % of the product. Other paths
    build A' and call :func:`noisy_product_from_b`. ``between_strips``: computed by
    row strips, that function called between them (the VNNI path packs both operands
    once for all strips).

    Every path checks that A and B lie in the int7 range (ValueError naming the
    operand) before any tile is computed or ``between_strips`` called: the VNNI path as
    it packs them, the others first.
    """
    if _active == VNNI and r % 4 == 0 and h == 16:
        from kernels import transcript_vnni

        c, t = transcript_vnni.tiled_product_noisy(
            np.ascontiguousarray(a), noise_a, np.ascontiguousarray(b), noise_b, r, h, w,
            between_strips, None if bt is None else np.ascontiguousarray(bt),
        )  # fmt: skip
        return c, t
    if between_strips is None:
        check_operand("A", a)
        check_operand("B", b)
        return noisy_product_from_b(add_noise(a, noise_a), b, noise_b, r, h, w)
    return built_noisy_product(noisy_product, a, noise_a, b, noise_b, r, h, w, between_strips)


def plain_matmul(a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int) -> np.ndarray:
    """A·B with the same loop nest, packing and microkernel and no folds: the baseline."""
    tiled, _ = _kernels(r)
    out: np.ndarray = tiled(a, bt, r, h, w, False)[0]
    return out


def single_tile(a_strip: np.ndarray, bt_strip: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """One tile's (C' block, transcript) — the verifier's path, the miner's tile routine."""
    _, tile = _kernels(r)
    acc = np.zeros((a_strip.shape[0], bt_strip.shape[0]), dtype=np.int32)
    T = np.zeros(TRANSCRIPT_WORDS, dtype=np.uint32)
    tile(a_strip, bt_strip, r, acc, T, True)
    return acc, T


def _one_call_module() -> Any:
    """:mod:`kernels.transcript_vnni`, imported on first use as in _kernels; after that a
    dictionary lookup (an import statement costs a verifier ~0.5 µs of its ~20 µs)."""
    vnni: Any = sys.modules.get("kernels.transcript_vnni")
    if vnni is None:
        from kernels import transcript_vnni

        vnni = transcript_vnni
    return vnni


def noisy_tile_transcript_seeded(
    a_rows: np.ndarray,
    b_cols: np.ndarray,
    seed_a: bytes,
    seed_b: bytes,
    ti: int,
    tj: int,
    r: int,
) -> np.ndarray | None:
    """The tile's transcript from its clean rows and columns and the two noise seeds,
    the noise streams read in the same compiled call, where the active path has it:
    the portable path for every tile (:func:`noisy_tile_transcript_generic`), VNNI or
    AMX for a tile :func:`kernels.transcript_vnni.permutable` admits; None elsewhere
    (the caller then reads the streams: :func:`noisy_tile_transcript`), and for a tile
    whose rows of L reach byte :data:`_MAX_STREAM_BYTE` of the stream.

    Raises ValueError if an operand entry lies outside the int7 range.
    """
    h, w = a_rows.shape[0], b_cols.shape[0]
    if max((ti + 1) * h, (tj + 1) * w) * r >= _MAX_STREAM_BYTE:
        return None
    if _active == GENERIC:
        one_call = noisy_tile_transcript_generic
    elif _active in (VNNI, AMX):
        vnni = _one_call_module()
        if not vnni.permutable(h, r, a_rows.shape[1], w):
            return None
        one_call = vnni.noisy_tile_transcript_seeded
    else:
        return None
    T = np.zeros(TRANSCRIPT_WORDS, dtype=np.uint32)
    rows, cols = np.ascontiguousarray(a_rows), np.ascontiguousarray(b_cols)  # read as words
    seeds = np.frombuffer(bytes(seed_a) + bytes(seed_b), dtype=np.uint32)  # little-endian hosts
    if not one_call(rows, cols, seeds, ti, tj, r, T):
        raise ValueError("an operand entry lies outside the int7 range [-64, 63]")
    return T


_MAX_STREAM_BYTE = 1 << 62
"""Tiles whose rows of L reach this byte of the stream (a tile index no job has) are left
to the library's XOF, whose seek refuses what 64 bits cannot hold: the compiled calls'
int64 offsets would wrap."""


def noisy_tile_transcript(
    a_rows: np.ndarray,
    b_cols: np.ndarray,
    la_raw: np.ndarray,
    perm_a_raw: np.ndarray,
    lb_raw: np.ndarray,
    perm_b_raw: np.ndarray,
    r: int,
) -> np.ndarray | None:
    """The tile's transcript from its clean rows and columns and the raw noise streams
    in one compiled call, where the active path has one (VNNI or AMX, h = 16, 4 | r);
    None elsewhere (the caller then builds the noisy strips for :func:`single_tile`).
    The noise is added by the transposed table: the tiles a VBMI target permutes go
    through :func:`noisy_tile_transcript_seeded` first.

    Raises ValueError if an operand entry lies outside the int7 range.
    """
    if _active not in (VNNI, AMX) or a_rows.shape[0] != 16 or r % 4:
        return None
    vnni = _one_call_module()
    T = np.zeros(TRANSCRIPT_WORDS, dtype=np.uint32)
    rows, cols = np.ascontiguousarray(a_rows), np.ascontiguousarray(b_cols)  # read as words
    if not vnni.noisy_tile_transcript(rows, cols, la_raw, perm_a_raw, lb_raw, perm_b_raw, r, T):
        raise ValueError("an operand entry lies outside the int7 range [-64, 63]")
    return T
