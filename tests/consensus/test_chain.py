"""Fork choice, reorgs with exact undo, orphans, and re-validating a mined chain."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.blocks import Block
from consensus.chain import Chain
from consensus.errors import InvalidBlock
from consensus.keys import PrivateKey
from consensus.pow import null_job
from consensus.validation import apply_body, genesis_state, state_transition
from tests.support.chainkit import (
    ALICE,
    BOB,
    CAROL,
    MID,
    MINER,
    Clock,
    extend,
    new_chain,
    next_block,
    remine,
    transfer,
)

OTHER_MINER = PrivateKey.from_label("miner-1")


def replay(blocks: list[Block], clock_now: int) -> Chain:
    """A fresh chain fed ``blocks`` in order: full validation from genesis."""
    chain, clock = new_chain()
    clock.now = clock_now
    for b in blocks:
        chain.add_block(b)
    return chain


@pytest.fixture(scope="module")
def two_branches():
    """Branch A: 5 blocks with transfers. Branch B: forks after block 2, 4 more blocks."""
    a, ca = new_chain()
    extend(a, ca, 2)
    common = [a.blocks[h] for h in a.active[1:]]
    fork_clock = ca.now
    a_tail = [next_block(a, ca, (transfer(ALICE, BOB, 1_000, 0),))]
    a.add_block(a_tail[0])
    for i in range(2):
        b = next_block(a, ca, (transfer(BOB, CAROL, 7, i),))
        a.add_block(b)
        a_tail.append(b)
    b_chain = replay(common, fork_clock)
    cb = Clock(MID)
    cb.now = fork_clock
    b_tail = []
    for i in range(4):
        blk = next_block(b_chain, cb, (transfer(CAROL, ALICE, 3, i),), miner=OTHER_MINER)
        b_chain.add_block(blk)
        b_tail.append(blk)
    return common, a_tail, b_tail, max(ca.now, cb.now) + 10_000


def test_mined_chain_revalidates_from_scratch(two_branches):
    common, a_tail, _, now = two_branches
    chain = replay(common + a_tail, now)
    assert chain.height == 5
    assert chain.state.balance(CAROL.address) == MID.prefund_amount + 14
    again = replay(common + a_tail, now)
    assert again.state.root == chain.state.root == chain.tip.header.state_root


def test_state_transition_alone_takes_genesis_to_the_chain_tip(two_branches):
    # Chain connects every block through state_transition: on its own, from the
    # genesis state, it reaches the same state, and refuses a header rule's breach
    # (a block from too far in the future) without touching the state.
    common, a_tail, _, now = two_branches
    blocks = common + a_tail
    chain = replay(blocks, now)
    state = genesis_state(MID)
    early = blocks[0].header.timestamp_ms - MID.max_future_drift_ms - 1
    with pytest.raises(InvalidBlock, match="too far in the future"):
        state_transition(state, blocks[0], chain.header_context(chain.active[0]), MID, early)
    assert state.root == chain.genesis.header.state_root
    for parent_hash, block in zip(chain.active, blocks, strict=False):
        state_transition(state, block, chain.header_context(parent_hash), MID, now)
        assert state.root == block.header.state_root
    assert state.snapshot() == chain.state.snapshot()


def test_reorg_to_heavier_branch_equals_applying_it_from_genesis(two_branches):
    common, a_tail, b_tail, now = two_branches
    node = replay(common + a_tail, now)
    results = [node.add_block(b) for b in b_tail]
    assert [r.status for r in results] == ["side", "side", "side", "connected"]
    assert results[-1].reorged == 3
    assert [b.hash for b in results[-1].disconnected] == [b.hash for b in a_tail]
    reference = replay(common + b_tail, now)
    assert node.tip.hash == reference.tip.hash
    assert node.state.snapshot() == reference.state.snapshot()
    assert node.state.root == reference.state.root


def test_equal_work_keeps_the_first_seen_tip(two_branches):
    common, a_tail, b_tail, now = two_branches
    node = replay(common + b_tail[:3], now)
    first_tip = node.tip.hash
    for b in a_tail:  # same height (5) as B's first three: a tie
        node.add_block(b)
    assert node.tip.hash == first_tip


def test_orphans_connect_when_their_parent_arrives(two_branches):
    common, a_tail, _, now = two_branches
    blocks = common + a_tail
    node = replay([], now)
    for b in reversed(blocks[1:]):
        assert node.add_block(b).status == "orphan"
    assert node.height == 0
    result = node.add_block(blocks[0])
    assert node.height == len(blocks) and result.status == "connected"
    assert node.tip.hash == blocks[-1].hash


def test_heavier_branch_with_an_invalid_body_leaves_the_old_chain_intact(two_branches):
    common, a_tail, b_tail, now = two_branches
    node = replay(common + a_tail, now)
    before = (node.tip.hash, node.state.snapshot(), node.state.root)
    # B's last block, re-mined with a wrong state root: header and proof are fine,
    # the body fails only when the reorg applies it.
    bad_last = b_tail[-1]
    job = null_job(bad_last.header.prev_hash, MID)
    header = remine(dataclasses.replace(bad_last.header, state_root=bytes(32)), job)
    for b in b_tail[:-1]:
        node.add_block(b)
    with pytest.raises(InvalidBlock, match="state_root"):
        node.add_block(Block(header, bad_last.txs))
    assert (node.tip.hash, node.state.snapshot(), node.state.root) == before


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(1, 10**6), st.integers(0, 50)),
        min_size=1,
        max_size=12,
    )
)
def test_apply_then_undo_restores_the_identical_state(transfers):
    chain, clock = new_chain()
    keys = [ALICE, BOB, CAROL, MINER]
    nonces = [0, 0, 0, 0]
    txs = []
    for s, r, amount, fee in transfers:
        if s == r:
            continue
        txs.append(transfer(keys[s], keys[r], amount, nonces[s], fee=fee))
        nonces[s] += 1
    clock.now += MID.block_time_ms
    job = null_job(chain.tip.hash, MID)
    header, included = chain.build_template(txs, MINER.address, job.spec, clock.now)
    before = (chain.state.snapshot(), chain.state.root)
    undo = apply_body(chain.state, Block(header, included), MID, None, chain.tip.header)
    assert chain.state.root == header.state_root
    touched = [(table, key) for table, key, _ in undo.entries]
    assert len(touched) == len(set(touched))  # one entry per key the block wrote
    chain.state.undo(undo)
    assert (chain.state.snapshot(), chain.state.root) == before


def test_a_devnet_started_long_after_its_genesis_is_not_free():
    # Block 1 sets the ASERT clock: weeks between genesis and block 1 must not
    # make the following blocks trivially easy.
    chain, clock = new_chain()
    first = next_block(chain, clock, step_ms=60 * 86_400_000)
    chain.add_block(first)
    assert chain.next_target() == MID.genesis_target
    second = next_block(chain, clock)
    chain.add_block(second)
    assert chain.next_target() == MID.genesis_target


def test_a_template_fills_half_the_block_with_real_transaction_sizes():
    params = dataclasses.replace(MID, max_block_bytes=60_000)  # room for ~150 transfers
    chain, clock = new_chain(params)
    offered = [transfer(ALICE, BOB, 1, n) for n in range(400)]
    clock.now += params.block_time_ms
    job = null_job(chain.tip.hash, params)
    header, included = chain.build_template(offered, MINER.address, job.spec, clock.now)
    used = sum(len(t.encoded) for t in included)
    assert 0 < len(included) < len(offered)
    assert used <= params.max_block_bytes // 2 < used + len(offered[len(included)].encoded)
    block = Block(remine(header, job, params), included)
    chain.add_block(block)  # the mined block is within the limit and valid
    assert chain.tip.hash == block.hash


@pytest.mark.parametrize("orphan", [False, True])
def test_a_wrong_body_under_an_honest_header_does_not_poison_the_honest_block(orphan):
    """Anyone can attach other transactions to a header they saw. The chain must refuse
    that copy without remembering the header's hash as invalid (or holding the copy as
    an orphan under it), so the honest block is still accepted when it comes."""
    source, clock = new_chain()
    blocks = []
    for nonce in range(2):
        blocks.append(next_block(source, clock, (transfer(ALICE, BOB, 5, nonce),)))
        source.add_block(blocks[-1])
    honest = blocks[1] if orphan else blocks[0]
    chain, chain_clock = new_chain()
    chain_clock.now = clock.now
    mutated = Block(honest.header, (transfer(ALICE, CAROL, 5, honest.header.height - 1),))
    with pytest.raises(InvalidBlock, match="tx_root does not commit"):
        chain.add_block(mutated)
    assert not chain.contains(honest.hash)
    for b in blocks:
        chain.add_block(b)
    assert chain.tip.hash == blocks[-1].hash and chain.height == 2
