"""Proof of useful work: mining a header on a job, and verifying its proof (PROTOCOL §4–6).

The miner tries extra-nonces: each fixes a fresh header_seed, hence fresh
noise. On a posted job one attempt computes the noisy product, recovers the
useful product C, commits its rows (result_root) and only then hashes every
tile's ticket under a key bound to that root; on the null job the root is
fixed (all zero) and C is never recovered. When a tile wins, the proof opens
that tile's h rows of A and w columns of B with Merkle branches. A verifier
recomputes just that tile: h·w·k MACs, (m·n)/(h·w) times less than the attempt.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import blake3
import numpy as np

from consensus.blocks import (
    NULL_POSTER,
    NULL_RESULT_ROOT,
    BlockHeader,
    JobSpec,
    PowProof,
    noise_seeds,
    ticket_key,
)
from consensus.errors import InvalidBlock
from consensus.merkle import (
    branch_of,
    matrix_leaf_hashes,
    matrix_rows_commitment,
    matrix_rows_root,
    tree_levels,
    verify_branch,
    verify_branches,
)
from consensus.params import NetworkParams
from kernels.attempt import MiningParams, mining_attempt, tile_transcript
from kernels.backends import Backend
from kernels.layout import transposed
from kernels.params import OPERAND_MAX, OPERAND_MIN
from kernels.tickets import ticket_of, ticket_threshold

NULL_JOB_LABEL = b"pouwnet/null-job"


def mining_params(params: NetworkParams) -> MiningParams:
    return MiningParams(r=params.rank, h=params.tile_h, w=params.tile_w)


@dataclass(frozen=True)
class Job:
    """Operands in memory with their commitments: A (m×k) and B (k×n), int7 in int8.

    ``null`` marks the null job: its block commits no product (result_root is
    ``NULL_RESULT_ROOT``), so its miner never recovers C.
    """

    a: np.ndarray
    b: np.ndarray
    spec: JobSpec
    null: bool = False
    bt: np.ndarray | None = None
    """Bᵀ (n×k, C-contiguous) where the holder has it: the columns of B that a proof opens
    are its rows, and transposing megabytes of B for each block found costs more than the
    rest of the proof."""

    @classmethod
    def from_operands(cls, a: np.ndarray, b: np.ndarray, poster: bytes) -> Job:
        """The job ``poster`` posts (or would post) on A and B."""
        m, k = a.shape
        n = b.shape[1]
        bt = transposed(b)
        # B's column root is the row root of Bᵀ.
        spec = JobSpec(poster, m, k, n, matrix_rows_root(a), matrix_rows_root(bt))
        return cls(a=a, b=np.ascontiguousarray(b), spec=spec, bt=bt)


def null_job(prev_hash: bytes, params: NetworkParams) -> Job:
    """The job an idle miner works on: operands expanded from the previous block hash.

    Nobody needs its product; it keeps the chain moving when no job is posted.
    Any operands are valid PoW (the noise makes the work full-cost whatever
    they are), so verifiers never need to regenerate these.
    """
    m, k, n = params.null_job_shape
    stream = blake3.blake3(prev_hash, key=blake3.blake3(NULL_JOB_LABEL).digest())
    raw = np.frombuffer(stream.digest(length=m * k + k * n), dtype=np.uint8)
    vals = (raw & 127).astype(np.int16) - 64  # uniform over int7
    a = vals[: m * k].astype(np.int8).reshape(m, k)
    b = vals[m * k :].astype(np.int8).reshape(k, n)
    return dataclasses.replace(Job.from_operands(a, b, NULL_POSTER), null=True)


def _open_rows(
    x: np.ndarray, first: int, count: int
) -> tuple[bytes, tuple[tuple[bytes, ...], ...]]:
    levels = tree_levels(matrix_leaf_hashes(x))
    rows = np.ascontiguousarray(x[first : first + count])
    branches = tuple(tuple(branch_of(levels, i)) for i in range(first, first + count))
    return rows.tobytes(), branches


def build_proof(job: Job, tile_i: int, tile_j: int, params: NetworkParams) -> PowProof:
    """Open tile (tile_i, tile_j): its rows of A and columns of B with branches."""
    h, w = params.tile_h, params.tile_w
    a_rows, a_br = _open_rows(job.a, tile_i * h, h)
    bt = job.bt if job.bt is not None else transposed(job.b)
    b_cols, b_br = _open_rows(bt, tile_j * w, w)
    return PowProof(tile_i, tile_j, a_rows, a_br, b_cols, b_br)


@dataclass(frozen=True)
class MinedBlock:
    header: BlockHeader
    product: np.ndarray | None  # the useful output C = A·B (int32 m×n); None on the null job
    attempts: int
    leaves: bytes | None = None  # the leaf hashes of the product's rows (32 bytes a row)


class ResultCommitment:
    """The result_root a miner's blocks on one job commit to, and the product behind it.

    The tickets are keyed by result_root, so on a posted job the first attempt
    recovers C and commits its rows before it hashes any ticket. C = A·B is the
    same for every extra-nonce, so a miner keeps this object while it mines the
    job and later attempts skip both. The null job commits ``NULL_RESULT_ROOT``
    and never recovers C. ``committed`` maps C to the matrix committed instead
    (tests only: a dishonest miner).
    """

    def __init__(
        self, job: Job, committed: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> None:
        self.spec = job.spec
        self.root: bytes | None = NULL_RESULT_ROOT if job.null else None
        self.product: np.ndarray | None = None
        self.leaves: bytes | None = None  # of the product's rows, to serve it unhashed
        self._committed = committed

    def key_for(self, seed_a: bytes) -> bytes | Callable[[np.ndarray], bytes]:
        """An attempt's ticket key, or (before C is known) how to get it from C."""
        if self.root is not None:
            return ticket_key(seed_a, self.root)
        return lambda c: self._commit(c, seed_a)

    def _commit(self, c: np.ndarray, seed_a: bytes) -> bytes:
        self.product = self._committed(c) if self._committed is not None else c
        self.root, self.leaves = matrix_rows_commitment(self.product)
        return ticket_key(seed_a, self.root)


def mine(
    template: BlockHeader,
    job: Job,
    params: NetworkParams,
    backend: Backend | str = "cpu",
    stop: threading.Event | None = None,
    first_nonce: int = 0,
    max_attempts: int | None = None,
    on_attempt: Callable[[int], None] | None = None,
    commitment: ResultCommitment | None = None,
    between_strips: Callable[[], None] | None = None,
) -> MinedBlock | None:
    """Try extra-nonces from ``first_nonce`` until a tile wins, ``stop`` is set or
    ``max_attempts`` run out (then None).

    ``template`` carries every header field but extra_nonce, result_root and
    proof; its job must be ``job.spec``. ``commitment`` carries the job's
    result_root from earlier calls (see :class:`ResultCommitment`).
    ``between_strips``: each attempt computes its product by row strips and calls
    it between them (``kernels.attempt.mining_attempt``).
    """
    if template.job != job.spec:
        raise ValueError("the template's job does not match the operands")
    if commitment is None:
        commitment = ResultCommitment(job)
    elif commitment.spec != job.spec:
        raise ValueError("the result commitment is for another job")
    mp = mining_params(params)
    nonce = first_nonce
    attempts = 0
    while (stop is None or not stop.is_set()) and (max_attempts is None or attempts < max_attempts):
        header = dataclasses.replace(template, extra_nonce=nonce)
        seed_a, seed_b = noise_seeds(header.header_seed, job.spec)
        key = commitment.key_for(seed_a)
        res = mining_attempt(
            job.a,
            job.b,
            seed_a,
            seed_b,
            template.target,
            mp,
            backend,
            ticket_key=key,
            between_strips=between_strips,
            bt=job.bt,
        )
        attempts += 1
        if on_attempt is not None:
            on_attempt(job.spec.m * job.spec.k * job.spec.n)
        if res.winners:
            assert commitment.root is not None  # the attempt has committed it
            ti, tj = res.winners[0]
            proof = build_proof(job, ti, tj, params)
            header = dataclasses.replace(header, result_root=commitment.root, proof=proof)
            return MinedBlock(
                header=header,
                product=commitment.product,
                attempts=attempts,
                leaves=commitment.leaves,
            )
        nonce = (nonce + 1) % 2**64
    return None


def _operand_block(data: bytes, rows: int, k: int, what: str) -> np.ndarray:
    if len(data) != rows * k:
        raise InvalidBlock(f"proof: {what} has {len(data)} bytes, expected {rows}x{k}")
    x = np.frombuffer(data, dtype=np.int8).reshape(rows, k)
    if x.size and (int(x.min()) < OPERAND_MIN or int(x.max()) > OPERAND_MAX):
        raise InvalidBlock(f"proof: {what} has a value outside the int7 range [-64, 63]")
    return x


def check_job_shape(job: JobSpec, params: NetworkParams) -> None:
    """A block's job must fit the network's bounds (minimum included) and the mining
    parameters."""
    r, h, w = params.rank, params.tile_h, params.tile_w
    if not (0 < job.m <= params.max_job_dim and 0 < job.n <= params.max_job_dim):
        raise InvalidBlock(f"job: m={job.m}, n={job.n} outside 1..{params.max_job_dim}")
    if not 0 < job.k <= params.max_job_k:
        raise InvalidBlock(f"job: k={job.k} outside 1..{params.max_job_k}")
    if job.k % r or job.m % h or job.n % w:
        raise InvalidBlock(f"job: shape {job.m}x{job.k}x{job.n} does not tile by r={r}, {h}x{w}")
    too_small = params.job_too_small(job.m, job.k, job.n)
    if too_small:
        raise InvalidBlock(f"job: {too_small}")


def _first_bad_opening(root: bytes, count: int, openings: list[tuple[int, bytes, Any]]) -> int:
    """The index of the first opening whose branch fails on its own (to name it)."""
    return next(
        i for i, data, branch in openings if not verify_branch(root, i, count, data, branch)
    )


def verify_pow(header: BlockHeader, params: NetworkParams) -> int:
    """Check the header's PoUW proof; returns the winning ticket or raises InvalidBlock.

    Cost: h + w Merkle branches, h + w rows of noise and h·w·k MACs.
    """
    job, proof = header.job, header.proof
    h, w = params.tile_h, params.tile_w
    check_job_shape(job, params)
    if proof.tile_i >= job.m // h or proof.tile_j >= job.n // w:
        raise InvalidBlock(
            f"proof: tile ({proof.tile_i}, {proof.tile_j}) outside the "
            f"{job.m // h}x{job.n // w} tile grid"
        )
    a_rows = _operand_block(proof.a_rows, h, job.k, "rows of A")
    b_cols = _operand_block(proof.b_cols, w, job.k, "columns of B")
    if len(proof.a_branches) != h or len(proof.b_branches) != w:
        raise InvalidBlock(f"proof: needs {h} branches for A and {w} for B")
    # The h rows (w columns) share their branches above the tile: checked together,
    # and one by one only to name the first bad one.
    rows = [(proof.tile_i * h + i, a_rows[i].tobytes(), proof.a_branches[i]) for i in range(h)]
    if not verify_branches(job.root_a, job.m, rows):
        bad = _first_bad_opening(job.root_a, job.m, rows)
        raise InvalidBlock(f"proof: Merkle branch of row {bad} of A does not match root_a")
    cols = [(proof.tile_j * w + j, b_cols[j].tobytes(), proof.b_branches[j]) for j in range(w)]
    if not verify_branches(job.root_b, job.n, cols):
        bad = _first_bad_opening(job.root_b, job.n, cols)
        raise InvalidBlock(f"proof: Merkle branch of column {bad} of B does not match root_b")
    seed_a, seed_b = noise_seeds(header.header_seed, job)
    T = tile_transcript(
        a_rows, b_cols, proof.tile_i, proof.tile_j, seed_a, seed_b, mining_params(params)
    )
    ticket = ticket_of(T, ticket_key(seed_a, header.result_root), proof.tile_i, proof.tile_j)
    if ticket > ticket_threshold(header.target, h, w, job.k):
        raise InvalidBlock("proof: ticket is above the target")
    check_null_job_result(header, params)
    return ticket


def is_null_job(job: JobSpec, prev_hash: bytes, params: NetworkParams) -> bool:
    """Whether ``job`` is the null job on top of ``prev_hash``.

    Regenerates the null job's operands (~0.2 s at main's 2048³): callers ask
    only after the proof of work has passed, and only for a non-zero result_root.
    """
    if (job.m, job.k, job.n) != params.null_job_shape:
        return False
    return job == null_job(prev_hash, params).spec


def check_null_job_result(header: BlockHeader, params: NetworkParams) -> None:
    """A null-job block commits no product: its result_root must be ``NULL_RESULT_ROOT``.

    Nobody needs the null job's C, so one value keeps one proof of work one
    block. A zero root needs no check at all, so null-job blocks (almost every
    block) pay nothing for this rule.
    """
    if header.result_root != NULL_RESULT_ROOT and is_null_job(header.job, header.prev_hash, params):
        raise InvalidBlock("result_root of a null-job block must be zero")
