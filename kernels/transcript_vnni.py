"""The AVX-512 VNNI path of the CPU transcript kernels (int8 ``vpdpbusd`` on zmm).

Same tile routine, same transcript, bit for bit, as the portable path in
:mod:`kernels.transcript_cpu`; only the microkernel and the packing differ.
``vpdpbusd`` multiplies 4 unsigned bytes by 4 signed bytes and adds the four
products into one int32 lane: 64 MACs per zmm instruction, twice what
``vpdpwssd`` on int16 k-pairs does. Its first operand must be unsigned, so B'
(entries in [-127, 127]) is packed shifted by +128 (a XOR 0x80 of the byte)
into [1, 255], and A', the signed operand, is the one broadcast — a 4-byte
broadcast the instruction takes straight from memory (``{1to16}``), so each
row's k-quad costs no extra instruction. The shift adds 128·Σ A'[i, k] over
the chunk to every entry of row i; the microkernel subtracts that row sum
(precomputed per r-chunk while packing) from row i's accumulator at every
chunk end, before the fold reads it. All of it is int32 arithmetic modulo
2^32 whose true result fits int32, so the partial sums the fold sees are the
reference's exactly.

A block is up to 16 rows × 16 columns: 16 zmm accumulators, one 64-byte
load of B' per k-quad and 16 broadcast multiply-adds. Chunks of a width r
that is not a multiple of 4 are padded with zero k-columns of A' (B' padding
is 0x80, i.e. zero): zero products, zero row sums.

The miner (:func:`tiled_product_noisy`) packs B' = B + E_B straight from the
clean B and the noise factors, so B'ᵀ is never built, and A' = A + E_A into the
packed A strips (h = 16), so A' is never built either. Only hosts whose compile
target has AVX-512 VNNI and BW compile this module's kernels
(:func:`kernels.transcript_cpu.available_paths`): LLVM aborts the process on
others, so they never import it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.blake3_lanes import keyed_xof
from kernels.irvec import I32, V16I32, array_data, const16, splat16, transposed16
from kernels.isa import compile_target
from kernels.noise import (
    L_BLOCK,
    L_LEN,
    PERM_BLOCK,
    PERM_LEN,
    NoiseFactors,
    permutation_bytes,
    permutation_from_stream,
)
from kernels.params import TRANSCRIPT_WORDS
from kernels.strips import strips_between
from kernels.threads import exclusive
from kernels.tiles import (
    PANEL,
    aligned_int32,
    check_chunks,
    copy_block,
    fold_chunks16,
    padded_width,
    store_fence,
)
from kernels.validate import check_operand, int7_excess

# A packed B' panel (kernels.tiles.PANEL = 16 columns) is one zmm of 16 int32 lanes.
LANES = 16
STRIPS_IN_L2 = 256 * 1024
"""Bytes of packed A' strips a task keeps in L2 while one B' strip streams past them."""
B_QUADS = 16
"""k-quads of B' a packing task makes before it copies them out to the panels (16 rows
of n words: 128 KiB in L2 at n = 2048)."""

_I8 = ir.IntType(8)
_V64I8 = ir.VectorType(_I8, 64)
_VPDPBUSD = "llvm.x86.avx512.vpdpbusd.512"
ADD, OVERWRITE, STREAM = 0, 1, 2
"""How a microkernel stores its block: added to acc's values, over them (acc is never
read), or over them by non-temporal stores, which need every row 64-byte aligned."""


def _make_microkernel(mr: int):
    """Intrinsic ``mk(acc, acc_off, ldc, ap, a_off, lda, bp, b_off, rs, rs_off, nchunks, cquads,
    xs, fold, store)``.

    For each of ``nchunks`` chunks c of ``cquads`` k-quads p, for i < mr, j < 16:
    acc[acc_off + i·ldc + j] += Σ_e (bp[b_off + 64p + 4j + e] as u8) · ap[a_off + 4(p·lda + i) + e]
    (int32 lanes, wrapping), then acc[… i …] −= rs[rs_off + c·lda + i] (the shift's
    128·row sum of the chunk) and, if ``fold``, xs[c, 0, :] ^= the mr accumulators
    XORed lane-wise. Offsets count elements; lda counts k-quads (i.e. rows). ``store`` is
    :data:`ADD`, or :data:`OVERWRITE` / :data:`STREAM`: the accumulators then start at 0
    and acc is only written (by non-temporal stores for STREAM).
    """

    @intrinsic
    def mk(
        tctx,
        acc,
        acc_off,
        ldc,
        ap,
        a_off,
        lda,
        bp,
        b_off,
        rs,
        rs_off,
        nchunks,
        cquads,
        xs,
        fold,
        store,
    ):
        ip = types.intp
        sig = types.void(acc, ip, ip, ap, ip, ip, bp, ip, rs, ip, ip, ip, xs, types.boolean, ip)

        def codegen(context, builder, signature, args):
            acc_off, ldc, a_off, lda, b_off, rs_off, nchunks, cquads, fold, store = (
                args[i] for i in (1, 2, 4, 5, 7, 9, 10, 11, 13, 14)
            )
            dot = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(V16I32, [V16I32, _V64I8, _V64I8]), _VPDPBUSD
            )

            def ptr(n: int, *offsets: ir.Value, to: ir.Type) -> ir.Value:
                """Pointer of type ``to`` at args[n]'s data + Σ offsets (in its elements)."""
                p = context.make_array(signature.args[n])(context, builder, args[n]).data
                for off in offsets:
                    p = builder.gep(p, [off])
                return builder.bitcast(p, to.as_pointer())

            def c(v: int) -> ir.Constant:
                return ir.Constant(ldc.type, v)

            a_p = ptr(3, a_off, to=I32)  # a k-quad of one row is one int32
            b_p = ptr(6, b_off, to=_V64I8)
            rs_p = ptr(8, rs_off, to=I32)
            xs_p = ptr(12, to=V16I32)
            # numpy buffers are only element-aligned: every vector access says so.
            acc_ptrs = [ptr(0, acc_off, builder.mul(ldc, c(i)), to=V16I32) for i in range(mr)]
            acc_vars = [
                cgutils.alloca_once_value(builder, ir.Constant(V16I32, [0] * LANES))
                for _ in acc_ptrs
            ]
            added = builder.icmp_signed("==", store, c(ADD))
            with builder.if_then(added):  # else acc is only written: no read miss
                for p, var in zip(acc_ptrs, acc_vars, strict=True):
                    builder.store(builder.load(p, align=4), var)
            with cgutils.for_range(builder, nchunks) as chunk:
                p0 = builder.mul(chunk.index, cquads)
                with cgutils.for_range(builder, cquads) as loop:
                    p = builder.add(p0, loop.index)
                    a_row = builder.gep(a_p, [builder.mul(p, lda)])  # the mr rows' quads follow
                    b = builder.load(builder.gep(b_p, [p]), align=1)
                    for i, var in enumerate(acc_vars):
                        quad = builder.load(builder.gep(a_row, [c(i)]), align=1)
                        a = builder.bitcast(splat16(builder, quad), _V64I8)
                        builder.store(builder.call(dot, [builder.load(var), b, a]), var)
                # Chunk end: undo the +128 shift of B', then XOR the block into xs[c].
                rs_row = builder.gep(rs_p, [builder.mul(chunk.index, lda)])
                for i, var in enumerate(acc_vars):
                    shift = splat16(builder, builder.load(builder.gep(rs_row, [c(i)]), align=4))
                    builder.store(builder.sub(builder.load(var), shift), var)
                with builder.if_then(fold):
                    x_ptr = builder.gep(xs_p, [chunk.index])
                    x = builder.load(x_ptr, align=4)
                    for var in acc_vars:
                        x = builder.xor(x, builder.load(var))
                    builder.store(x, x_ptr, align=4)
            # C' is written once and read, if at all, after the whole product: streamed
            # past the caches, its lines cost no read for ownership and evict no operand.
            streamed = builder.icmp_signed("==", store, c(STREAM))
            nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
            with builder.if_else(streamed) as (stream, other):
                with stream:
                    for p, var in zip(acc_ptrs, acc_vars, strict=True):
                        st = builder.store(builder.load(var), p, align=64)
                        st.set_metadata("nontemporal", nontemporal)
                with other:
                    for p, var in zip(acc_ptrs, acc_vars, strict=True):
                        builder.store(builder.load(var), p, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return mk


_mk16, _mk8, _mk4, _mk2, _mk1 = (_make_microkernel(mr) for mr in (16, 8, 4, 2, 1))


@njit(nogil=True, cache=True, inline="always")
def _block_rows(left: int) -> int:
    """Rows of the next block: 16 (16 zmm accumulators of the 32), else the largest
    power of two that fits."""
    for mr in (16, 8, 4, 2):
        if left >= mr:
            return mr
    return 1


@njit(nogil=True, cache=True, inline="always")
def _microkernel(mr, acc, ao, ldc, ap, a_off, lda, bp, bo, rs, ro, nc, cq, xs, fold, store):
    """The ``mr``-row microkernel (:func:`_make_microkernel`'s arguments, from acc)."""
    if mr == 16:
        _mk16(acc, ao, ldc, ap, a_off, lda, bp, bo, rs, ro, nc, cq, xs, fold, store)
    elif mr == 8:
        _mk8(acc, ao, ldc, ap, a_off, lda, bp, bo, rs, ro, nc, cq, xs, fold, store)
    elif mr == 4:
        _mk4(acc, ao, ldc, ap, a_off, lda, bp, bo, rs, ro, nc, cq, xs, fold, store)
    elif mr == 2:
        _mk2(acc, ao, ldc, ap, a_off, lda, bp, bo, rs, ro, nc, cq, xs, fold, store)
    else:
        _mk1(acc, ao, ldc, ap, a_off, lda, bp, bo, rs, ro, nc, cq, xs, fold, store)


# ---------------------------------------------------------------- packing


@njit(nogil=True, cache=True, inline="always")
def _quads(r: int) -> int:
    """k-quads per r-chunk (the last one zero-padded when 4 ∤ r)."""
    return (r + 3) // 4


@njit(nogil=True, cache=True)
def _pack_a_strip(a_strip: np.ndarray, r: int, ap: np.ndarray, rs: np.ndarray) -> None:
    """ap (k/r·⌈r/4⌉, h, 4) int8 ← one tile row's A' strip (h×k), rs (k/r, h) ← 128·row sums.

    ap[p, i, e] = A'[i, kk] for the k-column kk of slot e of quad p (0 in padding), so a
    k-quad of all h rows is contiguous; rs[c, i] = 128·Σ A'[i, c·r : (c+1)·r].
    """
    h, k = a_strip.shape
    cq = _quads(r)
    if r % 4 == 0:  # quads tile k exactly: ap[p, i, :] = A'[i, 4p : 4p + 4]
        for p in range(k // 4):
            dst = ap[p]
            for i in range(h):
                row = a_strip[i]
                for e in range(4):
                    dst[i, e] = row[4 * p + e]
    else:
        ap.fill(0)
        for c in range(k // r):
            for t in range(r):
                for i in range(h):
                    ap[c * cq + t // 4, i, t % 4] = a_strip[i, c * r + t]
    _shift_sums(a_strip, r, rs)


@njit(nogil=True, cache=True)
def _shift_sums(a_strip: np.ndarray, r: int, rs: np.ndarray) -> None:
    """rs (k/r, h) ← 128·the row sums of each r-chunk of a_strip (h×k)."""
    h, k = a_strip.shape
    for i in range(h):
        row = a_strip[i]
        for c in range(k // r):
            s = np.int32(0)
            for t in range(r):
                s += np.int32(row[c * r + t])
            rs[c, i] = s * np.int32(128)


@njit(nogil=True, cache=True)
def _pack_b_strip(bt_strip: np.ndarray, r: int, bp: np.ndarray) -> None:
    """bp (wp/16, k/r·⌈r/4⌉, 64) uint8 ← one tile column's B'ᵀ strip (w×k), shifted by +128.

    bp[q, p, 4j + e] = B'ᵀ[16q + j, kk] + 128 for slot e of quad p; padding (columns past
    w, k-slots past r) is 128, i.e. B' = 0.
    """
    w, k = bt_strip.shape
    cq = _quads(r)
    bp.fill(128)
    for q in range(bp.shape[0]):
        for jj in range(min(PANEL, w - q * PANEL)):
            for c in range(k // r):
                for t in range(r):
                    v = np.uint8(bt_strip[q * PANEL + jj, c * r + t]) ^ np.uint8(0x80)
                    bp[q, c * cq + t // 4, 4 * jj + t % 4] = v


# ---------------------------------------------------------------- transcript


@njit(nogil=True, cache=True)
def _tile_packed(
    ap: np.ndarray,
    bp: np.ndarray,
    rs: np.ndarray,
    acc: np.ndarray,
    T: np.ndarray,
    fold: bool,
    xs: np.ndarray,
) -> None:
    """acc (h×wp int32) += A'·B' from the packed strip and panels, folding T after every r-chunk.

    ``rs`` holds the per-chunk shift corrections (k/r × h), or for the plain
    product (no ``fold``) their total (1 × h): then the whole k is one run.
    ``xs`` (≥ chunks × 1 × 16 int32) is scratch for the chunk-end XORs.
    """
    _tile_into(ap, bp, rs, acc.reshape(-1), 0, acc.shape[1], ADD, T, fold, xs)


@njit(nogil=True, cache=True)
def _tile_into(
    ap: np.ndarray,
    bp: np.ndarray,
    rs: np.ndarray,
    out: np.ndarray,
    off: int,
    ldo: int,
    store: int,
    T: np.ndarray,
    fold: bool,
    xs: np.ndarray,
) -> None:
    """:func:`_tile_packed` into out[off + i·ldo + j] (i < h, j < wp; ``out`` flat), stored
    as ``store`` says (:data:`ADD`, :data:`OVERWRITE`, :data:`STREAM`): the tiles of C' go
    straight into C', never through a buffer of their own."""
    nq, h = ap.shape[0], ap.shape[1]
    wp = bp.shape[0] * PANEL
    nchunks = rs.shape[0]
    xs[:nchunks] = 0
    for q in range(wp // PANEL):
        i = 0
        while i < h:
            mr = _block_rows(h - i)
            _microkernel(
                mr,
                out,
                off + i * ldo + q * PANEL,
                ldo,
                ap,
                4 * i,
                h,
                bp,
                q * nq * 4 * PANEL,
                rs,
                i,
                nchunks,
                nq // nchunks,
                xs,
                fold,
                store,
            )
            i += mr
    if fold:
        fold_chunks16(xs, nchunks, T)  # type: ignore[call-arg]  # an intrinsic


@njit(nogil=True, cache=True)
def _shift_totals(rs: np.ndarray) -> np.ndarray:
    """(1 × h) the sum over all chunks of rs: the plain product's one correction."""
    out = np.zeros((1, rs.shape[1]), dtype=np.int32)
    for c in range(rs.shape[0]):
        for i in range(rs.shape[1]):
            out[0, i] += rs[c, i]
    return out


@njit(nogil=True, cache=True)
def tile_product(
    a_strip: np.ndarray, bt_strip: np.ndarray, r: int, acc: np.ndarray, T: np.ndarray, fold: bool
) -> None:
    """acc (h×w int32) += a_strip (h×k) · bt_stripᵀ (k×w), folding into T after every r-chunk."""
    h, k = a_strip.shape
    check_chunks(k, r)
    w = bt_strip.shape[0]
    wp = padded_width(w)
    nq = k // r * _quads(r)
    ap = np.empty((nq, h, 4), dtype=np.int8)
    rs = np.empty((k // r, h), dtype=np.int32)
    _pack_a_strip(a_strip, r, ap, rs)
    bp = np.empty((wp // PANEL, nq, 4 * PANEL), dtype=np.uint8)
    _pack_b_strip(bt_strip, r, bp)
    acc_p = np.zeros((h, wp), dtype=np.int32)
    copy_block(acc, acc_p, 0, 0, h, w)
    xs = np.empty((k // r, 1, LANES), dtype=np.int32)
    _tile_packed(ap, bp, rs if fold else _shift_totals(rs), acc_p, T, fold, xs)
    copy_block(acc_p, acc, 0, 0, h, w)


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _pack_a_all(a: np.ndarray, r: int, h: int, fold: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every tile row's packed A' strip and its shift corrections (their totals without fold)."""
    m, k = a.shape
    check_chunks(k, r)
    tm = m // h
    nq = k // r * _quads(r)
    ap = np.empty((tm, nq, h, 4), dtype=np.int8)
    rs = np.empty((tm, k // r, h), dtype=np.int32)
    in_words = r % 4 == 0 and h == LANES  # the miner's packing of A (no range flags here)
    a32 = a.view(np.uint32) if in_words else np.empty((1, 1), dtype=np.uint32)
    for ti in prange(tm):
        strip = a[ti * h : (ti + 1) * h]
        if in_words:
            words = ap[ti].view(np.uint32).reshape(nq, h)
            _strip_words(a32, ti * h, words, np.zeros(LANES, dtype=np.uint32))
            _shift_sums(strip, r, rs[ti])
        else:
            _pack_a_strip(strip, r, ap[ti], rs[ti])
    # The plain product is one run over the whole k: one correction per row, the total.
    shifts = rs if fold else np.empty((tm, 1, h), dtype=np.int32)
    if not fold:
        for ti in prange(tm):
            shifts[ti] = _shift_totals(rs[ti])
    return ap, shifts


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _pack_b_all(bt: np.ndarray, r: int, w: int) -> np.ndarray:
    """Every tile column's packed B' panels, from B'ᵀ (n×k, C-contiguous). Where 4 | r and
    16 | w, 16 rows of B'ᵀ (a panel's columns) are transposed 16×16 words at a time in
    registers, as A's strips are (:func:`_strip_words`), then shifted by +128 (0.2 ms at
    2048² on two Zen 4 cores, where a quad at a time took 0.55)."""
    n, k = bt.shape
    tn = n // w
    nq = k // r * _quads(r)
    bp = np.empty((tn, padded_width(w) // PANEL, nq, 4 * PANEL), dtype=np.uint8)
    if r % 4 == 0 and w % PANEL == 0:
        bt32 = bt.view(np.uint32)
        per_tile = w // PANEL
        for panel in prange(n // PANEL):
            words = bp[panel // per_tile, panel % per_tile].view(np.uint32).reshape(nq, PANEL)
            _strip_words(bt32, panel * PANEL, words, np.zeros(LANES, dtype=np.uint32))
            for quad in range(nq):  # B' is the unsigned operand: every byte + 128
                for jj in range(PANEL):
                    words[quad, jj] ^= np.uint32(0x80808080)
    else:
        for tj in prange(tn):
            _pack_b_strip(bt[tj * w : (tj + 1) * w], r, bp[tj])
    return bp


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _pack_b_noisy_all(
    b: np.ndarray, lt: np.ndarray, pn: np.ndarray, qn: np.ndarray, w: int
) -> tuple[np.ndarray, bool]:
    """Every tile column's packed B' panels (as :func:`_pack_b_all`) from the clean B (k×n),
    and False if an entry of B lies outside the int7 range (checked as it is read).

    B'[c, j] = B[c, j] + L_B[j, p(c)] − L_B[j, q(c)] with ``lt`` = L_Bᵀ (r×n): each
    k-quad reads four whole rows of B and eight of Lᵀ into a row of words of 4 bytes,
    so B'ᵀ is never built (needs 4 | r). A task makes ``B_QUADS`` such rows, then
    copies each panel's share of them out as one contiguous run: a quad at a time,
    its 64 bytes a panel went to places 32 KiB apart (the same L1 set), 1.5× slower.
    """
    k, n = b.shape
    tn = n // w
    nq = k // 4
    npanels = padded_width(w) // PANEL
    bp = np.empty((tn, npanels, nq, 4 * PANEL), dtype=np.uint8)
    words = bp.view(np.uint32)  # [tj, q, p, jj]: the 4 k-slots of column jj of quad p
    if w % PANEL:
        bp.fill(128)  # padding columns: B' = 0
    groups = (nq + B_QUADS - 1) // B_QUADS
    bad = np.zeros(groups, dtype=np.uint8)
    for group in prange(groups):
        p0 = group * B_QUADS
        p1 = min(nq, p0 + B_QUADS)
        rows = np.empty((B_QUADS, n), dtype=np.uint32)
        flags = np.uint8(0)  # bit 7: an entry outside int7
        for p in range(p0, p1):
            b0, b1, b2, b3 = b[4 * p], b[4 * p + 1], b[4 * p + 2], b[4 * p + 3]
            u0, u1, u2, u3 = lt[pn[4 * p]], lt[pn[4 * p + 1]], lt[pn[4 * p + 2]], lt[pn[4 * p + 3]]
            v0, v1, v2, v3 = lt[qn[4 * p]], lt[qn[4 * p + 1]], lt[qn[4 * p + 2]], lt[qn[4 * p + 3]]
            row = rows[p - p0]
            for j in range(n):
                flags |= int7_excess(np.uint8(b0[j])) | int7_excess(np.uint8(b1[j]))
                flags |= int7_excess(np.uint8(b2[j])) | int7_excess(np.uint8(b3[j]))
                x0 = np.uint32(np.uint8(b0[j] + u0[j] - v0[j]) ^ np.uint8(0x80))
                x1 = np.uint32(np.uint8(b1[j] + u1[j] - v1[j]) ^ np.uint8(0x80))
                x2 = np.uint32(np.uint8(b2[j] + u2[j] - v2[j]) ^ np.uint8(0x80))
                x3 = np.uint32(np.uint8(b3[j] + u3[j] - v3[j]) ^ np.uint8(0x80))
                row[j] = x0 | (x1 << np.uint32(8)) | (x2 << np.uint32(16)) | (x3 << np.uint32(24))
        for tj in range(tn):
            for q in range(npanels):
                j0 = tj * w + q * PANEL
                for p in range(p0, p1):
                    dst = words[tj, q, p]
                    src = rows[p - p0]
                    for jj in range(min(PANEL, w - q * PANEL)):
                        dst[jj] = src[j0 + jj]
        bad[group] = flags & np.uint8(0x80)
    return bp, not bad.any()


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _tiles_into(
    ap: np.ndarray,
    shifts: np.ndarray,
    bp: np.ndarray,
    r: int,
    w: int,
    fold: bool,
    t0: int,
    t1: int,
    out: np.ndarray,
    T: np.ndarray,
    stream: bool,
) -> None:
    """Tile rows ``t0 … t1`` of C' into ``out`` (m×n int32) and of T into ``T`` (m/h,
    n/w, 16, zeroed), from the packed operands, every tile in parallel.

    Where w is whole panels, each tile's microkernels store their accumulators straight
    into ``out``: through a tile buffer (zeroed, then copied into ``out``) the tiles of a
    2048³ product took 5–8 % longer (Zen 4, two threads). With ``stream`` (every row of
    ``out`` 64-byte aligned) they are non-temporal stores: the attempt 1.7 % faster.
    Other widths go through the buffer, whose padding columns must not land in the next
    tile."""
    _, nq, h, _ = ap.shape
    tn = bp.shape[0]
    k = nq // _quads(r) * r
    wp = padded_width(w)
    n = out.shape[1]
    flat = out.reshape(-1)
    # A task is one B' panel strip against a group of tile rows whose A' strips stay in
    # L2 together: each B' strip then comes from L3 once per group, not once per tile.
    group = max(1, min(t1 - t0, STRIPS_IN_L2 // max(1, k * h)))
    groups = (t1 - t0 + group - 1) // group
    for task in prange(groups * tn):
        g = task // tn
        tj = task % tn
        acc = np.empty((h, wp), dtype=np.int32)
        xs = np.empty((k // r, 1, LANES), dtype=np.int32)
        for ti in range(t0 + g * group, min(t1, t0 + (g + 1) * group)):
            if wp == w:
                at = ti * h * n + tj * w
                how = STREAM if stream else OVERWRITE
                _tile_into(ap[ti], bp[tj], shifts[ti], flat, at, n, how, T[ti, tj], fold, xs)
            else:
                buf = acc.reshape(-1)
                _tile_into(ap[ti], bp[tj], shifts[ti], buf, 0, wp, OVERWRITE, T[ti, tj], fold, xs)
                copy_block(acc, out, ti * h, tj * w, h, w)
        if stream:  # (only ever set where w is whole panels)
            store_fence()  # type: ignore[call-arg]  # an intrinsic


def _all_tiles(
    ap: np.ndarray,
    shifts: np.ndarray,
    bp: np.ndarray,
    r: int,
    w: int,
    n: int,
    fold: bool,
    between_strips: Callable[[], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(C' m×n int32, T (m/h, n/w, 16)) from the packed operands, every tile in parallel;
    with ``between_strips``, in the strips of tile rows ``tile_strips`` gives, that
    function called between them (the operands are packed once for all)."""
    tm, _, h, _ = ap.shape
    out = aligned_int32(tm * h, n)
    # Non-temporal stores fault on a row not 64-byte aligned: C' starts on a boundary and
    # its rows are whole panels of 16 words.
    stream = padded_width(w) == w and n % LANES == 0 and out.ctypes.data % 64 == 0
    T = np.zeros((tm, bp.shape[0], TRANSCRIPT_WORDS), dtype=np.uint32)
    for t0, t1 in strips_between(tm, between_strips):
        _tiles_into(ap, shifts, bp, r, w, fold, t0, t1, out, T, stream)
    return out, T


def tiled_product(
    a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int, fold: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(C' m×n int32, T (m/h, n/w, 16)) over every tile in parallel; T stays 0 without ``fold``."""
    ap, shifts = _pack_a_all(np.ascontiguousarray(a), r, h, fold)
    bp = _pack_b_all(np.ascontiguousarray(bt), r, w)
    out, t = _all_tiles(ap, shifts, bp, r, w, bt.shape[0], fold)
    return out, t


def tiled_product_noisy_b(
    a_noisy: np.ndarray,
    b: np.ndarray,
    lt: np.ndarray,
    pn: np.ndarray,
    qn: np.ndarray,
    r: int,
    h: int,
    w: int,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tiled_product` with folds where B' = B + E_B is packed from B (k×n) and
    L_Bᵀ, p_B, q_B as it goes (4 | r): the miner skips building B'ᵀ. ValueError, before
    any tile, if B has an entry outside the int7 range."""
    ap, shifts = _pack_a_all(np.ascontiguousarray(a_noisy), r, h, True)
    bp, b_in_range = _pack_b_noisy_all(b, lt, pn, qn, w)
    if not b_in_range:
        _name_outside_int7("B", b)
    out, t = _all_tiles(ap, shifts, bp, r, w, b.shape[1], True)
    return out, t


def factor_tables(L: np.ndarray) -> np.ndarray:
    """tab[t, s, i] = L[16t + i, s] as a byte (uint32, rows/16 × r × 16): the noise table
    of each strip of 16 rows, contiguous (4 KiB at r = 64). One table for all rows would
    put a strip's r lines 4·rows bytes apart, in the same L1 sets: 4× slower."""
    rows, r = L.shape
    lt = np.ascontiguousarray(L.reshape(rows // LANES, LANES, r).transpose(0, 2, 1))
    return lt.view(np.uint8).astype(np.uint32)


@njit(nogil=True, cache=True)
def _a_strip_buffers(m: int, k: int, r: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packed A' strips (m/h, k/4, h, 4), their shift corrections (m/h, k/r, h) and
    int7 flags (m/h, 16) that the miner's packings of A' fill."""
    check_chunks(k, r)
    tm = m // h
    ap = np.empty((tm, k // 4, h, 4), dtype=np.int8)
    rs = np.empty((tm, k // r, h), dtype=np.int32)
    return ap, rs, np.zeros((tm, LANES), dtype=np.uint32)


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _pack_a_noisy_all(
    a: np.ndarray, tab: np.ndarray, pn: np.ndarray, qn: np.ndarray, r: int, h: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """:func:`_pack_a_all` with folds of A' = A + E_A, packed straight from the clean A
    (m×k) and :func:`factor_tables` of L_A: A' is never built (h = 16, 4 | r). The third
    value is False if an entry of A lies outside the int7 range (checked as it is read)."""
    m, k = a.shape
    ap, rs, bad = _a_strip_buffers(m, k, r, h)
    a32 = a.view(np.uint32)
    for ti in prange(m // h):
        words = ap[ti].view(np.uint32).reshape(k // 4, h)
        _strip_words(a32, ti * h, words, bad[ti])  # the clean strip, then E added in place
        _add_noise_packed(words, tab[ti], pn, qn, r, rs[ti])
    return ap, rs, not bad.any()


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _pack_a_permuted_all(
    a: np.ndarray, lt: np.ndarray, p8: np.ndarray, q8: np.ndarray, r: int, h: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """:func:`_pack_a_noisy_all` by byte permutes (:func:`_pack_permuted`, the verifier's
    packing of a tile's rows) for every strip: ``lt`` is :func:`_factor_rows64_of` L_A,
    ``p8``/``q8`` its permutation as bytes (VBMI, h = 16, 4 | r ≤ 64, 64 | k). Its own
    function, not a branch of :func:`_pack_a_noisy_all`: a target without VBMI must
    never compile ``vpermb`` (LLVM aborts the process)."""
    m, k = a.shape
    ap, rs, bad = _a_strip_buffers(m, k, r, h)
    a32 = a.view(np.uint32)
    for ti in prange(m // h):
        words = ap[ti].view(np.uint32).reshape(k // 4, h)
        _pack_permuted(a32, ti * h, lt, p8, q8, r // 4, words, rs[ti], bad[ti])
    return ap, rs, not bad.any()


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _pack_b_permuted_all(
    bt: np.ndarray, lt: np.ndarray, p8: np.ndarray, q8: np.ndarray, w: int
) -> tuple[np.ndarray, bool]:
    """The B' panels (n/w, w/16, k/4, 64) packed straight from Bᵀ (n×k) by byte permutes,
    16 columns at a time as the verifier packs a tile's columns (:func:`_pack_permuted`
    with cq = 0: shifted by +128, no sums): ``lt`` is :func:`_factor_rows64_of` L_B,
    ``p8``/``q8`` its permutation as bytes (VBMI, 16 | w, 4 | r ≤ 64, 64 | k). The second
    value is False if an entry of B lies outside the int7 range. Its own function for
    the reason :func:`_pack_a_permuted_all` is."""
    n, k = bt.shape
    per_tile = w // PANEL
    bp = np.empty((n // w, per_tile, k // 4, 4 * PANEL), dtype=np.uint8)
    bad = np.zeros((n // PANEL, LANES), dtype=np.uint32)
    no_sums = np.empty((1, LANES), dtype=np.int32)  # cq = 0 writes none
    bt32 = bt.view(np.uint32)
    for panel in prange(n // PANEL):
        words = bp[panel // per_tile, panel % per_tile].view(np.uint32).reshape(k // 4, PANEL)
        _pack_permuted(bt32, panel * PANEL, lt, p8, q8, 0, words, no_sums, bad[panel])
    return bp, not bad.any()


@njit(nogil=True, cache=True)
def _strip_words(a32: np.ndarray, row0: int, words: np.ndarray, bad: np.ndarray) -> None:
    """words[quad, i] = a32[row0 + i, quad] for the 16 rows (a word transpose: a strip of A
    as k-quads of 16 rows), 16 quads at a time in registers (:func:`_transpose_words16`;
    scalar stores 64 bytes apart took 1.5× as long), and bad[0:16] |= bit 7 of every byte
    read whose bit 6 differs: the int7 range check of those rows, in the same pass."""
    nq = words.shape[0]
    ldx = a32.shape[1]
    x_flat = a32.reshape(-1)
    out_flat = words.reshape(-1)
    full = nq - nq % LANES
    for quad in range(0, full, LANES):
        _transpose_words16(  # type: ignore[call-arg]  # an intrinsic
            x_flat, row0 * ldx + quad, ldx, out_flat, LANES * quad, bad
        )
    for i in range(LANES):  # the quads past the last 16 (k not a multiple of 64)
        src = a32[row0 + i]
        for quad in range(full, nq):
            word = src[quad]
            words[quad, i] = word
            bad[i] |= (word ^ (word << np.uint32(1))) & np.uint32(0x80808080)


def _name_outside_int7(name: str, x: np.ndarray) -> None:
    """Raise :func:`check_operand`'s error for ``x``, which the packing flagged."""
    check_operand(name, x)
    raise RuntimeError(f"the packing flagged {name} outside int7 but its range check did not")


def tiled_product_noisy(
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
    """:func:`tiled_product_noisy_b` where A' = A + E_A is packed from the clean A too
    (h = 16, 4 | r; A and B C-contiguous): the miner builds neither A' nor B'ᵀ.
    ``between_strips``: see :func:`_all_tiles`.

    On VBMI targets (r ≤ 64, 64 | k) each A strip gets its noise 64 k-columns of a row
    at a time by two byte permutes of the row's L, as the verifier's tile does
    (:func:`_pack_permuted`); elsewhere 16 rows' k-quads at a time from tables
    (:func:`_add_noise_packed`), ~2.5× the time. B' likewise where the caller also
    holds ``bt``, B's transpose (C-contiguous, the same values: a job keeps both), whose
    rows are B's columns: 16 of them a panel, as A's rows make a strip; else B' is packed
    from B's rows (:func:`_pack_b_noisy_all`).

    The packing checks that A and B lie in the int7 range as it reads them (a separate
    pass over both cost ~1 % of an attempt at 2048³): if one does not, ValueError names
    it, before any tile is computed or ``between_strips`` called."""
    pn, qn = noise_a.p, noise_a.q
    if permutable(h, r, a.shape[1], PANEL):
        lt, p8, q8 = _factor_rows64_of(noise_a.L), pn.astype(np.uint8), qn.astype(np.uint8)
        ap, shifts, a_in_range = _pack_a_permuted_all(a, lt, p8, q8, r, h)
    else:
        ap, shifts, a_in_range = _pack_a_noisy_all(a, factor_tables(noise_a.L), pn, qn, r, h)
    if not a_in_range:
        _name_outside_int7("A", a)
    if bt is not None and permutable(h, r, a.shape[1], w):
        lt_b = _factor_rows64_of(noise_b.L)
        pb, qb = noise_b.p.astype(np.uint8), noise_b.q.astype(np.uint8)
        bp, b_in_range = _pack_b_permuted_all(bt, lt_b, pb, qb, w)
    else:
        lt_b = np.ascontiguousarray(noise_b.L.T)
        bp, b_in_range = _pack_b_noisy_all(b, lt_b, noise_b.p, noise_b.q, w)
    if not b_in_range:
        _name_outside_int7("B", b)
    out, t = _all_tiles(ap, shifts, bp, r, w, b.shape[1], True, between_strips)
    return out, t


def _factor_rows64_of(L: np.ndarray) -> np.ndarray:
    """L (rows × r int8, r ≤ 64) as :func:`_factor_rows64` lays it out: each row's
    factors in 64 bytes (zero past r), the table of its byte permutes."""
    rows, r = L.shape
    if r == 64:
        return np.ascontiguousarray(L).reshape(-1).view(np.uint8)
    lt = np.zeros((rows, 64), dtype=np.uint8)
    lt[:, :r] = L.view(np.uint8)
    return lt.reshape(-1)


# ---------------------------------------------------------------- verifier


@njit(nogil=True, cache=True)
def _factor_lanes(l_raw: np.ndarray, r: int, rows: int, lanes: int) -> np.ndarray:
    """tab[s, i] = L[i, s] as a byte (uint32), L[i, s] = (l_raw[i·r + s] & 63) − 32
    (PROTOCOL §3); lanes past ``rows`` are 0, i.e. no noise."""
    tab = np.zeros((r, lanes), dtype=np.uint32)
    for i in range(rows):
        for s in range(r):
            tab[s, i] = np.uint32(np.uint8((l_raw[i * r + s] & 63) - 32))
    return tab


def _make_noisy_words16(gather: bool):
    """:func:`_noisy_words16` (``gather``) or its variant for 16 consecutive words."""

    @intrinsic
    def noisy_words16(
        tctx, x, x_off, ldx, rows, tab, tab_off, plus, minus, out, out_off, flip, sums
    ):
        return _noisy_words16_signature(gather, x, tab, out, sums)

    return noisy_words16


def _noisy_words16_signature(gather: bool, x, tab, out, sums):
    """One k-quad of 16 lanes of x' = x + E, packed as words: for lane i < 16,
    out[out_off + i] = (x[x_off + i·ldx] + E_i bytewise) XOR ``flip`` (x = 0 past ``rows``),
    where E_i's byte e is tab[tab_off + plus[e] + i] − tab[tab_off + minus[e] + i], and
    sums[0:16] += the sum of lane i's four signed bytes of x'. Without ``gather`` lane i
    is x[x_off + i], one vector load (``ldx`` and ``rows`` are ignored: 16 lanes).

    Bytes are added inside 32-bit words (SWAR: no carry crosses a byte), a whole quad
    of 16 lanes in one zmm: LLVM does not vectorise this from Numba loops (their arrays
    may alias), and byte-wise gathers cost ~1 ns an entry. The lane sums are one
    ``vpdpbusd`` of x' against bytes of 1.
    """
    ip = types.intp
    offs = types.UniTuple(ip, 4)
    sig = types.void(x, ip, ip, ip, tab, ip, offs, offs, out, ip, types.uint32, sums)

    def codegen(context, builder, signature, args):
        _, x_off, ldx, rows, _, tab_off, plus_v, minus_v, _, out_off, flip_v, _ = args

        data = array_data(context, builder, signature, args)

        x_p, out_p, sums_p = data(0), data(8), data(11)
        tab_p = builder.gep(data(4), [tab_off])

        def vec(base: ir.Value, off: ir.Value) -> ir.Value:
            return builder.bitcast(builder.gep(base, [off]), V16I32.as_pointer())

        def bytes_of(offsets: ir.Value) -> ir.Value:
            word = None
            for e in range(4):
                b = builder.load(vec(tab_p, builder.extract_value(offsets, e)), align=4)
                b = builder.shl(b, const16(8 * e)) if e else b
                word = b if word is None else builder.or_(word, b)
            return word

        if gather:
            # The clean words, lane by lane (a strided gather); lanes past ``rows`` read
            # the last row (always in bounds) and are then zeroed.
            xw = ir.Constant(V16I32, None)
            last = builder.sub(rows, ir.Constant(rows.type, 1))
            for i in range(16):
                lane = ir.Constant(rows.type, i)
                inside = builder.icmp_signed("<", lane, rows)
                row = builder.select(inside, lane, last)
                word = builder.load(builder.gep(x_p, [builder.add(x_off, builder.mul(row, ldx))]))
                word = builder.select(inside, word, I32(0))
                xw = builder.insert_element(xw, word, I32(i))
        else:
            xw = builder.load(vec(x_p, x_off), align=4)
        low7, high = const16(0x7F7F7F7F), const16(0x80808080)
        pv, mv = bytes_of(plus_v), bytes_of(minus_v)
        # bytewise pv − mv: ((p | H) − (m & L)) ^ ((p ^ ~m) & H)
        e = builder.xor(
            builder.sub(builder.or_(pv, high), builder.and_(mv, low7)),
            builder.and_(builder.xor(pv, builder.not_(mv)), high),
        )
        # bytewise x + e: ((x & L) + (e & L)) ^ ((x ^ e) & H)
        total = builder.xor(
            builder.add(builder.and_(xw, low7), builder.and_(e, low7)),
            builder.and_(builder.xor(xw, e), high),
        )
        builder.store(builder.xor(total, splat16(builder, flip_v)), vec(out_p, out_off), align=4)
        dot = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(V16I32, [V16I32, _V64I8, _V64I8]), _VPDPBUSD
        )
        sums_ptr = vec(sums_p, I32(0))
        ones = ir.Constant(_V64I8, [1] * 64)
        acc = builder.call(
            dot, [builder.load(sums_ptr, align=4), ones, builder.bitcast(total, _V64I8)]
        )
        builder.store(acc, sums_ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen


_noisy_words16 = _make_noisy_words16(gather=True)
_noisy_words16_packed = _make_noisy_words16(gather=False)


def _int7_flags(builder: ir.IRBuilder, word: ir.Value) -> ir.Value:
    """Bit 7 of each byte of ``word`` (<16 x i32>) XOR its bit 6: 0x80 marks a byte
    outside the int7 range [-64, 63] once masked with 0x80808080."""
    return builder.xor(word, builder.shl(word, const16(1)))


def _flag_bad(builder: ir.IRBuilder, bad_p: ir.Value, flagged: ir.Value) -> None:
    """bad[0:16] |= the int7 flags (:func:`_int7_flags`, ORed over the rows read) masked
    to each byte's bit 7."""
    bad_ptr = builder.bitcast(bad_p, V16I32.as_pointer())
    mask = const16(0x80808080)
    builder.store(
        builder.or_(builder.load(bad_ptr, align=4), builder.and_(flagged, mask)),
        bad_ptr,
        align=4,
    )


@intrinsic
def _transpose_words16(tctx, x, x_off, ldx, out, out_off, bad):
    """out[out_off + 16·j + i] = x[x_off + i·ldx + j] for i, j < 16: a 16×16 block of
    words transposed in registers (4 rounds of 2-source shuffles, 64 in all), where a
    lane-by-lane gather costs a scalar load and an insert per word. bad[0:16] |= bit 7
    of every byte whose bit 6 differs from it: 0 iff every byte read is in the int7
    range [-64, 63] (its top two bits equal)."""
    ip = types.intp
    sig = types.void(x, ip, ip, out, ip, bad)

    def codegen(context, builder, signature, args):
        _, x_off, ldx, _, out_off, _ = args

        data = array_data(context, builder, signature, args)

        x_p, out_p, bad_p = data(0), data(3), data(5)

        def vec(base: ir.Value, off: ir.Value) -> ir.Value:
            return builder.bitcast(builder.gep(base, [off]), V16I32.as_pointer())

        rows = []
        flagged = None
        for i in range(16):
            off = builder.add(x_off, builder.mul(ldx, ir.Constant(ldx.type, i)))
            row = builder.load(vec(x_p, off), align=4)
            moved = _int7_flags(builder, row)
            flagged = moved if flagged is None else builder.or_(flagged, moved)
            rows.append(row)
        rows = transposed16(builder, rows)
        for j in range(16):
            off = builder.add(out_off, ir.Constant(out_off.type, 16 * j))
            builder.store(rows[j], vec(out_p, off), align=4)
        _flag_bad(builder, bad_p, flagged)
        return context.get_dummy_value()

    return sig, codegen


SUM_WAYS = 4
"""Lane-sum accumulators the verifier's noise loop rotates through: each quad's sum is a load, a
``vpdpbusd`` and a store, and one accumulator would chain them quad after quad."""


@njit(nogil=True, cache=True, inline="always")
def _offsets(t1: int, p: np.ndarray, quad: int) -> tuple[int, int, int, int]:
    """The ``tab`` offsets (t1·p[c]) of the 4 k-columns c of ``quad``."""
    c = 4 * quad
    return (t1 * p[c], t1 * p[c + 1], t1 * p[c + 2], t1 * p[c + 3])


@njit(nogil=True, cache=True, inline="always")
def _close_chunk(sums: np.ndarray, rs: np.ndarray, chunk: int) -> None:
    """rs[chunk, i] ← 128 · the lane sums of the chunk just packed; the sums ← 0."""
    for i in range(LANES):
        total = np.int32(0)
        for way in range(SUM_WAYS):
            total += sums[way, i]
            sums[way, i] = 0
        rs[chunk, i] = total * np.int32(128)


@njit(nogil=True, cache=True)
def _add_noise_packed(
    words: np.ndarray,
    tab: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    r: int,
    rs: np.ndarray,
) -> None:
    """words (k/4 × 16 uint32), a packed clean strip of 16 rows (word [quad, i] =
    x[i, 4·quad …]), += E bytewise in place, and rs[c, i] = 128·Σ x'[i, chunk c]:
    :func:`_pack_noisy_quads` on words already packed; ``tab`` (r × 16) is the strip's
    :func:`factor_tables` entry."""
    nq = words.shape[0]
    flat = words.reshape(-1)
    tab_flat = tab.reshape(-1)
    t1 = tab.shape[1]
    sums = np.zeros(LANES, dtype=np.int32)
    cq = r // 4
    for chunk in range(nq // cq):
        for quad in range(chunk * cq, (chunk + 1) * cq):
            _noisy_words16_packed(  # an intrinsic: typing context is implicit
                flat,
                LANES * quad,
                1,
                LANES,
                tab_flat,
                0,
                _offsets(t1, p, quad),
                _offsets(t1, q, quad),
                flat,
                LANES * quad,
                np.uint32(0),
                sums,
            )
        for i in range(LANES):
            rs[chunk, i] = sums[i] * np.int32(128)
            sums[i] = 0


@njit(nogil=True, cache=True)
def _pack_noisy_quads(
    x: np.ndarray,
    row0: int,
    tab: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    r: int,
    out: np.ndarray,
    flip: np.uint32,
    rs: np.ndarray,
    bad: np.ndarray,
) -> None:
    """out[quad, i] = the 4 bytes x'[row0 + i, 4·quad …] of x' = x + E XOR ``flip`` for the
    16 lanes (x' = 0 past the rows of ``x``), and rs[c, i] = 128·Σ x'[row0 + i, chunk c].
    bad[0:16] is left nonzero if an entry of those rows of x lies outside the int7 range.

    ``x`` is the clean strip as uint32 words (4 k-columns each) and ``tab`` is
    :func:`_factor_lanes` of its rows' noise (4 | r). With 16 rows and 16 | k/4 the clean
    words are transposed 16 quads at a time (:func:`_transpose_words16`) and the noise
    added in place; otherwise each quad's 16 lanes are gathered one by one.
    """
    nq = out.shape[0]
    rows = min(LANES, x.shape[0] - row0)
    ldx = x.shape[1]
    x_flat = x.reshape(-1)
    tab_flat = tab.reshape(-1)
    out_flat = out.reshape(-1)
    t1 = tab.shape[1]
    sums = np.zeros((SUM_WAYS, LANES), dtype=np.int32)
    blocks = rows == LANES and nq % LANES == 0
    if not blocks and not _int7(x[row0 : row0 + rows]):
        bad[0] |= np.uint32(0x80)
    cq = r // 4
    for chunk in range(nq // cq):
        for quad in range(chunk * cq, (chunk + 1) * cq):
            plus, minus = _offsets(t1, p, quad), _offsets(t1, q, quad)
            at, way = LANES * quad, sums[quad % SUM_WAYS]
            if blocks:  # intrinsics: the typing context is implicit
                if quad % LANES == 0:
                    _transpose_words16(  # type: ignore[call-arg]
                        x_flat, row0 * ldx + quad, ldx, out_flat, at, bad
                    )
                _noisy_words16_packed(
                    out_flat, at, 1, LANES, tab_flat, row0, plus, minus, out_flat, at, flip, way
                )
            else:
                _noisy_words16(
                    x_flat,
                    row0 * ldx + quad,
                    ldx,
                    rows,
                    tab_flat,
                    row0,
                    plus,
                    minus,
                    out_flat,
                    at,
                    flip,
                    way,
                )
        _close_chunk(sums, rs, chunk)


_VPERMB = "llvm.x86.avx512.permvar.qi.512"
VBMI = "avx512vbmi" in compile_target().features
"""Whether the target has AVX-512 VBMI's byte permute (``vpermb``): the verifier then
adds a tile's noise 64 k-columns of a row at a time (:func:`noisy_tile_transcript_permuted`).
Ice Lake, Sapphire Rapids and Zen 4 have it; Cascade Lake, with VNNI, does not."""


def permutable(h: int, r: int, k: int, w: int) -> bool:
    """Whether :func:`noisy_tile_transcript_permuted` takes an h×k by w×k tile at rank r:
    a VBMI target, 16 rows, 4 | r ≤ 64 (an L row is one zmm), 64 | k and 16 | w."""
    return VBMI and h == LANES and r % 4 == 0 and r <= 64 and k % 64 == 0 and w % PANEL == 0


_permutable = njit(nogil=True, cache=True, inline="always")(permutable)


def _make_permuted_block(cq: int):
    """Intrinsic ``blk(x, x_off, ldx, lt, lt_off, p8, q8, c0, out, out_off, rs, rs_off, bad)``:
    one block of 16 rows × 64 k-columns of x' = x + E, packed as 16 k-quads.

    Row i of the block (i < 16) is the 16 words x[x_off + i·ldx …] (64 int8 entries); its
    noise is E[i, c0 + t] = L_i[p8[c0 + t]] − L_i[q8[c0 + t]], two byte permutes of its L
    row lt[lt_off + 64·i …] (r ≤ 64 bytes). The rows are transposed in registers and
    quad j of all 16 lanes stored at out[out_off + 16·j …]. With ``cq`` (k-quads per
    r-chunk, a power of two ≤ 16) the block's 16/cq chunks' lane sums go to
    rs[rs_off + 16·g + i] = 128·Σ x'[i, chunk g]; with cq = 0 (B') nothing is summed
    and the quads are stored XOR 0x80 (the +128 shift). bad[0:16] |= 0x80 per byte of x
    outside the int7 range, as in :func:`_transpose_words16`.
    """

    @intrinsic
    def blk(tctx, x, x_off, ldx, lt, lt_off, p8, q8, c0, out, out_off, rs, rs_off, bad):
        ip = types.intp
        sig = types.void(x, ip, ip, lt, ip, p8, q8, ip, out, ip, rs, ip, bad)

        def codegen(context, builder, signature, args):
            _, x_off, ldx, _, lt_off, _, _, c0, _, out_off, _, rs_off, _ = args

            data = array_data(context, builder, signature, args)

            def at(base: ir.Value, off: ir.Value, to: ir.Type) -> ir.Value:
                return builder.bitcast(builder.gep(base, [off]), to.as_pointer())

            def n(v: int) -> ir.Constant:
                return ir.Constant(ip_type, v)

            ip_type = x_off.type
            x_p, lt_p, out_p, bad_p = data(0), data(3), data(8), data(12)
            permute = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_V64I8, [_V64I8, _V64I8]), _VPERMB
            )
            # numpy buffers are only element-aligned (proof rows: not even that).
            pv = builder.load(at(data(5), c0, _V64I8), align=1)
            qv = builder.load(at(data(6), c0, _V64I8), align=1)
            rows, flagged = [], None
            for i in range(16):
                word = builder.load(
                    at(x_p, builder.add(x_off, builder.mul(ldx, n(i))), V16I32), align=1
                )
                moved = _int7_flags(builder, word)
                flagged = moved if flagged is None else builder.or_(flagged, moved)
                ln = builder.load(at(lt_p, builder.add(lt_off, n(64 * i)), _V64I8), align=1)
                e = builder.sub(builder.call(permute, [ln, pv]), builder.call(permute, [ln, qv]))
                rows.append(builder.bitcast(builder.add(builder.bitcast(word, _V64I8), e), V16I32))
            quads = transposed16(builder, rows)
            if cq:
                dot = cgutils.get_or_insert_function(
                    builder.module, ir.FunctionType(V16I32, [V16I32, _V64I8, _V64I8]), _VPDPBUSD
                )
                ones = ir.Constant(_V64I8, [1] * 64)
                rs_p = data(10)
                ways = min(SUM_WAYS, cq)
                for g in range(16 // cq):
                    sums = [const16(0)] * ways
                    for j in range(cq):
                        t = builder.bitcast(quads[g * cq + j], _V64I8)
                        sums[j % ways] = builder.call(dot, [sums[j % ways], ones, t])
                    total = sums[0]
                    for more in sums[1:]:
                        total = builder.add(total, more)
                    shifted = builder.shl(total, const16(7))
                    builder.store(
                        shifted, at(rs_p, builder.add(rs_off, n(16 * g)), V16I32), align=4
                    )
            for j, quad in enumerate(quads):
                word = quad if cq else builder.xor(quad, const16(0x80808080))  # B': +128
                builder.store(word, at(out_p, builder.add(out_off, n(16 * j)), V16I32), align=4)
            _flag_bad(builder, bad_p, flagged)
            return context.get_dummy_value()

        return sig, codegen

    return blk


_pb16, _pb8, _pb4, _pb2, _pb1, _pb_flipped = (
    _make_permuted_block(cq) for cq in (16, 8, 4, 2, 1, 0)
)


@njit(nogil=True, cache=True, inline="always")
def _permuted_block(cq, x, x_off, ldx, lt, lt_off, p8, q8, c0, out, out_off, rs, rs_off, bad):
    """The block intrinsic for ``cq`` k-quads per chunk (0: B', flipped, no sums)."""
    if cq == 16:  # intrinsics: the typing context is implicit
        _pb16(x, x_off, ldx, lt, lt_off, p8, q8, c0, out, out_off, rs, rs_off, bad)
    elif cq == 8:
        _pb8(x, x_off, ldx, lt, lt_off, p8, q8, c0, out, out_off, rs, rs_off, bad)
    elif cq == 4:
        _pb4(x, x_off, ldx, lt, lt_off, p8, q8, c0, out, out_off, rs, rs_off, bad)
    elif cq == 2:
        _pb2(x, x_off, ldx, lt, lt_off, p8, q8, c0, out, out_off, rs, rs_off, bad)
    elif cq == 1:
        _pb1(x, x_off, ldx, lt, lt_off, p8, q8, c0, out, out_off, rs, rs_off, bad)
    else:
        _pb_flipped(x, x_off, ldx, lt, lt_off, p8, q8, c0, out, out_off, rs, rs_off, bad)


@njit(nogil=True, cache=True)
def _factor_rows64(l_raw: np.ndarray, r: int, rows: int) -> np.ndarray:
    """lt[64·i + s] = L[i, s] as a byte, L[i, s] = (l_raw[i·r + s] & 63) − 32 (PROTOCOL §3),
    for r ≤ 64: each row's factors are one zmm, the table of its byte permutes."""
    lt = np.zeros(64 * rows, dtype=np.uint8)
    for i in range(rows):
        for s in range(r):
            lt[64 * i + s] = np.uint8((l_raw[i * r + s] & 63) - 32)
    return lt


@njit(nogil=True, cache=True)
def _pack_permuted(
    x: np.ndarray,
    row0: int,
    lt: np.ndarray,
    p8: np.ndarray,
    q8: np.ndarray,
    cq: int,
    out: np.ndarray,
    rs: np.ndarray,
    bad: np.ndarray,
) -> None:
    """:func:`_pack_noisy_quads` for 16 rows of x from row0 and 64 | k by byte permutes
    (:func:`_make_permuted_block`): ``lt`` holds the rows' L (:func:`_factor_rows64`),
    ``p8``/``q8`` the permutation as bytes; cq = 0 packs B' (flipped, no sums)."""
    ldx = x.shape[1]
    x_flat = x.reshape(-1)
    out_flat = out.reshape(-1)
    rs_flat = rs.reshape(-1)
    step = max(cq, 1)
    for q0 in range(0, out.shape[0], LANES):
        _permuted_block(
            cq,
            x_flat,
            row0 * ldx + q0,
            ldx,
            lt,
            64 * row0,
            p8,
            q8,
            4 * q0,
            out_flat,
            LANES * q0,
            rs_flat,
            LANES * (q0 // step),
            bad,
        )


@njit(nogil=True, cache=True)
def _noisy_tile_tail(ap, bp, rs, bad, T) -> bool:
    """The tile's product and transcript from the packed A' and B' (False if ``bad``)."""
    if bad.any():
        return False
    acc = np.zeros((ap.shape[1], bp.shape[0] * PANEL), dtype=np.int32)
    xs = np.empty((rs.shape[0], 1, LANES), dtype=np.int32)
    _tile_packed(ap, bp, rs, acc, T, True, xs)
    return True


@njit(nogil=True, cache=True)
def noisy_tile_transcript_permuted(
    a_rows: np.ndarray,
    b_cols: np.ndarray,
    la_raw: np.ndarray,
    perm_a_raw: np.ndarray,
    lb_raw: np.ndarray,
    perm_b_raw: np.ndarray,
    r: int,
    T: np.ndarray,
) -> bool:
    """:func:`noisy_tile_transcript` for the tiles :func:`permutable` admits: the noise of
    each row is added 64 k-columns at a time by two byte permutes of its L row, then the
    rows transposed in registers."""
    h, k = a_rows.shape
    w = b_cols.shape[0]
    check_chunks(k, r)
    if not _permutable(h, r, k, w):
        raise ValueError("the permuted verifier packs 16 rows, 4 | r ≤ 64, 64 | k, 16 | w")
    nq = k // 4
    pa, qa = permutation_bytes(perm_a_raw, r)
    pb, qb = permutation_bytes(perm_b_raw, r)
    bad = np.zeros(LANES, dtype=np.uint32)
    ap = np.empty((nq, h, 4), dtype=np.int8)
    rs = np.empty((k // r, h), dtype=np.int32)
    lt_a = _factor_rows64(la_raw, r, h)
    _pack_permuted(
        a_rows.view(np.uint32), 0, lt_a, pa, qa, r // 4, ap.view(np.uint32).reshape(nq, h), rs, bad
    )
    bp = np.empty((w // PANEL, nq, 4 * PANEL), dtype=np.uint8)
    lt_b = _factor_rows64(lb_raw, r, w)
    b32 = b_cols.view(np.uint32)
    for panel in range(w // PANEL):
        out = bp[panel].view(np.uint32).reshape(nq, PANEL)
        _pack_permuted(b32, panel * PANEL, lt_b, pb, qb, 0, out, rs, bad)
    return _noisy_tile_tail(ap, bp, rs, bad, T)


@njit(nogil=True, cache=True)
def noisy_tile_transcript_seeded(
    a_rows: np.ndarray,
    b_cols: np.ndarray,
    seeds: np.ndarray,
    ti: int,
    tj: int,
    r: int,
    T: np.ndarray,
) -> bool:
    """:func:`noisy_tile_transcript_permuted` that reads the tile's noise streams itself:
    ``seeds`` holds seed_A's 8 little-endian words, then seed_B's. The two permutation
    streams (4·k bytes each) and the tile's rows of L_A and L_B (h·r and w·r bytes, at
    offsets ti·h·r and tj·w·r: whole 64-byte blocks, since 16 | h, w and 4 | r) are
    BLAKE3 XOF output blocks computed 16 at a time (:func:`keyed_xof`), not four
    library calls from Python. A tile :func:`permutable` refuses raises ValueError there."""
    h, k = a_rows.shape
    w = b_cols.shape[0]
    perm_a = keyed_xof(seeds, 0, PERM_BLOCK, PERM_LEN, 0, 4 * k)
    perm_b = keyed_xof(seeds, 8, PERM_BLOCK, PERM_LEN, 0, 4 * k)
    la = keyed_xof(seeds, 0, L_BLOCK, L_LEN, ti * h * r // 64, h * r)
    lb = keyed_xof(seeds, 8, L_BLOCK, L_LEN, tj * w * r // 64, w * r)
    return noisy_tile_transcript_permuted(a_rows, b_cols, la, perm_a, lb, perm_b, r, T)


@njit(nogil=True, cache=True)
def noisy_tile_transcript(
    a_rows: np.ndarray,
    b_cols: np.ndarray,
    la_raw: np.ndarray,
    perm_a_raw: np.ndarray,
    lb_raw: np.ndarray,
    perm_b_raw: np.ndarray,
    r: int,
    T: np.ndarray,
) -> bool:
    """T ← the transcript of the tile A'·B'ᵀ, A' = a_rows + E_A (16×k), B'ᵀ = b_cols + E_Bᵀ,
    from the raw XOF bytes of their noise (L rows and permutation streams, PROTOCOL §3):
    the verifier's whole tile in one call (16 rows, 4 | r). False, with T untouched,
    if an operand entry lies outside the int7 range.

    A' and B' are packed straight from the clean rows and the noise (:func:`_noisy_words16`),
    never built as strips.
    """
    h, k = a_rows.shape
    w = b_cols.shape[0]
    check_chunks(k, r)
    if h != LANES or r % 4:
        raise ValueError("the one-call verifier packs 16 rows of A and 4 | r")
    nq = k // 4
    wp = padded_width(w)
    pa, qa = permutation_from_stream(perm_a_raw, r)
    pb, qb = permutation_from_stream(perm_b_raw, r)
    ap = np.empty((nq, h, 4), dtype=np.int8)
    rs = np.empty((k // r, h), dtype=np.int32)
    a32 = a_rows.view(np.uint32)
    tab_a = _factor_lanes(la_raw, r, h, LANES)
    bad = np.zeros(LANES, dtype=np.uint32)
    apw = ap.view(np.uint32).reshape(nq, h)
    _pack_noisy_quads(a32, 0, tab_a, pa, qa, r, apw, np.uint32(0), rs, bad)
    bp = np.empty((wp // PANEL, nq, 4 * PANEL), dtype=np.uint8)
    b32 = b_cols.view(np.uint32)
    tab_b = _factor_lanes(lb_raw, r, w, wp)
    rs_b = np.empty((k // r, LANES), dtype=np.int32)  # B' needs no shift sums
    for panel in range(wp // PANEL):
        out = bp[panel].view(np.uint32).reshape(nq, PANEL)
        flip = np.uint32(0x80808080)
        _pack_noisy_quads(b32, panel * PANEL, tab_b, pb, qb, r, out, flip, rs_b, bad)
    return _noisy_tile_tail(ap, bp, rs, bad, T)


@njit(nogil=True, cache=True)
def _int7(x: np.ndarray) -> bool:
    """Every entry in [-64, 63]: bit 7 of (entry + 64) as a byte is clear."""
    flat = x.reshape(-1).view(np.uint8)
    out = np.uint8(0)
    for v in flat:
        out |= int7_excess(v)
    return not (out & np.uint8(0x80))
