"""Tickets: keyed BLAKE3 of each tile transcript, and the winning rule (PROTOCOL §4).

``ticket(ti, tj) = BLAKE3(T ‖ le32(ti) ‖ le32(tj), key = K)`` read as a
little-endian 256-bit integer; the tile wins if ``ticket ≤ target · h·w·k``.
K is the 32-byte ticket key: consensus derives it from seed_A and the block's
result_root, so that a block whose result_root was changed has other tickets
(kernels only take the key).

A miner hashes every tile of every attempt (16,384 tiles at 2048²), far too
many for one Python call each, so the miner uses a Numba port of the BLAKE3
compression function for exactly this 72-byte, single-chunk message. The
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
_M32 = np.uint64(0xFFFFFFFF)


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
def _rotr(x: np.uint64, n: int) -> np.uint64:
    return ((x >> np.uint64(n)) | (x << np.uint64(32 - n))) & _M32


@njit(nogil=True, cache=True, inline="always")
def _g(
    a: np.uint64, b: np.uint64, c: np.uint64, d: np.uint64, mx: np.uint64, my: np.uint64
) -> tuple[np.uint64, np.uint64, np.uint64, np.uint64]:
    a = (a + b + mx) & _M32
    d = _rotr(d ^ a, 16)
    c = (c + d) & _M32
    b = _rotr(b ^ c, 12)
    a = (a + b + my) & _M32
    d = _rotr(d ^ a, 8)
    c = (c + d) & _M32
    b = _rotr(b ^ c, 7)
    return a, b, c, d


@njit(nogil=True, cache=True)
def _compress(cv: np.ndarray, m: np.ndarray, block_len: int, flags: int, out: np.ndarray) -> None:
    """BLAKE3 compression with counter 0, writing the 8-word chaining value to ``out``.

    State words live in scalars (registers), not an array, so the 7 rounds
    compile to straight-line integer code with no memory traffic.
    """
    s0, s1, s2, s3, s4, s5, s6, s7 = cv[0], cv[1], cv[2], cv[3], cv[4], cv[5], cv[6], cv[7]
    s8, s9, s10, s11 = _IV[0], _IV[1], _IV[2], _IV[3]
    s12 = np.uint64(0)
    s13 = np.uint64(0)
    s14 = np.uint64(block_len)
    s15 = np.uint64(flags)
    for rnd in range(7):
        o = _SCHEDULE[rnd]
        s0, s4, s8, s12 = _g(s0, s4, s8, s12, m[o[0]], m[o[1]])
        s1, s5, s9, s13 = _g(s1, s5, s9, s13, m[o[2]], m[o[3]])
        s2, s6, s10, s14 = _g(s2, s6, s10, s14, m[o[4]], m[o[5]])
        s3, s7, s11, s15 = _g(s3, s7, s11, s15, m[o[6]], m[o[7]])
        s0, s5, s10, s15 = _g(s0, s5, s10, s15, m[o[8]], m[o[9]])
        s1, s6, s11, s12 = _g(s1, s6, s11, s12, m[o[10]], m[o[11]])
        s2, s7, s8, s13 = _g(s2, s7, s8, s13, m[o[12]], m[o[13]])
        s3, s4, s9, s14 = _g(s3, s4, s9, s14, m[o[14]], m[o[15]])
    out[0] = s0 ^ s8
    out[1] = s1 ^ s9
    out[2] = s2 ^ s10
    out[3] = s3 ^ s11
    out[4] = s4 ^ s12
    out[5] = s5 ^ s13
    out[6] = s6 ^ s14
    out[7] = s7 ^ s15


@njit(parallel=True, nogil=True, cache=True)
def _all_tickets(T: np.ndarray, key: np.ndarray) -> np.ndarray:
    tm, tn, _ = T.shape
    out = np.empty((tm, tn, 8), dtype=np.uint32)
    for ti in prange(tm):
        # Scratch buffers are per row of tiles, not per tile: allocation is not free.
        block0 = np.empty(16, dtype=np.uint64)
        block1 = np.zeros(16, dtype=np.uint64)
        cv = np.empty(8, dtype=np.uint64)
        res = np.empty(8, dtype=np.uint64)
        for tj in range(tn):
            for i in range(16):
                block0[i] = T[ti, tj, i]
            block1[0] = ti
            block1[1] = tj
            _compress(key, block0, 64, _KEYED_HASH | _CHUNK_START, cv)
            _compress(cv, block1, 8, _KEYED_HASH | _CHUNK_END | _ROOT, res)
            for i in range(8):
                out[ti, tj, i] = np.uint32(res[i])
    return out


def all_tickets(T: np.ndarray, key: bytes) -> np.ndarray:
    """Every tile's ticket under the ticket ``key``, as 8 little-endian uint32 words,
    shape (m/h, n/w, 8)."""
    check_seed("ticket key", key)
    if T.ndim != 3 or T.shape[2] != TRANSCRIPT_WORDS or T.dtype != np.uint32:
        raise ValueError(f"transcripts must be uint32 (tm, tn, 16), got {T.dtype} {T.shape}")
    key_words = np.frombuffer(bytes(key), dtype="<u4").astype(np.uint64)
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
