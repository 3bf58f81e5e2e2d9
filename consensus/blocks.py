"""Blocks, headers and the PoUW proof as frozen records (PROTOCOL §4–7).

These hashes matter:

* ``header_seed`` — over every header field except ``result_root`` and the
  proof. It fixes the noise of an attempt; changing ``extra_nonce`` starts a
  fresh one. ``result_root`` is left out because C is only known once the
  noisy product has been computed. It names the proof of work: the chain
  refuses a second block with a header_seed it holds (consensus.chain).
* ``seed_B = H(header_seed, root_B)``, ``seed_A = H(seed_B, root_A)`` — the
  noise is fixed only after both operands are committed.
* ``ticket_key = H(seed_A, result_root)`` — the key of every ticket, so
  result_root is bound by the proof of work: changing it changes every ticket.
  A null-job block commits ``NULL_RESULT_ROOT``.
* the block hash — over the whole header, proof included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from consensus.encoding import (
    U32,
    U64,
    U256,
    Bytes,
    Field,
    ListOf,
    RecordOf,
    Schema,
    decode_record,
    encode_record,
)
from consensus.hashing import Hash32, tagged_hash, u32_bytes
from consensus.keys import ADDRESS_SIZE
from consensus.merkle import merkle_root
from consensus.transactions import MAX_TX_SIZE, Transaction

TAG_JOB_ID = "job-id"
TAG_HEADER_SEED = "header-seed"
TAG_SEED_B = "seed-b"
TAG_SEED_A = "seed-a"
TAG_TICKET_KEY = "ticket-key"
TAG_BLOCK = "block"

MAX_K = 65_536
MAX_TILE = 64
MAX_TREE_DEPTH = 32
MAX_TXS_PER_BLOCK = 100_000
MAX_BLOCK_WIRE_BYTES = 16 * 1024 * 1024

HASH = Bytes(32)
NULL_RESULT_ROOT = bytes(32)
"""The result_root of a null-job block: nobody needs its product, so none is committed."""
BRANCH = ListOf(HASH, max=MAX_TREE_DEPTH)


NULL_POSTER = bytes(ADDRESS_SIZE)
"""The poster of the null job and of genesis: an address no key signs for, so no job_post
ever has it."""


@dataclass(frozen=True)
class JobSpec:
    """The matmul a block's work was done on: who posted it, shapes and operand commitments.

    The poster is part of the job: two posters of the same operands post two jobs, so
    one cannot take another's job id (PROTOCOL §2)."""

    poster: bytes
    m: int
    k: int
    n: int
    root_a: bytes
    root_b: bytes
    SCHEMA: ClassVar[Schema] = (
        Field("poster", Bytes(ADDRESS_SIZE)),
        Field("m", U32),
        Field("k", U32),
        Field("n", U32),
        Field("root_a", HASH),
        Field("root_b", HASH),
    )

    def job_id(self, rank: int, tile_h: int, tile_w: int) -> Hash32:
        """``H(poster, m, k, n, root_A, root_B, mining params)`` (PROTOCOL §2)."""
        return tagged_hash(
            TAG_JOB_ID,
            self.poster,
            u32_bytes(self.m),
            u32_bytes(self.k),
            u32_bytes(self.n),
            self.root_a,
            self.root_b,
            u32_bytes(rank),
            u32_bytes(tile_h),
            u32_bytes(tile_w),
        )


@dataclass(frozen=True)
class PowProof:
    """The winning tile and its h rows of A and w columns of B, with Merkle branches.

    ``a_rows`` is h·k int8 bytes (rows ti·h … ti·h + h − 1 of A), ``b_cols`` is
    w·k bytes (columns tj·w … of B, each contiguous along k).
    """

    tile_i: int
    tile_j: int
    a_rows: bytes
    a_branches: tuple[tuple[bytes, ...], ...]
    b_cols: bytes
    b_branches: tuple[tuple[bytes, ...], ...]
    SCHEMA: ClassVar[Schema] = (
        Field("tile_i", U32),
        Field("tile_j", U32),
        Field("a_rows", Bytes(max=MAX_TILE * MAX_K)),
        Field("a_branches", ListOf(BRANCH, max=MAX_TILE)),
        Field("b_cols", Bytes(max=MAX_TILE * MAX_K)),
        Field("b_branches", ListOf(BRANCH, max=MAX_TILE)),
    )


EMPTY_PROOF = PowProof(0, 0, b"", (), b"", ())


@dataclass(frozen=True)
class BlockHeader:
    height: int
    prev_hash: bytes
    timestamp_ms: int
    target: int
    tx_root: bytes
    state_root: bytes
    job: JobSpec
    miner: bytes
    reward: int
    extra_nonce: int
    result_root: bytes
    proof: PowProof
    SCHEMA: ClassVar[Schema] = (
        Field("height", U64),
        Field("prev_hash", HASH),
        Field("timestamp_ms", U64),
        Field("target", U256),
        Field("tx_root", HASH),
        Field("state_root", HASH),
        Field("job", RecordOf(JobSpec)),
        Field("miner", Bytes(ADDRESS_SIZE)),
        Field("reward", U64),
        Field("extra_nonce", U64),
        Field("result_root", HASH),
        Field("proof", RecordOf(PowProof)),
    )

    # A header is encoded for its hash, for its block's size and to check it was
    # received in canonical form; with its ~300 proof hashes that is the costliest
    # encoding there is, so it is done once per object (frozen: it cannot go stale).
    @cached_property
    def encoded(self) -> bytes:
        """The canonical encoding (``encode_header``); EncodeError names a malformed field."""
        return encode_record(self)

    @cached_property
    def hash(self) -> Hash32:
        return tagged_hash(TAG_BLOCK, self.encoded)

    @cached_property
    def header_seed(self) -> Hash32:
        return tagged_hash(
            TAG_HEADER_SEED, encode_record(self, omit=frozenset({"result_root", "proof"}))
        )


def noise_seeds(header_seed: bytes, job: JobSpec) -> tuple[bytes, bytes]:
    """(seed_A, seed_B): seed_B = H(header_seed, root_B), seed_A = H(seed_B, root_A)."""
    seed_b = tagged_hash(TAG_SEED_B, header_seed, job.root_b)
    seed_a = tagged_hash(TAG_SEED_A, seed_b, job.root_a)
    return seed_a, seed_b


def ticket_key(seed_a: bytes, result_root: bytes) -> Hash32:
    """The key of a block's tickets: ``H(seed_A, result_root)`` (PROTOCOL §4).

    Binding result_root here makes the proof of work cover it: a block whose
    result_root was changed after mining has other tickets, and wins only if
    re-mined. Verifying costs nothing more; the miner needs C's root before it
    hashes tickets.
    """
    return tagged_hash(TAG_TICKET_KEY, seed_a, result_root)


@dataclass(frozen=True)
class Block:
    header: BlockHeader
    txs: tuple[Transaction, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("header", RecordOf(BlockHeader)),
        Field("txs", ListOf(RecordOf(Transaction), max=MAX_TXS_PER_BLOCK)),
    )

    @property
    def hash(self) -> Hash32:
        return self.header.hash

    @cached_property
    def body_root(self) -> Hash32:
        """The tx_root that these transactions give (the header's ``tx_root`` claims one).

        Computed once per block object: the chain checks it when the block arrives
        and the body rules again when it is connected.
        """
        return tx_root(self.txs)


def tx_root(txs: Sequence[Transaction]) -> Hash32:
    """The Merkle root of the transactions' txids, in order: what a header's tx_root is."""
    return merkle_root([tx.txid for tx in txs])


def encode_header(header: BlockHeader) -> bytes:
    if type(header) is BlockHeader:
        return header.encoded
    return encode_record(header)


def decode_header(data: bytes) -> BlockHeader:
    return decode_record(BlockHeader, data, 2 * MAX_TILE * MAX_K + 64 * 1024)


def encode_block(block: Block) -> bytes:
    return encode_record(block)


def decode_block(data: bytes, max_size: int = MAX_BLOCK_WIRE_BYTES) -> Block:
    return decode_record(Block, data, max_size)


__all__ = [
    "EMPTY_PROOF",
    "MAX_TX_SIZE",
    "NULL_RESULT_ROOT",
    "Block",
    "BlockHeader",
    "JobSpec",
    "PowProof",
    "decode_block",
    "decode_header",
    "encode_block",
    "encode_header",
    "noise_seeds",
    "ticket_key",
]
