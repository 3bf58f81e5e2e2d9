"""The AMX-INT8 path of the CPU transcript kernels (``tdpbssd`` on tile registers).

Run once on real hardware: on 2026-12-04, the Xeon (Emerald Rapids, 16 CPUs) of a
lent GPU machine passed the CPU kernel tests on this path, bit for bit with the
reference and the other paths. There its plain product was the fastest (3.5 ms at
2048³ against VNNI's 4.2) but its mining attempt the slowest of the two int8 paths
(5.7 ms against 4.9: the fold stores every C tile to memory at each chunk end;
docs/benchmarks.md), so it is not the default: a host with AMX runs the VNNI path
unless this one is chosen (``select_path("amx_int8")``, ``pouw bench kernels --isa
amx_int8``). The machines this was written on have no AMX: here it is compiled and
its assembly checked (tests/kernels/test_codegen_targets.py).

One ``tdpbssd`` multiplies a 16×64 int8 tile of A' by a 16×(16·4) tile of B'
(k-quads × columns, the layout of the VNNI packing but signed: no +128 shift)
into a 16×16 int32 tile of C': 16,384 MACs. A' is loaded straight from its
rows (stride k); B' is packed per 16-column panel. At every r-chunk end
(r a multiple of 64) the C tile is stored to a 1 KiB scratch and its rows
XORed into the chunk's fold, as the other paths do with their registers.

Linux gives a process AMX state only after ``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``; :func:`amx_usable` asks once and answers False when the
compile target lacks AMX-INT8, the OS refuses, or it is not Linux on x86-64.
"""

from __future__ import annotations

import ctypes
import functools
import platform

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.isa import compile_target
from kernels.params import TRANSCRIPT_WORDS
from kernels.threads import exclusive
from kernels.tiles import PANEL, check_chunks, copy_block, fold_chunks16, padded_width

TILE_K = 64
"""k per tdpbssd: one 64-byte row of the A tile; r must be a multiple."""
LANES = 16

SYS_ARCH_PRCTL = 158  # x86-64
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_V16I32 = ir.VectorType(_I32, 16)
_VOID = ir.VoidType()
_P8 = _I8.as_pointer()


@functools.cache
def amx_usable() -> bool:
    """True if the compile target has AMX-INT8 and the OS lets this process use tiles."""
    if not {"amx-int8", "amx-tile"} <= compile_target().features:
        return False
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return request_amx_permission()


def request_amx_permission() -> bool:
    """Ask Linux for the AMX tile state (arch_prctl); False when it refuses or cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ret = libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
    except (OSError, AttributeError):
        return False
    return bool(ret == 0)


@intrinsic
def _amx_block(
    tctx, cfg, acc, acc_off, ldc, a, a_off, lda, bp, b_off, scratch, nchunks, steps, rows, xs, fold
):
    """acc[rows×16 at acc_off, row stride ldc] += A'·B' over ``nchunks`` chunks of ``steps``
    64-wide k-steps, XORing the C tile's rows into xs[c, 0, :] after chunk c if ``fold``.

    A' rows start at a[a_off] with stride lda bytes; B' quads at bp[b_off], 64 bytes
    each, 16 per k-step. ``cfg`` is the 64-byte tile configuration for ``rows``.
    """
    ip = types.intp
    sig = types.void(cfg, acc, ip, ip, a, ip, ip, bp, ip, scratch, ip, ip, ip, xs, types.boolean)

    def codegen(context, builder, signature, args):
        acc_off, ldc, a_off, lda, b_off, nchunks, steps, rows, fold = (
            args[i] for i in (2, 3, 5, 6, 8, 10, 11, 12, 14)
        )

        def data(n: int, *offsets: ir.Value) -> ir.Value:
            p = context.make_array(signature.args[n])(context, builder, args[n]).data
            for off in offsets:
                p = builder.gep(p, [off])
            return builder.bitcast(p, _P8)

        def fn(name: str, *argtypes: ir.Type) -> ir.Function:
            return cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_VOID, list(argtypes)), name
            )

        def c(v: int) -> ir.Constant:
            return ir.Constant(ldc.type, v)

        ldtilecfg = fn("llvm.x86.ldtilecfg", _P8)
        tileload = fn("llvm.x86.tileloadd64", _I8, _P8, _I64)
        tilestore = fn("llvm.x86.tilestored64", _I8, _P8, _I64)
        tdpbssd = fn("llvm.x86.tdpbssd", _I8, _I8, _I8)
        tilerelease = fn("llvm.x86.tilerelease")

        c_ptr = data(1, acc_off)
        c_stride = builder.mul(ldc, c(4))
        a_base = data(4, a_off)
        b_base = data(7, b_off)
        scratch_p = data(9)
        xs_p = builder.bitcast(data(13), _V16I32.as_pointer())
        builder.call(ldtilecfg, [data(0)])
        builder.call(tileload, [_I8(0), c_ptr, c_stride])
        with cgutils.for_range(builder, nchunks) as chunk:
            s0 = builder.mul(chunk.index, steps)
            with cgutils.for_range(builder, steps) as step:
                s = builder.add(s0, step.index)
                a_tile = builder.gep(a_base, [builder.mul(s, c(TILE_K))])
                b_tile = builder.gep(b_base, [builder.mul(s, c(TILE_K // 4 * 4 * PANEL))])
                builder.call(tileload, [_I8(1), a_tile, lda])
                builder.call(tileload, [_I8(2), b_tile, _I64(4 * PANEL)])
                builder.call(tdpbssd, [_I8(0), _I8(1), _I8(2)])
            with builder.if_then(fold):  # chunk end: XOR the C tile's rows into xs[c]
                builder.call(tilestore, [_I8(0), scratch_p, _I64(4 * PANEL)])
                x_ptr = builder.gep(xs_p, [chunk.index])
                x_var = cgutils.alloca_once_value(builder, builder.load(x_ptr, align=4))
                rows_p = builder.bitcast(scratch_p, _V16I32.as_pointer())
                with cgutils.for_range(builder, rows) as row:
                    v = builder.load(builder.gep(rows_p, [row.index]), align=4)
                    builder.store(builder.xor(builder.load(x_var), v), x_var)
                builder.store(builder.load(x_var), x_ptr, align=4)
        builder.call(tilestore, [_I8(0), c_ptr, c_stride])
        builder.call(tilerelease, [])
        return context.get_dummy_value()

    return sig, codegen


@njit(nogil=True, cache=True)
def _tile_config(rows: int) -> np.ndarray:
    """Palette 1: tmm0 C (rows × 64 B), tmm1 A' (rows × 64 B), tmm2 B' (16 × 64 B)."""
    cfg = np.zeros(64, dtype=np.uint8)
    cfg[0] = 1
    for t, t_rows in ((0, rows), (1, rows), (2, TILE_K // 4)):
        cfg[16 + 2 * t] = 4 * PANEL  # bytes per row (u16, little-endian)
        cfg[48 + t] = t_rows
    return cfg


@njit(nogil=True, cache=True)
def _pack_b_strip(bt_strip: np.ndarray, bp: np.ndarray) -> None:
    """bp (wp/16, k/4, 64) int8 ← B'ᵀ strip (w×k): bp[q, p, 4j + e] = B'ᵀ[16q + j, 4p + e]."""
    w, k = bt_strip.shape
    if w % PANEL:
        bp.fill(0)
    for q in range(bp.shape[0]):
        for jj in range(min(PANEL, w - q * PANEL)):
            row = bt_strip[q * PANEL + jj]
            for p in range(k // 4):
                for e in range(4):
                    bp[q, p, 4 * jj + e] = row[4 * p + e]


@njit(nogil=True, cache=True)
def _tile_packed(
    a: np.ndarray,
    row0: int,
    bp: np.ndarray,
    r: int,
    acc: np.ndarray,
    T: np.ndarray,
    fold: bool,
    xs: np.ndarray,
) -> None:
    """acc (h×wp int32) += rows row0 … row0 + h − 1 of A' (m×k) · panels bp, folding T."""
    h, wp = acc.shape
    k = a.shape[1]
    nchunks = k // r if fold else 1
    steps = k // TILE_K // nchunks
    scratch = np.empty((PANEL, PANEL), dtype=np.int32)
    xs[:nchunks] = 0
    for q in range(wp // PANEL):
        i = 0
        while i < h:
            rows = min(PANEL, h - i)
            cfg = _tile_config(rows)
            _amx_block(  # type: ignore[call-arg]  # an intrinsic: typing context is implicit
                cfg,
                acc,
                i * wp + q * PANEL,
                wp,
                a,
                (row0 + i) * k,
                k,
                bp,
                q * (k // 4) * 4 * PANEL,
                scratch,
                nchunks,
                steps,
                rows,
                xs,
                fold,
            )
            i += rows
    if fold:
        fold_chunks16(xs, nchunks, T)  # type: ignore[call-arg]  # an intrinsic


@njit(nogil=True, cache=True)
def tile_product(
    a_strip: np.ndarray, bt_strip: np.ndarray, r: int, acc: np.ndarray, T: np.ndarray, fold: bool
) -> None:
    """acc (h×w int32) += a_strip (h×k) · bt_stripᵀ, folding into T after every r-chunk."""
    h, k = a_strip.shape
    check_chunks(k, r)
    w = bt_strip.shape[0]
    wp = padded_width(w)
    bp = np.empty((wp // PANEL, k // 4, 4 * PANEL), dtype=np.int8)
    _pack_b_strip(bt_strip, bp)
    acc_p = np.zeros((h, wp), dtype=np.int32)
    copy_block(acc, acc_p, 0, 0, h, w)
    xs = np.empty((k // r, 1, LANES), dtype=np.int32)
    _tile_packed(np.ascontiguousarray(a_strip), 0, bp, r, acc_p, T, fold, xs)
    copy_block(acc_p, acc, 0, 0, h, w)


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def tiled_product(
    a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int, fold: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(C' m×n int32, T (m/h, n/w, 16)) over every tile in parallel (r a multiple of 64)."""
    m, k = a.shape
    check_chunks(k, r)
    n = bt.shape[0]
    tm, tn = m // h, n // w
    wp = padded_width(w)
    bp = np.empty((tn, wp // PANEL, k // 4, 4 * PANEL), dtype=np.int8)
    for tj in prange(tn):
        _pack_b_strip(bt[tj * w : (tj + 1) * w], bp[tj])
    out = np.empty((m, n), dtype=np.int32)
    T = np.zeros((tm, tn, TRANSCRIPT_WORDS), dtype=np.uint32)
    for t in prange(tm * tn):
        ti = t // tn
        tj = t % tn
        acc = np.zeros((h, wp), dtype=np.int32)
        xs = np.empty((k // r, 1, LANES), dtype=np.int32)
        _tile_packed(a, ti * h, bp[tj], r, acc, T[ti, tj], fold, xs)
        copy_block(acc, out, ti * h, tj * w, h, w)
    return out, T
