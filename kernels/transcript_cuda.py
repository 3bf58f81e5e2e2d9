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
import threading
from collections.abc import Callable
from typing import Any, no_type_check

import numpy as np
from numba import cuda

from kernels import tickets_cuda, transcript_mma
from kernels.cuda_common import FULL_MASK, KT_MAX, SIM, fold_word
from kernels.cuda_common import is_available as is_available  # this backend's, re-exported
from kernels.noise import NoiseFactors
from kernels.params import TRANSCRIPT_WORDS
from kernels.strips import strips_between
from kernels.validate import check_operand, check_shapes

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


# --------------------------------------------------------------------------- dp4a

if SIM:

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
    kt = math.gcd(r, KT_MAX)
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
    scratch_len = _THREADS if SIM else 1

    # Device code is typed by numba, not by mypy (whose view of numba.cuda is
    # numba's legacy stub module): hence @no_type_check on kernel sources.
    if SIM:

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
                x = np.int32(x ^ cuda.shfl_xor_sync(FULL_MASK, x, off))
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
                    t_s[ht, slot] = fold_word(t_s[ht, slot], x)

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


_JIT_OPTIONS: dict[str, Any] = {} if SIM else {"launch_bounds": _THREADS}


@functools.cache
def _kernel(h: int, w: int, kt: int, stages_per_chunk: int, fold: bool) -> Any:
    return cuda.jit(**_JIT_OPTIONS)(_kernel_source(h, w, kt, stages_per_chunk, fold))


KERNELS = ("auto", "mma", "dp4a")
"""``mma``: the tensor-core kernel (:mod:`kernels.transcript_mma`); ``dp4a``: this
module's; ``auto``: mma where it supports (r, h, w), else dp4a."""


def kernel_for(r: int, h: int, w: int, kernel: str = "auto") -> str:
    """The kernel that computes (r, h, w): ``mma`` or ``dp4a``; ValueError naming what
    is unsupported, or an unknown ``kernel``."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown CUDA kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    why = transcript_mma.supported(r, h, w)
    if kernel == "mma" and why is not None:
        raise ValueError(f"the tensor-core kernel does not support this: {why}")
    if kernel == "mma" or (kernel == "auto" and why is None):
        return "mma"
    _check_params(r, h, w)
    return "dp4a"


def _check_shapes(m: int, k: int, n: int, kb: int, r: int, h: int, w: int) -> None:
    if kb != k:
        raise ValueError(f"inner dimensions differ: A' has k={k}, B'ᵀ has k={kb}")
    check_shapes(m, k, n, r, h, w)


def launch(
    d_a32: Any,
    d_b32: Any,
    d_c: Any,
    d_t: Any,
    r: int,
    h: int,
    w: int,
    fold: bool = True,
    kernel: str = "auto",
    stream: Any = 0,
) -> str:
    """Compute C' (and with ``fold`` the transcripts) of device arrays: A' as int32 words
    (m, k/4), B'ᵀ likewise (n, k/4), into ``d_c`` int32 (m, n) and ``d_t`` uint32
    (m/h, n/w, 16). Both kernels fold from T = 0 in shared memory and write every word of
    ``d_t``: it needs no zeroing. Asynchronous on ``stream``; returns the kernel that ran
    (:func:`kernel_for`)."""
    name = kernel_for(r, h, w, kernel)
    m, kw = d_a32.shape
    n = d_b32.shape[0]
    _check_shapes(m, 4 * kw, n, 4 * d_b32.shape[1], r, h, w)
    if name == "mma":
        block = transcript_mma.BLOCK
        fn = transcript_mma.kernel(block.key(), h, w, r, fold)
        fn[transcript_mma.grid(block, m, n), block.threads, stream](d_a32, d_b32, d_c, d_t)
    else:
        kt, spc = _check_params(r, h, w)
        grid = ((n + _BN - 1) // _BN, (m + _BM - 1) // _BM)
        _kernel(h, w, kt, spc, fold)[grid, _THREADS, stream](d_a32, d_b32, d_c, d_t)
    return name


def _run(
    a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int, fold: bool, kernel: str = "auto"
) -> tuple[Any, Any]:
    """(C', T) as device arrays, from host A' and B'ᵀ (T is written only with ``fold``)."""
    kernel_for(r, h, w, kernel)
    m, k = a.shape
    n = bt.shape[0]
    _check_shapes(m, k, n, bt.shape[1], r, h, w)
    # Packed words: 4 consecutive int8 along k per int32 (a free host view).
    if a.dtype != np.int8 or bt.dtype != np.int8:
        raise ValueError(f"operands must be int8, got {a.dtype} and {bt.dtype}")
    a32 = np.ascontiguousarray(a).view(np.int32)
    b32 = np.ascontiguousarray(bt).view(np.int32)
    d_a = cuda.to_device(a32)
    d_b = cuda.to_device(b32)
    d_c = cuda.device_array((m, n), dtype=np.int32)
    d_t = cuda.device_array((m // h, n // w, TRANSCRIPT_WORDS), dtype=np.uint32)
    launch(d_a, d_b, d_c, d_t, r, h, w, fold, kernel)
    return d_c, d_t


def noisy_product(
    a_noisy: np.ndarray, bt_noisy: np.ndarray, r: int, h: int, w: int, kernel: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    """(C' = A'·B' as int32 m×n, transcripts uint32 (m/h, n/w, 16)), on the GPU.

    ``a_noisy`` is A' (m×k int8), ``bt_noisy`` is B'ᵀ (n×k int8); host arrays
    in, host arrays out. ``kernel``: see :data:`KERNELS`.
    """
    d_c, d_t = _run(a_noisy, bt_noisy, r, h, w, True, kernel)
    return d_c.copy_to_host(), d_t.copy_to_host()


def plain_matmul(
    a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int, kernel: str = "auto"
) -> np.ndarray:
    """A·B with the same kernel and no folds: the baseline an attempt is compared to."""
    d_c, _ = _run(a, bt, r, h, w, False, kernel)
    c: np.ndarray = d_c.copy_to_host()
    return c


_KERNEL_SIG = "void(int32[:, ::1], int32[:, ::1], int32[:, ::1], uint32[:, :, ::1])"


def compile_ptx_for(
    cc: tuple[int, int] = (9, 0),
    *,
    r: int = 64,
    h: int = 16,
    w: int = 16,
    fold: bool = True,
    kernel: str = "auto",
    block: tuple[transcript_mma.Shape, int] | None = None,
) -> str:
    """PTX of the (real, non-simulator) kernel for compute capability ``cc``; for the
    tensor-core kernel, ``block`` = (shape, pipeline) instead of the launches' own
    (:data:`transcript_mma.BLOCK`, registers), its stage buffers in dynamic shared memory
    where :func:`transcript_mma.dynamic_shared_bytes` says.

    Needs NVVM (the ``nvidia-cuda-nvcc-cu12`` wheel) but no GPU.
    """
    if SIM:
        raise RuntimeError("compile_ptx_for needs the real CUDA target, not the simulator")
    if kernel_for(r, h, w, kernel) == "mma":
        shape, pipeline = block or (transcript_mma.BLOCK, 0)
        dynamic = transcript_mma.dynamic_shared_bytes(shape, h, w, r, pipeline) > 0
        source = transcript_mma.kernel_source(shape, h, w, r, fold, pipeline, dynamic)
        options = transcript_mma.jit_options(shape)
    else:
        kt, spc = _check_params(r, h, w)
        source, options = _kernel_source(h, w, kt, spc, fold), _JIT_OPTIONS
    ptx, _ = cuda.compile_ptx(source, _KERNEL_SIG, cc=cc, **options)
    return str(ptx)


# ------------------------------------------------------------ noise on the device


@no_type_check
def _add_noise_source(x32, L, p, q, out32):
    """out = X + E by int32 words of 4 k-bytes: E[i, c] = L[i, p[c]] − L[i, q[c]]."""
    i = cuda.blockIdx.y
    word = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if word < x32.shape[1]:
        x = np.int32(x32[i, word])
        packed = np.int32(0)
        for j in range(4):
            c = 4 * word + j
            v = (((x >> np.int32(8 * j)) & np.int32(0xFF)) ^ np.int32(0x80)) - np.int32(0x80)
            v = v + np.int32(L[i, p[c]]) - np.int32(L[i, q[c]])
            packed = packed | ((v & np.int32(0xFF)) << np.int32(8 * j))
        out32[i, word] = np.int32(packed)


_NOISE_THREADS = 128
_add_noise_kernel = cuda.jit(_add_noise_source)


DeviceNoise = tuple[Any, Any, Any]
"""One operand's noise factors on the device: (L int8 (rows, r), p int32 (k,), q int32 (k,))."""


def upload_noise(
    noise_a: NoiseFactors, noise_b: NoiseFactors, stream: Any = 0
) -> tuple[DeviceNoise, DeviceNoise]:
    """Both operands' noise factors on the device, in one copy (m·r + n·r + 16k bytes).

    The bytes go through this thread's buffers, reused while the sizes stay: pinned on
    the host (so the copy is one DMA, asynchronous on ``stream``) and one device buffer
    the returned arrays are views of. Separate uploads allocated and copied six arrays
    from pageable memory: 0.53 ms an operand on an H200 at 2048², 7 times its noise
    kernel. The next call waits for this call's copy before it overwrites the pinned
    bytes; the device buffer is overwritten in stream order, after the kernels queued
    before it have read it."""
    k = noise_a.p.shape[0]
    if noise_b.p.shape[0] != k:
        raise ValueError(f"noise for k={k} and k={noise_b.p.shape[0]}")
    la, lb = np.ascontiguousarray(noise_a.L), np.ascontiguousarray(noise_b.L)
    if la.dtype != np.int8 or lb.dtype != np.int8:
        raise ValueError(f"noise rows must be int8, got {la.dtype} and {lb.dtype}")
    words = 16 * k  # p and q of both operands as int32
    total = words + la.size + lb.size
    res = _resident
    if res.noise_host is None or res.noise_host.size != total:
        res.noise_host = cuda.pinned_array(total, np.uint8)
        res.noise_dev = cuda.device_array(total, np.uint8)
        res.noise_copied = cuda.event()
    res.noise_copied.synchronize()  # (an event never recorded has nothing to wait for)
    host = res.noise_host
    pq = host[:words].view(np.int32)
    for i, v in enumerate((noise_a.p, noise_a.q, noise_b.p, noise_b.q)):
        pq[i * k : (i + 1) * k] = v
    host[words : words + la.size] = la.reshape(-1).view(np.uint8)
    host[words + la.size :] = lb.reshape(-1).view(np.uint8)
    dev = res.noise_dev
    dev.copy_to_device(host, stream=stream)
    res.noise_copied.record(stream)
    d_pq = dev[:words].view(np.int32)
    d_la = dev[words : words + la.size].view(np.int8).reshape(la.shape)
    d_lb = dev[words + la.size :].view(np.int8).reshape(lb.shape)
    return (d_la, d_pq[:k], d_pq[k : 2 * k]), (d_lb, d_pq[2 * k : 3 * k], d_pq[3 * k :])


def add_noise_device(d_x32: Any, noise: DeviceNoise, d_out32: Any, stream: Any = 0) -> None:
    """X' = X + E on the device: ``d_x32`` the int7 operand's rows as int32 words (rows,
    k/4), ``noise`` its factors from :func:`upload_noise`, the result into ``d_out32``."""
    rows, kw = d_x32.shape
    d_l, d_p, d_q = noise
    if d_l.shape[0] != rows or d_p.shape[0] != 4 * kw:
        raise ValueError(
            f"noise for {d_l.shape[0]} rows of k={d_p.shape[0]}, operand {rows}×{4 * kw}"
        )
    # A row's words across a block's threads (whole warps, no more than the row needs).
    threads = min(_NOISE_THREADS, 32 * -(-kw // 32))
    grid = ((kw + threads - 1) // threads, rows)
    _add_noise_kernel[grid, threads, stream](d_x32, d_l, d_p, d_q, d_out32)


class _Resident(threading.local):
    """This thread's job operands on its device (a miner thread mines one GPU): A and Bᵀ
    as int32 words, uploaded once per job, and the buffers its attempts' A' and B'ᵀ
    are built in."""

    def __init__(self) -> None:
        self.a: np.ndarray | None = None
        self.b: np.ndarray | None = None
        self.d_a: Any = None
        self.d_bt: Any = None
        self.d_an: Any = None
        self.d_bn: Any = None
        self.noise_host: np.ndarray | None = None  # pinned, see upload_noise
        self.noise_dev: Any = None
        self.noise_copied: Any = None  # recorded after each copy of noise_host


_resident = _Resident()


def _job_on_device(a: np.ndarray, b: np.ndarray, bt: np.ndarray | None) -> _Resident:
    """The resident operands of the job (A, B), uploaded if they are not these objects."""
    res = _resident
    if res.a is not a or res.b is not b:
        check_operand("A", a)
        check_operand("B", b)
        bt_host = np.ascontiguousarray(b.T) if bt is None else np.ascontiguousarray(bt)
        res.a = res.b = None  # not resident until every buffer is there
        res.d_a = cuda.to_device(np.ascontiguousarray(a).view(np.int32))
        res.d_bt = cuda.to_device(bt_host.view(np.int32))
        res.d_an = cuda.device_array_like(res.d_a)
        res.d_bn = cuda.device_array_like(res.d_bt)
        res.a, res.b = a, b
    return res


class DeviceTranscripts:
    """An attempt's transcripts on the GPU: its tickets hashed there
    (:mod:`kernels.tickets_cuda`), the transcripts copied back once, if asked for."""

    def __init__(self, d_t: Any) -> None:
        self._d_t = d_t
        self._host: np.ndarray | None = None

    def tickets(self, key: bytes) -> np.ndarray:
        out: np.ndarray = tickets_cuda.all_tickets_device(self._d_t, key).copy_to_host()
        return out

    def host(self) -> np.ndarray:
        if self._host is None:
            self._host = self._d_t.copy_to_host()
        return self._host


def noisy_product_deferred(
    a: np.ndarray,
    noise_a: NoiseFactors,
    b: np.ndarray,
    noise_b: NoiseFactors,
    r: int,
    h: int,
    w: int,
    between_strips: Callable[[], None] | None = None,
    bt: np.ndarray | None = None,
) -> tuple[Callable[[], np.ndarray], DeviceTranscripts]:
    """(a function that brings C' back, once; T on the device) of A' = A + E_A and
    B' = B + E_B, the noise added on the GPU.

    A job's A and Bᵀ stay on the device between attempts (the same array objects: a
    job's operands are not changed in place); an attempt uploads only its noise factors
    (m·r + n·r + 16k bytes). It needs only its tickets, hashed on the GPU from T; C'
    (16 MiB at 2048², 256 MiB at 8192²) only if C is recovered, once per posted job:
    copying it back every attempt would cost more than the product. Each attempt keeps
    C' and T buffers of its own, freed with them. With ``between_strips``, the product
    runs by the row strips of :func:`kernels.strips.tile_strips`, that function called
    between them. ValueError if A or B leaves the int7 range."""
    m, k = a.shape
    n = b.shape[1]
    kernel_for(r, h, w)
    _check_shapes(m, k, n, b.shape[0], r, h, w)
    res = _job_on_device(a, b, bt)
    dev_a, dev_b = upload_noise(noise_a, noise_b)
    add_noise_device(res.d_a, dev_a, res.d_an)
    add_noise_device(res.d_bt, dev_b, res.d_bn)
    d_t = cuda.device_array((m // h, n // w, TRANSCRIPT_WORDS), dtype=np.uint32)
    d_c = cuda.device_array((m, n), dtype=np.int32)
    # The strips queue on the device; between them the caller's work runs on the host.
    for t0, t1 in strips_between(m // h, between_strips):
        rows = slice(t0 * h, t1 * h)
        launch(res.d_an[rows], res.d_bn, d_c[rows], d_t[t0:t1], r, h, w)
    fetched: list[np.ndarray] = []

    def fetch_c() -> np.ndarray:
        if not fetched:
            fetched.append(d_c.copy_to_host())
        return fetched[0]

    return fetch_c, DeviceTranscripts(d_t)
