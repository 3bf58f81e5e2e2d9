"""A table of invalid blocks and transactions: each is refused with its own reason,
and the chain (tip and state) is exactly as it was before."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from consensus.blocks import Block, decode_block, encode_block, noise_seeds, ticket_key, tx_root
from consensus.chain import Chain
from consensus.errors import DecodeError, InvalidBlock
from consensus.pow import Job, build_proof, mining_params, null_job
from consensus.transactions import AccessLogPayload, signed_transaction
from kernels.attempt import mining_attempt
from tests.support.chainkit import (
    ALICE,
    BOB,
    MID,
    MINER,
    Clock,
    extend,
    new_chain,
    next_block,
    remine,
    transfer,
)


@pytest.fixture(scope="module")
def base() -> tuple[Chain, Clock]:
    """A chain of 12 blocks mined by MINER (its first coinbases have matured)."""
    chain, clock = new_chain()
    extend(chain, clock, 12)
    return chain, clock


def forged(chain: Chain, clock: Clock, txs=(), fix_tx_root=True, **changes) -> Block:
    """A block whose header has ``changes`` and is then honestly mined."""
    ts = clock.now + MID.block_time_ms
    job = null_job(chain.tip.hash, MID)
    template, _ = chain.build_template((), MINER.address, job.spec, ts)
    if fix_tx_root:
        changes.setdefault("tx_root", tx_root(txs))
    header = dataclasses.replace(template, **changes)
    return Block(remine(header, job), tuple(txs))


def with_proof(block: Block, **changes) -> Block:
    proof = dataclasses.replace(block.header.proof, **changes)
    return Block(dataclasses.replace(block.header, proof=proof), block.txs)


def with_job(block: Block, **changes) -> Block:
    """Claim a different job shape; the header is not re-mined (the shape rules come first)."""
    job = dataclasses.replace(block.header.job, **changes)
    return Block(dataclasses.replace(block.header, job=job), block.txs)


def valid(chain: Chain, clock: Clock, txs=()) -> Block:
    saved = clock.now
    b = next_block(chain, clock, tuple(txs))
    clock.now = saved
    return b


def _on_a_tiny_job(chain: Chain, clock: Clock) -> Block:
    """A block honestly mined on a posted-size job far below the minimum."""
    rng = np.random.default_rng(3)
    job = Job.from_operands(
        rng.integers(-64, 64, (64, 128), dtype=np.int8),
        rng.integers(-64, 64, (128, 32), dtype=np.int8),
        ALICE.address,
    )
    template, _ = chain.build_template((), MINER.address, job.spec, clock.now + MID.block_time_ms)
    return Block(remine(template, job), ())


def _losing_tile(chain: Chain, clock: Clock) -> Block:
    b = valid(chain, clock)
    job = null_job(chain.tip.hash, MID)
    seed_a, seed_b = noise_seeds(b.header.header_seed, job.spec)
    key = ticket_key(seed_a, b.header.result_root)
    res = mining_attempt(
        job.a, job.b, seed_a, seed_b, b.header.target, mining_params(MID), ticket_key=key
    )
    grid = {(i, j) for i in range(job.spec.m // 16) for j in range(job.spec.n // 16)}
    ti, tj = sorted(grid - set(res.winners))[0]
    return dataclasses.replace(
        b, header=dataclasses.replace(b.header, proof=build_proof(job, ti, tj, MID))
    )


def _flip_row_byte(b: Block) -> Block:
    rows = bytearray(b.header.proof.a_rows)
    rows[5] = (rows[5] + 1) % 64
    return with_proof(b, a_rows=bytes(rows))


def _bad_branch(b: Block) -> Block:
    br = list(b.header.proof.b_branches)
    br[3] = (bytes(32), *br[3][1:])
    return with_proof(b, b_branches=tuple(br))


def _out_of_range(b: Block) -> Block:
    rows = bytearray(b.header.proof.a_rows)
    rows[0] = 100
    return with_proof(b, a_rows=bytes(rows))


def _other_root(chain: Chain, clock: Clock) -> Block:
    b = valid(chain, clock)
    other = null_job(bytes(32), MID).spec
    job = dataclasses.replace(b.header.job, root_a=other.root_a)
    return Block(dataclasses.replace(b.header, job=job), b.txs)


IMMATURE_SPENDER = MINER  # its latest coinbases are still locked


Case = Callable[[Chain, Clock], Block]
CASES: dict[str, tuple[Case, str]] = {
    # --- transactions inside a block
    "bad signature": (
        lambda c, k: forged(
            c, k, txs=[dataclasses.replace(transfer(ALICE, BOB, 5, 0), signature=bytes(64))]
        ),
        "signature: not a valid",
    ),
    "tampered after signing": (
        lambda c, k: forged(c, k, txs=[dataclasses.replace(transfer(ALICE, BOB, 5, 0), fee=11)]),
        "signature: not a valid",
    ),
    "wrong chain_id (replay)": (
        lambda c, k: forged(c, k, txs=[transfer(ALICE, BOB, 5, 0, chain_id=MID.chain_id + 1)]),
        "(replay)",
    ),
    "nonce gap": (lambda c, k: forged(c, k, txs=[transfer(ALICE, BOB, 5, 3)]), "skips ahead"),
    "double spend in one block": (
        lambda c, k: forged(c, k, txs=[transfer(ALICE, BOB, 5, 0), transfer(ALICE, BOB, 5, 0)]),
        "transaction 1",
    ),
    "overspend": (
        lambda c, k: forged(c, k, txs=[transfer(ALICE, BOB, MID.prefund_amount, 0)]),
        "but the sender has",
    ),
    "spend an immature coinbase": (
        lambda c, k: forged(c, k, txs=[transfer(IMMATURE_SPENDER, BOB, 200 * 10**8, 0)]),
        "immature coinbase",
    ),
    "zero-amount transfer": (
        lambda c, k: forged(c, k, txs=[transfer(ALICE, BOB, 0, 0)]),
        "positive amount",
    ),
    "transfer to self": (
        lambda c, k: forged(c, k, txs=[transfer(ALICE, ALICE, 5, 0)]),
        "sender itself",
    ),
    # --- body commitments
    "wrong tx root": (
        lambda c, k: forged(c, k, txs=[transfer(ALICE, BOB, 5, 0)], tx_root=bytes(32)),
        "tx_root",
    ),
    "wrong state root": (lambda c, k: forged(c, k, state_root=bytes(32)), "state_root"),
    "wrong coinbase amount": (
        lambda c, k: forged(c, k, reward=MID.block_reward + 1),
        "coinbase claims",
    ),
    # --- header rules
    "wrong height": (lambda c, k: forged(c, k, height=c.height + 2), "height"),
    "access_log of an unknown dataset": (
        lambda c, k: forged(
            c,
            k,
            txs=[
                signed_transaction(
                    ALICE,
                    chain_id=MID.chain_id,
                    nonce=0,
                    fee=1,
                    payload=AccessLogPayload(bytes(32), bytes(32)),
                )
            ],
        ),
        "no such dataset",
    ),
    "timestamp too old": (
        lambda c, k: forged(c, k, timestamp_ms=c.block_at(c.height - 8).header.timestamp_ms),
        "median of the last 11",
    ),
    "timestamp too far ahead": (
        lambda c, k: forged(c, k, timestamp_ms=k.now + 10**7),
        "too far in the future",
    ),
    "wrong target": (lambda c, k: forged(c, k, target=c.next_target() * 2), "ASERT"),
    "job does not tile": (lambda c, k: with_job(valid(c, k), k=200), "does not tile"),
    "job too large": (lambda c, k: with_job(valid(c, k), m=2 * MID.max_job_dim), "outside 1.."),
    "job shape differs from the proof": (
        lambda c, k: with_job(valid(c, k), k=512),
        "rows of A has 4096 bytes, expected 16x512",
    ),
    "job below the minimum": (_on_a_tiny_job, "job 64x128x32 is below the minimum 512x256x512"),
    # --- the PoUW proof
    "ticket above target": (_losing_tile, "ticket is above the target"),
    "tampered row in the proof": (lambda c, k: _flip_row_byte(valid(c, k)), "Merkle branch of row"),
    "wrong job roots": (_other_root, "does not match root_a"),
    "wrong Merkle branch": (
        lambda c, k: _bad_branch(valid(c, k)),
        r"column \d+ of B does not match",
    ),
    "tile index outside the grid": (lambda c, k: with_proof(valid(c, k), tile_i=99), "outside the"),
    "operand out of int7": (lambda c, k: _out_of_range(valid(c, k)), "outside the int7"),
    "short proof rows": (
        lambda c, k: with_proof(valid(c, k), a_rows=b"\x00" * 16),
        "rows of A has 16 bytes",
    ),
    "missing branches": (lambda c, k: with_proof(valid(c, k), b_branches=()), "branches for A"),
    "wrong tile index (rows of another tile)": (
        lambda c, k: with_proof(valid(c, k), tile_i=(valid(c, k).header.proof.tile_i + 1) % 8),
        "Merkle branch of row",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_invalid_block_is_refused_and_changes_nothing(base, name):
    chain, clock = base
    make, reason = CASES[name]
    block = make(chain, clock)
    tip, root, snap = chain.tip.hash, chain.state.root, chain.state.snapshot()
    with pytest.raises(InvalidBlock, match=reason):
        chain.add_block(block)
    assert chain.tip.hash == tip and chain.state.root == root
    assert chain.state.snapshot() == snap


def test_oversized_block(base):
    chain, clock = base
    empty = max(len(encode_block(chain.blocks[h])) for h in chain.active)
    small = dataclasses.replace(MID, max_block_bytes=empty + 64)  # room for no transaction
    block = valid(chain, clock, [transfer(ALICE, BOB, 5, 0)])
    fresh = Chain(small, chain.clock)
    for h in chain.active[1:]:
        fresh.add_block(chain.blocks[h])
    with pytest.raises(InvalidBlock, match=f"over the {empty + 64} limit"):
        fresh.add_block(block)


def test_an_oversized_side_block_or_orphan_is_refused_before_it_is_kept(base):
    """A block over the size limit is refused on arrival, not only when applied: as a
    side block (lighter than the tip, never applied) or an orphan it would otherwise be
    stored whole, without bound, though it can never connect."""
    chain, clock = base
    empty = max(len(encode_block(chain.blocks[h])) for h in chain.active)
    small = dataclasses.replace(MID, max_block_bytes=empty + 64)
    big = valid(chain, clock, [transfer(ALICE, BOB, 5, 0)])  # on the tip: one over the limit
    fresh = Chain(small, chain.clock)
    for h in chain.active[1:]:
        fresh.add_block(chain.blocks[h])
    fresh.add_block(valid(fresh, clock))  # fresh's tip is now heavier: big would be a side block
    with pytest.raises(InvalidBlock, match=f"over the {empty + 64} limit"):
        fresh.add_block(big)
    orphan_home = Chain(small, chain.clock)  # big's parent unknown there: it would be an orphan
    with pytest.raises(InvalidBlock, match=f"over the {empty + 64} limit"):
        orphan_home.add_block(big)
    for c in (fresh, orphan_home):
        assert big.hash not in c.entries and big.hash not in c.orphans and big.hash not in c.blocks


def test_block_on_an_invalid_parent_is_refused(base):
    chain, clock = base
    side, side_clock = new_chain()
    side_clock.now = clock.now
    for h in chain.active[1:]:
        side.add_block(chain.blocks[h])
    bad = forged(side, side_clock, state_root=bytes(32))
    with pytest.raises(InvalidBlock):
        side.add_block(bad)
    # a child of the invalid block, honestly mined on top of it
    job = null_job(bad.hash, MID)
    child_header = dataclasses.replace(
        bad.header,
        height=bad.header.height + 1,
        prev_hash=bad.hash,
        timestamp_ms=bad.header.timestamp_ms + 2000,
        job=job.spec,
    )
    child = Block(remine(child_header, job), ())
    with pytest.raises(InvalidBlock, match="builds on an invalid block"):
        side.add_block(child)


# --------------------------------------------------------------- wire bytes


def _block_bytes(base) -> bytes:
    chain, clock = base
    return encode_block(valid(chain, clock, [transfer(ALICE, BOB, 5, 0)]))


def _non_canonical(data: bytes) -> bytes:
    # The header array starts at byte 1 (block = fixarray of 2, header = fixarray of 12);
    # its first element, the height, is a positive fixint: re-encode it as uint16.
    assert data[0] == 0x92 and data[1] == 0x9C and data[2] < 0x80
    return data[:2] + b"\xcd\x00" + data[2:3] + data[3:]


WIRE_CASES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "non-canonical integer": (_non_canonical, "non-canonical"),
    "unknown extra field": (lambda d: b"\x93" + d[1:] + b"\xc0", "unknown extra field"),
    "truncated bytes": (lambda d: d[:-7], "truncated"),
    "trailing bytes": (lambda d: d + b"\x00", "trailing"),
    "map instead of array": (lambda d: b"\x81\xa1x\x01", "expected array"),
    "float where an integer goes": (
        lambda d: d[:2] + b"\xcb" + np.float64(1.0).tobytes()[::-1] + d[3:],
        "expected u64",
    ),
}


@pytest.mark.parametrize("name", list(WIRE_CASES))
def test_malformed_block_bytes_are_refused(base, name):
    mutate, reason = WIRE_CASES[name]
    with pytest.raises(DecodeError, match=reason):
        decode_block(mutate(_block_bytes(base)))


def test_valid_block_bytes_round_trip(base):
    data = _block_bytes(base)
    assert encode_block(decode_block(data)) == data


def test_the_table_is_at_least_thirty_distinct_rules():
    assert len(CASES) + len(WIRE_CASES) + 2 >= 30


def test_a_proof_opens_the_same_columns_whether_or_not_the_job_holds_b_transposed():
    """A miner keeps Bᵀ with the job (fetched as such) so that a proof does not transpose
    B for each block found; the proof is the same bytes and branches either way."""
    rng = np.random.default_rng(7)
    m, k, n = MID.min_job_shape
    job = Job.from_operands(
        rng.integers(-64, 64, (m, k), dtype=np.int8),
        rng.integers(-64, 64, (k, n), dtype=np.int8),
        ALICE.address,
    )
    assert job.bt is not None and np.array_equal(job.bt, job.b.T)
    bare = dataclasses.replace(job, bt=None)
    for ti, tj in ((0, 0), (m // MID.tile_h - 1, n // MID.tile_w - 1)):
        assert build_proof(job, ti, tj, MID) == build_proof(bare, ti, tj, MID)
