"""The compute market: posted jobs, escrow, claims, payment after a challenge window,
fraud proofs (PROTOCOL §8).

A ``job_post`` escrows a reward for computing A·B. The job is claimed by the
first of these, in chain order:

* a block whose PoUW ran on that job (its header's job id): the block carries
  ``result_root``, the Merkle root of C's rows. Its claim takes effect when
  its child is applied, before the child's transactions (a block's state
  cannot depend on its own hash);
* a ``job_result`` transaction that names the job and a result_root, and
  locks a bond (the reward × ``claim_bond_ratio``) from its sender's balance.

A later claim of a claimed job is invalid; a block on a claimed job is still
a valid block, it just claims nothing. W blocks after the claim the reward,
and the bond, go to the claimant. Within those W blocks anyone may send a
``fraud_proof`` that opens row i of A, column j of B and row i of C against
the job's and the claim's roots and shows C[i, j] ≠ Σ_k A[i, k]·B[k, j]. A
valid one refunds the poster and burns what the claimant staked: the bond of
a job_result, or the coinbase of a claiming block, which is still immature
because coinbase maturity ≥ W. Burning, rather than paying the prover, keeps
a claimant from profiting by reporting itself.

Every change goes through the state journal, so a reorg undoes it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from consensus.blocks import BlockHeader, JobSpec
from consensus.errors import InvalidTransaction
from consensus.merkle import (
    cols_with_branches,
    matrix_rows_root,
    rows_with_branches,
    verify_branch,
)
from consensus.params import NetworkParams
from consensus.state import (
    IMMATURE,
    JOB_CHALLENGES,
    JOBS,
    JOBS_DUE,
    LOCKED,
    State,
    check_spendable,
    immature_coinbase,
)
from consensus.transactions import (
    MAX_RESULT_CLAIMS,
    FraudProofPayload,
    JobCancelPayload,
    JobClaim,
    JobPostPayload,
    JobResultPayload,
    ResultChallengePayload,
    ResultRowsPayload,
    RevealedRow,
    Transaction,
)

# JOBS: job id → (poster, m, k, n, root_a, root_b, reward, expiry, status, claimant,
#                 claim kind, claim id, claim height, result root, bond, due height)
# DUE: height → tuple of job ids whose reward is paid when that block is applied
DUE = JOBS_DUE

JOB_FIELDS = (
    "poster",
    "m",
    "k",
    "n",
    "root_a",
    "root_b",
    "reward",
    "expiry",
    "status",
    "claimant",
    "claim_kind",
    "claim_id",
    "claim_height",
    "result_root",
    "bond",
    "due",
)
"""The fields of a job's state entry, in order (a tuple, so it encodes canonically).

Until the job is claimed the claim fields are empty (empty bytes and string,
zeros). Then ``claimant`` is the address paid at settlement, ``claim_kind`` is "block" or
"tx", ``claim_id`` the claiming block's hash or the job_result's txid (what a
fraud proof names), ``claim_height`` the claiming block's height or the height
the job_result was included at, ``bond`` what the claimant locked (0 for a
block claim) and ``due`` the height at which it is paid."""

OPEN, MINED, PAID, REFUNDED, CANCELLED = "open", "mined", "paid", "refunded", "cancelled"
CLAIM_BLOCK, CLAIM_TX = "block", "tx"
_EMPTY32 = bytes(32)


def job_id_of(poster: bytes, p: JobPostPayload, params: NetworkParams) -> bytes:
    """The id of the job ``poster`` (the job_post's sender) posts with ``p``."""
    spec = JobSpec(poster, p.m, p.k, p.n, p.root_a, p.root_b)
    return spec.job_id(params.rank, params.tile_h, params.tile_w)


def job_record(state: State, job_id: bytes) -> dict[str, Any] | None:
    """A readable view of one job's state entry (for RPC and the client)."""
    rec = state.get(JOBS, job_id)
    if rec is None:
        return None
    return dict(zip(JOB_FIELDS, rec, strict=True))


def _replace(rec: tuple[Any, ...], **changes: Any) -> tuple[Any, ...]:
    d = dict(zip(JOB_FIELDS, rec, strict=True))
    d.update(changes)
    return tuple(d[k] for k in JOB_FIELDS)


def _debit(state: State, addr: bytes, amount: int, nonce_bump: bool) -> None:
    check_spendable(state, addr, amount)
    balance, nonce = state.account(addr)
    state.set_account(addr, balance - amount, nonce + 1 if nonce_bump else nonce)


def _credit(state: State, addr: bytes, amount: int) -> None:
    balance, nonce = state.account(addr)
    state.set_account(addr, balance + amount, nonce)


def apply_job_post(
    state: State,
    tx: Transaction,
    p: JobPostPayload,
    height: int,
    params: NetworkParams,
) -> None:
    """Escrow the reward; the job becomes open until ``expiry_height``."""
    if p.k % params.rank or p.m % params.tile_h or p.n % params.tile_w:
        raise InvalidTransaction(
            f"payload: job {p.m}x{p.k}x{p.n} does not tile by r={params.rank}, "
            f"{params.tile_h}x{params.tile_w}"
        )
    if p.m > params.max_job_dim or p.n > params.max_job_dim or p.k > params.max_job_k:
        raise InvalidTransaction("payload: job is larger than this network allows")
    too_small = params.job_too_small(p.m, p.k, p.n)
    if too_small:
        raise InvalidTransaction(f"payload: {too_small}")
    if p.expiry_height <= height:
        raise InvalidTransaction(f"payload.expiry_height: {p.expiry_height} is not after {height}")
    job_id = job_id_of(tx.sender_address, p, params)
    if state.get(JOBS, job_id) is not None:
        raise InvalidTransaction("payload: this sender already posted this job")
    _debit(state, tx.sender_address, tx.fee + p.fee, True)
    state.set(
        JOBS,
        job_id,
        (
            tx.sender_address,
            p.m,
            p.k,
            p.n,
            p.root_a,
            p.root_b,
            p.fee,
            p.expiry_height,
            OPEN,
            b"",
            "",
            _EMPTY32,
            0,
            _EMPTY32,
            0,
            0,
        ),
    )


def apply_job_cancel(state: State, tx: Transaction, p: JobCancelPayload, height: int) -> None:
    """Refund an expired job that no block used."""
    rec = state.get(JOBS, p.job_id)
    if rec is None:
        raise InvalidTransaction("payload.job_id: no such job")
    job = job_record(state, p.job_id)
    assert job is not None
    if job["poster"] != tx.sender_address:
        raise InvalidTransaction("payload.job_id: only the poster can cancel a job")
    if job["status"] != OPEN:
        raise InvalidTransaction(f"payload.job_id: the job is {job['status']}, not open")
    if height <= job["expiry"]:
        # Before expiry a miner may be computing it in good faith.
        raise InvalidTransaction(f"payload.job_id: the job is open until height {job['expiry']}")
    _debit(state, tx.sender_address, tx.fee, True)
    _credit(state, tx.sender_address, job["reward"])
    state.set(JOBS, p.job_id, _replace(rec, status=CANCELLED))


def check_fraud(job: dict[str, Any], p: FraudProofPayload) -> None:
    """The openings are genuine and C[i, j] is wrong, or InvalidTransaction."""
    m, k, n = job["m"], job["k"], job["n"]
    if p.i >= m or p.j >= n:
        raise InvalidTransaction(f"payload: entry ({p.i}, {p.j}) is outside the {m}x{n} result")
    if len(p.a_row) != k or len(p.b_col) != k:
        raise InvalidTransaction(f"payload: the opened row and column must have k={k} entries")
    if len(p.c_row) != 4 * n:
        raise InvalidTransaction(f"payload.c_row: a row of C has {n} int32 entries")
    if not verify_branch(job["root_a"], p.i, m, p.a_row, p.a_branch):
        raise InvalidTransaction("payload.a_branch: row of A does not match the job's root_a")
    if not verify_branch(job["root_b"], p.j, n, p.b_col, p.b_branch):
        raise InvalidTransaction("payload.b_branch: column of B does not match the job's root_b")
    if not verify_branch(job["result_root"], p.i, m, p.c_row, p.c_branch):
        raise InvalidTransaction(
            "payload.c_branch: row of C does not match the claim's result_root"
        )
    a = np.frombuffer(p.a_row, dtype=np.int8).astype(np.int64)
    b = np.frombuffer(p.b_col, dtype=np.int8).astype(np.int64)
    claimed = int(np.frombuffer(p.c_row, dtype="<i4")[p.j])
    if int(a @ b) == claimed:
        raise InvalidTransaction(f"payload: C[{p.i}, {p.j}] = {claimed} is correct: no fraud")


def apply_fraud_proof(
    state: State,
    tx: Transaction,
    p: FraudProofPayload,
    height: int,
    params: NetworkParams,
) -> None:
    """Refund the poster of a job whose claimed C is shown wrong; burn the claimant's stake."""
    job = _claimed_job(state, p.job_id, p.claim_id, height)
    check_fraud(job, p)
    _debit(state, tx.sender_address, tx.fee, True)
    _remove_due(state, job["due"], p.job_id)
    _refund_claim(state, p.job_id, params)


def _refund_claim(state: State, job_id: bytes, params: NetworkParams) -> None:
    """A claim shown wrong (fraud proof) or that kept its C from the poster (a challenge
    left unanswered): the poster gets the reward back, the claimant's stake is burned (a
    job_result's bond by never being paid back, the record keeping its amount; a block's
    still immature coinbase)."""
    rec = state.get(JOBS, job_id)
    job = job_record(state, job_id)
    assert rec is not None and job is not None
    _credit(state, job["poster"], job["reward"])
    state.set(JOBS, job_id, _replace(rec, status=REFUNDED))
    state.set(JOB_CHALLENGES, job_id, None)
    if job["claim_kind"] == CLAIM_BLOCK:
        _burn_coinbase(state, job["claim_height"] + params.coinbase_maturity, job["claimant"])


def reveal_blocks(params: NetworkParams) -> int:
    """Blocks a challenged claim has, at least, to reveal the rows asked for: half the
    challenge window (a challenge late in the window pushes the job's due height)."""
    return max(1, params.challenge_window // 2)


def _claimed_job(state: State, job_id: bytes, claim_id: bytes, height: int) -> dict[str, Any]:
    """The job record of an open claim ``claim_id`` on ``job_id``, or InvalidTransaction."""
    job = job_record(state, job_id)
    if job is None:
        raise InvalidTransaction("payload.job_id: no such job")
    if job["status"] != MINED:
        raise InvalidTransaction(
            f"payload.job_id: the job is {job['status']}, not awaiting payment"
        )
    if job["claim_id"] != claim_id:
        raise InvalidTransaction(
            "payload.claim_id: not the block or job_result that claimed this job"
        )
    if height >= job["due"]:
        raise InvalidTransaction("payload: the challenge window of this job has closed")
    return job


def apply_result_challenge(
    state: State,
    tx: Transaction,
    p: ResultChallengePayload,
    height: int,
    params: NetworkParams,
) -> None:
    """The poster asks the claim to reveal rows of C: once per claim, while it is open;
    the job is due no sooner than ``reveal_blocks`` after."""
    job = _claimed_job(state, p.job_id, p.claim_id, height)
    if tx.sender_address != job["poster"]:
        raise InvalidTransaction("payload.job_id: only the job's poster may challenge its claim")
    if state.get(JOB_CHALLENGES, p.job_id) is not None:
        raise InvalidTransaction("payload.job_id: this claim was challenged already")
    for i in p.rows:
        if i >= job["m"]:
            raise InvalidTransaction(f"payload.rows: row {i} is outside the {job['m']}-row result")
    _debit(state, tx.sender_address, tx.fee, True)
    state.set(JOB_CHALLENGES, p.job_id, tuple(sorted(p.rows)))  # of the job's claim
    due = max(job["due"], height + reveal_blocks(params))
    if due != job["due"]:
        _remove_due(state, job["due"], p.job_id)
        state.set(JOBS, p.job_id, _replace(state.get(JOBS, p.job_id), due=due))
        _add_due(state, due, p.job_id)


def apply_result_rows(
    state: State,
    tx: Transaction,
    p: ResultRowsPayload,
    height: int,
    params: NetworkParams,
) -> None:
    """Rows of C a challenge asked for, each opened against the claim's result_root."""
    job = _claimed_job(state, p.job_id, p.claim_id, height)
    left = state.get(JOB_CHALLENGES, p.job_id)
    if left is None:
        raise InvalidTransaction("payload.job_id: no challenge asks this claim for rows")
    m, n = job["m"], job["n"]
    for i, r in enumerate(p.rows):
        if r.index not in left:
            raise InvalidTransaction(
                f"payload.rows[{i}]: row {r.index} is not one the challenge still asks for"
            )
        if len(r.row) != 4 * n:
            raise InvalidTransaction(f"payload.rows[{i}].row: a row of C has {n} int32 entries")
        if not verify_branch(job["result_root"], r.index, m, r.row, r.branch):
            raise InvalidTransaction(
                f"payload.rows[{i}].branch: row {r.index} does not match the claim's result_root"
            )
    _debit(state, tx.sender_address, tx.fee, True)
    revealed = {r.index for r in p.rows}
    state.set(JOB_CHALLENGES, p.job_id, tuple(i for i in left if i not in revealed))


def _add_due(state: State, due: int, *job_ids: bytes) -> None:
    state.set(DUE, due, (*state.get(DUE, due, ()), *job_ids))


def _remove_due(state: State, due: int, job_id: bytes) -> None:
    left = tuple(j for j in state.get(DUE, due, ()) if j != job_id)
    state.set(DUE, due, left or None)


def _burn_coinbase(state: State, maturity_height: int, miner: bytes) -> None:
    entry = immature_coinbase(state, maturity_height)
    if entry is None or entry.miner != miner:
        return  # already burned by an earlier fraud proof on the same block
    amount = entry.amount
    state.set(IMMATURE, maturity_height, None)
    state.set(LOCKED, miner, (state.get(LOCKED, miner, 0) - amount) or None)


def header_claim(state: State, header: BlockHeader, params: NetworkParams) -> bytes | None:
    """The job a block's header claims in ``state``: the posted job its PoUW ran on, if
    that job is open and the block is within its expiry; else None. Already claimed (by a
    block or a job_result), cancelled or expired, the block is valid work that claims
    nothing. The claim is recorded when the block's child is applied
    (:func:`claim_parent_job`); until then ``state`` is the one to ask."""
    if header.height == 0 or header.result_root == _EMPTY32:
        # A result_root of zeros opens no row: no fraud proof or challenge could ever
        # answer it, so a block that commits none claims nothing (its miner kept C to
        # itself, or never recovered it).
        return None
    job_id = header.job.job_id(params.rank, params.tile_h, params.tile_w)
    job = job_record(state, job_id)
    if job is None or job["status"] != OPEN or header.height > job["expiry"]:
        return None
    return job_id


def claim_parent_job(state: State, parent: BlockHeader, params: NetworkParams) -> None:
    """The parent block claims the posted job its PoUW ran on, if it is open.

    The claim is recorded when the *child* is applied: the claim stores the
    parent's hash and result_root, and a block's own state root cannot depend
    on its own hash, nor on its result_root, which is only known after the
    first attempt (and is why header_seed leaves it out). So a job_result in
    the parent block itself comes first in chain order and wins.
    """
    job_id = header_claim(state, parent, params)
    if job_id is None:
        return
    rec = state.get(JOBS, job_id)
    due = parent.height + params.challenge_window
    state.set(
        JOBS,
        job_id,
        _replace(
            rec,
            status=MINED,
            claimant=parent.miner,
            claim_kind=CLAIM_BLOCK,
            claim_id=parent.hash,
            claim_height=parent.height,
            result_root=parent.result_root,
            due=due,
        ),
    )
    _add_due(state, due, job_id)


def claim_bond(reward: int, params: NetworkParams) -> int:
    """What a job_result claim of a job with this reward locks from its sender."""
    return reward * params.claim_bond_ratio


def apply_job_result(
    state: State,
    tx: Transaction,
    p: JobResultPayload,
    height: int,
    params: NetworkParams,
) -> None:
    """Claim each named open job for the sender, locking a bond per claim.

    The claims are paid, reward and bond, at ``height`` + W (``pay_due_jobs``)
    unless a fraud proof disproves them first. Every job must be claimable, or
    the whole transaction is invalid.
    """
    bonds: list[int] = []
    for i, claim in enumerate(p.claims):
        job = job_record(state, claim.job_id)
        if job is None:
            raise InvalidTransaction(f"payload.claims[{i}].job_id: no such job")
        if job["status"] != OPEN:
            raise InvalidTransaction(
                f"payload.claims[{i}].job_id: the job is {job['status']}, not open "
                "(the first claim wins)"
            )
        if height > job["expiry"]:
            raise InvalidTransaction(
                f"payload.claims[{i}].job_id: the job expired at height {job['expiry']}"
            )
        bonds.append(claim_bond(job["reward"], params))
    _debit(state, tx.sender_address, tx.fee + sum(bonds), True)
    due = height + params.challenge_window
    for claim, bond in zip(p.claims, bonds, strict=True):
        rec = state.get(JOBS, claim.job_id)
        state.set(
            JOBS,
            claim.job_id,
            _replace(
                rec,
                status=MINED,
                claimant=tx.sender_address,
                claim_kind=CLAIM_TX,
                claim_id=tx.txid,
                claim_height=height,
                result_root=claim.result_root,
                bond=bond,
                due=due,
            ),
        )
    _add_due(state, due, *(c.job_id for c in p.claims))


def pay_due_jobs(state: State, height: int, params: NetworkParams) -> None:
    """Settle the claims of jobs whose challenge window ends at ``height``: reward and bond
    to the claimant, unless a challenge's rows are still unrevealed (then refunded)."""
    due = state.get(DUE, height)
    if due is None:
        return
    for job_id in due:
        if state.get(JOB_CHALLENGES, job_id):  # rows still unrevealed
            _refund_claim(state, job_id, params)
            continue
        rec = state.get(JOBS, job_id)
        job = job_record(state, job_id)
        assert job is not None and rec is not None
        _credit(state, job["claimant"], job["reward"] + job["bond"])
        state.set(JOBS, job_id, _replace(rec, status=PAID))
        state.set(JOB_CHALLENGES, job_id, None)
    state.set(DUE, height, None)


def build_fraud_proof(
    claim_id: bytes, job_id: bytes, a: np.ndarray, b: np.ndarray, c: np.ndarray, i: int, j: int
) -> FraudProofPayload:
    """Open row i of A, column j of B and row i of the claimed C (int32) with branches.

    ``claim_id`` is the job record's: the claiming block's hash or job_result's txid."""
    (c_row,) = rows_with_branches(np.ascontiguousarray(c, dtype=np.int32), [i])
    return fraud_proof_from_row(claim_id, job_id, a, b, RevealedRow(i, c_row.row, c_row.branch), j)


def fraud_proof_from_row(
    claim_id: bytes, job_id: bytes, a: np.ndarray, b: np.ndarray, c_row: RevealedRow, j: int
) -> FraudProofPayload:
    """:func:`build_fraud_proof` from one row of the claimed C already opened against the
    claim's result_root (a ``result_rows`` reveal): all a poster needs when the claimant
    serves no more of C than the rows a challenge made it reveal."""
    i = c_row.index
    (a_row,) = rows_with_branches(a, [i])
    (b_col,) = cols_with_branches(b, [j])
    return FraudProofPayload(
        claim_id, job_id, i, j, a_row.row, a_row.branch, b_col.row, b_col.branch, c_row.row,
        c_row.branch,
    )  # fmt: skip


def build_result_rows(
    claim_id: bytes, job_id: bytes, c: np.ndarray, rows: Iterable[int]
) -> ResultRowsPayload:
    """The payload revealing ``rows`` of the claimed C (int32) with their branches."""
    opened = rows_with_branches(np.ascontiguousarray(c, dtype=np.int32), sorted(rows))
    return ResultRowsPayload(
        claim_id, job_id, tuple(RevealedRow(o.index, o.row, o.branch) for o in opened)
    )


def build_job_result(results: Iterable[tuple[bytes, np.ndarray]]) -> JobResultPayload:
    """The payload claiming each (job id, its product C) with C's result_root.

    C is committed as int32 rows, as a block's result_root is; ValueError if
    there are more results than one job_result may claim.
    """
    claims = tuple(
        JobClaim(job_id, matrix_rows_root(np.ascontiguousarray(c, dtype=np.int32)))
        for job_id, c in results
    )
    if len(claims) > MAX_RESULT_CLAIMS:
        raise ValueError(
            f"{len(claims)} results; one job_result claims at most {MAX_RESULT_CLAIMS}"
        )
    return JobResultPayload(claims)
