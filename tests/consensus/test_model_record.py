"""A model's on-chain lineage (model_record, PROTOCOL §8 training): each step names
the verified jobs that computed it and the weights they produced, only the
owner may extend it, steps are consecutive and chained by weights hash — and
a reorg undoes it exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from consensus.blocks import Block, tx_root
from consensus.chain import Chain
from consensus.datashare import owned_id
from consensus.errors import EncodeError, InvalidBlock, InvalidTransaction
from consensus.market import job_id_of, job_record
from consensus.pow import Job, mine
from consensus.state import MODELS, iter_model_steps, model_step
from consensus.transactions import (
    JobPostPayload,
    ModelRecordPayload,
    Transaction,
    check_tx_stateless,
    signed_transaction,
)
from consensus.validation import apply_body
from tests.support.chainkit import ALICE, BOB, MID, MINER, Clock, new_chain, next_block

rng = np.random.default_rng(8)
FEE = 10
MODEL = owned_id(ALICE.address, bytes(range(1, 33)))  # ALICE's model
H0, H1, H2 = (bytes([i]) * 32 for i in (0xA0, 0xA1, 0xA2))
ZERO = bytes(32)


def _job() -> tuple[Job, JobPostPayload]:
    m, k, n = MID.min_job_shape
    a = rng.integers(-64, 64, (m, k), dtype=np.int8)
    b = rng.integers(-64, 64, (k, n), dtype=np.int8)
    job = Job.from_operands(a, b, ALICE.address)  # ALICE posts them
    return job, JobPostPayload(m, k, n, job.spec.root_a, job.spec.root_b, 500, 40)


JOBS = [_job() for _ in range(3)]
JOB_IDS = [job_id_of(ALICE.address, post, MID) for _, post in JOBS]


def tx(key, nonce, payload) -> Transaction:
    return signed_transaction(key, chain_id=MID.chain_id, nonce=nonce, fee=FEE, payload=payload)


def record(step: int, jobs: tuple[bytes, ...], weights: bytes, parent: bytes, **kw):
    return ModelRecordPayload(MODEL, step, jobs, weights, parent, kw.get("dataset", "digits"))


def add(chain: Chain, clock: Clock, txs=()) -> Block:
    b = next_block(chain, clock, tuple(txs))
    chain.add_block(b)
    return b


def mine_on(chain: Chain, clock: Clock, job: Job) -> None:
    """A block whose PoUW ran on ``job``, then the child that records the claim."""
    clock.now += MID.block_time_ms
    template, _ = chain.build_template((), MINER.address, job.spec, clock.now)
    mined = mine(template, job, MID, max_attempts=64)
    assert mined is not None
    chain.add_block(Block(mined.header, ()))
    add(chain, clock)


@pytest.fixture
def worked() -> tuple[Chain, Clock]:
    """Alice posted three jobs; the first two are mined, the third is still open."""
    chain, clock = new_chain()
    add(chain, clock, [tx(ALICE, i, post) for i, (_, post) in enumerate(JOBS)])
    for job, _ in JOBS[:2]:
        mine_on(chain, clock, job)
    assert [job_record(chain.state, j)["status"] for j in JOB_IDS] == ["mined", "mined", "open"]
    return chain, clock


def refused(chain: Chain, t: Transaction, reason: str) -> None:
    """Applying a block with ``t`` fails naming ``reason``, and changes nothing."""
    before = (chain.state.snapshot(), chain.state.root)
    header, _ = chain.build_template(
        (), MINER.address, Job.from_operands(*_ops(), ALICE.address).spec
    )
    block = Block(dataclasses.replace(header, tx_root=tx_root([t])), (t,))
    with pytest.raises(InvalidBlock, match=reason):
        apply_body(chain.state, block, MID, None, chain.tip.header)
    assert (chain.state.snapshot(), chain.state.root) == before


def _ops() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((16, 64), dtype=np.int8), np.zeros((64, 16), dtype=np.int8)


def test_a_chain_of_records_is_the_models_lineage(worked):
    chain, clock = worked
    before = chain.state.balance(ALICE.address)
    add(chain, clock, [tx(ALICE, 3, record(0, (JOB_IDS[0],), H0, ZERO))])
    add(chain, clock, [tx(ALICE, 4, record(1, (JOB_IDS[1], JOB_IDS[0]), H1, H0))])
    height = chain.height
    steps = list(iter_model_steps(chain.state, MODEL))
    assert steps == [
        (0, (ALICE.address, (JOB_IDS[0],), H0, ZERO, "digits", height - 1)),
        (1, (ALICE.address, (JOB_IDS[1], JOB_IDS[0]), H1, H0, "digits", height)),
    ]
    assert chain.state.balance(ALICE.address) == before - 2 * FEE  # a fee, like any tx
    assert list(iter_model_steps(chain.state, bytes(32))) == []


def test_records_in_one_block_may_follow_each_other(worked):
    chain, clock = worked
    add(
        chain,
        clock,
        [
            tx(ALICE, 3, record(0, (JOB_IDS[0],), H0, ZERO)),
            tx(ALICE, 4, record(1, (JOB_IDS[1],), H1, H0)),
        ],
    )
    assert [s for s, _ in iter_model_steps(chain.state, MODEL)] == [0, 1]


@pytest.mark.parametrize(
    ("sender", "nonce", "payload", "reason"),
    [
        (ALICE, 4, record(2, (JOB_IDS[1],), H2, H1), "step 2 skips ahead"),
        (ALICE, 4, record(0, (JOB_IDS[1],), H1, ZERO), "step 0 of this model is already"),
        (ALICE, 4, record(1, (JOB_IDS[1],), H1, H2), "not the weights hash of step 0"),
        (BOB, 0, record(1, (JOB_IDS[1],), H1, H0), "only the model's owner"),
        (ALICE, 4, record(1, (bytes(31) + b"\x01",), H1, H0), "no such job"),
        (ALICE, 4, record(1, (JOB_IDS[1], JOB_IDS[2]), H1, H0), "is open, not mined or paid"),
    ],
    ids=["wrong-step", "step-again", "wrong-parent", "non-owner", "unknown-job", "open-job"],
)
def test_a_bad_record_is_refused_with_its_reason(worked, sender, nonce, payload, reason):
    chain, clock = worked
    add(chain, clock, [tx(ALICE, 3, record(0, (JOB_IDS[0],), H0, ZERO))])
    refused(chain, tx(sender, nonce, payload), reason)


def test_nobody_records_a_model_under_another_owner_s_id(worked):
    """Whoever records step 0 owns a model: a model id must begin with its sender's address,
    so BOB cannot take ALICE's id from her record waiting in a mempool."""
    chain, clock = worked
    refused(chain, tx(BOB, 0, record(0, (JOB_IDS[0],), H0, ZERO)), "must begin with its sender's")
    bobs = dataclasses.replace(
        record(0, (JOB_IDS[0],), H0, ZERO), model_id=owned_id(BOB.address, MODEL)
    )
    add(chain, clock, [tx(BOB, 0, bobs)])  # his own id: his model
    assert model_step(chain.state, bobs.model_id, 0).owner == BOB.address


def test_a_later_step_of_an_unknown_model_is_refused(worked):
    chain, _ = worked
    refused(chain, tx(ALICE, 3, record(1, (JOB_IDS[0],), H1, H0)), "no such model")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (record(0, (), H0, ZERO), "must cite the jobs"),
        (record(0, (JOB_IDS[0], JOB_IDS[0]), H0, ZERO), "cited twice"),
        (record(0, (JOB_IDS[0],), H0, H1), "step 0 has no parent"),
        (record(3, (JOB_IDS[0],), H0, ZERO), "step 3 must name its parent"),
        (record(0, (JOB_IDS[0],), ZERO, ZERO), "weights_hash: zeros are reserved"),
        (dataclasses.replace(record(0, (JOB_IDS[0],), H0, ZERO), model_id=ZERO), "model_id"),
    ],
)
def test_stateless_rules_of_a_record(payload, reason):
    with pytest.raises(InvalidTransaction, match=reason):
        check_tx_stateless(tx(ALICE, 0, payload), MID.chain_id)


def test_oversize_records_cannot_be_encoded():
    too_many = record(0, tuple(bytes([i]) * 32 for i in range(17)), H0, ZERO)
    with pytest.raises(EncodeError, match="job_ids: 17 items exceeds the limit of 16"):
        tx(ALICE, 0, too_many)
    long_name = record(0, (JOB_IDS[0],), H0, ZERO, dataset="x" * 257)
    with pytest.raises(EncodeError, match="dataset: 257 UTF-8 bytes exceeds"):
        tx(ALICE, 0, long_name)


def test_records_undo_exactly_on_a_reorg(worked):
    chain, clock = worked
    snap = (chain.state.snapshot(), chain.state.root)
    add(chain, clock, [tx(ALICE, 3, record(0, (JOB_IDS[0],), H0, ZERO))])
    add(chain, clock, [tx(ALICE, 4, record(1, (JOB_IDS[1],), H1, H0))])
    assert len(chain.state.tables[MODELS]) == 2
    chain._disconnect_to(chain.height - 2)
    assert (chain.state.snapshot(), chain.state.root) == snap
    assert chain.state.tables[MODELS] == {}
