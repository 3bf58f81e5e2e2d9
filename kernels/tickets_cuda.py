"""Tickets on a CUDA GPU (numba-cuda): bit-identical to :func:`kernels.tickets.all_tickets`.

A ticket is ``BLAKE3(T_tile ‖ le32(ti) ‖ le32(tj), key = K)`` (PROTOCOL §4): the keyed
hash of a 72-byte message, which is one chunk of two blocks, so two compressions with
counter 0 and the key's 8 words as the first chaining value:

* block 0: the tile's 16 transcript words, 64 bytes, flags KEYED_HASH | CHUNK_START;
* block 1: (ti, tj, 0, …, 0), 8 bytes, flags KEYED_HASH | CHUNK_END | ROOT;

the ticket is the 8 words of the second compression's output (state[i] ^ state[i + 8]).

Kernel design
-------------
One thread per tile, a 1-D grid of ``_THREADS`` = 128 threads per block over the tm·tn
tiles (row-major, as ``all_tickets`` lays them out): each thread reads its 16 words,
runs both compressions and writes its 8 ticket words.

The state and the message are scalars (tuples of them between functions), never
arrays: the 7 rounds are a loop that carries the 16 state and 16 message words as
scalars, the message permutation is one parallel assignment, and the compression is
a loop over the two blocks. Every word lives in a register (the PTX test checks that
nothing goes to ``.local`` memory); the loops keep the code small, since numba-cuda
compiles straight-line code of this size in minutes (its lowering is quadratic in a
basic block's length), where the loops take ~3 s. ``_g`` and ``_compress`` are
inlined at the Numba IR level (``inline="always"``): a device function compiled on
its own asks the current device for its compute capability, which would tie
:func:`compile_ptx_for` to a GPU.

Numba types uint32 + uint32 as uint64 and uint32 with a Python int as int64 (uint64
with int64 as float64), so sums are taken in uint64 and narrowed back to uint32, and
rotations shift uint32 words by uint32 amounts and narrow each half back. NVVM turns
these into 32-bit additions and funnel shifts (``shf.l.wrap.b32``). Under the
simulator the same source runs on NumPy scalars, where the uint64 sums never
overflow (NumPy warns of uint32 overflow) and uint32 shifts drop the bits shifted
out.

The key's words and the tile-index origin are kernel arguments (parameter space):
nothing but the transcripts is copied to the device per call.
"""

from __future__ import annotations

import functools
from typing import Any, no_type_check

import numpy as np
from numba import cuda

from kernels.blake3_lanes import CHUNK_END, CHUNK_START, IV, KEYED_HASH, ROOT
from kernels.cuda_common import SIM
from kernels.params import TRANSCRIPT_WORDS
from kernels.validate import check_seed

_THREADS = 128
"""Threads per block (1-D), one tile each."""
TICKET_WORDS = 8
"""uint32 words of a ticket (256 bits, little-endian)."""
_INDEX_LIMIT = 1 << 32
"""Tile indices are hashed as le32: every ti and tj must be below this."""

# Rotation amounts right and left, as uint32 (a Python int would make numba shift in int64).
_R16, _L16 = np.uint32(16), np.uint32(16)
_R12, _L12 = np.uint32(12), np.uint32(20)
_R8, _L8 = np.uint32(8), np.uint32(24)
_R7, _L7 = np.uint32(7), np.uint32(25)
_Z = np.uint32(0)
_IV0, _IV1, _IV2, _IV3 = (np.uint32(v) for v in IV[:4])
_LEN0 = np.uint32(64)
_FLAGS0 = np.uint32(KEYED_HASH | CHUNK_START)
_LEN1 = np.uint32(8)
_FLAGS1 = np.uint32(KEYED_HASH | CHUNK_END | ROOT)

# Inlined at the Numba IR level, before typing: the kernel is one function whose
# words are scalars (registers), and compile_ptx needs no GPU (a device function
# compiled on its own asks the current device for its compute capability).
_INLINE: dict[str, Any] = {"device": True, "inline": "always"}
_JIT_OPTIONS: dict[str, Any] = {} if SIM else {"launch_bounds": _THREADS}

# Device code is typed by numba, not by mypy (whose view of numba.cuda is numba's
# legacy stub module): hence @no_type_check on kernel sources.


@cuda.jit(**_INLINE)
@no_type_check
def _g(a: Any, b: Any, c: Any, d: Any, mx: Any, my: Any) -> Any:
    """BLAKE3's G function on state words a, b, c, d with message words mx, my.

    Sums are taken in uint64 (no overflow: NumPy's uint32 scalars would warn of one)
    and narrowed back; rotations shift uint32 words and narrow each half back to 32
    bits. NVVM sees 32-bit additions and funnel shifts (``shf.l.wrap.b32``)."""
    a = np.uint32(np.uint64(a) + np.uint64(b) + np.uint64(mx))
    v = np.uint32(d ^ a)
    d = np.uint32(np.uint32(v >> _R16) | np.uint32(v << _L16))
    c = np.uint32(np.uint64(c) + np.uint64(d))
    v = np.uint32(b ^ c)
    b = np.uint32(np.uint32(v >> _R12) | np.uint32(v << _L12))
    a = np.uint32(np.uint64(a) + np.uint64(b) + np.uint64(my))
    v = np.uint32(d ^ a)
    d = np.uint32(np.uint32(v >> _R8) | np.uint32(v << _L8))
    c = np.uint32(np.uint64(c) + np.uint64(d))
    v = np.uint32(b ^ c)
    b = np.uint32(np.uint32(v >> _R7) | np.uint32(v << _L7))
    return a, b, c, d


@cuda.jit(**_INLINE)
@no_type_check
def _compress(cv: Any, m: Any, block_len: Any, flags: Any) -> Any:
    """The 8 output chaining words of the compression with counter 0 of the block
    ``m`` (a tuple of 16 words) under the chaining value ``cv`` (a tuple of 8).

    Every word is a scalar carried through the loop over the 7 rounds, and the
    message permutation is a parallel assignment: no array, so no local memory
    whether or not the loop is unrolled."""
    s0, s1, s2, s3, s4, s5, s6, s7 = cv
    s8, s9, s10, s11, s12, s13, s14, s15 = _IV0, _IV1, _IV2, _IV3, _Z, _Z, block_len, flags
    m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15 = m
    for _ in range(7):
        s0, s4, s8, s12 = _g(s0, s4, s8, s12, m0, m1)
        s1, s5, s9, s13 = _g(s1, s5, s9, s13, m2, m3)
        s2, s6, s10, s14 = _g(s2, s6, s10, s14, m4, m5)
        s3, s7, s11, s15 = _g(s3, s7, s11, s15, m6, m7)
        s0, s5, s10, s15 = _g(s0, s5, s10, s15, m8, m9)
        s1, s6, s11, s12 = _g(s1, s6, s11, s12, m10, m11)
        s2, s7, s8, s13 = _g(s2, s7, s8, s13, m12, m13)
        s3, s4, s9, s14 = _g(s3, s4, s9, s14, m14, m15)
        # Word i of the next round's message is word _MSG_PERMUTATION[i] of this one's:
        # (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8).
        m0, m1, m2, m3, m4, m5, m6, m7, m8, m9, m10, m11, m12, m13, m14, m15 = (
            m2, m6, m3, m10, m7, m0, m4, m13, m1, m11, m12, m5, m9, m14, m15, m8
        )  # fmt: skip
    return (
        np.uint32(s0 ^ s8), np.uint32(s1 ^ s9), np.uint32(s2 ^ s10), np.uint32(s3 ^ s11),
        np.uint32(s4 ^ s12), np.uint32(s5 ^ s13), np.uint32(s6 ^ s14), np.uint32(s7 ^ s15),
    )  # fmt: skip


@no_type_check
def _tickets_kernel(
    t: Any,
    out: Any,
    ti0: Any,
    tj0: Any,
    k0: Any,
    k1: Any,
    k2: Any,
    k3: Any,
    k4: Any,
    k5: Any,
    k6: Any,
    k7: Any,
) -> None:
    """out[i, j] ← the ticket of tile (ti0 + i, tj0 + j), whose transcript is t[i, j],
    under the key words k0 … k7."""
    tn = t.shape[1]
    tile = cuda.grid(1)
    if tile >= t.shape[0] * tn:
        return
    i = tile // tn
    j = tile % tn
    m = (
        t[i, j, 0], t[i, j, 1], t[i, j, 2], t[i, j, 3],
        t[i, j, 4], t[i, j, 5], t[i, j, 6], t[i, j, 7],
        t[i, j, 8], t[i, j, 9], t[i, j, 10], t[i, j, 11],
        t[i, j, 12], t[i, j, 13], t[i, j, 14], t[i, j, 15],
    )  # fmt: skip
    ti = np.uint32((ti0 + i) & 0xFFFFFFFF)
    tj = np.uint32((tj0 + j) & 0xFFFFFFFF)
    # The two blocks of the chunk in a loop: the compression is written out once.
    h = (k0, k1, k2, k3, k4, k5, k6, k7)
    block_len = _LEN0
    flags = _FLAGS0
    for _ in range(2):
        h = _compress(h, m, block_len, flags)
        m = (ti, tj, _Z, _Z, _Z, _Z, _Z, _Z, _Z, _Z, _Z, _Z, _Z, _Z, _Z, _Z)
        block_len = _LEN1
        flags = _FLAGS1
    out[i, j, 0] = h[0]
    out[i, j, 1] = h[1]
    out[i, j, 2] = h[2]
    out[i, j, 3] = h[3]
    out[i, j, 4] = h[4]
    out[i, j, 5] = h[5]
    out[i, j, 6] = h[6]
    out[i, j, 7] = h[7]


@functools.cache
def _kernel() -> Any:
    return cuda.jit(**_JIT_OPTIONS)(_tickets_kernel)


def _device_transcripts(d_t: Any) -> Any:
    """``d_t`` as a numba device array, or ValueError if it is not on the device."""
    if SIM:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        on_device = isinstance(d_t, FakeCUDAArray)
    else:
        on_device = bool(cuda.is_cuda_array(d_t))
    if not on_device:
        raise ValueError(
            "transcripts must be a CUDA device array (all_tickets_gpu takes host arrays), "
            f"got {type(d_t).__name__}"
        )
    if not SIM and not cuda.cudadrv.devicearray.is_cuda_ndarray(d_t):
        d_t = cuda.as_cuda_array(d_t)  # another library's array, without a copy
    return d_t


def _check_transcripts(shape: tuple[int, ...], dtype: Any) -> None:
    if len(shape) != 3 or shape[2] != TRANSCRIPT_WORDS or dtype != np.uint32:
        raise ValueError(f"transcripts must be uint32 (tm, tn, 16), got {dtype} {shape}")


def _key_words(key: bytes) -> list[np.uint32]:
    check_seed("ticket key", key)
    return [np.uint32(w) for w in np.frombuffer(bytes(key), dtype="<u4")]


def all_tickets_device(
    d_t: Any, key: bytes, stream: Any = 0, *, origin: tuple[int, int] = (0, 0)
) -> Any:
    """Every tile's ticket under the ticket ``key``, on the GPU: ``d_t`` is a device
    array of transcripts, uint32 (tm, tn, 16); returns a new device array, uint32
    (tm, tn, 8), of 8 little-endian words per ticket (``all_tickets``' layout), enqueued
    on ``stream``.

    ``origin`` is the tile index (ti, tj) of d_t[0, 0], for a block of tiles cut from a
    larger grid: tile (i, j) is hashed as (origin[0] + i, origin[1] + j).

    Everything is checked (ValueError) before anything is allocated or launched.
    """
    words = _key_words(key)
    d_t = _device_transcripts(d_t)
    _check_transcripts(tuple(d_t.shape), d_t.dtype)
    tm, tn, _ = d_t.shape
    if (
        len(origin) != 2
        or not all(isinstance(o, int | np.integer) and o >= 0 for o in origin)
        or origin[0] + tm > _INDEX_LIMIT
        or origin[1] + tn > _INDEX_LIMIT
    ):
        raise ValueError(f"tile indices must fit in 32 bits: origin {origin}, tiles {tm}×{tn}")
    out = cuda.device_array((tm, tn, TICKET_WORDS), dtype=np.uint32, stream=stream)
    tiles = tm * tn
    if tiles:
        grid = (tiles + _THREADS - 1) // _THREADS
        ti0, tj0 = (np.int64(o) for o in origin)
        _kernel()[grid, _THREADS, stream](d_t, out, ti0, tj0, *words)
    return out


def all_tickets_gpu(T: np.ndarray, key: bytes) -> np.ndarray:
    """:func:`all_tickets_device` from and to the host: T uint32 (tm, tn, 16) in,
    tickets uint32 (tm, tn, 8) out, equal to ``kernels.tickets.all_tickets(T, key)``.
    Everything is checked before the GPU is touched."""
    check_seed("ticket key", key)
    if not isinstance(T, np.ndarray):
        raise ValueError(f"transcripts must be a numpy array, got {type(T).__name__}")
    _check_transcripts(T.shape, T.dtype)
    d_t = cuda.to_device(np.ascontiguousarray(T))
    return np.asarray(all_tickets_device(d_t, key).copy_to_host())


_KERNEL_SIG = (
    "void(uint32[:, :, ::1], uint32[:, :, ::1], int64, int64, "
    + ", ".join(["uint32"] * TICKET_WORDS)
    + ")"
)


def compile_ptx_for(cc: tuple[int, int] = (9, 0)) -> str:
    """PTX of the (real, non-simulator) kernel for compute capability ``cc``.

    Needs NVVM (the ``nvidia-cuda-nvcc-cu12`` wheel) but no GPU.
    """
    if SIM:
        raise RuntimeError("compile_ptx_for needs the real CUDA target, not the simulator")
    ptx, _ = cuda.compile_ptx(_tickets_kernel, _KERNEL_SIG, cc=cc, **_JIT_OPTIONS)
    return str(ptx)
