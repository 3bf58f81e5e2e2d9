"""A claim whose C its poster cannot get: the poster challenges rows of C, the claim
reveals them on chain or is refunded at its due height. Without this, a claim with a
made-up result_root (or a block committing none) was paid: no fraud proof can open a
row of a C nobody has."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from consensus.blocks import Block, noise_seeds, ticket_key, tx_root
from consensus.chain import Chain
from consensus.errors import InvalidBlock, InvalidTransaction
from consensus.market import (
    build_fraud_proof,
    build_result_rows,
    fraud_proof_from_row,
    job_record,
    reveal_blocks,
)
from consensus.pow import build_proof, mining_params, null_job, verify_pow
from consensus.state import JOB_CHALLENGES
from consensus.transactions import (
    MAX_CHALLENGE_ROWS,
    JobClaim,
    JobResultPayload,
    ResultChallengePayload,
    ResultRowsPayload,
    RevealedRow,
    Transaction,
    check_tx_stateless,
)
from consensus.validation import apply_body
from kernels.attempt import mining_attempt
from kernels.freivalds import wrong_entry
from tests.support.chainkit import ALICE, BOB, CAROL, MID, MINER, Clock, extend, new_chain
from tests.support.claimkit import (
    BOND,
    FEE,
    JOB,
    JOB_ID,
    POST,
    REWARD,
    WRONG_C,
    A,
    B,
    C,
    W,
    add,
    add_job_block,
    claim,
    tx,
)

R = reveal_blocks(MID)


def refusal(chain: Chain, txs: list[Transaction]) -> str:
    """Why a block on the tip with exactly ``txs`` is invalid."""
    header, _ = chain.build_template((), MINER.address, null_job(chain.tip.hash, MID).spec)
    block = Block(dataclasses.replace(header, tx_root=tx_root(txs)), tuple(txs))
    with pytest.raises(InvalidBlock) as caught:
        apply_body(chain.state, block, MID, None, chain.tip.header)
    return str(caught.value)


@pytest.fixture
def posted() -> tuple[Chain, Clock]:
    """Alice posted JOB at height 1."""
    chain, clock = new_chain()
    add(chain, clock, [tx(ALICE, 0, POST)])
    return chain, clock


def _made_up_claim(chain: Chain, clock: Clock) -> Transaction:
    """Bob claims JOB with a result_root he made up: no row of it can ever be opened."""
    t = tx(BOB, 0, JobResultPayload((JobClaim(JOB_ID, os.urandom(32)),)))
    add(chain, clock, [t])
    return t


def _challenge(claim_id: bytes, rows=(0, 5), nonce: int = 1, key=ALICE) -> Transaction:
    return tx(key, nonce, ResultChallengePayload(claim_id, JOB_ID, tuple(rows)))


def test_a_made_up_result_root_is_refunded_once_challenged_and_the_bond_burned(posted):
    chain, clock = posted
    alice, bob = chain.state.balance(ALICE.address), chain.state.balance(BOB.address)
    t = _made_up_claim(chain, clock)
    # The fraud proof of the last design cannot help: no row opens against the root.
    fraud = tx(ALICE, 1, build_fraud_proof(t.txid, JOB_ID, A, B, C, 0, 0))
    assert "does not match the claim's result_root" in refusal(chain, [fraud])
    add(chain, clock, [_challenge(t.txid)])
    assert chain.state.get(JOB_CHALLENGES, JOB_ID) == (0, 5)
    assert job_record(chain.state, JOB_ID)["claim_id"] == t.txid  # the claim challenged
    due = job_record(chain.state, JOB_ID)["due"]
    while chain.height < due:
        add(chain, clock)
    job = job_record(chain.state, JOB_ID)
    assert job["status"] == "refunded"
    assert chain.state.balance(ALICE.address) == alice + REWARD - FEE  # escrow back, a fee spent
    assert chain.state.balance(BOB.address) == bob - BOND - FEE  # the bond burned
    assert chain.state.get(JOB_CHALLENGES, JOB_ID) is None


def test_an_honest_claim_reveals_the_rows_and_is_paid(posted):
    chain, clock = posted
    bob = chain.state.balance(BOB.address)
    t = claim(BOB, 0, (JOB_ID, C))
    add(chain, clock, [t])
    add(chain, clock, [_challenge(t.txid, rows=(3, 1, 7))])
    # Carol, who fetched C, reveals two rows; Bob the last.
    add(chain, clock, [tx(CAROL, 0, build_result_rows(t.txid, JOB_ID, C, [1, 7]))])
    assert chain.state.get(JOB_CHALLENGES, JOB_ID) == (3,)
    assert job_record(chain.state, JOB_ID)["claim_id"] == t.txid
    again = tx(BOB, 1, build_result_rows(t.txid, JOB_ID, C, [1]))
    assert "not one the challenge still asks for" in refusal(chain, [again])
    add(chain, clock, [tx(BOB, 1, build_result_rows(t.txid, JOB_ID, C, [3]))])
    due = job_record(chain.state, JOB_ID)["due"]
    while chain.height < due:
        add(chain, clock)
    assert job_record(chain.state, JOB_ID)["status"] == "paid"
    assert chain.state.balance(BOB.address) == bob - 2 * FEE + REWARD
    assert chain.state.get(JOB_CHALLENGES, JOB_ID) is None


def test_a_wrong_revealed_row_is_proved_wrong_from_the_chain(posted):
    """A claimant that committed a wrong C it keeps to itself reveals the rows a challenge
    asks for, each matching its result_root: the poster, who holds A and B and only the
    revealed rows, finds the wrong entry and proves it from the chain alone."""
    chain, clock = posted
    t = claim(BOB, 0, (JOB_ID, WRONG_C))  # WRONG_C[3, 5] is off by one
    add(chain, clock, [t])
    add(chain, clock, [_challenge(t.txid, rows=(1, 3))])
    reveal = build_result_rows(t.txid, JOB_ID, WRONG_C, [1, 3])
    add(chain, clock, [tx(BOB, 1, reveal)])
    assert chain.state.get(JOB_CHALLENGES, JOB_ID) == ()  # all revealed: paid at due, unless
    right, wrong = reveal.rows
    assert wrong_entry(A, B, right.index, np.frombuffer(right.row, dtype="<i4")) is None
    claimed = np.frombuffer(wrong.row, dtype="<i4")
    assert wrong_entry(A, B, wrong.index, claimed) == (5, C[3, 5]) != (5, claimed[5])
    proof = fraud_proof_from_row(t.txid, JOB_ID, A, B, wrong, 5)
    assert proof == build_fraud_proof(t.txid, JOB_ID, A, B, WRONG_C, 3, 5)
    assert "is correct: no fraud" in refusal(
        chain, [tx(ALICE, 2, fraud_proof_from_row(t.txid, JOB_ID, A, B, right, 5))]
    )
    with pytest.raises(ValueError, match="int32 entries"):
        wrong_entry(A, B, 3, claimed[:-1])
    add(chain, clock, [tx(ALICE, 2, proof)])
    assert job_record(chain.state, JOB_ID)["status"] == "refunded"
    assert chain.state.get(JOB_CHALLENGES, JOB_ID) is None


def test_a_late_challenge_pushes_the_due_height_so_the_claim_can_answer(posted):
    chain, clock = posted
    t = claim(BOB, 0, (JOB_ID, C))
    add(chain, clock, [t])
    due = job_record(chain.state, JOB_ID)["due"]
    while chain.height < due - 2:
        add(chain, clock)
    add(chain, clock, [_challenge(t.txid)])  # at due - 1
    moved = job_record(chain.state, JOB_ID)["due"]
    assert moved == chain.height + R > due
    assert JOB_ID not in chain.state.get("jobs_due", due, ())
    assert JOB_ID in chain.state.get("jobs_due", moved)
    add(chain, clock)  # the old due height passes: nothing is settled
    assert job_record(chain.state, JOB_ID)["status"] == "mined"
    add(chain, clock, [tx(BOB, 1, build_result_rows(t.txid, JOB_ID, C, [0, 5]))])
    while chain.height < moved:
        add(chain, clock)
    assert job_record(chain.state, JOB_ID)["status"] == "paid"


def test_challenges_that_are_refused(posted):
    chain, clock = posted
    t = _made_up_claim(chain, clock)
    assert "only the job's poster" in refusal(chain, [_challenge(t.txid, nonce=0, key=CAROL)])
    assert "not the block or job_result" in refusal(chain, [_challenge(os.urandom(32))])
    m = POST.m
    assert f"row {m} is outside" in refusal(chain, [_challenge(t.txid, rows=(0, m))])
    add(chain, clock, [_challenge(t.txid)])
    assert "challenged already" in refusal(chain, [_challenge(t.txid, rows=(1,), nonce=2)])
    for bad in ((), (4, 4), tuple(range(MAX_CHALLENGE_ROWS + 1))):
        with pytest.raises((InvalidTransaction, Exception)):
            check_tx_stateless(_challenge(t.txid, rows=bad), MID.chain_id)


def test_reveals_that_are_refused(posted):
    chain, clock = posted
    t = claim(BOB, 0, (JOB_ID, C))
    add(chain, clock, [t])
    good = build_result_rows(t.txid, JOB_ID, C, [5])
    assert "no challenge asks" in refusal(chain, [tx(BOB, 1, good)])
    add(chain, clock, [_challenge(t.txid, rows=(5,))])
    (row,) = good.rows
    flipped = bytes([row.row[0] ^ 1]) + row.row[1:]
    forged = ResultRowsPayload(t.txid, JOB_ID, (RevealedRow(5, flipped, row.branch),))
    assert "does not match the claim's result_root" in refusal(chain, [tx(BOB, 1, forged)])
    short = ResultRowsPayload(t.txid, JOB_ID, (RevealedRow(5, row.row[:-4], row.branch),))
    assert "int32 entries" in refusal(chain, [tx(BOB, 1, short)])
    other = ResultRowsPayload(os.urandom(32), JOB_ID, good.rows)
    assert "not the block or job_result" in refusal(chain, [tx(BOB, 1, other)])
    twice = ResultRowsPayload(t.txid, JOB_ID, (row, row))
    with pytest.raises(InvalidTransaction, match="revealed twice"):
        check_tx_stateless(tx(BOB, 1, twice), MID.chain_id)
    due = job_record(chain.state, JOB_ID)["due"]
    while chain.height < due - 1:
        add(chain, clock)
    add(chain, clock)  # at the due height the window has closed: the claim is refunded
    assert job_record(chain.state, JOB_ID)["status"] == "refunded"
    assert "refunded, not awaiting payment" in refusal(chain, [tx(BOB, 1, good)])


def test_a_block_committing_no_result_claims_nothing(posted):
    """A block mined on a posted job whose header commits a zero result_root opens no
    row: it is valid work, but claims nothing; the job stays open for a real claim."""
    chain, clock = posted
    clock.now += MID.block_time_ms
    template, _ = chain.build_template((), MINER.address, JOB.spec, clock.now)
    zero = None
    for nonce in range(64):  # mined with its tickets keyed by a zero result_root
        header = dataclasses.replace(template, extra_nonce=nonce, result_root=bytes(32))
        seed_a, seed_b = noise_seeds(header.header_seed, JOB.spec)
        key = ticket_key(seed_a, bytes(32))
        res = mining_attempt(
            JOB.a, JOB.b, seed_a, seed_b, header.target, mining_params(MID), ticket_key=key
        )
        if res.winners:
            proof = build_proof(JOB, *res.winners[0], MID)
            zero = Block(dataclasses.replace(header, proof=proof), ())
            break
    assert zero is not None
    verify_pow(zero.header, MID)  # valid work: the block is accepted
    chain.add_block(zero)
    add(chain, clock)  # the child applies the parent's claim, if any
    assert job_record(chain.state, JOB_ID)["status"] == "open"
    add_job_block(chain, clock, JOB)
    add(chain, clock)
    job = job_record(chain.state, JOB_ID)
    assert job["status"] == "mined" and job["result_root"] != bytes(32)


def test_a_challenge_and_its_reveal_undo_exactly(posted):
    chain, clock = posted
    before = (chain.state.snapshot(), chain.state.root)
    height = chain.height
    t = claim(BOB, 0, (JOB_ID, C))
    add(chain, clock, [t])
    add(chain, clock, [_challenge(t.txid)])
    add(chain, clock, [tx(BOB, 1, build_result_rows(t.txid, JOB_ID, C, [0]))])
    extend(chain, clock, W + R)
    assert job_record(chain.state, JOB_ID)["status"] == "refunded"  # row 5 never came
    chain._disconnect_to(height)
    assert (chain.state.snapshot(), chain.state.root) == before


def test_one_reveal_fits_in_a_transaction_at_the_largest_rows():
    """MAX_CHALLENGE_ROWS rows of the widest C would not fit one transaction: a reveal
    may carry any of the rows still asked for, so the claimant splits them."""
    from consensus.transactions import MAX_TX_SIZE, encode_tx

    n = MID.max_job_dim
    c = np.zeros((MAX_CHALLENGE_ROWS, n), dtype=np.int32)
    rows = build_result_rows(bytes(32), bytes(32), c, range(MAX_CHALLENGE_ROWS)).rows
    per_tx = max(1, (MAX_TX_SIZE - 1024) // (4 * n + 32 * 20))
    parts = [rows[i : i + per_tx] for i in range(0, len(rows), per_tx)]
    for part in parts:
        t = tx(BOB, 0, ResultRowsPayload(bytes(32), bytes(32), part))
        assert len(encode_tx(t)) <= MAX_TX_SIZE


def test_a_miner_answers_from_its_stored_c_in_transactions_that_fit(tmp_path):
    """The mining node's answer: the challenged rows of the C it stored (as a matrix
    blob under its result_root), each verifying against that root, split into
    transactions under the size limit; None once C is no longer stored."""
    from types import SimpleNamespace

    from consensus.merkle import matrix_rows_root, verify_branch
    from consensus.transactions import MAX_TX_SIZE, encode_tx
    from node.relay.blobs import BlobExchange
    from node.services.market import MarketService
    from node.store import Store

    m, n = 64, 16_384  # rows of 64 KiB: 8 of them do not fit one transaction
    c = np.random.default_rng(3).integers(-(2**31), 2**31, (m, n), dtype=np.int32)
    root = matrix_rows_root(c)
    with Store(tmp_path, MID) as store:
        blobs = BlobExchange(store, lambda: [])
        blobs.put_matrix(c, None, root)
        fake = SimpleNamespace(blobs=blobs)
        rows = (0, 9, 17, 33, 40, 41, 62, 63)
        payloads = MarketService._reveal_payloads(fake, b"c" * 32, b"j" * 32, root, m, n, rows)
        assert payloads is not None and len(payloads) > 1
        got = [r for p in payloads for r in p.rows]
        assert [r.index for r in got] == list(rows)
        for r in got:
            assert r.row == c[r.index].astype("<i4").tobytes()
            assert verify_branch(root, r.index, m, r.row, r.branch)
        for p in payloads:
            assert len(encode_tx(tx(BOB, 0, p))) <= MAX_TX_SIZE
        blobs.delete(root)
        assert MarketService._reveal_payloads(fake, b"c" * 32, b"j" * 32, root, m, n, rows) is None
