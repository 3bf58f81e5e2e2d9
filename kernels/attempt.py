"""One mining attempt and the single-tile verification (PROTOCOL §3–6).

An attempt turns job operands and two seeds into the noisy product's tile
transcripts, every tile's ticket, the winning tiles, and the useful product
C = A·B. Verification recomputes one tile from its h rows of A and w columns
of B through the very same tile routine the miner used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kernels.backends import Backend, ModuleBackend, get_backend
from kernels.blake3_lanes import (
    DERIVE_KEY_MATERIAL,
    derive_key_words,
    prefixed_row_hashes,
    promoted_tree_root,
)
from kernels.noise import (
    NoiseFactors,
    add_noise,
    derive_noise,
    factor_values,
    permutation_from_stream,
    unchecked_factor_stream,
    unchecked_permutation_stream,
)
from kernels.params import DEFAULT_RANK, DEFAULT_TILE_H, DEFAULT_TILE_W, TRANSCRIPT_WORDS
from kernels.recover import recover_product
from kernels.strips import built_noisy_product
from kernels.tickets import (
    HeldTranscripts,
    HostTranscripts,
    ticket_of,
    ticket_threshold,
    winning_tiles,
)
from kernels.transcript_cpu import noisy_tile_transcript, noisy_tile_transcript_seeded, single_tile
from kernels.validate import check_int8_matrix, check_operand, check_seed, check_shapes


@dataclass(frozen=True)
class MiningParams:
    """Noise rank and hash tile; all three are consensus parameters."""

    r: int = DEFAULT_RANK
    h: int = DEFAULT_TILE_H
    w: int = DEFAULT_TILE_W


class AttemptResult:
    """An attempt's transcripts, tickets and winners; the useful product on demand.

    Recovering C costs 2r/k of the product (≈6% at k = 2048). An attempt whose
    ticket key is bound to C has recovered it already; otherwise :attr:`c` is
    computed on first use and kept.
    """

    def __init__(
        self,
        c_noisy: Callable[[], np.ndarray],
        transcripts: Callable[[], np.ndarray],
        tickets: np.ndarray,
        winners: list[tuple[int, int]],
        recover: Callable[[], np.ndarray],
        c: np.ndarray | None = None,
    ) -> None:
        # Functions returning C' and T from where the backend keeps them (each fetched once).
        self._c_noisy = c_noisy
        self._transcripts = transcripts
        self.tickets = tickets  # uint32 (m/h, n/w, 8), little-endian words
        self.winners = winners  # tiles with ticket ≤ target·h·w·k
        self._recover = recover
        self._c = c

    @property
    def transcripts(self) -> np.ndarray:
        """Every tile's transcript, uint32 (m/h, n/w, 16); from a GPU backend it is
        copied back on first use (the tickets were hashed there)."""
        return self._transcripts()

    @property
    def c_noisy(self) -> np.ndarray:
        """C' = A'·B', int32 (m, n); from a GPU backend it is copied back on first use."""
        return self._c_noisy()

    @property
    def c(self) -> np.ndarray:
        """The useful product A·B, int32 (m, n)."""
        if self._c is None:
            self._c = self._recover()
        return self._c

    def ticket(self, ti: int, tj: int) -> int:
        return int.from_bytes(self.tickets[ti, tj].astype("<u4").tobytes(), "little")


TicketKey = bytes | Callable[[np.ndarray], bytes]
"""A 32-byte ticket key, or a function of the useful product C that returns it."""


def check_job(a: np.ndarray, b: np.ndarray, params: MiningParams) -> tuple[int, int, int]:
    """Validate the types and shapes of operands A (m×k) and B (k×n) for mining; returns
    (m, k, n). Their int7 range is checked by the noisy product, every path, before it
    computes a tile: the VNNI path as it packs them, which spares an attempt a pass over
    both (~1 % of it at 2048³)."""
    check_int8_matrix("A", a)
    check_int8_matrix("B", b)
    m, k = a.shape
    kb, n = b.shape
    if kb != k:
        raise ValueError(f"A is {m}x{k} but B is {kb}x{n}: inner dimensions differ")
    check_shapes(m, k, n, params.r, params.h, params.w)
    return m, k, n


def mining_attempt(
    a: np.ndarray,
    b: np.ndarray,
    seed_a: bytes,
    seed_b: bytes,
    target: int,
    params: MiningParams = MiningParams(),
    backend: Backend | str = "cpu",
    *,
    ticket_key: TicketKey,
    between_strips: Callable[[], None] | None = None,
    bt: np.ndarray | None = None,
) -> AttemptResult:
    """One attempt: noise, noisy product with folds, all tickets; C = A·B via ``.c``.

    ``ticket_key`` is the tickets' 32-byte key, or a function of C that returns
    it: then the order is product → recovery of C → key → tickets, and ``.c``
    is already there.

    ``between_strips``, if given, is called between the ``ATTEMPT_STRIPS`` row strips the
    noisy product is then computed in (a tile's transcript depends on its own rows
    and columns only, so the strips give the same C' and transcripts bit for bit):
    the caller may run other work there (a miner, a better-paying job) and this
    attempt goes on where it stopped.

    ``bt``, if given, is B's transpose (n×k int8, the same values: a job holds both):
    where it helps, B' is packed from its rows, B's columns, as A' is from A's rows.
    """
    m, k, n = check_job(a, b, params)
    if bt is not None:
        check_int8_matrix("Bᵀ", bt)
        if bt.shape != (n, k):
            raise ValueError(f"Bᵀ is {bt.shape[0]}x{bt.shape[1]} but B is {k}x{n}")
    check_seed("seed_a", seed_a)
    check_seed("seed_b", seed_b)
    if not callable(ticket_key):
        check_seed("ticket key", ticket_key)
    be = get_backend(backend) if isinstance(backend, str) else backend
    noise_a = derive_noise(seed_a, m, k, params.r)
    noise_b = derive_noise(seed_b, n, k, params.r)
    # C' only if C is recovered, and T only if asked for: a GPU backend leaves both on the
    # device till then (and hashes the tickets there).
    c_noisy, transcripts = _noisy_product(be, a, noise_a, b, noise_b, params, between_strips, bt)

    def recover() -> np.ndarray:  # from the clean B: B'ᵀ is not needed
        return recover_product(c_noisy(), a, b, noise_a, noise_b)

    c: np.ndarray | None = None
    if callable(ticket_key):
        c = recover()
        key = ticket_key(c)
    else:
        key = ticket_key
    tickets = transcripts.tickets(key)
    winners = winning_tiles(tickets, ticket_threshold(target, params.h, params.w, k))
    return AttemptResult(c_noisy, transcripts.host, tickets, winners, recover, c)


def _noisy_product(
    be: Backend,
    a: np.ndarray,
    noise_a: NoiseFactors,
    b: np.ndarray,
    noise_b: NoiseFactors,
    params: MiningParams,
    between_strips: Callable[[], None] | None,
    bt: np.ndarray | None,
) -> tuple[Callable[[], np.ndarray], HeldTranscripts]:
    """(a function returning C', the transcripts) of A' = A + E_A and B' = B + E_B."""
    r, h, w = params.r, params.h, params.w
    if isinstance(be, ModuleBackend):  # packs A' and B' from A and B where it can
        return be.noisy_product_deferred(a, noise_a, b, noise_b, r, h, w, between_strips, bt)
    c, t = built_noisy_product(be.noisy_product, a, noise_a, b, noise_b, r, h, w, between_strips)
    return lambda: c, HostTranscripts(t)


def tile_transcript(
    a_rows: np.ndarray,
    b_cols: np.ndarray,
    ti: int,
    tj: int,
    seed_a: bytes,
    seed_b: bytes,
    params: MiningParams = MiningParams(),
) -> np.ndarray:
    """Recompute tile (ti, tj)'s transcript from its h rows of A and w columns of B.

    ``a_rows`` is h×k (rows ti·h … of A), ``b_cols`` is w×k (columns tj·w …
    of B, i.e. rows of Bᵀ). Only the noise those rows and columns touch is
    derived: h + w rows of L and the k-long permutations, O((h + w)·k). Everything
    after the checks is one compiled call on VBMI targets and on the portable path,
    everything after the four XOF reads on other VNNI targets.
    """
    h, w, r = params.h, params.w, params.r
    check_int8_matrix("A rows", a_rows)
    check_int8_matrix("B columns", b_cols)
    check_seed("seed_a", seed_a)
    check_seed("seed_b", seed_b)
    if a_rows.shape[0] != h or b_cols.shape[0] != w:
        raise ValueError(
            f"a tile needs {h} rows of A and {w} columns of B, "
            f"got {a_rows.shape[0]} and {b_cols.shape[0]}"
        )
    k = a_rows.shape[1]
    if b_cols.shape[1] != k:
        raise ValueError(f"rows of A have length {k} but columns of B have {b_cols.shape[1]}")
    check_shapes(h, k, w, r, h, w)
    if ti < 0 or tj < 0:
        raise ValueError(f"tile index must be non-negative, got ({ti}, {tj})")
    # Seeds, rank and tile index are checked above.
    try:
        T = noisy_tile_transcript_seeded(a_rows, b_cols, seed_a, seed_b, ti, tj, r)
        if T is not None:
            return T
        perm_a = unchecked_permutation_stream(seed_a, k)
        perm_b = unchecked_permutation_stream(seed_b, k)
        la_raw = unchecked_factor_stream(seed_a, ti * h, h, r)
        lb_raw = unchecked_factor_stream(seed_b, tj * w, w, r)
        T = noisy_tile_transcript(a_rows, b_cols, la_raw, perm_a, lb_raw, perm_b, r)
    except ValueError:
        check_operand("A rows", a_rows)  # names the operand and its range
        check_operand("B columns", b_cols)
        raise
    if T is None:  # no one-call verifier for this tile: build the noisy strips
        check_operand("A rows", a_rows)
        check_operand("B columns", b_cols)
        pa, qa = permutation_from_stream(perm_a, r)
        pb, qb = permutation_from_stream(perm_b, r)
        a_noisy = add_noise(a_rows, NoiseFactors(L=factor_values(la_raw, h, r), p=pa, q=qa))
        bt_noisy = add_noise(b_cols, NoiseFactors(L=factor_values(lb_raw, w, r), p=pb, q=qb))
        _, T = single_tile(a_noisy, bt_noisy, r)
    assert T.shape == (TRANSCRIPT_WORDS,)
    return T


def verify_tile_ticket(
    a_rows: np.ndarray,
    b_cols: np.ndarray,
    ti: int,
    tj: int,
    seed_a: bytes,
    seed_b: bytes,
    target: int,
    params: MiningParams = MiningParams(),
    *,
    ticket_key: bytes,
) -> int | None:
    """The tile's ticket under ``ticket_key`` if it wins at ``target``, else None."""
    T = tile_transcript(a_rows, b_cols, ti, tj, seed_a, seed_b, params)
    ticket = ticket_of(T, ticket_key, ti, tj)
    k = a_rows.shape[1]
    return ticket if ticket <= ticket_threshold(target, params.h, params.w, k) else None


def warm_up(params: MiningParams = MiningParams()) -> None:
    """Load the verifier's compiled kernels (Numba's on-disk cache) with one tiny tile,
    the row hashing of matrix commitments (a header's null-job check and every result
    root), the inner nodes of Merkle trees and a posted job's recovery of C.

    The first call of each Numba function in a process loads its machine code,
    ~1 s in all, and compiles it where nothing is cached yet (a fresh install: tens of
    seconds): a node does it on a worker thread while it starts, instead of on the
    first header a peer sends or in its miner's first posted job.
    """
    k = params.r
    rows = np.zeros((params.h, k), dtype=np.int8)
    cols = np.zeros((params.w, k), dtype=np.int8)
    seed = bytes(32)
    # Read-only, as a verifier's operands are (views of the proof's bytes): Numba compiles
    # one version per array type, and a writable tile would load a version no header uses.
    proof_rows = np.frombuffer(rows.tobytes(), dtype=np.int8).reshape(rows.shape)
    proof_cols = np.frombuffer(cols.tobytes(), dtype=np.int8).reshape(cols.shape)
    ticket_of(tile_transcript(proof_rows, proof_cols, 0, 0, seed, seed, params), seed, 0, 0)
    key = derive_key_words(b"pouwnet warm-up")  # (and a Merkle tree's inner nodes)
    # The leaves of a matrix commitment (``consensus.merkle``: a 24-byte head, a row).
    prefixed_row_hashes(
        np.zeros((16, 24), dtype=np.uint8), np.zeros((16, 64), dtype=np.uint8), key,
        DERIVE_KEY_MATERIAL,
    )  # fmt: skip
    length = np.zeros(8, dtype=np.uint8)  # and the levels above them, in one call
    promoted_tree_root(np.zeros((3, 8), dtype=np.uint32), length, length, key, DERIVE_KEY_MATERIAL)
    noise_a, noise_b = derive_noise(seed, params.h, k, k), derive_noise(seed, params.w, k, k)
    c_noisy = np.zeros((params.h, params.w), dtype=np.int32)
    recover_product(c_noisy, rows, np.ascontiguousarray(cols.T), noise_a, noise_b)
