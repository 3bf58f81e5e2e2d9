"""result_root is bound by the proof of work, and one proof of work makes one block.

The tickets are keyed by ``H(seed_A, result_root)``: whoever replaces a block's
result_root gets other tickets, which miss the target unless the block is
mined again. A null-job block commits zero. A second block with the same
header_seed (another winning tile of the same attempt, or the miner's own
re-mined root) is refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from consensus.blocks import NULL_RESULT_ROOT, Block
from consensus.errors import InvalidBlock
from consensus.merkle import matrix_rows_root
from consensus.pow import Job, ResultCommitment, mine, null_job, verify_pow
from tests.support.chainkit import (
    ALICE,
    MID,
    MINER,
    K,
    extend,
    new_chain,
    next_block,
    second_winner,
)

# Each tile wins with probability 2^-10: a block is still found in about two
# attempts, but a header whose tickets changed passes with probability 2^-10.
HARD = dataclasses.replace(MID, genesis_target=(1 << 246) // (16 * 16 * K))
# Fixed "random" replacements, so a run is reproducible.
REPLACEMENTS = [
    bytes(np.random.default_rng(seed).integers(0, 256, 32, dtype=np.uint8)) for seed in range(3)
]


def _own_job() -> Job:
    """A job with real operands that is not the null job (as a posted job is)."""
    m, k, n = HARD.null_job_shape
    rng = np.random.default_rng(11)
    return Job.from_operands(
        rng.integers(-64, 64, (m, k), dtype=np.int8),
        rng.integers(-64, 64, (k, n), dtype=np.int8),
        ALICE.address,
    )


def _block_on(job: Job, params=HARD) -> tuple[Block, object]:
    chain, clock = new_chain(params)
    clock.now += params.block_time_ms
    template, _ = chain.build_template((), MINER.address, job.spec, clock.now)
    mined = mine(template, job, params, max_attempts=64)
    assert mined is not None
    return Block(mined.header, ()), mined


def _with_root(block: Block, root: bytes) -> Block:
    return Block(dataclasses.replace(block.header, result_root=root), block.txs)


def test_a_posted_job_block_commits_the_root_of_c_and_verifies():
    job = _own_job()
    block, mined = _block_on(job)
    c = (job.a.astype(np.int64) @ job.b.astype(np.int64)).astype(np.int32)
    assert np.array_equal(mined.product, c)
    assert block.header.result_root == matrix_rows_root(c) != NULL_RESULT_ROOT
    verify_pow(block.header, HARD)


def test_a_miner_recovers_c_once_per_job_and_keeps_its_root_across_calls():
    job = _own_job()
    chain, clock = new_chain(HARD)
    commitment = ResultCommitment(job)
    blocks = []
    for _ in range(2):
        clock.now += HARD.block_time_ms
        template, _ = chain.build_template((), MINER.address, job.spec, clock.now)
        mined = mine(template, job, HARD, max_attempts=64, commitment=commitment)
        assert mined is not None
        blocks.append(mined)
    assert blocks[0].product is blocks[1].product is commitment.product  # recovered once
    assert blocks[0].header.result_root == blocks[1].header.result_root == commitment.root
    null = null_job(chain.tip.hash, HARD)
    with pytest.raises(ValueError, match="another job"):
        mine(dataclasses.replace(template, job=null.spec), null, HARD, commitment=commitment)


def test_a_null_job_block_commits_zero_and_its_miner_never_recovers_c():
    chain, clock = new_chain(HARD)
    job = null_job(chain.tip.hash, HARD)
    clock.now += HARD.block_time_ms
    template, _ = chain.build_template((), MINER.address, job.spec, clock.now)
    mined = mine(template, job, HARD, max_attempts=64)
    assert mined is not None and mined.product is None
    assert mined.header.result_root == NULL_RESULT_ROOT
    assert chain.add_block(Block(mined.header, ())).status == "connected"


@pytest.mark.parametrize("replacement", range(len(REPLACEMENTS) + 1))
def test_a_replaced_result_root_fails_the_proof_of_work(replacement):
    """What an attacker would relay: the honest block with only result_root changed
    (random bytes, or the root of a C with one wrong entry, which a fraud proof
    could then 'prove' against the honest miner). Every variant is refused."""
    job = _own_job()
    honest, mined = _block_on(job)
    if replacement < len(REPLACEMENTS):
        root = REPLACEMENTS[replacement]
    else:
        wrong = mined.product.copy()
        wrong[3, 5] += 1
        root = matrix_rows_root(wrong)
    variant = _with_root(honest, root)
    with pytest.raises(InvalidBlock, match="ticket is above the target"):
        verify_pow(variant.header, HARD)
    chain, _ = new_chain(HARD)
    with pytest.raises(InvalidBlock, match="ticket is above the target"):
        chain.add_block(variant)
    assert chain.height == 0 and not chain.contains(variant.hash)
    assert chain.add_block(honest).status == "connected"


@pytest.mark.parametrize("root", REPLACEMENTS)
def test_a_null_job_block_with_a_replaced_result_root_is_refused(root):
    chain, clock = new_chain(HARD)
    honest = next_block(chain, clock)
    variant = _with_root(honest, root)
    with pytest.raises(InvalidBlock, match=r"ticket is above the target|must be zero"):
        chain.add_block(variant)
    assert chain.add_block(honest).status == "connected"


def test_a_null_job_block_that_commits_a_product_is_refused_even_when_mined():
    """Its miner computed C and mined with its root: the proof of work holds, but a
    null-job block's result_root must be zero."""
    chain, clock = new_chain(HARD)
    null = null_job(chain.tip.hash, HARD)
    clock.now += HARD.block_time_ms
    template, _ = chain.build_template((), MINER.address, null.spec, clock.now)
    mined = mine(template, dataclasses.replace(null, null=False), HARD, max_attempts=64)
    assert mined is not None and mined.header.result_root != NULL_RESULT_ROOT
    with pytest.raises(InvalidBlock, match="result_root of a null-job block must be zero"):
        verify_pow(mined.header, HARD)
    with pytest.raises(InvalidBlock, match="result_root of a null-job block must be zero"):
        chain.add_block(Block(mined.header, ()))
    assert chain.height == 0


def test_a_second_block_with_the_same_proof_of_work_is_refused():
    chain, clock = new_chain()
    extend(chain, clock, 2)
    block = next_block(chain, clock)
    twin = second_winner(block)
    chain.add_block(block)
    tip = chain.tip.hash
    with pytest.raises(InvalidBlock, match=r"duplicate proof of work: .* already seen as block"):
        chain.add_block(twin)
    assert chain.tip.hash == tip and not chain.contains(twin.hash)
    assert twin.hash not in chain.blocks


def test_a_second_orphan_with_the_same_proof_of_work_is_refused():
    chain, clock = new_chain()
    parent = next_block(chain, clock)
    chain.add_block(parent)
    block = next_block(chain, clock)
    twin = second_winner(block)
    fresh, _ = new_chain()  # lacks the parent: both arrive as orphans
    assert fresh.add_block(block).status == "orphan"
    with pytest.raises(InvalidBlock, match="duplicate proof of work"):
        fresh.add_block(twin)
    assert not fresh.contains(twin.hash)
    fresh.add_block(parent)
    assert fresh.tip.hash == block.hash


def test_the_index_of_proofs_of_work_is_rebuilt_on_restore():
    from consensus.chain import Chain

    chain, clock = new_chain()
    extend(chain, clock, 2)
    block = next_block(chain, clock)
    twin = second_winner(block)
    chain.add_block(block)
    restored = Chain.restore(
        MID,
        chain.clock,
        dict(chain.entries),
        dict(chain.blocks),
        list(chain.active),
        dict(chain.undos),
        chain.state,
        chain.next_seq,
    )
    with pytest.raises(InvalidBlock, match="duplicate proof of work"):
        restored.add_block(twin)


def _split(parent_count: int = 1):
    """A chain holding ``block``; its twin; and the twin's child, mined where the twin
    came first (what the other half of a network that its miner split would build)."""
    chain, clock = new_chain()
    extend(chain, clock, parent_count)
    other, other_clock = new_chain()
    for h in chain.active[1:]:
        other.add_block(chain.blocks[h])
    other_clock.now = clock.now
    block = next_block(chain, clock)
    twin = second_winner(block)
    chain.add_block(block)
    other.add_block(twin)
    child = next_block(other, other_clock)
    return chain, block, twin, child


def test_a_refused_twin_is_admitted_once_a_block_builds_on_it():
    """Its miner sent each block to half the network: refusing the twin forever would
    keep this half off the heavier branch for good. The child brings the twin in."""
    chain, block, twin, child = _split()
    with pytest.raises(InvalidBlock, match="duplicate proof of work"):
        chain.add_block(twin)
    assert chain.tip.hash == block.hash and not chain.contains(twin.hash)
    chain.add_block(child)
    assert chain.tip.hash == child.hash and chain.is_active(twin.hash)


def test_a_twin_whose_child_is_already_held_is_admitted():
    chain, _block, twin, child = _split()
    assert chain.add_block(child).status == "orphan"
    chain.add_block(twin)
    assert chain.tip.hash == child.hash


def test_a_twin_that_a_download_builds_on_is_admitted():
    chain, _block, twin, child = _split()
    assert chain.add_block(twin, built_upon=True).status == "side"
    chain.add_block(child)
    assert chain.tip.hash == child.hash
