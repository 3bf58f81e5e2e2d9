"""The state transition function: header rules, PoUW, body rules, commitments.

Shaped like ethereum/execution-specs' ``state_transition``: validate the
header against its parent, verify the proof of work, apply the body, then
compare the commitments. Every rule is one ``if …: raise`` with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from consensus import datashare, market
from consensus.blocks import (
    MAX_TXS_PER_BLOCK,
    Block,
    BlockHeader,
    encode_block,
    encode_header,
)
from consensus.difficulty import asert_target, block_work
from consensus.errors import DecodeError, EncodeError, InvalidBlock, InvalidTransaction
from consensus.keys import VerifyBatch, verify_many
from consensus.params import NetworkParams
from consensus.pow import verify_pow
from consensus.state import (
    ACCOUNTS,
    IMMATURE,
    LOCKED,
    MODELS,
    ImmatureCoinbase,
    ModelStep,
    State,
    Undo,
    check_spendable,
    immature_coinbase,
    model_step,
)
from consensus.transactions import (
    AccessGrantPayload,
    AccessLogPayload,
    AccessRevokePayload,
    DatasetRegisterPayload,
    FraudProofPayload,
    JobCancelPayload,
    JobPostPayload,
    JobResultPayload,
    ModelPublishPayload,
    ModelRecordPayload,
    ResultChallengePayload,
    ResultRowsPayload,
    Transaction,
    TransferPayload,
    check_txs_stateless,
)


@dataclass(frozen=True)
class Anchor:
    """The ASERT anchor of a branch: its block 1 (timestamp, height) and the genesis target.

    Why block 1 and not genesis: a network's genesis time is fixed when its
    parameters are written, so a devnet started weeks later would be weeks
    "behind schedule" and ASERT would make its first million blocks free.
    Block 1's miner starts the clock instead (within the usual timestamp rules).
    """

    target: int
    timestamp_ms: int
    height: int


def median_time_past(timestamps: Sequence[int]) -> int:
    """Median of the given ancestor timestamps (the last 11, newest last)."""
    ordered = sorted(timestamps)
    return ordered[len(ordered) // 2]


def expected_target(parent: BlockHeader, anchor: Anchor | None, params: NetworkParams) -> int:
    """The target of the child of ``parent``; block 1 (no anchor yet) uses the genesis target."""
    if anchor is None or parent.height == 0:
        return params.genesis_target
    return asert_target(
        anchor.target,
        anchor.timestamp_ms,
        anchor.height,
        parent.timestamp_ms,
        parent.height,
        params.block_time_ms,
        params.asert_half_life_ms,
    )


def validate_header(
    header: BlockHeader,
    parent: BlockHeader,
    ancestor_timestamps: Sequence[int],
    anchor: Anchor | None,
    params: NetworkParams,
    now_ms: int,
) -> None:
    """Rules that need only the header and its ancestors' headers."""
    if header.prev_hash != parent.hash:
        raise InvalidBlock("header: prev_hash is not the parent's hash")
    if header.height != parent.height + 1:
        raise InvalidBlock(f"header: height {header.height} is not parent height + 1")
    if header.timestamp_ms <= median_time_past(ancestor_timestamps):
        # Monotone median time stops a miner from dragging time backwards to
        # raise its own target (and keeps ASERT's clock moving forward).
        raise InvalidBlock("header: timestamp is not after the median of the last 11 blocks")
    if header.timestamp_ms > now_ms + params.max_future_drift_ms:
        raise InvalidBlock("header: timestamp is too far in the future")
    if header.target != expected_target(parent, anchor, params):
        raise InvalidBlock("header: target does not follow ASERT from the parent")


@dataclass(frozen=True)
class HeaderContext:
    """A header that passed every header rule, with what its child's rules need.

    Whatever path a header comes by (a block, a compact block, a HEADERS reply),
    it is checked by :func:`check_child_header` against its parent's context, so
    a header kept anywhere (the block tree, a headers-first download) has passed
    the same rules.
    """

    header: BlockHeader
    work: int
    """Cumulative work of its branch, genesis included."""
    anchor: Anchor | None
    """The ASERT anchor of its branch (None for genesis)."""
    recent_timestamps: tuple[int, ...]
    """Its own timestamp and its ancestors', newest first, ``median_time_span`` at most."""


CheckPow = Callable[[BlockHeader], object]
"""``verify_pow`` under a network's parameters, or a caller's memo of it."""


def check_child_header(
    header: BlockHeader,
    parent: HeaderContext,
    params: NetworkParams,
    now_ms: int,
    check_pow: CheckPow | None = None,
) -> HeaderContext:
    """Every rule a header must pass given its parent: prev_hash, height, timestamps,
    the ASERT target from the parent, and the proof of work. Returns its context.

    Raises InvalidBlock naming the rule. The proof is checked last: it is the
    costly rule (one tile), and a header whose target is not the one its parent
    implies must not get that far (any proof passes a target of 2^256 − 1).
    ``check_pow`` checks the proof (default: ``verify_pow`` under ``params``);
    a node passes its memo, which gives the same verdicts.
    """
    validate_header(header, parent.header, parent.recent_timestamps, parent.anchor, params, now_ms)
    if check_pow is None:
        verify_pow(header, params)
    else:
        check_pow(header)
    anchor = parent.anchor
    if header.height == 1:
        anchor = Anchor(params.genesis_target, header.timestamp_ms, 1)
    recent = (header.timestamp_ms, *parent.recent_timestamps[: params.median_time_span - 1])
    return HeaderContext(header, parent.work + block_work(header.target), anchor, recent)


# ------------------------------------------------------------------ body


def apply_transaction(state: State, tx: Transaction, height: int, params: NetworkParams) -> int:
    """Apply one (already stateless-checked) transaction; returns its fee."""
    nonce = state.nonce(tx.sender_address)
    if tx.nonce < nonce:
        raise InvalidTransaction(f"nonce: {tx.nonce} was already used (next is {nonce})")
    if tx.nonce > nonce:
        raise InvalidTransaction(f"nonce: {tx.nonce} skips ahead (next is {nonce})")
    rule = PAYLOAD_RULES.get(type(tx.payload))
    if rule is None:
        raise InvalidTransaction(f"kind: {tx.kind.name.lower()} transactions are not enabled yet")
    rule(state, tx, tx.payload, height, params)
    return tx.fee


def apply_transfer(state: State, tx: Transaction, p: TransferPayload) -> None:
    """Move ``p.amount`` from the sender to ``p.to``; the sender pays the fee."""
    sender = tx.sender_address
    check_spendable(state, sender, tx.fee + p.amount)
    balance, nonce = state.account(sender)
    state.set_account(sender, balance - tx.fee - p.amount, nonce + 1)
    to_balance, to_nonce = state.account(p.to)
    state.set_account(p.to, to_balance + p.amount, to_nonce)


def apply_model_record(state: State, tx: Transaction, p: ModelRecordPayload, height: int) -> None:
    """Append step ``p.step`` to model ``p.model_id``'s lineage (PROTOCOL §8, training).

    A lineage is only worth auditing if nobody else can write into it, it has
    no gaps or forks, and it points at work the chain has seen verified: so a
    model's id begins with its owner's address (nobody can take another's id from a
    mempool), only the owner records steps, steps are consecutive from 0, each parent
    is the previous step's weights hash, and every cited job has been claimed
    (by a block or a job_result: mined, or paid after its challenge window).
    """
    sender = tx.sender_address
    if model_step(state, p.model_id, p.step) is not None:
        raise InvalidTransaction(f"payload.step: step {p.step} of this model is already recorded")
    if p.step == 0:
        datashare.check_owned("model_id", p.model_id, sender)
    else:
        first = model_step(state, p.model_id, 0)
        if first is None:
            raise InvalidTransaction("payload.model_id: no such model (its step 0 is not recorded)")
        if first.owner != sender:
            raise InvalidTransaction("payload.model_id: only the model's owner may record steps")
        previous = model_step(state, p.model_id, p.step - 1)
        if previous is None:
            raise InvalidTransaction(
                f"payload.step: step {p.step} skips ahead (step {p.step - 1} is not recorded)"
            )
        if previous.weights_hash != p.parent_hash:
            raise InvalidTransaction(
                f"payload.parent_hash: not the weights hash of step {p.step - 1}"
            )
    for job_id in p.job_ids:
        job = market.job_record(state, job_id)
        if job is None:
            raise InvalidTransaction(f"payload.job_ids: no such job {job_id.hex()[:16]}")
        if job["status"] not in (market.MINED, market.PAID):
            raise InvalidTransaction(
                f"payload.job_ids: job {job_id.hex()[:16]} is {job['status']}, not mined or paid"
            )
    check_spendable(state, sender, tx.fee)
    balance, nonce = state.account(sender)
    state.set_account(sender, balance - tx.fee, nonce + 1)
    state.set(
        MODELS,
        (p.model_id, p.step),
        tuple(ModelStep(sender, p.job_ids, p.weights_hash, p.parent_hash, p.dataset, height)),
    )


PayloadRule = Callable[[State, Transaction, Any, int, NetworkParams], None]
"""How a payload changes the state: (state, transaction, payload, height, params).
Raises InvalidTransaction naming the rule it breaks; the nonce is checked before."""


def _at_height(rule: Callable[[State, Transaction, Any, int], None]) -> PayloadRule:
    """A rule that needs no network parameters, in the table's shape."""
    return lambda state, tx, p, height, params: rule(state, tx, p, height)


PAYLOAD_RULES: dict[type, PayloadRule] = {
    TransferPayload: lambda state, tx, p, height, params: apply_transfer(state, tx, p),
    JobPostPayload: market.apply_job_post,
    JobCancelPayload: _at_height(market.apply_job_cancel),
    FraudProofPayload: market.apply_fraud_proof,
    JobResultPayload: market.apply_job_result,
    ResultChallengePayload: market.apply_result_challenge,
    ResultRowsPayload: market.apply_result_rows,
    ModelRecordPayload: _at_height(apply_model_record),
    DatasetRegisterPayload: _at_height(datashare.apply_dataset_register),
    AccessGrantPayload: _at_height(datashare.apply_access_grant),
    AccessRevokePayload: _at_height(datashare.apply_access_revoke),
    AccessLogPayload: _at_height(datashare.apply_access_log),
    ModelPublishPayload: _at_height(datashare.apply_model_publish),
}
"""Every enabled transaction kind, by payload type, and its state rule."""


def pay_coinbase(state: State, header: BlockHeader, params: NetworkParams) -> None:
    """Lock this block's reward until maturity; release the one maturing now."""
    matured = immature_coinbase(state, header.height)
    if matured is not None:
        miner, amount = matured
        state.set(IMMATURE, header.height, None)
        state.set(LOCKED, miner, (state.get(LOCKED, miner, 0) - amount) or None)
        bal, nonce = state.account(miner)
        state.set_account(miner, bal + amount, nonce)
    if header.reward:
        when = header.height + params.coinbase_maturity
        state.set(IMMATURE, when, tuple(ImmatureCoinbase(header.miner, header.reward)))
        state.set(LOCKED, header.miner, state.get(LOCKED, header.miner, 0) + header.reward)


def check_block_size(block: Block, params: NetworkParams) -> None:
    """Raise InvalidBlock if the block's encoding is over ``max_block_bytes``: checked
    before a block is kept anywhere (side branch, orphan, store) and again when applied."""
    try:
        size = block_size(block)
    except EncodeError as e:
        raise InvalidBlock(f"body: {e}") from None
    if size > params.max_block_bytes:
        raise InvalidBlock(f"body: block is {size} bytes, over the {params.max_block_bytes} limit")


def block_size(block: Block) -> int:
    """``len(encode_block(block))``, counted from each transaction's cached encoding.

    A msgpack array is its header followed by its items, so a block's size is
    its header's, its transactions' and two array headers. Anything this does
    not cover is measured by encoding the whole block, which raises the
    EncodeError that names the field at fault.
    """
    txs = block.txs
    if (
        type(block) is Block
        and type(block.header) is BlockHeader
        and type(txs) is tuple
        and len(txs) <= MAX_TXS_PER_BLOCK
        and all(type(tx) is Transaction for tx in txs)
    ):
        try:
            header = len(encode_header(block.header))
            body = sum(len(tx.encoded) for tx in txs)
        except EncodeError:
            pass
        else:
            n = len(txs)
            txs_array = 1 if n < 16 else 3 if n < 1 << 16 else 5
            return 1 + header + txs_array + body  # 1: the block's own fixarray header
    return len(encode_block(block))


def open_block(state: State, parent: BlockHeader, params: NetworkParams) -> None:
    """What happens before a block's transactions: the parent's job claim takes effect."""
    market.claim_parent_job(state, parent, params)


def close_block(state: State, header: BlockHeader, params: NetworkParams) -> None:
    """What happens after them: jobs due at this height are paid, then the coinbase."""
    market.pay_due_jobs(state, header.height, params)
    pay_coinbase(state, header, params)


def apply_body(
    state: State,
    block: Block,
    params: NetworkParams,
    verified_txids: AbstractSet[bytes] | None,
    parent: BlockHeader,
    verify_batch: VerifyBatch = verify_many,
) -> Undo:
    """Apply the block's transactions and coinbase; on any failure the state is unchanged.

    ``parent`` is the header the block builds on: its claim on a posted job
    takes effect now (see :func:`consensus.market.claim_parent_job`).

    ``verified_txids`` lets a node skip signature checks it has already done
    (mempool admission); the checks are the same, only not repeated.
    ``verify_batch`` verifies the others' signatures (a node's uses its cores).
    """
    header = block.header
    check_block_size(block, params)
    if block.body_root != header.tx_root:
        raise InvalidBlock("body: tx_root does not commit to the transactions")
    # The stateless verdicts do not depend on the state, so they are all
    # reached first (signatures verified together, across cores) and each is
    # raised in its transaction's turn: the same first failure as checking in
    # order. A block gets here only with a valid proof of work.
    txs = block.txs
    unchecked = [
        i for i, tx in enumerate(txs) if verified_txids is None or tx.txid not in verified_txids
    ]
    verdicts: list[Exception | None] = [None] * len(txs)
    found = check_txs_stateless([txs[i] for i in unchecked], params.chain_id, verify_batch)
    for i, verdict in zip(unchecked, found, strict=True):
        verdicts[i] = verdict
    state.begin()
    try:
        open_block(state, parent, params)
        fees = 0
        for i, tx in enumerate(txs):
            try:
                verdict = verdicts[i]
                if verdict is not None:
                    raise verdict
                fees += apply_transaction(state, tx, header.height, params)
            except (InvalidTransaction, DecodeError) as e:
                raise InvalidBlock(f"body: transaction {i} ({tx.txid.hex()[:16]}): {e}") from None
        if header.reward != params.block_reward + fees:
            raise InvalidBlock(
                f"body: coinbase claims {header.reward}, block reward + fees is "
                f"{params.block_reward + fees}"
            )
        close_block(state, header, params)
        if state.pending_root() != header.state_root:
            raise InvalidBlock("body: state_root does not match the state after the block")
    except BaseException:
        state.rollback()
        raise
    return state.commit()


def state_transition(
    state: State,
    block: Block,
    parent: HeaderContext,
    params: NetworkParams,
    now_ms: int,
    check_pow: CheckPow | None = None,
    verified_txids: AbstractSet[bytes] | None = None,
    verify_batch: VerifyBatch = verify_many,
) -> Undo:
    """Validate ``block`` on top of ``parent`` and apply it to ``state`` (which is at parent).

    Every header rule (:func:`check_child_header`), then the body and the
    commitments (:func:`apply_body`): the one path by which a block changes the
    state (``Chain`` connects every block through it). Raises InvalidBlock naming
    the rule; the state is then unchanged. Returns the record that undoes it.
    """
    check_child_header(block.header, parent, params, now_ms, check_pow)
    return apply_body(state, block, params, verified_txids, parent.header, verify_batch)


# ------------------------------------------------------------------ genesis


def genesis_state(params: NetworkParams) -> State:
    from consensus.keys import PrivateKey

    state = State()
    state.begin()
    for label in params.prefunded_labels:
        state.set(ACCOUNTS, PrivateKey.from_label(label).address, (params.prefund_amount, 0))
    state.commit()
    return state
