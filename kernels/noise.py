"""Low-rank noise from a seed (PROTOCOL §3).

E = L·R where L (rows×r) is uniform in [-32, 31] and every column c of R (r×k)
holds one +1 at row p(c) and one −1 at a different row q(c). So
``E[i, c] = L[i, p(c)] − L[i, q(c)]``: generating E is a gather, O(rows·k),
and a verifier can derive any single row of E from L's row alone.

Byte layout (both streams are BLAKE3 XOFs keyed by the 32-byte seed):

* ``L`` stream, input ``b"pouwnet/noise/L"``: byte ``i·r + s`` gives
  ``L[i, s] = (byte & 63) − 32``. Row i starts at offset ``i·r`` so a verifier
  seeks straight to it.
* ``perm`` stream, input ``b"pouwnet/noise/perm"``: four bytes per column c,
  two little-endian u16 ``x, y``; ``p = x mod r`` and
  ``q = (p + 1 + y mod (r − 1)) mod r`` (never equal to p).

For job operands, ``E_A`` has ``rows = m`` (rows of A) and ``E_B`` is built
with ``rows = n`` and used transposed: ``E_Bᵀ[j, c] = L_B[j, p_B(c)] − L_B[j, q_B(c)]``,
matching B's commitment by columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import blake3
import numpy as np
from numba import njit, prange

from kernels.blake3_lanes import message_block, xof_group
from kernels.threads import exclusive, own_build
from kernels.validate import check_rank, check_seed

L_LABEL = b"pouwnet/noise/L"
PERM_LABEL = b"pouwnet/noise/perm"
L_BLOCK = message_block(L_LABEL)
PERM_BLOCK = message_block(PERM_LABEL)
L_LEN, PERM_LEN = len(L_LABEL), len(PERM_LABEL)
"""The labels as message words and their lengths in bytes, for
:func:`kernels.blake3_lanes.keyed_xof` (compiled callers that read the streams
themselves)."""


@dataclass(frozen=True)
class NoiseFactors:
    """The factors of one noise matrix: ``E[i, c] = L[i, p[c]] − L[i, q[c]]``."""

    L: np.ndarray  # int8 (rows, r), values in [-32, 31]
    p: np.ndarray  # int32 (k,), values in [0, r)
    q: np.ndarray  # int32 (k,), values in [0, r), q != p

    @property
    def rank(self) -> int:
        return int(self.L.shape[1])


def _xof(seed: bytes, label: bytes, length: int, seek: int = 0) -> np.ndarray:
    hasher = blake3.blake3(label, key=bytes(seed))
    return np.frombuffer(hasher.digest(length=length, seek=seek), dtype=np.uint8)


def permutation_stream(seed: bytes, k: int) -> np.ndarray:
    """The raw permutation stream of a k-column noise (4 bytes per column)."""
    check_seed("seed", seed)
    return unchecked_permutation_stream(seed, k)


def unchecked_permutation_stream(seed: bytes, k: int) -> np.ndarray:
    """:func:`permutation_stream` for a caller that has checked the seed (a verifier's
    per-tile path, where each check costs a few percent)."""
    return _xof(seed, PERM_LABEL, 4 * k)


def derive_permutation(seed: bytes, k: int, r: int) -> tuple[np.ndarray, np.ndarray]:
    """The column structure of R: p(c), q(c) for every c < k."""
    check_rank(r)
    return permutation_from_stream(permutation_stream(seed, k), r)


@njit(nogil=True, cache=True, inline="always")
def _magic(r: int) -> tuple[np.uint64, np.uint64]:
    """(r − 1, ⌊2^32 / (r − 1)⌋ + 1): y mod (r − 1) = y − ((y·magic) >> 32)·(r − 1), exact for
    16-bit y and r ≤ 2^16, so the loops below divide nothing."""
    d = np.uint64(r - 1)
    return d, (np.uint64(1) << np.uint64(32)) // d + np.uint64(1)


@njit(nogil=True, cache=True, inline="always")
def _column(
    words: np.ndarray, c: int, d: np.uint64, magic: np.uint64, mask: np.uint32
) -> tuple[np.uint32, np.uint32]:
    """p(c), q(c) from column c's little-endian u16 pair (x, y) in ``words``."""
    y = np.uint64(words[2 * c + 1])
    y_mod = np.uint32(y - ((y * magic) >> np.uint64(32)) * d)
    pc = np.uint32(words[2 * c]) & mask
    return pc, (pc + np.uint32(1) + y_mod) & mask


@njit(nogil=True, cache=True, inline="always")
def _permutation_into(raw: np.ndarray, r: int, p: np.ndarray, q: np.ndarray) -> None:
    """p[c], q[c] for every column c from the stream's little-endian u16 pairs (x, y)."""
    words = raw.view(np.uint16)
    d, magic = _magic(r)
    mask = np.uint32(r - 1)
    for c in range(p.shape[0]):
        p[c], q[c] = _column(words, c, d, magic, mask)


@njit(nogil=True, cache=True)
def permutation_from_stream(raw: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """p, q (int32) from the stream's little-endian u16 pairs (x, y): p = x mod r,
    q = (p + 1 + y mod (r − 1)) mod r. One compiled loop: a verifier derives two of
    these per tile."""
    k = raw.shape[0] // 4
    p = np.empty(k, dtype=np.int32)
    q = np.empty(k, dtype=np.int32)
    _permutation_into(raw, r, p, q)
    return p, q


@njit(nogil=True, cache=True)
def permutation_bytes(raw: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`permutation_from_stream` as bytes (uint8, r ≤ 256): the index vectors of a
    byte permute (64 columns' p or q in one zmm)."""
    k = raw.shape[0] // 4
    p = np.empty(k, dtype=np.uint8)
    q = np.empty(k, dtype=np.uint8)
    _permutation_into(raw, r, p, q)
    return p, q


def factor_stream(seed: bytes, first_row: int, count: int, r: int) -> np.ndarray:
    """The raw L stream of rows ``first_row … first_row + count − 1`` (r bytes each): one seek."""
    check_seed("seed", seed)
    check_rank(r)
    if first_row < 0 or count <= 0:
        raise ValueError(f"bad row range: first_row={first_row}, count={count}")
    return unchecked_factor_stream(seed, first_row, count, r)


def unchecked_factor_stream(seed: bytes, first_row: int, count: int, r: int) -> np.ndarray:
    """:func:`factor_stream` for a caller that has checked the seed, the rank and the rows."""
    return _xof(seed, L_LABEL, count * r, seek=first_row * r)


def factor_values(raw: np.ndarray, count: int, r: int) -> np.ndarray:
    """L's rows (count × r int8) from their raw stream (:func:`factor_stream`)."""
    return _factors_of(raw, count, r)


def derive_factor_rows(seed: bytes, first_row: int, count: int, r: int) -> np.ndarray:
    """Rows ``first_row … first_row + count − 1`` of L only (the verifier's O(h·r) path).

    A tile's rows are contiguous in the L stream, so this is one seek.
    """
    return factor_values(factor_stream(seed, first_row, count, r), count, r)


_GROUP_WORDS = 256
"""What one task of :func:`_l_stream` reads of the L stream: 16 XOF blocks, 1 KiB."""


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _l_stream(key: np.ndarray, msg: np.ndarray, nbytes: int) -> np.ndarray:
    """The first ``nbytes`` of the L stream (uint8) from the seed's little-endian words
    ``key`` and the L label's message words ``msg`` (:data:`L_BLOCK`: an argument, not
    the global, which a parallel loop read 6× slower), 16 XOF blocks (one compression
    each, side by side) per task across the threads."""
    groups = (nbytes + 4 * _GROUP_WORDS - 1) // (4 * _GROUP_WORDS)
    words = np.empty(groups * _GROUP_WORDS, dtype=np.uint32)
    for g in prange(groups):
        xof_group(key, 0, msg, L_LEN, 16 * g, words, g * _GROUP_WORDS)
    return words.view(np.uint8)[:nbytes]


@njit(nogil=True, cache=True)
def _factors_of(raw: np.ndarray, rows: int, r: int) -> np.ndarray:
    """L (rows×r int8) from its stream (XOF bytes → entries uniform in [-32, 31]):
    (byte & 63) − 32. Serial, ~4 µs for 128 KiB: as
    a loop of the parallel XOF it lost its vectorisation once loaded from Numba's cache
    (~30× slower than compiled fresh)."""
    out = np.empty(rows * r, dtype=np.int8)
    for i in range(rows * r):
        out[i] = np.int8((raw[i] & 63) - 32)
    return out.reshape((rows, r))


def derive_noise(seed: bytes, rows: int, k: int, r: int) -> NoiseFactors:
    """All factors of a rows×k noise matrix.

    L is read by the compiled XOF across the threads (:func:`_l_stream`): a miner
    derives it for all m + n rows every attempt, ~2 × 128 KiB at 2048³, and on one
    thread that was ~0.3 ms of an attempt whose product runs on every core (and of a
    GPU attempt, whose noise the host derives)."""
    check_seed("seed", seed)
    check_rank(r)
    if rows <= 0 or k <= 0:
        raise ValueError(f"noise shape must be positive, got {rows}x{k}")
    key = np.frombuffer(bytes(seed), dtype="<u4").astype(np.uint32)
    L = _factors_of(_l_stream(key, L_BLOCK, rows * r), rows, r)
    p, q = derive_permutation(seed, k, r)
    return NoiseFactors(L=L, p=p, q=q)


_BLOCK = 64
"""Side of the blocks the noise is built in: two 64×64 int8 scratch blocks stay in L1."""


@njit(nogil=True, cache=True, inline="always")
def _noise_rows(
    block: np.ndarray,
    src: np.ndarray,
    lt: np.ndarray,
    p: np.ndarray,
    q: np.ndarray,
    c0: int,
    nc: int,
    j0: int,
    nj: int,
    add_src: bool,
) -> None:
    """block[cc, jj] = (src[c0+cc, j0+jj] if add_src) + Lᵀ[p(c0+cc), j0+jj] − Lᵀ[q(c0+cc), j0+jj].

    Along c both noise terms are rows of Lᵀ: contiguous loops that vectorise.
    """
    for cc in range(nc):
        row = block[cc]
        plus = lt[p[c0 + cc], j0 : j0 + nj]
        minus = lt[q[c0 + cc], j0 : j0 + nj]
        if add_src:
            s_row = src[c0 + cc, j0 : j0 + nj]
            for jj in range(nj):
                row[jj] = s_row[jj] + plus[jj] - minus[jj]
        else:
            for jj in range(nj):
                row[jj] = plus[jj] - minus[jj]


@njit(nogil=True, cache=True, inline="always")
def _transpose_words(
    block: np.ndarray, nc: int, nj: int, dst: np.ndarray, r0: int, w0: int
) -> None:
    """dst[r0 + jj, w0 + c8] = bytes block[8·c8 … 8·c8 + 7, jj] as one little-endian word.

    8×8 bytes at a time in eight 64-bit words, by three rounds of masked swaps
    (4×4, 2×2, 1×1 byte blocks): ~1 operation per byte, where a byte-wise
    transpose costs ~4 ns per entry. Columns of ``block`` past ``nj`` must be
    there (zero padding) but are not stored.
    """
    words = block.view(np.uint64)  # word [cc, j8] holds bytes 8·j8 … 8·j8 + 7 of row cc
    m4 = np.uint64(0x00000000FFFFFFFF)
    m2 = np.uint64(0x0000FFFF0000FFFF)
    m1 = np.uint64(0x00FF00FF00FF00FF)
    for j8 in range((nj + 7) // 8):
        for c8 in range(nc // 8):
            w = words[8 * c8 : 8 * c8 + 8, j8]
            x0, x1, x2, x3, x4, x5, x6, x7 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]
            t = ((x0 >> np.uint64(32)) ^ x4) & m4
            x0, x4 = x0 ^ (t << np.uint64(32)), x4 ^ t
            t = ((x1 >> np.uint64(32)) ^ x5) & m4
            x1, x5 = x1 ^ (t << np.uint64(32)), x5 ^ t
            t = ((x2 >> np.uint64(32)) ^ x6) & m4
            x2, x6 = x2 ^ (t << np.uint64(32)), x6 ^ t
            t = ((x3 >> np.uint64(32)) ^ x7) & m4
            x3, x7 = x3 ^ (t << np.uint64(32)), x7 ^ t
            t = ((x0 >> np.uint64(16)) ^ x2) & m2
            x0, x2 = x0 ^ (t << np.uint64(16)), x2 ^ t
            t = ((x1 >> np.uint64(16)) ^ x3) & m2
            x1, x3 = x1 ^ (t << np.uint64(16)), x3 ^ t
            t = ((x4 >> np.uint64(16)) ^ x6) & m2
            x4, x6 = x4 ^ (t << np.uint64(16)), x6 ^ t
            t = ((x5 >> np.uint64(16)) ^ x7) & m2
            x5, x7 = x5 ^ (t << np.uint64(16)), x7 ^ t
            t = ((x0 >> np.uint64(8)) ^ x1) & m1
            x0, x1 = x0 ^ (t << np.uint64(8)), x1 ^ t
            t = ((x2 >> np.uint64(8)) ^ x3) & m1
            x2, x3 = x2 ^ (t << np.uint64(8)), x3 ^ t
            t = ((x4 >> np.uint64(8)) ^ x5) & m1
            x4, x5 = x4 ^ (t << np.uint64(8)), x5 ^ t
            t = ((x6 >> np.uint64(8)) ^ x7) & m1
            x6, x7 = x6 ^ (t << np.uint64(8)), x7 ^ t
            r = r0 + 8 * j8
            col = w0 + c8
            left = nj - 8 * j8
            dst[r, col] = x0
            if left > 1:
                dst[r + 1, col] = x1
            if left > 2:
                dst[r + 2, col] = x2
            if left > 3:
                dst[r + 3, col] = x3
            if left > 4:
                dst[r + 4, col] = x4
            if left > 5:
                dst[r + 5, col] = x5
            if left > 6:
                dst[r + 6, col] = x6
            if left > 7:
                dst[r + 7, col] = x7


def _add_noise_body(x: np.ndarray, lt: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """x + E (8 | k): noise built along c in 64×64 blocks, transposed word-wise, added by rows."""
    rows, k = x.shape
    out = np.empty((rows, k), dtype=np.int8)
    bs = _BLOCK
    nbi = (rows + bs - 1) // bs
    nbc = (k + bs - 1) // bs
    for blk in prange(nbi * nbc):
        i0 = (blk // nbc) * bs
        c0 = (blk % nbc) * bs
        ni = min(rows, i0 + bs) - i0
        nc = min(k, c0 + bs) - c0
        noise = np.zeros((bs, bs), dtype=np.int8)  # [c, i]
        _noise_rows(noise, x, lt, p, q, c0, nc, i0, ni, False)
        noise_t = np.empty((bs, bs), dtype=np.int8)  # [i, c]
        _transpose_words(noise, nc, ni, noise_t.view(np.uint64), 0, 0)
        for ii in range(ni):
            o_row = out[i0 + ii, c0 : c0 + nc]
            x_row = x[i0 + ii, c0 : c0 + nc]
            e_row = noise_t[ii]
            for cc in range(nc):
                o_row[cc] = x_row[cc] + e_row[cc]
    return out


def _add_noise_bytes_body(x: np.ndarray, L: np.ndarray, p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """x + E one entry at a time, for any k (shapes whose k is not a multiple of 8)."""
    rows, k = x.shape
    out = np.empty((rows, k), dtype=np.int8)
    for i in prange(rows):
        for c in range(k):
            out[i, c] = np.int8(x[i, c] + L[i, p[c]] - L[i, q[c]])
    return out


# One body, two compilations: waking the thread pool costs more than a
# verifier's 32 rows of noise, so small inputs take the serial build (a function of
# its own name, else Numba's cache hands either build to both: ``own_build``).
_add_noise_parallel = exclusive(njit(parallel=True, nogil=True, cache=True)(_add_noise_body))
_add_noise_serial = njit(nogil=True, cache=True)(own_build(_add_noise_body, "_add_noise_serial"))
_add_noise_bytes = exclusive(njit(parallel=True, nogil=True, cache=True)(_add_noise_bytes_body))
_PARALLEL_MIN_ENTRIES = 1 << 18


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _add_noise_transposed(
    b: np.ndarray, lt: np.ndarray, p: np.ndarray, q: np.ndarray
) -> np.ndarray:
    """out[j, c] = b[c, j] + L[j, p(c)] − L[j, q(c)]: Bᵀ + E_Bᵀ in one blocked pass (8 | k).

    ``lt`` is Lᵀ (r×n): along a row c of B both noise terms are rows of Lᵀ, so
    a 64×64 block is computed with contiguous, vectorised loops into an L1
    scratch, then transposed 8 rows at a time: one 64-bit store gathers the 8
    bytes of 8 consecutive c for one j. (A byte-wise gather or transpose costs
    ~4 ns per entry, as much as the VNNI product's share of it.)
    """
    k, n = b.shape
    out = np.empty((n, k), dtype=np.int8)
    out_words = out.view(np.uint64)  # (n, k/8)
    bs = _BLOCK
    nbj = (n + bs - 1) // bs
    nbc = (k + bs - 1) // bs
    for blk in prange(nbj * nbc):
        j0 = (blk // nbc) * bs
        c0 = (blk % nbc) * bs
        nj = min(n, j0 + bs) - j0
        nc = min(k, c0 + bs) - c0
        block = np.zeros((bs, bs), dtype=np.int8)  # [c, j]
        _noise_rows(block, b, lt, p, q, c0, nc, j0, nj, True)
        _transpose_words(block, nc, nj, out_words, j0, c0 // 8)
    return out


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _add_noise_transposed_bytes(
    b: np.ndarray, L: np.ndarray, p: np.ndarray, q: np.ndarray
) -> np.ndarray:
    """The same for any k, one byte at a time (shapes whose k is not a multiple of 8)."""
    k, n = b.shape
    out = np.empty((n, k), dtype=np.int8)
    for j in prange(n):
        for c in range(k):
            out[j, c] = np.int8(b[c, j] + L[j, p[c]] - L[j, q[c]])
    return out


def add_noise_transposed(b: np.ndarray, f: NoiseFactors) -> np.ndarray:
    """Bᵀ + E_Bᵀ (n×k int8) from B (k×n) and the noise built with n rows."""
    if b.shape != (f.p.shape[0], f.L.shape[0]):
        raise ValueError(
            f"operand shape {b.shape} does not match noise shape {(f.p.shape[0], f.L.shape[0])}"
        )
    b = np.ascontiguousarray(b)
    if b.shape[0] % 8:
        slow: np.ndarray = _add_noise_transposed_bytes(b, f.L, f.p, f.q)
        return slow
    lt = np.ascontiguousarray(f.L.T)
    out: np.ndarray = _add_noise_transposed(b, lt, f.p, f.q)
    return out


def expand_noise(f: NoiseFactors) -> np.ndarray:
    """The dense noise matrix E (rows×k int8), for tests and reference code."""
    zeros = np.zeros((f.L.shape[0], f.p.shape[0]), dtype=np.int8)
    return add_noise(zeros, f)


def add_noise(x: np.ndarray, f: NoiseFactors) -> np.ndarray:
    """x + E as int8 (x is an int7 operand, so the sum lies in [-127, 126])."""
    if x.shape != (f.L.shape[0], f.p.shape[0]):
        raise ValueError(
            f"operand shape {x.shape} does not match noise shape {(f.L.shape[0], f.p.shape[0])}"
        )
    x = np.ascontiguousarray(x)
    if x.shape[1] % 8:
        slow: np.ndarray = _add_noise_bytes(x, f.L, f.p, f.q)
        return slow
    kernel = _add_noise_parallel if x.size >= _PARALLEL_MIN_ENTRIES else _add_noise_serial
    out: np.ndarray = kernel(x, np.ascontiguousarray(f.L.T), f.p, f.q)
    return out
