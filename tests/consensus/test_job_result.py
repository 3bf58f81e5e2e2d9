"""job_result claims with real mined blocks: the bond, settlement after the challenge
window, the first claim in chain order winning (by header or by job_result), fraud
proofs that burn the bond, refused claims — and exact undo through reorgs."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.blocks import Block, tx_root
from consensus.chain import Chain
from consensus.errors import EncodeError, InvalidBlock, InvalidTransaction
from consensus.keys import PrivateKey
from consensus.market import build_fraud_proof, build_job_result, job_record
from consensus.merkle import matrix_rows_root
from consensus.transactions import (
    MAX_RESULT_CLAIMS,
    JobCancelPayload,
    JobClaim,
    JobResultPayload,
    Transaction,
    TransferPayload,
    check_tx_stateless,
    encode_tx,
)
from consensus.validation import apply_body
from tests.support.chainkit import (
    ALICE,
    BOB,
    CAROL,
    MID,
    MINER,
    Clock,
    extend,
    new_chain,
)
from tests.support.claimkit import (
    BOND,
    C2,
    FEE,
    JOB,
    JOB2,
    JOB2_ID,
    JOB_ID,
    POST,
    POST2,
    REWARD,
    WRONG_C,
    A,
    B,
    C,
    W,
    add,
    add_job_block,
    claim,
    new_job,
    tx,
)

POOR = PrivateKey.from_label("claims-poor")


def refusal(chain: Chain, txs: list[Transaction]) -> str:
    """Why a block on the tip with exactly ``txs`` is invalid."""
    header, _ = chain.build_template((), MINER.address, JOB2.spec)
    block = Block(dataclasses.replace(header, tx_root=tx_root(txs)), tuple(txs))
    with pytest.raises(InvalidBlock) as caught:
        apply_body(chain.state, block, MID, None, chain.tip.header)
    return str(caught.value)


def replay(blocks: list[Block], now: int) -> tuple[Chain, Clock]:
    """A fresh chain fed ``blocks`` in order (full validation from genesis), and its clock."""
    chain, clock = new_chain()
    clock.now = now
    for b in blocks:
        chain.add_block(b)
    return chain, clock


@pytest.fixture
def posted() -> tuple[Chain, Clock]:
    """Alice posted JOB and JOB2 at height 1."""
    chain, clock = new_chain()
    add(chain, clock, [tx(ALICE, 0, POST), tx(ALICE, 1, POST2)])
    return chain, clock


def test_a_claim_locks_its_bonds_and_settlement_pays_reward_and_bond_after_w(posted):
    chain, clock = posted
    bob = chain.state.balance(BOB.address)
    t = claim(BOB, 0, (JOB_ID, C), (JOB2_ID, C2))
    add(chain, clock, [t])
    assert chain.state.balance(BOB.address) == bob - 2 * BOND - FEE
    job = job_record(chain.state, JOB_ID)
    assert job is not None
    assert (job["status"], job["claimant"], job["claim_kind"], job["claim_id"]) == (
        "mined",
        BOB.address,
        "tx",
        t.txid,
    )
    assert (job["claim_height"], job["bond"], job["due"]) == (2, BOND, 2 + W)
    assert job["result_root"] == matrix_rows_root(C)
    while chain.height < 2 + W - 1:
        add(chain, clock)
    assert chain.state.balance(BOB.address) == bob - 2 * BOND - FEE  # still locked
    add(chain, clock)
    assert chain.state.balance(BOB.address) == bob - FEE + 2 * REWARD
    assert [job_record(chain.state, j)["status"] for j in (JOB_ID, JOB2_ID)] == ["paid", "paid"]


def test_claims_and_settlement_undo_exactly(posted):
    chain, clock = posted
    before = (chain.state.snapshot(), chain.state.root)
    add(chain, clock, [claim(BOB, 0, (JOB_ID, WRONG_C)), claim(CAROL, 0, (JOB2_ID, C2))])
    claim_txid = chain.blocks[chain.tip.hash].txs[0].txid
    add(chain, clock, [tx(ALICE, 2, build_fraud_proof(claim_txid, JOB_ID, A, B, WRONG_C, 3, 5))])
    extend(chain, clock, W)  # JOB2's claim is settled
    assert job_record(chain.state, JOB2_ID)["status"] == "paid"
    assert job_record(chain.state, JOB_ID)["status"] == "refunded"
    chain._disconnect_to(1)
    assert (chain.state.snapshot(), chain.state.root) == before


def test_a_reorg_from_a_tx_claim_to_a_block_claim_equals_replaying_from_genesis(posted):
    chain, clock = posted
    common = [chain.blocks[h] for h in chain.active[1:]]
    fork_now = clock.now
    # Branch A: Bob claims by job_result and is paid at 2 + W.
    add(chain, clock, [claim(BOB, 0, (JOB_ID, C))])
    extend(chain, clock, W)
    assert job_record(chain.state, JOB_ID)["status"] == "paid"
    # Branch B, one block longer: a block mined on the job claims it instead.
    other, other_clock = replay(common, fork_now)
    b_tail = [add_job_block(other, other_clock, JOB)]
    b_tail += extend(other, other_clock, W + 1)
    clock.now = other_clock.now
    for block in b_tail:
        chain.add_block(block)
    assert chain.tip.hash == other.tip.hash
    reference, _ = replay(common + b_tail, clock.now)
    assert chain.state.snapshot() == reference.state.snapshot()
    assert chain.state.root == reference.state.root
    job = job_record(chain.state, JOB_ID)
    assert (job["claimant"], job["claim_kind"], job["bond"]) == (MINER.address, "block", 0)
    assert chain.state.balance(BOB.address) == MID.prefund_amount  # his bond and fee came back


def test_one_transaction_cannot_claim_a_job_twice():
    t = tx(BOB, 0, JobResultPayload((JobClaim(JOB_ID, matrix_rows_root(C)),) * 2))
    with pytest.raises(InvalidTransaction, match=r"claims\[1\].job_id: the job is claimed twice"):
        check_tx_stateless(t, MID.chain_id)


def test_malformed_job_results_are_refused_statelessly():
    with pytest.raises(InvalidTransaction, match="claim at least one job"):
        check_tx_stateless(tx(BOB, 0, JobResultPayload(())), MID.chain_id)
    zero = JobResultPayload((JobClaim(JOB_ID, bytes(32)),))
    with pytest.raises(InvalidTransaction, match=r"claims\[0\].result_root: must not be all zeros"):
        check_tx_stateless(tx(BOB, 0, zero), MID.chain_id)
    many = tuple(JobClaim(i.to_bytes(32, "big"), bytes([1]) * 32) for i in range(65))
    with pytest.raises(EncodeError, match=r"payload\.claims: 65 items exceeds the limit of 64"):
        tx(BOB, 0, JobResultPayload(many[: MAX_RESULT_CLAIMS + 1]))
    with pytest.raises(ValueError, match="at most 64"):
        build_job_result([(i.to_bytes(32, "big"), C) for i in range(65)])
    full = tx(BOB, 0, JobResultPayload(many[:MAX_RESULT_CLAIMS]))
    check_tx_stateless(full, MID.chain_id)
    assert len(encode_tx(full)) < 5_000


def test_a_second_claim_of_a_job_is_refused_in_the_same_block_and_later(posted):
    chain, clock = posted
    first, second = claim(BOB, 0, (JOB_ID, C)), claim(CAROL, 0, (JOB_ID, C))
    assert "transaction 1" in refusal(chain, [first, second])
    assert "the job is mined, not open (the first claim wins)" in refusal(chain, [first, second])
    add(chain, clock, [first])
    assert "the job is mined, not open" in refusal(chain, [second])
    # One job already claimed makes the whole transaction invalid.
    both = claim(CAROL, 0, (JOB2_ID, C2), (JOB_ID, C))
    assert "claims[1].job_id: the job is mined" in refusal(chain, [both])


def test_a_claim_after_a_block_claimed_the_job_is_refused(posted):
    chain, clock = posted
    add_job_block(chain, clock, JOB)
    # The block's claim takes effect before its child's transactions.
    assert "the job is mined, not open" in refusal(chain, [claim(BOB, 0, (JOB_ID, C))])
    add(chain, clock)
    assert job_record(chain.state, JOB_ID)["claim_kind"] == "block"
    assert "the job is mined, not open" in refusal(chain, [claim(BOB, 0, (JOB_ID, C))])


def test_a_block_on_a_job_claimed_by_a_job_result_is_valid_and_claims_nothing(posted):
    chain, clock = posted
    t = claim(BOB, 0, (JOB_ID, C))
    add(chain, clock, [t])
    block = add_job_block(chain, clock, JOB)
    add(chain, clock)  # the child would record the block's claim
    assert chain.tip.header.prev_hash == block.hash  # the block is on the chain
    job = job_record(chain.state, JOB_ID)
    assert (job["claim_kind"], job["claim_id"], job["due"]) == ("tx", t.txid, 2 + W)
    assert chain.state.get("jobs_due", block.header.height + W) is None


def test_a_job_result_in_the_block_mined_on_the_job_comes_first(posted):
    chain, clock = posted
    t = claim(BOB, 0, (JOB_ID, C))
    add_job_block(chain, clock, JOB, [t])
    add(chain, clock)
    job = job_record(chain.state, JOB_ID)
    assert (job["claimant"], job["claim_kind"]) == (BOB.address, "tx")


def test_a_claim_the_balance_cannot_bond_is_refused(posted):
    chain, clock = posted
    add(chain, clock, [tx(ALICE, 2, TransferPayload(POOR.address, BOND + FEE - 1))])
    t = claim(POOR, 0, (JOB_ID, C))
    assert f"balance: needs {BOND + FEE} but the sender has {BOND + FEE - 1}" in refusal(chain, [t])
    assert job_record(chain.state, JOB_ID)["status"] == "open"
    add(chain, clock, [tx(ALICE, 3, TransferPayload(POOR.address, 1))])
    add(chain, clock, [t])
    assert chain.state.balance(POOR.address) == 0
    assert job_record(chain.state, JOB_ID)["claimant"] == POOR.address


def test_a_fraud_proof_against_a_job_result_burns_the_bond_and_refunds_the_poster(posted):
    chain, clock = posted
    t = claim(BOB, 0, (JOB_ID, WRONG_C))
    add(chain, clock, [t])
    alice, bob, carol = (chain.state.balance(k.address) for k in (ALICE, BOB, CAROL))
    proof = build_fraud_proof(t.txid, JOB_ID, A, B, WRONG_C, 3, 5)
    wrong_claim = dataclasses.replace(proof, claim_id=chain.tip.hash)
    assert "payload.claim_id: not the block or job_result that claimed" in refusal(
        chain, [tx(CAROL, 0, wrong_claim)]
    )
    add(chain, clock, [tx(CAROL, 0, proof)])
    assert chain.state.balance(ALICE.address) == alice + REWARD
    assert chain.state.balance(CAROL.address) == carol - FEE  # the prover gains nothing
    job = job_record(chain.state, JOB_ID)
    assert job["status"] == "refunded" and job["bond"] == BOND
    while chain.height < 2 + W + 1:
        add(chain, clock)
    assert chain.state.balance(BOB.address) == bob  # neither the bond nor the reward came
    assert chain.state.balance(ALICE.address) == alice + REWARD


def test_a_fraud_proof_of_a_correct_or_settled_claim_is_refused(posted):
    chain, clock = posted
    t = claim(BOB, 0, (JOB_ID, C), (JOB2_ID, WRONG_C))
    add(chain, clock, [t])
    correct = build_fraud_proof(t.txid, JOB_ID, A, B, C, 3, 5)
    assert "is correct: no fraud" in refusal(chain, [tx(CAROL, 0, correct)])
    extend(chain, clock, W)
    assert "the job is paid, not awaiting payment" in refusal(chain, [tx(CAROL, 0, correct)])


def test_claims_of_unknown_expired_or_cancelled_jobs_are_refused():
    chain, clock = new_chain()
    _, _, _, short, short_id, short_c = new_job(expiry=3)
    add(chain, clock, [tx(ALICE, 0, short)])
    unknown = claim(BOB, 0, (JOB_ID, C))
    assert "claims[0].job_id: no such job" in refusal(chain, [unknown])
    add(chain, clock)  # height 2: a claim at height 3, the expiry, is still in time
    late = claim(BOB, 0, (short_id, short_c))
    header, _ = chain.build_template((late,), MINER.address, JOB.spec)
    assert header.tx_root == tx_root([late])
    add(chain, clock)  # height 3
    assert "claims[0].job_id: the job expired at height 3" in refusal(chain, [late])
    add(chain, clock, [tx(ALICE, 1, JobCancelPayload(short_id))])
    assert job_record(chain.state, short_id)["status"] == "cancelled"
    assert "the job is cancelled, not open" in refusal(chain, [late])
