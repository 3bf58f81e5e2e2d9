"""What every CPU tile kernel shares (generic, AVX-512 VNNI, AMX): the fold, the panel
width, the shape check, the block copy, and the 64-byte aligned output with the fence
that ends its non-temporal stores (PROTOCOL §4).

Each kernel module imports these from here, and ``kernels.transcript_cpu``
chooses among the kernel modules: so the imports run one way.
"""

from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.irvec import I32, V16I32, array_data, lane_xors16, rotr16, splat16
from kernels.params import TRANSCRIPT_ROTATION, TRANSCRIPT_WORDS

_MASK32 = np.uint64(0xFFFFFFFF)
_ROT_L = np.uint64(TRANSCRIPT_ROTATION)
_ROT_R = np.uint64(32 - TRANSCRIPT_ROTATION)

PANEL = 16
"""Columns per packed B' panel (= microkernel width: two 8×int32 registers)."""


def aligned_int32(rows: int, cols: int) -> np.ndarray:
    """An uninitialised rows×cols int32 array whose data start on a 64-byte boundary: with
    16 | cols every row is whole 64-byte lines, which non-temporal stores (faulting on an
    unaligned address) may write."""
    raw = np.empty(rows * cols + 16, dtype=np.int32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip : skip + rows * cols].reshape(rows, cols)


_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


@intrinsic
def store_fence(tctx):
    """The fence that ends a task's non-temporal stores: they reach every core before any
    store after it (the task's end, which the thread joining the tasks then reads).

    ``sfence`` on x86. A sequentially consistent fence is not enough there: LLVM lowers it
    to a locked ``or``, and the x86 manuals promise the ordering of non-temporal stores
    only to ``sfence`` and ``mfence`` (Linux keeps them for that). Elsewhere that fence
    (``dmb ish`` on 64-bit ARM) orders them."""

    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse.sfence"
            )
            builder.call(fn, [])
        else:
            builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@njit(nogil=True, cache=True)
def padded_width(w: int) -> int:
    return (w + PANEL - 1) // PANEL * PANEL


@njit(nogil=True, cache=True, inline="always")
def check_chunks(k: int, r: int) -> None:
    # The microkernel reads raw pointers in k-pairs: refuse shapes it would misread.
    if r < 2 or r % 2 or k % r:
        raise ValueError("k must be a multiple of the chunk width r, an even number")


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
def copy_block(src: np.ndarray, dst: np.ndarray, i0: int, j0: int, rows: int, cols: int) -> None:
    """dst[i0:i0+rows, j0:j0+cols] = src[:rows, :cols] (loops: slice assignment compiles slowly)."""
    for i in range(rows):
        for j in range(cols):
            dst[i0 + i, j0 + j] = src[i, j]


@intrinsic
def fold_chunks16(tctx, xs, nchunks, T):
    """:func:`fold_tile` of xs[c, 0, :] (16 int32 lanes: the tile's partial sums XORed
    lane-wise) for every chunk c < nchunks, in order — the fold of the kernels whose
    blocks are 16 lanes wide (VNNI, AMX).

    Sixteen chunks at a time: their 16 lane-XORs in one vector (:func:`lane_xors16`),
    and the 16 words of T rotated and updated at once, the words a last, partial group
    does not reach kept; a chunk at a time is ~30 scalar steps, and 32 of those per
    16×16 tile were ~2 % of an attempt.
    """
    sig = types.void(xs, types.intp, T)

    def codegen(context, builder, signature, args):
        _, nchunks, _ = args
        data = array_data(context, builder, signature, args)
        xs_p, t_ptr = data(0), builder.bitcast(data(2), V16I32.as_pointer())
        sixteen = ir.Constant(nchunks.type, 16)
        last = builder.sub(nchunks, ir.Constant(nchunks.type, 1))
        groups = builder.udiv(builder.add(nchunks, ir.Constant(nchunks.type, 15)), sixteen)
        lane_ids = ir.Constant(V16I32, list(range(16)))
        t_var = cgutils.alloca_once_value(builder, builder.load(t_ptr, align=4))
        with cgutils.for_range(builder, groups) as loop:
            base = builder.mul(loop.index, sixteen)
            rows = []
            for i in range(16):  # rows past the last chunk repeat it: masked off below
                c = builder.add(base, ir.Constant(base.type, i))
                c = builder.select(builder.icmp_signed("<", c, nchunks), c, last)
                at = builder.gep(xs_p, [builder.mul(c, sixteen)])
                rows.append(builder.load(builder.bitcast(at, V16I32.as_pointer()), align=4))
            t = builder.load(t_var)
            folded = builder.xor(
                rotr16(builder, t, 32 - TRANSCRIPT_ROTATION), lane_xors16(builder, rows)
            )
            left = builder.trunc(builder.sub(nchunks, base), I32)  # words this group updates
            live = builder.icmp_signed("<", lane_ids, splat16(builder, left))
            builder.store(builder.select(live, folded, t), t_var)
        builder.store(builder.load(t_var), t_ptr, align=4)
        return context.get_dummy_value()

    return sig, codegen
