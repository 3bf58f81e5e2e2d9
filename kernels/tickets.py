"""Tickets: keyed BLAKE3 of each tile transcript, and the winning rule (PROTOCOL §4).

``ticket(ti, tj) = BLAKE3(T ‖ le32(ti) ‖ le32(tj), key = K)`` read as a
little-endian 256-bit integer; the tile wins if ``ticket ≤ target · h·w·k``.
K is the 32-byte ticket key: consensus derives it from seed_A and the block's
result_root, so that a block whose result_root was changed has other tickets
(kernels only take the key).

A miner hashes every tile of every attempt (16,384 tiles at 2048²), far too
many for one Python call each, so the miner uses its own BLAKE3 compression for
exactly this 72-byte, single-chunk message: LLVM IR on 16 lanes, one tile per
lane, the state in registers (0.17 ms on two AVX-512 cores at 2048², 0.31 ms on
AVX2; the row-at-a-time Numba loops before took 0.46 and 0.58, NumPy-free Python
4.5). The verifier and the tests use the ``blake3`` library, and the tests prove
the two agree bit for bit.
"""

from __future__ import annotations

from typing import Protocol

import blake3
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from kernels.blake3_lanes import CHUNK_END, CHUNK_START, KEYED_HASH, ROOT, compress16
from kernels.irvec import I32, V16I32, array_data, const16, splat16, transposed16
from kernels.params import TRANSCRIPT_WORDS
from kernels.threads import exclusive
from kernels.validate import check_seed

TICKET_BITS = 256
_MAX_TICKET = (1 << TICKET_BITS) - 1


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


@intrinsic
def _tickets16(tctx, t_flat, t_off, key, ti, tj0, count, out, out_off):
    """The tickets of tiles (ti, tj0 + l), l < ``count`` ≤ 16: their transcripts are the
    16 words at t_flat[t_off + 16·l …], their tickets go to out[out_off + 8·l …].

    The 16 transcripts are transposed in registers into the block's 16 message words
    (tile l in lane l), both compressions run on whole vectors, and the 8 output words
    are transposed back: the state stays in registers, where one row of tiles per
    compression with the state in memory loaded and stored it at every step.
    """
    ip = types.intp
    sig = types.void(t_flat, ip, key, ip, ip, ip, out, ip)

    def codegen(context, builder, signature, args):
        _, t_off, _, ti_v, tj0, count_v, _, out_off = args

        data = array_data(context, builder, signature, args)

        def n(v: int) -> ir.Constant:
            return ir.Constant(t_off.type, v)

        t_p, key_p, out_p = data(0), data(2), data(6)
        last = builder.sub(count_v, n(1))
        rows = []
        for lane in range(16):  # lanes past ``count`` read the last tile; never stored
            tile = builder.select(builder.icmp_signed("<", n(lane), count_v), n(lane), last)
            at = builder.gep(t_p, [builder.add(t_off, builder.mul(tile, n(16)))])
            rows.append(builder.load(builder.bitcast(at, V16I32.as_pointer()), align=4))
        m = transposed16(builder, rows)
        key_cv = [splat16(builder, builder.load(builder.gep(key_p, [n(i)]))) for i in range(8)]
        cv = compress16(builder, key_cv, m, 64, KEYED_HASH | CHUNK_START)
        tj = builder.add(
            splat16(builder, builder.trunc(tj0, I32)), ir.Constant(V16I32, list(range(16)))
        )
        m2 = [splat16(builder, builder.trunc(ti_v, I32)), tj] + [const16(0)] * 14
        words = compress16(builder, cv, m2, 8, KEYED_HASH | CHUNK_END | ROOT)
        tickets = transposed16(builder, words + [const16(0)] * 8)
        low8 = ir.Constant(ir.VectorType(I32, 8), None)
        for lane in range(16):
            with builder.if_then(builder.icmp_signed("<", n(lane), count_v)):
                word8 = builder.shuffle_vector(
                    tickets[lane], tickets[lane], ir.Constant(ir.VectorType(I32, 8), list(range(8)))
                )
                at = builder.gep(out_p, [builder.add(out_off, n(8 * lane))])
                builder.store(word8, builder.bitcast(at, low8.type.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _all_tickets(T: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Every tile's ticket, 16 tiles of a row of tiles per task (the last group of a row
    may be shorter)."""
    tm, tn, _ = T.shape
    out = np.empty((tm, tn, 8), dtype=np.uint32)
    t_flat = T.reshape(-1)
    out_flat = out.reshape(-1)
    groups = (tn + 15) // 16
    for task in prange(tm * groups):
        ti = task // groups
        tj0 = task % groups * 16
        first = ti * tn + tj0
        count = min(16, tn - tj0)
        # An intrinsic: the typing context is implicit.
        _tickets16(t_flat, 16 * first, key, ti, tj0, count, out_flat, 8 * first)  # type: ignore[call-arg]
    return out


def all_tickets(T: np.ndarray, key: bytes) -> np.ndarray:
    """Every tile's ticket under the ticket ``key``, as 8 little-endian uint32 words,
    shape (m/h, n/w, 8)."""
    check_seed("ticket key", key)
    if T.ndim != 3 or T.shape[2] != TRANSCRIPT_WORDS or T.dtype != np.uint32:
        raise ValueError(f"transcripts must be uint32 (tm, tn, 16), got {T.dtype} {T.shape}")
    key_words = np.frombuffer(bytes(key), dtype="<u4").astype(np.uint32)
    return _all_tickets(np.ascontiguousarray(T), key_words)


class HeldTranscripts(Protocol):
    """An attempt's transcripts where its backend computed them: the tickets are hashed
    there, and the transcripts come to the host only if asked for."""

    def tickets(self, key: bytes) -> np.ndarray:
        """Every tile's ticket under ``key``, as :func:`all_tickets` gives them."""
        ...

    def host(self) -> np.ndarray:
        """The transcripts, uint32 (m/h, n/w, 16), on the host."""
        ...


class HostTranscripts:
    """Transcripts computed on the host: tickets by :func:`all_tickets`."""

    def __init__(self, transcripts: np.ndarray) -> None:
        self._t = transcripts

    def tickets(self, key: bytes) -> np.ndarray:
        return all_tickets(self._t, key)

    def host(self) -> np.ndarray:
        return self._t


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
