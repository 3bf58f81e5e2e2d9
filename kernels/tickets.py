"""Tickets: keyed BLAKE3 of each tile transcript, and the winning rule (PROTOCOL §4).

``ticket(ti, tj) = BLAKE3(T ‖ le32(ti) ‖ le32(tj), key = K)`` read as a
little-endian 256-bit integer; the tile wins if ``ticket ≤ target · h·w·k``.
K is the 32-byte ticket key: consensus derives it from seed_A and the block's
result_root, so that a block whose result_root was changed has other tickets
(kernels only take the key).

A miner hashes every tile of every attempt (16,384 tiles at 2048²), far too
many for one Python call each, so the miner uses a Numba port of the BLAKE3
compression function for exactly this 72-byte, single-chunk message, one tile
per vector lane (a row of tiles at a time: 0.7 ms instead of 4.5 at 2048²). The
verifier and the tests use the ``blake3`` library, and the tests prove the two
agree bit for bit.
"""

from __future__ import annotations

import blake3
import numpy as np
from numba import njit, prange

from kernels.params import TRANSCRIPT_WORDS
from kernels.validate import check_seed

TICKET_BITS = 256
_MAX_TICKET = (1 << TICKET_BITS) - 1

_IV = np.array(
    [
        0x6A09E667,
        0xBB67AE85,
        0x3C6EF372,
        0xA54FF53A,
        0x510E527F,
        0x9B05688C,
        0x1F83D9AB,
        0x5BE0CD19,
    ],
    dtype=np.uint64,
)
_MSG_PERMUTATION = np.array([2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8], dtype=np.int64)
_CHUNK_START = 1
_CHUNK_END = 2
_ROOT = 8
_KEYED_HASH = 16


def ticket_message(T_tile: np.ndarray, ti: int, tj: int) -> bytes:
    """The 72 bytes that are hashed for tile (ti, tj)."""
    return (
        np.ascontiguousarray(T_tile, dtype="<u4").tobytes()
        + int(ti).to_bytes(4, "little")
        + int(tj).to_bytes(4, "little")
    )


def ticket_of(T_tile: np.ndarray, key: bytes, ti: int, tj: int) -> int:
    """The ticket of one tile under the 32-byte ticket ``key``, with the blake3 library
    (the verifier's path)."""
    check_seed("ticket key", key)
    if T_tile.shape != (TRANSCRIPT_WORDS,):
        raise ValueError(f"a tile transcript has {TRANSCRIPT_WORDS} words, got {T_tile.shape}")
    digest = blake3.blake3(ticket_message(T_tile, ti, tj), key=bytes(key)).digest()
    return int.from_bytes(digest, "little")


def ticket_threshold(target: int, h: int, w: int, k: int) -> int:
    """``target · h·w·k``, capped at 2^256 − 1 (difficulty is per multiply-accumulate)."""
    if target <= 0:
        raise ValueError(f"target must be positive, got {target}")
    return min(target * h * w * k, _MAX_TICKET)


def ticket_wins(ticket: int, target: int, h: int, w: int, k: int) -> bool:
    return ticket <= ticket_threshold(target, h, w, k)


def _message_schedule() -> np.ndarray:
    """Word order of the message in each of the 7 rounds (the permutation applied cumulatively)."""
    rounds = [list(range(16))]
    for _ in range(6):
        prev = rounds[-1]
        rounds.append([prev[int(i)] for i in _MSG_PERMUTATION])
    return np.array(rounds, dtype=np.int64)


_SCHEDULE = _message_schedule()


@njit(nogil=True, cache=True, inline="always")
def _g(st: np.ndarray, a: int, b: int, c: int, d: int, mx: np.ndarray, my: np.ndarray) -> None:
    """The BLAKE3 G function on state words a, b, c, d of every lane (one tile per lane).

    Each lane's arithmetic is independent and 32-bit, so LLVM runs 16 tiles per
    zmm (8 per ymm) instead of one tile per scalar register.
    """
    sa, sb, sc, sd = st[a], st[b], st[c], st[d]
    for lane in range(sa.shape[0]):
        va, vb, vc, vd = sa[lane], sb[lane], sc[lane], sd[lane]
        va = np.uint32(va + vb + mx[lane])
        x = np.uint32(vd ^ va)
        vd = np.uint32((x >> np.uint32(16)) | (x << np.uint32(16)))
        vc = np.uint32(vc + vd)
        x = np.uint32(vb ^ vc)
        vb = np.uint32((x >> np.uint32(12)) | (x << np.uint32(20)))
        va = np.uint32(va + vb + my[lane])
        x = np.uint32(vd ^ va)
        vd = np.uint32((x >> np.uint32(8)) | (x << np.uint32(24)))
        vc = np.uint32(vc + vd)
        x = np.uint32(vb ^ vc)
        vb = np.uint32((x >> np.uint32(7)) | (x << np.uint32(25)))
        sa[lane], sb[lane], sc[lane], sd[lane] = va, vb, vc, vd


@njit(nogil=True, cache=True)
def _compress(
    cv: np.ndarray, m: np.ndarray, block_len: int, flags: int, st: np.ndarray, out: np.ndarray
) -> None:
    """BLAKE3 compression with counter 0, lane by lane: out (8, lanes) ← cv (8, lanes),
    m (16, lanes). ``st`` (16, lanes) uint32 is scratch for the state.
    """
    for i in range(8):
        st[i] = cv[i]
    for i in range(4):
        st[8 + i] = np.uint32(_IV[i])
    st[12] = 0
    st[13] = 0
    st[14] = block_len
    st[15] = flags
    for rnd in range(7):
        o = _SCHEDULE[rnd]
        _g(st, 0, 4, 8, 12, m[o[0]], m[o[1]])
        _g(st, 1, 5, 9, 13, m[o[2]], m[o[3]])
        _g(st, 2, 6, 10, 14, m[o[4]], m[o[5]])
        _g(st, 3, 7, 11, 15, m[o[6]], m[o[7]])
        _g(st, 0, 5, 10, 15, m[o[8]], m[o[9]])
        _g(st, 1, 6, 11, 12, m[o[10]], m[o[11]])
        _g(st, 2, 7, 8, 13, m[o[12]], m[o[13]])
        _g(st, 3, 4, 9, 14, m[o[14]], m[o[15]])
    for i in range(8):
        row, lo, hi = out[i], st[i], st[i + 8]
        for lane in range(row.shape[0]):
            row[lane] = lo[lane] ^ hi[lane]


@njit(parallel=True, nogil=True, cache=True)
def _all_tickets(T: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Every tile's ticket; the lanes of one compression are one row of tiles."""
    tm, tn, _ = T.shape
    out = np.empty((tm, tn, 8), dtype=np.uint32)
    for ti in prange(tm):
        # Scratch buffers are per row of tiles, not per tile: allocation is not free.
        block0 = np.empty((16, tn), dtype=np.uint32)
        block1 = np.zeros((16, tn), dtype=np.uint32)
        key_cv = np.empty((8, tn), dtype=np.uint32)
        cv = np.empty((8, tn), dtype=np.uint32)
        res = np.empty((8, tn), dtype=np.uint32)
        st = np.empty((16, tn), dtype=np.uint32)
        for tj in range(tn):
            for i in range(16):
                block0[i, tj] = T[ti, tj, i]
            for i in range(8):
                key_cv[i, tj] = key[i]
            block1[0, tj] = ti
            block1[1, tj] = tj
        _compress(key_cv, block0, 64, _KEYED_HASH | _CHUNK_START, st, cv)
        _compress(cv, block1, 8, _KEYED_HASH | _CHUNK_END | _ROOT, st, res)
        for tj in range(tn):
            for i in range(8):
                out[ti, tj, i] = res[i, tj]
    return out


def all_tickets(T: np.ndarray, key: bytes) -> np.ndarray:
    """Every tile's ticket under the ticket ``key``, as 8 little-endian uint32 words,
    shape (m/h, n/w, 8)."""
    check_seed("ticket key", key)
    if T.ndim != 3 or T.shape[2] != TRANSCRIPT_WORDS or T.dtype != np.uint32:
        raise ValueError(f"transcripts must be uint32 (tm, tn, 16), got {T.dtype} {T.shape}")
    key_words = np.frombuffer(bytes(key), dtype="<u4").astype(np.uint32)
    return _all_tickets(np.ascontiguousarray(T), key_words)


def tickets_to_ints(words: np.ndarray) -> list[int]:
    """Ticket words (…, 8) → Python integers, for display and tests."""
    flat = np.ascontiguousarray(words, dtype="<u4").reshape(-1, 8)
    return [int.from_bytes(row.tobytes(), "little") for row in flat]


@njit(nogil=True, cache=True)
def _winners(tickets: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    tm, tn, _ = tickets.shape
    hits = []
    for ti in range(tm):
        for tj in range(tn):
            win = True  # equal in every word: ticket == threshold wins
            for word in range(7, -1, -1):
                a = tickets[ti, tj, word]
                b = threshold[word]
                if a != b:
                    win = a < b
                    break
            if win:
                hits.append(ti * tn + tj)
    return np.array(hits, dtype=np.int64)


def winning_tiles(tickets: np.ndarray, threshold: int) -> list[tuple[int, int]]:
    """Tiles whose ticket ≤ threshold, in row-major order."""
    if not 0 <= threshold <= _MAX_TICKET:
        raise ValueError("threshold must be a 256-bit unsigned integer")
    thr = np.frombuffer(threshold.to_bytes(32, "little"), dtype="<u4").astype(np.uint32)
    tn = tickets.shape[1]
    return [(int(t) // tn, int(t) % tn) for t in _winners(tickets, thr)]
