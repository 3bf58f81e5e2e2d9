"""The compute market's rules with real mined blocks: escrow, claim, payment after
the challenge window, fraud proofs, cancellation — and exact undo."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from consensus.blocks import Block, tx_root
from consensus.chain import Chain
from consensus.errors import InvalidBlock
from consensus.market import build_fraud_proof, job_id_of, job_record
from consensus.merkle import matrix_rows_root
from consensus.pow import Job, ResultCommitment, mine, null_job
from consensus.transactions import (
    JobCancelPayload,
    JobPostPayload,
    Transaction,
    signed_transaction,
)
from consensus.validation import apply_body
from kernels.freivalds import locate_error
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
)

REWARD = 7_000
rng = np.random.default_rng(5)
M, K, N = MID.min_job_shape  # the smallest job the network accepts
A = rng.integers(-64, 64, (M, K), dtype=np.int8)
B = rng.integers(-64, 64, (K, N), dtype=np.int8)
JOB = Job.from_operands(A, B, ALICE.address)  # ALICE posts it
POST = JobPostPayload(M, K, N, JOB.spec.root_a, JOB.spec.root_b, REWARD, 30)
JOB_ID = job_id_of(ALICE.address, POST, MID)


def tx(key, nonce, payload, fee=10) -> Transaction:
    return signed_transaction(key, chain_id=MID.chain_id, nonce=nonce, fee=fee, payload=payload)


def add(chain: Chain, clock: Clock, txs=()) -> Block:
    b = next_block(chain, clock, tuple(txs))
    chain.add_block(b)
    return b


def mine_job(chain: Chain, clock: Clock, dishonest: bool = False) -> tuple[Block, np.ndarray]:
    """A block whose PoUW ran on the posted job; a dishonest miner commits a wrong C."""
    clock.now += MID.block_time_ms
    template, _ = chain.build_template((), MINER.address, JOB.spec, clock.now)

    def wrong(c: np.ndarray) -> np.ndarray:
        c = c.copy()
        c[3, 5] += 1
        return c

    # result_root is bound by the proof of work: a dishonest miner mines its wrong C.
    commitment = ResultCommitment(JOB, wrong if dishonest else None)
    mined = mine(template, JOB, MID, max_attempts=64, commitment=commitment)
    assert mined is not None and mined.product is not None
    assert mined.header.result_root == matrix_rows_root(mined.product)
    block = Block(mined.header, ())
    chain.add_block(block)
    return block, mined.product


@pytest.fixture
def posted() -> tuple[Chain, Clock]:
    chain, clock = new_chain()
    add(chain, clock, [tx(ALICE, 0, POST)])
    return chain, clock


def test_post_escrows_and_the_honest_miner_is_paid_after_the_window(posted):
    chain, clock = posted
    alice_after_post = chain.state.balance(ALICE.address)
    assert alice_after_post == MID.prefund_amount - REWARD - 10
    block, _ = mine_job(chain, clock)
    add(chain, clock)  # the child records the claim
    job = job_record(chain.state, JOB_ID)
    assert (
        job is not None
        and job["status"] == "mined"
        and job["claim_id"] == block.hash
        and job["claim_kind"] == "block"
    )
    assert job["due"] == block.header.height + MID.challenge_window
    while chain.height < job["due"] - 1:
        add(chain, clock)
    before = chain.state.balance(MINER.address)
    add(chain, clock)  # the block at the due height pays the reward
    matured = MID.block_reward  # the coinbase of height due - maturity matures too
    assert chain.state.balance(MINER.address) == before + REWARD + matured
    assert job_record(chain.state, JOB_ID)["status"] == "paid"


def test_fraud_proof_refunds_the_poster_and_burns_the_coinbase(posted):
    chain, clock = posted
    block, c_claimed = mine_job(chain, clock, dishonest=True)
    add(chain, clock)
    where = locate_error(A, B, c_claimed)
    assert where == (3, 5)
    proof = build_fraud_proof(block.hash, JOB_ID, A, B, c_claimed, *where)
    alice_before = chain.state.balance(ALICE.address)
    locked_before = chain.state.get("locked", MINER.address, 0)
    add(chain, clock, [tx(BOB, 0, proof)])
    assert chain.state.balance(ALICE.address) == alice_before + REWARD
    assert job_record(chain.state, JOB_ID)["status"] == "refunded"
    burned_height = block.header.height + MID.coinbase_maturity
    assert chain.state.get("immature", burned_height) is None
    # The fraud block's own coinbase (reward + the proof's fee) is locked; the
    # dishonest block's is gone.
    assert chain.state.get("locked", MINER.address, 0) == locked_before + 10
    # At the height where that coinbase would have matured, the miner gets nothing:
    # neither the coinbase nor the job's reward.
    while chain.height < burned_height - 1:
        add(chain, clock)
    before = chain.state.balance(MINER.address)
    add(chain, clock)
    assert chain.state.balance(MINER.address) == before
    assert job_record(chain.state, JOB_ID)["status"] == "refunded"


def test_a_fraud_proof_of_a_correct_entry_is_refused(posted):
    chain, clock = posted
    block, c = mine_job(chain, clock)
    add(chain, clock)
    proof = build_fraud_proof(block.hash, JOB_ID, A, B, c, 3, 5)
    _refused(chain, tx(BOB, 0, proof), "is correct: no fraud")


def _refused(chain: Chain, t: Transaction, reason: str) -> None:
    """A block on the tip holding ``t`` is invalid, naming ``reason``."""
    header, _ = chain.build_template((), MINER.address, JOB.spec)
    block = Block(dataclasses.replace(header, tx_root=tx_root([t])), (t,))
    with pytest.raises(InvalidBlock, match=reason):
        apply_body(chain.state, block, MID, None, chain.tip.header)


def test_fraud_after_the_window_and_on_a_tampered_opening_are_refused(posted):
    chain, clock = posted
    block, c = mine_job(chain, clock, dishonest=True)
    add(chain, clock)
    proof = build_fraud_proof(block.hash, JOB_ID, A, B, c, 3, 5)
    tampered = dataclasses.replace(proof, a_row=bytes([1]) + proof.a_row[1:])
    _refused(chain, tx(BOB, 0, tampered), "row of A does not match")
    extend(chain, clock, MID.challenge_window)
    _refused(chain, tx(BOB, 0, proof), "the job is paid, not awaiting payment")


def test_cancel_only_after_expiry_and_only_if_unclaimed(posted):
    chain, clock = posted
    cancel = tx(ALICE, 1, JobCancelPayload(JOB_ID))
    _, included = chain.build_template((cancel,), MINER.address, JOB.spec)
    assert included == ()  # refused while the job is open
    while chain.height <= POST.expiry_height:
        add(chain, clock)
    before = chain.state.balance(ALICE.address)
    add(chain, clock, [cancel])
    assert chain.state.balance(ALICE.address) == before + REWARD - 10
    assert job_record(chain.state, JOB_ID)["status"] == "cancelled"


def test_a_job_cannot_be_squatted_by_posting_its_operands_first():
    """A job's id names its poster. BOB, who saw ALICE's job_post wait in a mempool, posts
    the same operands first, for a reward of 1 and the nearest expiry, then cancels:
    before, that took ALICE's job id (her post refused as "already posted", for good
    once cancelled). Now his is another job, hers is posted and a block on it claims
    it, and only a second post of it by ALICE herself is refused."""
    chain, clock = new_chain()
    squat = dataclasses.replace(POST, fee=1, expiry_height=chain.height + 2)
    add(chain, clock, [tx(BOB, 0, squat)])
    bob_id = job_id_of(BOB.address, squat, MID)
    assert bob_id != JOB_ID and job_record(chain.state, bob_id)["poster"] == BOB.address
    while chain.height <= squat.expiry_height:
        add(chain, clock)
    add(chain, clock, [tx(BOB, 1, JobCancelPayload(bob_id))])
    assert job_record(chain.state, bob_id)["status"] == "cancelled"
    add(chain, clock, [tx(ALICE, 0, POST)])
    assert job_record(chain.state, JOB_ID)["poster"] == ALICE.address
    block, _ = mine_job(chain, clock)  # on JOB.spec: ALICE's job
    add(chain, clock)  # the child records the claim
    assert job_record(chain.state, JOB_ID)["claim_id"] == block.hash
    assert job_record(chain.state, bob_id)["status"] == "cancelled"
    _refused(chain, tx(ALICE, 1, POST), "this sender already posted this job")


def test_a_job_block_and_its_fraud_proof_undo_exactly(posted):
    chain, clock = posted
    snap = (chain.state.snapshot(), chain.state.root)
    block, c = mine_job(chain, clock, dishonest=True)
    add(chain, clock)
    add(chain, clock, [tx(BOB, 0, build_fraud_proof(block.hash, JOB_ID, A, B, c, 3, 5))])
    fork_point = chain.height - 3
    chain._disconnect_to(fork_point)
    assert (chain.state.snapshot(), chain.state.root) == snap


def test_job_post_that_does_not_tile_is_refused(posted):
    chain, _ = posted
    bad = dataclasses.replace(POST, k=100)
    _, included = chain.build_template((tx(ALICE, 1, bad),), MINER.address, JOB.spec)
    assert included == ()


@pytest.mark.parametrize(
    "shape",
    [(64, 128, 32), (M // 2, K, N), (M, K // 2, N), (M, K, N // 2), (16, K, 8 * N)],
    ids=["tiny", "short m", "short k", "short n", "thin m, wide n"],
)
def test_job_post_below_the_minimum_is_refused_with_the_reason(posted, shape):
    """A tiny job would slow every miner that takes it far below its null-job rate."""
    chain, clock = posted
    m, k, n = shape
    small = dataclasses.replace(POST, m=m, k=k, n=n)
    before = (chain.state.snapshot(), chain.state.root)
    with pytest.raises(InvalidBlock, match=f"job {m}x{k}x{n} is below the minimum {M}x{K}x{N}"):
        chain.add_block(next_block_with_tx(chain, clock, tx(ALICE, 1, small)))
    assert (chain.state.snapshot(), chain.state.root) == before


def next_block_with_tx(chain: Chain, clock: Clock, t: Transaction) -> Block:
    """An honestly mined block on the tip that carries ``t``, valid or not."""
    job = null_job(chain.tip.hash, MID)
    template, _ = chain.build_template((), MINER.address, job.spec, clock.now + MID.block_time_ms)
    header = dataclasses.replace(template, tx_root=tx_root([t]))
    return Block(remine(header, job), (t,))
