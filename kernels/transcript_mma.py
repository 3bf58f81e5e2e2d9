"""The CUDA tensor-core kernel of the noisy product and its tile transcripts (PROTOCOL §4).

Bit-exact twin of the dp4a kernel in :mod:`kernels.transcript_cuda`, which picks
this one where the parameters allow it (``supported``: h a multiple of 16, w of 8,
r of 32, the hash tile inside a warp's tile).

Kernel design
-------------
* The product runs on the int8 tensor cores through inline PTX:
  ``mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32`` multiplies a 16×32 tile
  of A' by a 32×8 tile of B' into a 16×8 int32 tile, exactly (int32 accumulate).
  It works on every GPU since Ampere (sm_80); Hopper runs it too.
* A thread block of ``WARPS_M × WARPS_N`` warps computes a
  ``(WARPS_M·WM) × (WARPS_N·WN)`` block of C'. Each warp owns a WM × WN tile:
  (WM/16)·(WN/8) accumulator fragments of four int32 registers per lane.
* k is walked in stages of KT = gcd(r, 64) bytes. The int8 operands are viewed
  as int32 words (4 consecutive k per word), so every fragment register of the
  m16n8k32 layout is one 32-bit word: lane (g = lane/4, t = lane%4) takes words
  ``t`` and ``4 + t`` of the 8-word k-slice from rows g and g + 8 of A' and from
  column g of B'. Stages are double-buffered in shared memory, rows padded to
  KW + 4 words so that the 32 lanes of one fragment load hit 32 different
  banks; the next stage's global words are loaded into registers while the
  tensor cores work on this one.
* After every r bytes of k (r/KT stages) the transcripts are folded from the
  accumulator fragments, in registers: each lane XORs, per hash tile of its
  warp's tile, the fragment registers that lie in that tile; a hash tile of
  whole fragments spans all 32 lanes, so the warp XOR-reduces its NH hash
  tiles' values together with a reduce-scatter butterfly of ``shfl.sync.bfly``
  (NH − 1 shuffles in log2 NH halving steps, then 5 − log2 NH plain ones: 6
  for the 4 hash tiles of a 32×32 warp tile instead of 5 per tile), after
  which lane ``i·32/NH`` holds hash tile i's XOR and updates
  ``T[c % 16] = rotl32(T[c % 16], 13) ^ x`` in shared memory.

* Built variants, not yet run on a GPU: stage buffers filled by ``cp.async``
  (global to shared memory without registers) with N − 1 stages in flight
  (``pipeline`` N), in static shared memory where the buffers fit its 48 KiB, else in
  dynamic shared memory, which a block may have up to 227 KiB of on sm_90 once the
  kernel is allowed it (:data:`CANDIDATES`, :func:`launcher`); ``pouw bench gpu``
  times each beside the launches' kernel, which stays the register-staged one until
  one is measured faster.

Partial sums stay below 2^31 for k ≤ MAX_K, as in the dp4a kernel.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) there are neither tensor
cores nor shuffles: the mma is a pure-Python stand-in that reads the whole
warp's fragment registers through shared memory *in the m16n8k32 layout*, so a
kernel that loaded a fragment wrongly computes a wrong product there too, and
the shuffles go through shared memory. Every other line is the kernel's own.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, no_type_check

import numpy as np
from numba import cuda

from kernels.cuda_common import FULL_MASK, KT_MAX, SIM, fold_word
from kernels.params import TRANSCRIPT_WORDS


class Shape:
    """A block configuration: warps of the block and each warp's tile of C'."""

    def __init__(self, warps_m: int, warps_n: int, wm: int, wn: int) -> None:
        if wm % 16 or wn % 8:
            raise ValueError(f"a warp tile is whole m16n8 fragments, got {wm}×{wn}")
        self.warps_m, self.warps_n, self.wm, self.wn = warps_m, warps_n, wm, wn

    @property
    def threads(self) -> int:
        return 32 * self.warps_m * self.warps_n

    @property
    def bm(self) -> int:
        return self.warps_m * self.wm

    @property
    def bn(self) -> int:
        return self.warps_n * self.wn

    def key(self) -> tuple[int, int, int, int]:
        return (self.warps_m, self.warps_n, self.wm, self.wn)

    def __repr__(self) -> str:
        return f"Shape({self.warps_m}x{self.warps_n} warps of {self.wm}x{self.wn})"


BLOCK = Shape(4, 4, 32, 32)
"""The kernel's blocks: 128×128 of C', 16 warps of 32×32, 32 accumulators a lane (128
registers on sm_90, no spill: one block of 512 threads fills an SM's register file).
Measured on an H200 at 8192³ (docs/benchmarks.md), with the fold: 167 TOPS, against
146 for 8 warps of 64×32 (234 registers), 132 for 8 warps of 32×32 held to 128
registers, and 122–128 for the shapes that spilled (warps of 64×32 in blocks of 4 or
8 × 2 warps, at 255 registers)."""


CANDIDATES = (
    (Shape(4, 2, 32, 32), 3),
    (Shape(4, 4, 32, 32), 3),
    (Shape(4, 4, 32, 32), 4),
)
"""The cp.async candidates ``pouw bench gpu`` times beside :data:`BLOCK`, as (shape,
stage buffers); none has run on a GPU yet, and the miner's launches use BLOCK.

* 8 warps of 32×32 (a 128×64 block), 3 buffers: 48,128 bytes of static shared memory
  with the transcripts; 122 registers by ptxas for sm_90, no spill, so two blocks fit
  an SM and one block's barrier leaves the other working.
* BLOCK's own 128×128 block of 16 warps with 3 and 4 buffers: 60 and 80 KiB of stages,
  in dynamic shared memory (:func:`dynamic_shared_bytes`), one block an SM as BLOCK."""

STATIC_SHARED_MAX = 48 * 1024
"""The shared memory a block may declare statically (every CUDA GPU)."""
SM90_SHARED_MAX = 227 * 1024
"""The most shared memory a block may have on sm_90 (H100, H200) once its kernel is
allowed more than :data:`STATIC_SHARED_MAX`
(``CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES``): what the checks made without a
GPU hold the candidates to; :func:`launcher` asks the device it runs on."""


def _row_words(kt: int) -> int:
    """Int32 words of a stage buffer's row for k-stages of ``kt`` bytes: the stage's words
    plus 4 of padding, so that the 32 lanes of one fragment load hit 32 different banks."""
    return kt // 4 + 4


def dynamic_shared_bytes(shape: Shape, h: int, w: int, r: int, pipeline: int) -> int:
    """The bytes of dynamic shared memory a launch of the kernel needs: its stage
    buffers where, with the transcripts, they would not fit :data:`STATIC_SHARED_MAX`
    (pipelined kernels only), else 0."""
    if not pipeline:
        return 0
    hash_tiles = shape.warps_m * shape.warps_n * (shape.wm // h) * (shape.wn // w)
    stages_ = stage_bytes(shape, r, pipeline)
    return stages_ if stages_ + hash_tiles * TRANSCRIPT_WORDS * 4 > STATIC_SHARED_MAX else 0


def stage_bytes(shape: Shape, r: int, buffers: int) -> int:
    """The bytes of ``buffers`` stage buffers of A' and B' for blocks ``shape``."""
    return buffers * (shape.bm + shape.bn) * _row_words(stages(r)[0]) * 4


def supported(r: int, h: int, w: int, s: Shape = BLOCK) -> str | None:
    """None if the tensor-core kernel with blocks ``s`` computes (r, h, w), else why not."""
    if r <= 0 or r % 32:
        return f"r={r} is not a positive multiple of 32 (one m16n8k32 k-step)"
    if h <= 0 or h % 16 or s.wm % h:
        return f"h={h} is not a multiple of 16 dividing the warp tile's {s.wm} rows"
    if w <= 0 or w % 8 or s.wn % w:
        return f"w={w} is not a multiple of 8 dividing the warp tile's {s.wn} columns"
    return None


# ------------------------------------------------------------------ the mma itself

if not SIM:
    from llvmlite import ir
    from numba import types as _nbtypes
    from numba.core import cgutils
    from numba.cuda.extending import intrinsic

    @intrinsic
    def _mma_ptx(
        typingctx: Any,
        a0: Any,
        a1: Any,
        a2: Any,
        a3: Any,
        b0: Any,
        b1: Any,
        c0: Any,
        c1: Any,
        c2: Any,
        c3: Any,
    ) -> Any:
        """``mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32``: (d0..d3) = A·B + (c0..c3)."""
        args = (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)
        if not all(isinstance(t, _nbtypes.Integer) for t in args):
            return None
        i32 = _nbtypes.int32
        sig = _nbtypes.UniTuple(i32, 4)(*([i32] * 10))

        def codegen(context: Any, builder: Any, signature: Any, llargs: Any) -> Any:
            i32_ll = ir.IntType(32)
            ret = ir.LiteralStructType([i32_ll] * 4)
            fnty = ir.FunctionType(ret, [i32_ll] * 10)
            asm = ir.InlineAsm(
                fnty,
                "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
                "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};",
                "=r,=r,=r,=r,r,r,r,r,r,r,r,r,r,r",
            )
            res = builder.call(asm, llargs)
            parts = [builder.extract_value(res, i) for i in range(4)]
            return context.make_tuple(builder, signature.return_type, parts)

        return sig, codegen

    def _asm_statement(text: str) -> Any:
        """An intrinsic of no operands that emits one PTX statement, kept in place: a side
        effect with a memory clobber, so no shared-memory access moves across it."""

        @intrinsic
        def statement(typingctx: Any) -> Any:
            def codegen(context: Any, builder: Any, signature: Any, llargs: Any) -> Any:
                asm = ir.InlineAsm(
                    ir.FunctionType(ir.VoidType(), []), text, "~{memory}", side_effect=True
                )
                builder.call(asm, [])
                return context.get_dummy_value()

            return _nbtypes.void(), codegen

        return statement

    @intrinsic
    def _cp_async16(
        typingctx: Any, dst: Any, d0: Any, d1: Any, d2: Any, src: Any, s0: Any, s1: Any
    ) -> Any:
        """``cp.async.cg.shared.global``: 16 bytes from ``src[s0, s1:s1 + 4]`` (global int32)
        to ``dst[d0, d1, d2:d2 + 4]`` (shared int32, 16-byte aligned there), bypassing L1
        and the registers; complete after ``cp.async.wait_group`` and a barrier."""
        if not (isinstance(dst, _nbtypes.Array) and isinstance(src, _nbtypes.Array)):
            return None
        if dst.ndim != 3 or src.ndim != 2:
            return None
        sig = _nbtypes.void(dst, d0, d1, d2, src, s0, s1)

        def codegen(context: Any, builder: Any, signature: Any, llargs: Any) -> Any:
            tys = signature.args

            def pointer(k: int, idx: tuple[int, ...]) -> Any:
                ary = context.make_array(tys[k])(context, builder, llargs[k])
                ind = [context.cast(builder, llargs[i], tys[i], _nbtypes.intp) for i in idx]
                return cgutils.get_item_pointer(context, builder, tys[k], ary, ind)

            i64 = ir.IntType(64)
            asm = ir.InlineAsm(
                ir.FunctionType(ir.VoidType(), [i64, i64]),
                "{ .reg .u64 s, g; cvta.to.shared.u64 s, $0; cvta.to.global.u64 g, $1; "
                "cp.async.cg.shared.global [s], [g], 16; }",
                "l,l,~{memory}",
                side_effect=True,
            )
            dst_ptr = builder.ptrtoint(pointer(0, (1, 2, 3)), i64)
            src_ptr = builder.ptrtoint(pointer(4, (5, 6)), i64)
            builder.call(asm, [dst_ptr, src_ptr])
            return context.get_dummy_value()

        return sig, codegen

    _cp_commit = _asm_statement("cp.async.commit_group;")

    @functools.cache
    def _cp_wait(pending: int) -> Any:
        """``cp.async.wait_group pending``: this thread's copies but the last ``pending``
        committed groups have landed."""
        return _asm_statement(f"cp.async.wait_group {pending};")

    @functools.cache
    def _dynamic_stage_buffers(a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> Any:
        """The stage buffers in the launch's dynamic shared memory: int32 arrays of
        ``a_shape`` (from byte 0, 16-byte aligned) and ``b_shape`` (right after it), with
        constant shapes and strides as a static shared array has. (``cuda.shared.array(0)``
        sliced and reshaped instead computes strides at run time, on the stack, and its
        loads lose the shared address space.)"""
        i32 = _nbtypes.int32
        a_ty, b_ty = _nbtypes.Array(i32, 3, "C"), _nbtypes.Array(i32, 3, "C")
        a_words = math.prod(a_shape)

        @intrinsic
        def stage_buffers(typingctx: Any) -> Any:
            def codegen(context: Any, builder: Any, signature: Any, llargs: Any) -> Any:
                i8p = ir.PointerType(ir.IntType(8))
                smem = cgutils.add_global_variable(
                    builder.module, ir.ArrayType(ir.IntType(32), 0), "pouw_stages", 3
                )
                smem.linkage = "external"  # .extern .shared: sized by the launch
                smem.align = 16
                base = builder.addrspacecast(smem, i8p, "generic")
                arrays = []
                for ty, shape, offset in ((a_ty, a_shape, 0), (b_ty, b_shape, 4 * a_words)):
                    ptr = builder.gep(base, [ir.Constant(ir.IntType(64), offset)])
                    strides: list[int] = []
                    step = 4
                    for extent in reversed(shape):
                        strides.insert(0, step)
                        step *= extent
                    ary = context.make_array(ty)(context, builder)
                    context.populate_array(
                        ary,
                        data=builder.bitcast(ptr, ary.data.type),
                        shape=[context.get_constant(_nbtypes.intp, e) for e in shape],
                        strides=[context.get_constant(_nbtypes.intp, e) for e in strides],
                        itemsize=context.get_constant(_nbtypes.intp, 4),
                        meminfo=None,
                    )
                    arrays.append(ary._getvalue())
                return context.make_tuple(builder, signature.return_type, arrays)

            return _nbtypes.Tuple((a_ty, b_ty))(), codegen

        return stage_buffers


def mma_reference(
    a_regs: np.ndarray, b_regs: np.ndarray, c_regs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The warp-wide m16n8k32 as the PTX ISA lays out its fragments.

    ``a_regs`` (32, 4), ``b_regs`` (32, 2), ``c_regs`` (32, 4): every lane's int32
    registers, lane = 4·g + t. Returns (D's registers (32, 4), A as 16×32 int64, B
    as 32×8 int64), so that a test can check D = A·B + C on the matrices the layout
    says were passed:

    * A: a0 holds row g, k = 4t..4t+3 (little-endian bytes); a1 row g + 8; a2 and
      a3 the same rows at k = 16 + 4t..;
    * B: b0 holds column g, k = 4t..4t+3; b1 column g, k = 16 + 4t..;
    * C and D: c0, c1 row g, columns 2t and 2t + 1; c2, c3 row g + 8.
    """
    ab = np.ascontiguousarray(a_regs, dtype="<i4").view(np.int8).reshape(8, 4, 4, 4)
    bb = np.ascontiguousarray(b_regs, dtype="<i4").view(np.int8).reshape(8, 4, 2, 4)
    a = np.empty((16, 32), np.int64)  # ab[g, t, register, byte]
    a[:8, :16] = ab[:, :, 0].reshape(8, 16)
    a[8:, :16] = ab[:, :, 1].reshape(8, 16)
    a[:8, 16:] = ab[:, :, 2].reshape(8, 16)
    a[8:, 16:] = ab[:, :, 3].reshape(8, 16)
    b = np.empty((32, 8), np.int64)
    b[:16] = bb[:, :, 0].reshape(8, 16).T
    b[16:] = bb[:, :, 1].reshape(8, 16).T
    cr = np.asarray(c_regs, dtype=np.int64).reshape(8, 4, 4)  # [g, t, register]
    c = np.concatenate([cr[:, :, 0:2].reshape(8, 8), cr[:, :, 2:4].reshape(8, 8)])
    d = (a @ b + c).reshape(2, 8, 4, 2)  # [row half, g, t, column parity]
    d_regs = d.transpose(1, 2, 0, 3).reshape(32, 4)
    # The kernels' sums never reach 2^31 (MAX_K): int32 holds them.
    return d_regs.astype(np.int32), a, b


# ------------------------------------------------------------ kernel construction


def _kernel_source(
    shape: Shape,
    h: int,
    w: int,
    kt: int,
    stages_per_chunk: int,
    fold: bool,
    pipeline: int = 0,
    dynamic: bool = False,
) -> Callable[..., None]:
    """The kernel's Python source, specialised by closure constants (numba freezes them,
    so shared shapes are static and the fragment loops unroll into registers).

    ``pipeline`` 0 (the default kernel): the next k-stage's words travel through
    registers while the tensor cores work on this one, two stage buffers. ``pipeline``
    N ≥ 3: N stage buffers filled by ``cp.async`` (16 bytes a copy, global to shared
    without registers), N − 1 stages in flight (:data:`CANDIDATES`). ``dynamic``: the
    stage buffers are the launch's dynamic shared memory, A's first
    (:func:`dynamic_shared_bytes` of it), not static arrays."""
    if pipeline and pipeline < 3:
        raise ValueError(f"a cp.async pipeline has at least 3 stages, got {pipeline}")
    if dynamic and not pipeline:
        raise ValueError("only a cp.async pipeline keeps its stages in dynamic shared memory")
    kw = kt // 4  # int32 words of k per stage
    ksteps = kw // 8  # m16n8k32 steps per stage
    stride = _row_words(kt)  # padded row of a stage: fragment loads hit 32 banks
    wm, wn, warps_n = shape.wm, shape.wn, shape.warps_n
    bm, bn, threads = shape.bm, shape.bn, shape.threads
    warps = shape.warps_m * shape.warps_n
    mt, nt = wm // 16, wn // 8  # fragments down and across a warp's tile
    tiles_n = wn // w  # hash tiles across a warp's tile
    nh = (wm // h) * tiles_n  # hash tiles in a warp's tile
    nh_bits = nh.bit_length() - 1
    assert 1 << nh_bits == nh and nh <= 32, nh
    share = 32 // nh  # lanes that end with the same hash tile's XOR
    a_loads = bm * kw // threads
    b_loads = bn * kw // threads
    assert a_loads * threads == bm * kw and b_loads * threads == bn * kw
    kq = kw // 4  # 16-byte copies per row of a stage
    a_copies, b_copies = bm * kq, bn * kq
    a_iters, b_iters = -(-a_copies // threads), -(-b_copies // threads)
    # Shared shapes must be plain constants; cp.async writes 16-byte aligned rows.
    buffers = pipeline or 2
    a_shape = (buffers, bm, stride)
    b_shape = (buffers, bn, stride)
    a_len, b_len = buffers * bm * stride, buffers * bn * stride
    align = 16 if pipeline and not SIM else None
    t_rows = warps * nh
    scratch_len = threads if SIM else 1
    frag_len = threads * 4 if SIM else 1

    if SIM:

        @no_type_check
        def mma(lane, warp, fa, fb, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
            """The warp's m16n8k32 by :func:`mma_reference`: every lane's A and B registers
            meet in shared memory, in the PTX layout; a lane's D registers are A·B at its
            C registers' places plus those (no other lane's C enters them)."""
            base = (warp * 32 + lane) * 4
            fa[base], fa[base + 1], fa[base + 2], fa[base + 3] = a0, a1, a2, a3
            fb[base], fb[base + 1] = b0, b1
            cuda.syncthreads()
            w0 = warp * 128
            a_regs = np.asarray(fa[w0 : w0 + 128]).reshape(32, 4)
            b_regs = np.asarray(fb[w0 : w0 + 128]).reshape(32, 4)[:, :2]
            d, _, _ = mma_reference(a_regs, b_regs, np.zeros((32, 4), np.int32))
            cuda.syncthreads()
            return (
                np.int32(d[lane, 0] + c0),
                np.int32(d[lane, 1] + c1),
                np.int32(d[lane, 2] + c2),
                np.int32(d[lane, 3] + c3),
            )

        @no_type_check
        def shfl_xor(x, off, tid, scratch):
            scratch[tid] = x
            cuda.syncthreads()
            y = scratch[tid ^ off]
            cuda.syncthreads()
            return np.int32(y)

        @no_type_check
        def cp_async16(dst, d0, d1, d2, src, s0, s1):
            """The copy at once (the simulator has no asynchronous copies)."""
            for e in range(4):
                dst[d0, d1, d2 + e] = src[s0, s1 + e]

        @no_type_check
        def cp_commit():
            pass

        @no_type_check
        def cp_wait():
            pass

        @no_type_check
        def stage_buffers():
            dyn = cuda.shared.array(0, dtype=np.dtype(np.int32))  # (the simulator's needs
            # an itemsize)
            return dyn[:a_len].reshape(a_shape), dyn[a_len : a_len + b_len].reshape(b_shape)

    else:

        @cuda.jit(device=True, inline=True)
        @no_type_check
        def mma(lane, warp, fa, fb, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
            return _mma_ptx(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)

        @cuda.jit(device=True, inline=True)
        @no_type_check
        def shfl_xor(x, off, tid, scratch):
            return cuda.shfl_xor_sync(FULL_MASK, x, off)

        cp_async16, cp_commit = _cp_async16, _cp_commit
        cp_wait = _cp_wait(max(pipeline - 2, 0))
        stage_buffers = _dynamic_stage_buffers(a_shape, b_shape)

    @no_type_check
    def copy_rows(dst, buf, src, first, rows, copies, iters, k0, tid):
        """cp.async one operand's k-stage at word ``k0``, its block's rows from ``first``,
        into stage buffer ``buf`` (rows past ``rows`` zero-filled)."""
        for s in range(iters):
            idx = tid + s * threads
            if idx < copies:
                r_, q = idx // kq, 4 * (idx % kq)
                if first + r_ < rows:
                    cp_async16(dst, buf, r_, q, src, first + r_, k0 + q)
                else:
                    for e in range(4):
                        dst[buf, r_, q + e] = np.int32(0)

    if not SIM:
        copy_rows = cuda.jit(device=True, inline=True)(copy_rows)

    @no_type_check
    def stage_in(a_s, b_s, a32, b32, buf, k0, tid, row0, col0, m, n):
        """The k-stage at word ``k0`` of A' and B' into stage buffer ``buf``; one commit
        group per call, left to the caller."""
        copy_rows(a_s, buf, a32, row0, m, a_copies, a_iters, k0, tid)
        copy_rows(b_s, buf, b32, col0, n, b_copies, b_iters, k0, tid)

    if not SIM:
        stage_in = cuda.jit(device=True, inline=True)(stage_in)

    @no_type_check
    def kernel(a32, b32, c_out, t_out):
        m = a32.shape[0]
        n = b32.shape[0]
        k_words = a32.shape[1]
        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        g = lane // 4
        t = lane % 4
        row0 = cuda.blockIdx.y * bm
        col0 = cuda.blockIdx.x * bn
        wrow = (warp // warps_n) * wm  # the warp's tile, within the block
        wcol = (warp % warps_n) * wn

        if dynamic:  # the launch's dynamic shared memory: A's buffers, then B's
            a_s, b_s = stage_buffers()
        else:
            a_s = cuda.shared.array(a_shape, dtype=np.int32, alignment=align)
            b_s = cuda.shared.array(b_shape, dtype=np.int32, alignment=align)
        t_s = cuda.shared.array((t_rows, TRANSCRIPT_WORDS), dtype=np.uint32)
        scratch = cuda.shared.array(scratch_len, dtype=np.int32)
        fa = cuda.shared.array(frag_len, dtype=np.int32)
        fb = cuda.shared.array(frag_len, dtype=np.int32)

        acc = cuda.local.array((mt, nt, 4), dtype=np.int32)
        af = cuda.local.array((mt, 4), dtype=np.int32)
        bf = cuda.local.array((nt, 2), dtype=np.int32)
        pa = cuda.local.array(a_loads, dtype=np.int32)
        pb = cuda.local.array(b_loads, dtype=np.int32)
        xv = cuda.local.array(nh, dtype=np.int32)
        for i in range(mt):
            for j in range(nt):
                for e in range(4):
                    acc[i, j, e] = np.int32(0)
        if fold and tid < t_rows:
            for s in range(TRANSCRIPT_WORDS):
                t_s[tid, s] = np.uint32(0)

        n_stages = k_words // kw
        if pipeline:  # stages 0 … N − 2 in flight, one commit group each
            for s0 in range(pipeline - 1):
                if s0 < n_stages:
                    stage_in(a_s, b_s, a32, b32, s0, s0 * kw, tid, row0, col0, m, n)
                cp_commit()
        else:
            # Stage 0 into buffer 0. Coalesced: consecutive threads, consecutive words.
            for s in range(a_loads):
                idx = tid + s * threads
                r_, q = idx // kw, idx % kw
                gr = row0 + r_
                pa[s] = a32[gr, q] if gr < m else np.int32(0)
            for s in range(b_loads):
                idx = tid + s * threads
                c_, q = idx // kw, idx % kw
                gc = col0 + c_
                pb[s] = b32[gc, q] if gc < n else np.int32(0)
            for s in range(a_loads):
                idx = tid + s * threads
                a_s[0, idx // kw, idx % kw] = pa[s]
            for s in range(b_loads):
                idx = tid + s * threads
                b_s[0, idx // kw, idx % kw] = pb[s]
            cuda.syncthreads()

        for stage in range(n_stages):
            if pipeline:
                cur = stage % pipeline
                # This stage's group has landed (N − 2 later ones may not have), for
                # every thread after the barrier, which also says that every warp is done
                # with the buffer the stage N − 1 ahead goes into (the previous stage's).
                cp_wait()
                cuda.syncthreads()
                ahead = stage + pipeline - 1
                if ahead < n_stages:
                    stage_in(
                        a_s, b_s, a32, b32, ahead % pipeline, ahead * kw, tid, row0, col0, m, n
                    )
                cp_commit()  # empty groups at the end keep the count of pending ones
                more = False
            else:
                cur = stage % 2
                more = stage + 1 < n_stages
            if more:  # the next stage's words travel while the tensor cores work
                k0 = (stage + 1) * kw
                for s in range(a_loads):
                    idx = tid + s * threads
                    r_, q = idx // kw, idx % kw
                    gr = row0 + r_
                    pa[s] = a32[gr, k0 + q] if gr < m else np.int32(0)
                for s in range(b_loads):
                    idx = tid + s * threads
                    c_, q = idx // kw, idx % kw
                    gc = col0 + c_
                    pb[s] = b32[gc, k0 + q] if gc < n else np.int32(0)

            for ks in range(ksteps):
                q0 = ks * 8 + t
                for i in range(mt):
                    ra = wrow + i * 16 + g
                    af[i, 0] = a_s[cur, ra, q0]
                    af[i, 1] = a_s[cur, ra + 8, q0]
                    af[i, 2] = a_s[cur, ra, q0 + 4]
                    af[i, 3] = a_s[cur, ra + 8, q0 + 4]
                for j in range(nt):
                    cb = wcol + j * 8 + g
                    bf[j, 0] = b_s[cur, cb, q0]
                    bf[j, 1] = b_s[cur, cb, q0 + 4]
                for i in range(mt):
                    for j in range(nt):
                        d0, d1, d2, d3 = mma(
                            lane,
                            warp,
                            fa,
                            fb,
                            af[i, 0],
                            af[i, 1],
                            af[i, 2],
                            af[i, 3],
                            bf[j, 0],
                            bf[j, 1],
                            acc[i, j, 0],
                            acc[i, j, 1],
                            acc[i, j, 2],
                            acc[i, j, 3],
                        )
                        acc[i, j, 0] = d0
                        acc[i, j, 1] = d1
                        acc[i, j, 2] = d2
                        acc[i, j, 3] = d3

            if more:
                nxt = 1 - cur
                for s in range(a_loads):
                    idx = tid + s * threads
                    a_s[nxt, idx // kw, idx % kw] = pa[s]
                for s in range(b_loads):
                    idx = tid + s * threads
                    b_s[nxt, idx // kw, idx % kw] = pb[s]
            if not pipeline:  # (the pipeline's barrier opens the next stage)
                cuda.syncthreads()

            if fold and (stage + 1) % stages_per_chunk == 0:
                # This lane's share of each hash tile's XOR: the fragment registers in it.
                for e in range(nh):
                    xv[e] = np.int32(0)
                for i in range(mt):
                    for j in range(nt):
                        e = ((i * 16) // h) * tiles_n + (j * 8) // w
                        xv[e] = np.int32(
                            xv[e] ^ acc[i, j, 0] ^ acc[i, j, 1] ^ acc[i, j, 2] ^ acc[i, j, 3]
                        )
                # Reduce-scatter: each halving step keeps the half of the tiles that this
                # lane's bit selects and adds the partner's share of that half.
                half = nh // 2
                off = 16
                while half > 0:
                    upper = (lane & off) != 0
                    for e in range(half):
                        lo = xv[e]
                        hi = xv[e + half]
                        got = shfl_xor(lo if upper else hi, off, tid, scratch)
                        xv[e] = np.int32((hi if upper else lo) ^ got)
                    half //= 2
                    off //= 2
                x = xv[0]
                while off > 0:
                    x = np.int32(x ^ shfl_xor(x, off, tid, scratch))
                    off //= 2
                if lane % share == 0:
                    row_t = warp * nh + lane // share
                    slot = ((stage + 1) // stages_per_chunk - 1) % TRANSCRIPT_WORDS
                    t_s[row_t, slot] = fold_word(t_s[row_t, slot], x)

        for i in range(mt):
            for j in range(nt):
                for half_ in range(2):
                    gr = row0 + wrow + i * 16 + g + 8 * half_
                    gc = col0 + wcol + j * 8 + 2 * t
                    if gr < m and gc < n:  # n % 8 == 0: both columns or neither
                        c_out[gr, gc] = acc[i, j, 2 * half_]
                        c_out[gr, gc + 1] = acc[i, j, 2 * half_ + 1]
        if fold and lane % share == 0:
            e = lane // share
            tr = row0 + wrow + (e // tiles_n) * h
            tc = col0 + wcol + (e % tiles_n) * w
            if tr < m and tc < n:  # m % h == n % w == 0: a hash tile is whole or outside
                for s in range(TRANSCRIPT_WORDS):
                    t_out[tr // h, tc // w, s] = t_s[warp * nh + e, s]

    return kernel


def stages(r: int) -> tuple[int, int]:
    """(KT, stages per r-chunk) for rank r."""
    kt = math.gcd(r, KT_MAX)
    return kt, r // kt


def jit_options(shape: Shape) -> dict[str, Any]:
    return {} if SIM else {"launch_bounds": shape.threads}


@functools.cache
def kernel(
    shape_key: tuple[int, int, int, int],
    h: int,
    w: int,
    r: int,
    fold: bool,
    pipeline: int = 0,
    dynamic: bool = False,
) -> Any:
    """The compiled kernel for a shape, hash tile, rank, fold choice and pipeline."""
    shape = Shape(*shape_key)
    return cuda.jit(**jit_options(shape))(kernel_source(shape, h, w, r, fold, pipeline, dynamic))


def kernel_source(
    shape: Shape, h: int, w: int, r: int, fold: bool, pipeline: int = 0, dynamic: bool = False
) -> Callable[..., None]:
    kt, spc = stages(r)
    return _kernel_source(shape, h, w, kt, spc, fold, pipeline, dynamic)


def launcher(
    shape: Shape,
    pipeline: int,
    h: int,
    w: int,
    r: int,
    args: tuple[Any, ...],
    stream: Any = 0,
    dynamic: bool | None = None,
) -> Callable[[], None]:
    """A launch of the pipelined kernel with blocks ``shape`` on ``args`` (A', B'ᵀ, C',
    T on the device), its stage buffers in dynamic shared memory where they need it
    (``dynamic`` None) or as told: the kernel is compiled for those arguments' types
    and allowed that much first, since a launch asking for more than 48 KiB is refused
    otherwise."""
    if not pipeline:
        raise ValueError("launcher launches the cp.async pipelines; tc.launch the others")
    if dynamic is None:
        dyn = dynamic_shared_bytes(shape, h, w, r, pipeline)
    else:
        dyn = stage_bytes(shape, r, pipeline) if dynamic else 0
    fn = kernel(shape.key(), h, w, r, True, pipeline, dyn > 0)
    if dyn and not SIM:
        from numba import typeof
        from numba.cuda.cudadrv import driver as drv

        dev = cuda.get_current_device()
        compiled = fn.compile(tuple(typeof(a) for a in args))
        cufunc = compiled._codelibrary.get_cufunc()
        limit = int(dev.MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)  # the device's own figure
        if dyn + cufunc.attrs.shared > limit:  # (the transcripts are static)
            raise ValueError(
                f"{dyn} bytes of stage buffers and {cufunc.attrs.shared} of transcripts "
                f"exceed the {limit} bytes a block may have on this GPU"
            )
        attr = drv.binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        drv.driver.cuKernelSetAttribute(attr, dyn, cufunc.handle, dev.id)
    grid_ = grid(shape, args[0].shape[0], args[1].shape[0])
    configured = fn[grid_, shape.threads, stream, dyn]
    return lambda: configured(*args)


def grid(shape: Shape, m: int, n: int) -> tuple[int, int]:
    return ((n + shape.bn - 1) // shape.bn, (m + shape.bm - 1) // shape.bm)


@no_type_check
def _probe_source(a_regs, b_regs, c_regs, d_regs):
    lane = cuda.threadIdx.x
    d = _mma_ptx(
        a_regs[lane, 0],
        a_regs[lane, 1],
        a_regs[lane, 2],
        a_regs[lane, 3],
        b_regs[lane, 0],
        b_regs[lane, 1],
        c_regs[lane, 0],
        c_regs[lane, 1],
        c_regs[lane, 2],
        c_regs[lane, 3],
    )
    for e in range(4):
        d_regs[lane, e] = d[e]


@functools.cache
def _probe() -> Any:
    return cuda.jit(_probe_source)


def mma_on_device(a_regs: np.ndarray, b_regs: np.ndarray, c_regs: np.ndarray) -> np.ndarray:
    """One warp's m16n8k32 on the GPU's tensor cores, registers in and out (a real GPU
    only): what :func:`mma_reference` is checked against on hardware."""
    if SIM:
        raise RuntimeError("mma_on_device runs the tensor cores; the simulator has none")
    d = cuda.device_array((32, 4), dtype=np.int32)
    args = [
        cuda.to_device(np.ascontiguousarray(x, dtype=np.int32)) for x in (a_regs, b_regs, c_regs)
    ]
    _probe()[1, 32](*args, d)
    return d.copy_to_host()
