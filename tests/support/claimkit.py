"""Jobs and job_result claims on the MID devnet: two posted jobs with their products, and
the transactions and blocks that post, claim and mine them."""

from __future__ import annotations

import numpy as np

from consensus.blocks import Block
from consensus.chain import Chain
from consensus.keys import PrivateKey
from consensus.market import build_job_result, job_id_of
from consensus.pow import Job, mine
from consensus.transactions import JobPostPayload, Transaction, signed_transaction
from tests.support.chainkit import ALICE, MID, MINER, Clock, next_block

REWARD = 7_000
FEE = 10
W = MID.challenge_window
BOND = REWARD * MID.claim_bond_ratio
rng = np.random.default_rng(15)


M, K, N = MID.min_job_shape  # the smallest job the network accepts


def new_job(expiry: int) -> tuple[np.ndarray, np.ndarray, Job, JobPostPayload, bytes, np.ndarray]:
    """A random job of the minimum shape: (A, B, job, its job_post payload, job id, C)."""
    a = rng.integers(-64, 64, (M, K), dtype=np.int8)
    b = rng.integers(-64, 64, (K, N), dtype=np.int8)
    job = Job.from_operands(a, b, ALICE.address)  # ALICE posts every claimkit job
    post = JobPostPayload(M, K, N, job.spec.root_a, job.spec.root_b, REWARD, expiry)
    c = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    return a, b, job, post, job_id_of(ALICE.address, post, MID), c


A, B, JOB, POST, JOB_ID, C = new_job(expiry=40)
_, _, JOB2, POST2, JOB2_ID, C2 = new_job(expiry=40)
WRONG_C = C.copy()
WRONG_C[3, 5] += 1


def tx(key: PrivateKey, nonce: int, payload, fee: int = FEE) -> Transaction:
    """A MID transaction of ``payload`` signed by ``key``."""
    return signed_transaction(key, chain_id=MID.chain_id, nonce=nonce, fee=fee, payload=payload)


def claim(
    key: PrivateKey, nonce: int, *results: tuple[bytes, np.ndarray], fee: int = FEE
) -> Transaction:
    """A job_result claiming each (job id, C) of ``results``."""
    return tx(key, nonce, build_job_result(results), fee)


def add(chain: Chain, clock: Clock, txs=()) -> Block:
    """Mine the next block with ``txs`` and connect it."""
    b = next_block(chain, clock, tuple(txs))
    chain.add_block(b)
    return b


def add_job_block(chain: Chain, clock: Clock, job: Job, txs=()) -> Block:
    """A block whose PoUW ran on ``job`` (its header claims the job), with ``txs``."""
    clock.now += MID.block_time_ms
    template, included = chain.build_template(tuple(txs), MINER.address, job.spec, clock.now)
    assert len(included) == len(txs)
    mined = mine(template, job, MID, max_attempts=64)
    assert mined is not None
    block = Block(mined.header, included)
    chain.add_block(block)
    return block
