"""Mining real blocks quickly for consensus tests.

A "MID" network: the devnet with a genesis target at which each tile wins
with probability ~1/2, so one attempt almost always finds a block (tests stay
fast) while losing tiles still exist (so 'ticket above target' is testable).
Timestamps follow the schedule, so ASERT keeps the genesis target.
"""

from __future__ import annotations

import dataclasses

from consensus.blocks import Block, BlockHeader, noise_seeds, ticket_key
from consensus.chain import Chain
from consensus.keys import PrivateKey
from consensus.params import DEVNET, NetworkParams
from consensus.pow import Job, build_proof, mine, mining_params, null_job, verify_pow
from consensus.transactions import Transaction, TransferPayload, signed_transaction
from kernels.attempt import mining_attempt

K = DEVNET.null_job_shape[1]
MID = dataclasses.replace(
    DEVNET,
    genesis_target=(1 << 255) // (16 * 16 * K),
    prefunded_labels=tuple(f"devnet-{i}" for i in range(8)),
)
ALICE = PrivateKey.from_label("devnet-0")
BOB = PrivateKey.from_label("devnet-1")
CAROL = PrivateKey.from_label("devnet-2")
MINER = PrivateKey.from_label("miner-0")


class Clock:
    def __init__(self, params: NetworkParams) -> None:
        self.now = params.genesis_timestamp_ms

    def __call__(self) -> int:
        return self.now


def new_chain(params: NetworkParams = MID) -> tuple[Chain, Clock]:
    clock = Clock(params)
    return Chain(params, clock), clock


def transfer(
    key: PrivateKey,
    to: PrivateKey,
    amount: int,
    nonce: int,
    fee: int = 10,
    chain_id: int = MID.chain_id,
) -> Transaction:
    return signed_transaction(
        key, chain_id=chain_id, nonce=nonce, fee=fee, payload=TransferPayload(to.address, amount)
    )


def remine(header: BlockHeader, job: Job, params: NetworkParams = MID) -> BlockHeader:
    """Mine ``header`` as it is (any field may be wrong on purpose)."""
    mined = mine(header, job, params, max_attempts=64)
    assert mined is not None, "no winning tile in 64 attempts at ~1/2 per tile"
    return mined.header


def next_block(
    chain: Chain,
    clock: Clock,
    txs: tuple[Transaction, ...] = (),
    miner: PrivateKey = MINER,
    step_ms: int | None = None,
) -> Block:
    """Mine a valid block on the tip with exactly ``txs`` (all must apply)."""
    clock.now += step_ms if step_ms is not None else chain.params.block_time_ms
    job = null_job(chain.tip.hash, chain.params)
    template, included = chain.build_template(txs, miner.address, job.spec, clock.now)
    assert len(included) == len(txs), "a transaction given to next_block did not apply"
    return Block(remine(template, job, chain.params), included)


def extend(chain: Chain, clock: Clock, count: int, **kw: object) -> list[Block]:
    out = []
    for _ in range(count):
        b = next_block(chain, clock, **kw)  # type: ignore[arg-type]
        chain.add_block(b)
        out.append(b)
    return out


def second_winner(block: Block, params: NetworkParams = MID) -> Block:
    """The same null-job attempt opened at another winning tile: a block with a valid
    proof of work and the same header_seed as ``block`` (what a miner could make)."""
    header = block.header
    job = null_job(header.prev_hash, params)
    seed_a, seed_b = noise_seeds(header.header_seed, job.spec)
    key = ticket_key(seed_a, header.result_root)
    res = mining_attempt(
        job.a, job.b, seed_a, seed_b, header.target, mining_params(params), ticket_key=key
    )
    tile = (header.proof.tile_i, header.proof.tile_j)
    ti, tj = next(t for t in res.winners if t != tile)
    twin = Block(dataclasses.replace(header, proof=build_proof(job, ti, tj, params)), block.txs)
    verify_pow(twin.header, params)
    assert twin.header.header_seed == header.header_seed and twin.hash != block.hash
    return twin
