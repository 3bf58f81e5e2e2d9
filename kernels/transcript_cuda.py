"""CUDA (numba-cuda) backend of the noisy product and its tile transcripts (PROTOCOL §4).

Bit-exact twin of :mod:`kernels.transcript_cpu`: same API, same C' and T.

Kernel design
-------------
* One thread block of ``_THREADS`` = 256 threads computes a ``_BM`` × ``_BN`` =
  128 × 128 block of C'. It is a grid of (128/h) × (128/w) hash tiles.
* Every thread owns an 8 × 8 micro-tile of int32 accumulators held in
  registers. A hash tile is covered by P = (h/8)·(w/8) threads with
  *consecutive* thread ids, so a micro-tile never straddles two hash tiles and
  the P threads of a hash tile sit in one warp (P ≤ 32), which lets the fold
  reduce them with warp shuffles.
* k is walked in stages of KT = gcd(r, 64) bytes. Per stage the block stages the
  KT-wide slices of its 128 A' rows and 128 B' columns in shared memory. The
  int8 operands are viewed on the host as packed int32 words (4 consecutive k
  values per word), so loads move 32-bit words and the inner product is
  ``dp4a`` (four int8 multiply-adds into an int32 accumulator, one
  instruction).
* After every r bytes of k (r // KT stages) the tile is folded in-kernel: each
  thread XORs its 64 partial sums, the P threads of a hash tile XOR-reduce with
  ``shfl_xor_sync``, and the first of them updates the tile's transcript word
  ``T[c % 16] = rotl32(T[c % 16], 13) ^ x``. Transcripts live in shared memory
  and are written to global memory once, at the end.

Partial sums of an r-chunk are bounded by r·127·127 and the whole product by
65,536·127·127 < 2^31 (``MAX_K``), so int32 accumulation never wraps.

Under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) inline PTX and warp
shuffles do not exist, so ``dp4a`` and the shuffle reduction are replaced by
pure-Python equivalents with the same results; everything else is the same
kernel source, which is what the simulator tests exercise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, no_type_check

import numba
import numpy as np
from numba import cuda

from kernels.params import MAX_K, TRANSCRIPT_ROTATION, TRANSCRIPT_WORDS

# numba sets its config attributes dynamically, so mypy cannot see them.
_SIM: bool = bool(numba.config.ENABLE_CUDASIM)  # type: ignore[attr-defined]

_THREADS = 256
"""Threads per block (1-D)."""
_BM = 128
"""Rows of C' per block."""
_BN = 128
"""Columns of C' per block."""
_TM = 8
"""Rows of a thread's micro-tile."""
_TN = 8
"""Columns of a thread's micro-tile."""
_KT_MAX = 64
"""Most k bytes staged in shared memory at once (16 KiB of A' and B' per stage)."""

_MASK32 = np.uint64(0xFFFFFFFF)
_ROT_L = np.uint64(TRANSCRIPT_ROTATION)
_ROT_R = np.uint64(32 - TRANSCRIPT_ROTATION)
_FULL_MASK = 0xFFFFFFFF


# --------------------------------------------------------------------------- dp4a

if _SIM:

    def _dp4a(a: Any, b: Any, c: Any) -> Any:
        """c + Σ (signed byte i of a)·(signed byte i of b), as the PTX instruction does."""
        a, b = int(a), int(b)
        acc = int(c)
        for shift in (0, 8, 16, 24):
            # ((v & 0xFF) ^ 0x80) - 0x80 sign-extends one byte.
            ab = (((a >> shift) & 0xFF) ^ 0x80) - 0x80
            bb = (((b >> shift) & 0xFF) ^ 0x80) - 0x80
            acc += ab * bb
        return np.int32(acc)

else:
    from llvmlite import ir
    from numba import types as _nbtypes
    from numba.cuda.extending import intrinsic

    @intrinsic
    def _dp4a(typingctx: Any, a: Any, b: Any, c: Any) -> Any:
        """``dp4a.s32.s32 d, a, b, c``: d = c + four signed int8 products of a and b."""
        if not all(isinstance(t, _nbtypes.Integer) for t in (a, b, c)):
            return None
        i32 = _nbtypes.int32
        # Arguments are cast to int32 by the caller's lowering (a bit pattern
        # for the packed words, a value for the accumulator).
        sig = i32(i32, i32, i32)

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            i32_ll = ir.IntType(32)
            fnty = ir.FunctionType(i32_ll, [i32_ll, i32_ll, i32_ll])
            asm = ir.InlineAsm(fnty, "dp4a.s32.s32 $0, $1, $2, $3;", "=r,r,r,r")
            return builder.call(asm, args)

        return sig, codegen


# ------------------------------------------------------------ kernel construction


def _check_params(r: int, h: int, w: int) -> tuple[int, int]:
    """(KT, stages per r-chunk) for (r, h, w), or ValueError naming what is unsupported."""
    if r <= 0 or r % 4:
        raise ValueError(f"r={r} unsupported by the CUDA kernel: must be a positive multiple of 4")
    for name, v, block in (("h", h, _BM), ("w", w, _BN)):
        if v <= 0 or v % 8 or block % v:
            raise ValueError(
                f"{name}={v} unsupported by the CUDA kernel: "
                f"must be a multiple of 8 dividing {block}"
            )
    if (h // _TM) * (w // _TN) > 32:
        raise ValueError(
            f"h={h}, w={w} unsupported by the CUDA kernel: h·w must be at most 2048 "
            "(the threads of a hash tile must share a warp)"
        )
    kt = math.gcd(r, _KT_MAX)
    return kt, r // kt


def _kernel_source(
    h: int, w: int, kt: int, stages_per_chunk: int, fold: bool
) -> Callable[..., None]:
    """The Python source of the kernel, specialised by closure constants.

    Numba freezes the closure variables as compile-time constants, so shared
    array shapes are static and the micro-tile loops fully unroll (the
    accumulators stay in registers).
    """
    kw = kt // 4  # int32 words of k per stage
    p = (h // _TM) * (w // _TN)  # threads per hash tile
    sub_cols = w // _TN  # micro-tiles across a hash tile
    tiles_j = _BN // w  # hash tiles across a block
    a_loads = (_BM * kw + _THREADS - 1) // _THREADS
    b_loads = (_BN * kw + _THREADS - 1) // _THREADS
    tiles_per_block = _THREADS // p
    a_cols = _BM + 1  # shared array shapes must be plain constants, not expressions
    b_cols = _BN + 1
    # Only the simulator needs a shared scratch for its shuffle emulation.
    scratch_len = _THREADS if _SIM else 1

    # Device code is typed by numba, not by mypy (whose view of numba.cuda is
    # numba's legacy stub module): hence @no_type_check on kernel sources.
    if _SIM:

        @no_type_check
        def xor_across_tile(x: Any, tid: Any, scratch: Any) -> Any:
            """Same result as the shuffle butterfly below, through shared memory."""
            off = p // 2
            while off > 0:
                scratch[tid] = x
                cuda.syncthreads()
                x = np.int32(x ^ scratch[tid ^ off])
                cuda.syncthreads()
                off //= 2
            return x

    else:

        @cuda.jit(device=True, inline=True)
        @no_type_check
        def xor_across_tile(x: Any, tid: Any, scratch: Any) -> Any:
            """XOR of x over the p consecutive lanes of a hash tile; every lane gets it."""
            off = p // 2
            while off > 0:
                x = np.int32(x ^ cuda.shfl_xor_sync(_FULL_MASK, x, off))
                off //= 2
            return x

    @no_type_check
    def kernel(a32: Any, b32: Any, c_out: Any, t_out: Any) -> None:
        m = a32.shape[0]
        n = b32.shape[0]
        k_words = a32.shape[1]
        tid = cuda.threadIdx.x
        row0 = cuda.blockIdx.y * _BM
        col0 = cuda.blockIdx.x * _BN

        # Which hash tile of the block this thread works in, and where its
        # micro-tile lies in that hash tile.
        ht = tid // p
        sub = tid % p
        hti = ht // tiles_j
        htj = ht % tiles_j
        row_base = hti * h + (sub // sub_cols) * _TM  # within the block
        col_base = htj * w + (sub % sub_cols) * _TN
        # m % h == 0 and n % w == 0: a hash tile is wholly inside C' or wholly outside.
        active = row0 + hti * h < m and col0 + htj * w < n

        # Stage layout [k word][row]: at one k word the threads read their
        # rows/columns from consecutive addresses. +1 column of padding keeps
        # the staging stores (which walk a row's k words) off a single bank.
        a_s = cuda.shared.array((kw, a_cols), dtype=np.int32)
        b_s = cuda.shared.array((kw, b_cols), dtype=np.int32)
        t_s = cuda.shared.array((tiles_per_block, TRANSCRIPT_WORDS), dtype=np.uint32)
        scratch = cuda.shared.array(scratch_len, dtype=np.int32)

        acc = cuda.local.array((_TM, _TN), dtype=np.int32)
        a_r = cuda.local.array(_TM, dtype=np.int32)
        b_r = cuda.local.array(_TN, dtype=np.int32)
        for i in range(_TM):
            for j in range(_TN):
                acc[i, j] = np.int32(0)
        if fold and sub == 0:
            for s in range(TRANSCRIPT_WORDS):
                t_s[ht, s] = np.uint32(0)

        n_stages = k_words // kw
        for stage in range(n_stages):
            k0 = stage * kw
            cuda.syncthreads()  # the previous stage's reads are done
            # Coalesced loads: consecutive threads take consecutive words of a row.
            for s in range(a_loads):
                idx = tid + s * _THREADS
                if idx < _BM * kw:
                    r_ = idx // kw
                    q = idx % kw
                    g = row0 + r_
                    a_s[q, r_] = a32[g, k0 + q] if g < m else np.int32(0)
            for s in range(b_loads):
                idx = tid + s * _THREADS
                if idx < _BN * kw:
                    c_ = idx // kw
                    q = idx % kw
                    g = col0 + c_
                    b_s[q, c_] = b32[g, k0 + q] if g < n else np.int32(0)
            cuda.syncthreads()

            if active:
                for q in range(kw):
                    for i in range(_TM):
                        a_r[i] = a_s[q, row_base + i]
                    for j in range(_TN):
                        b_r[j] = b_s[q, col_base + j]
                    for i in range(_TM):
                        for j in range(_TN):
                            acc[i, j] = _dp4a(a_r[i], b_r[j], acc[i, j])

            if fold and (stage + 1) % stages_per_chunk == 0:
                # Every thread reaches the shuffle (inactive ones with x = 0):
                # shfl_xor_sync with a full mask needs the whole warp.
                # int32 throughout: XOR is bitwise, and shfl_xor_sync takes
                # signed ints only.
                x = np.int32(0)
                for i in range(_TM):
                    for j in range(_TN):
                        x = np.int32(x ^ acc[i, j])
                x = xor_across_tile(x, tid, scratch)
                if sub == 0:
                    slot = ((stage + 1) // stages_per_chunk - 1) % TRANSCRIPT_WORDS
                    t = np.uint64(t_s[ht, slot])
                    rot = ((t << _ROT_L) | (t >> _ROT_R)) & _MASK32
                    t_s[ht, slot] = np.uint32(rot ^ np.uint64(np.uint32(x)))

        if active:
            for i in range(_TM):
                for j in range(_TN):
                    c_out[row0 + row_base + i, col0 + col_base + j] = acc[i, j]
            if fold and sub == 0:
                ti = (row0 + hti * h) // h
                tj = (col0 + htj * w) // w
                for s in range(TRANSCRIPT_WORDS):
                    t_out[ti, tj, s] = t_s[ht, s]

    return kernel


_JIT_OPTIONS: dict[str, Any] = {} if _SIM else {"launch_bounds": _THREADS}


@functools.cache
def _kernel(h: int, w: int, kt: int, stages_per_chunk: int, fold: bool) -> Any:
    return cuda.jit(**_JIT_OPTIONS)(_kernel_source(h, w, kt, stages_per_chunk, fold))


def _run(
    a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int, fold: bool
) -> tuple[np.ndarray, np.ndarray]:
    kt, spc = _check_params(r, h, w)
    m, k = a.shape
    n = bt.shape[0]
    if bt.shape[1] != k:
        raise ValueError(f"inner dimensions differ: A' has k={k}, B'ᵀ has k={bt.shape[1]}")
    if m % h or n % w or k % r or k > MAX_K:
        raise ValueError(f"need m % h == n % w == k % r == 0 and k <= {MAX_K}: {m=} {n=} {k=}")
    # Packed words: 4 consecutive int8 along k per int32 (a free host view).
    if a.dtype != np.int8 or bt.dtype != np.int8:
        raise ValueError(f"operands must be int8, got {a.dtype} and {bt.dtype}")
    a32 = np.ascontiguousarray(a).view(np.int32)
    b32 = np.ascontiguousarray(bt).view(np.int32)
    d_a = cuda.to_device(a32)
    d_b = cuda.to_device(b32)
    d_c = cuda.device_array((m, n), dtype=np.int32)
    d_t = cuda.to_device(np.zeros((m // h, n // w, TRANSCRIPT_WORDS), dtype=np.uint32))
    grid = ((n + _BN - 1) // _BN, (m + _BM - 1) // _BM)
    _kernel(h, w, kt, spc, fold)[grid, _THREADS](d_a, d_b, d_c, d_t)
    return d_c.copy_to_host(), d_t.copy_to_host()


def noisy_product(
    a_noisy: np.ndarray, bt_noisy: np.ndarray, r: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """(C' = A'·B' as int32 m×n, transcripts uint32 (m/h, n/w, 16)), on the GPU.

    ``a_noisy`` is A' (m×k int8), ``bt_noisy`` is B'ᵀ (n×k int8); host arrays
    in, host arrays out.
    """
    return _run(a_noisy, bt_noisy, r, h, w, True)


def plain_matmul(a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int) -> np.ndarray:
    """A·B with the same kernel and no folds: the baseline an attempt is compared to."""
    out, _ = _run(a, bt, r, h, w, False)
    return out


def is_available() -> bool:
    """True when a real CUDA GPU is visible (never under the simulator)."""
    return not _SIM and bool(cuda.is_available())


_KERNEL_SIG = "void(int32[:, ::1], int32[:, ::1], int32[:, ::1], uint32[:, :, ::1])"


def compile_ptx_for(
    cc: tuple[int, int] = (9, 0), *, r: int = 64, h: int = 16, w: int = 16, fold: bool = True
) -> str:
    """PTX of the (real, non-simulator) kernel for compute capability ``cc``.

    Needs NVVM (the ``nvidia-cuda-nvcc-cu12`` wheel) but no GPU.
    """
    if _SIM:
        raise RuntimeError("compile_ptx_for needs the real CUDA target, not the simulator")
    kt, spc = _check_params(r, h, w)
    ptx, _ = cuda.compile_ptx(
        _kernel_source(h, w, kt, spc, fold), _KERNEL_SIG, cc=cc, **_JIT_OPTIONS
    )
    return str(ptx)
