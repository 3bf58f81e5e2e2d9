"""The mempool: admission rules with their reasons, fee ordering with nonce order,
replace-by-fee, eviction when full, blocks, reorgs and expiry."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest

from consensus.chain import Chain
from consensus.errors import InvalidTransaction
from consensus.keys import PrivateKey
from consensus.market import build_fraud_proof, job_record
from consensus.state import State
from consensus.transactions import JobPostPayload, ResultChallengePayload, signed_transaction
from node import mempool as mempool_module
from node.mempool import Mempool, min_fee, replacement_fee
from tests.support import claimkit as jr
from tests.support.chainkit import (
    ALICE,
    BOB,
    CAROL,
    MID,
    MINER,
    Clock,
    new_chain,
    next_block,
    transfer,
)

DAVE = PrivateKey.from_label("devnet-3")
ERIN = PrivateKey.from_label("devnet-4")
NEWCOMER = PrivateKey.from_label("not-prefunded")


class FixedClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def chain() -> Chain:
    return new_chain()[0]


@pytest.fixture
def state(chain: Chain) -> State:
    return chain.state


def pool(**kw: object) -> Mempool:
    return Mempool(MID, **kw)  # type: ignore[arg-type]


def test_select_takes_the_highest_fee_first(state):
    mp = pool()
    cheap, rich, middle = (
        transfer(ALICE, BOB, 5, 0, fee=5),
        transfer(BOB, CAROL, 5, 0, fee=50),
        transfer(CAROL, ALICE, 5, 0, fee=20),
    )
    for tx in (cheap, rich, middle):
        mp.add(tx, state, 0)
    assert mp.select(10, 1 << 20) == [rich, middle, cheap]
    assert mp.select(2, 1 << 20) == [rich, middle]
    assert len(mp) == 3 and rich.txid in mp and mp.get(rich.txid) == rich


def test_nonces_must_follow_on_and_are_selected_in_order(state):
    mp = pool()
    second = transfer(ALICE, BOB, 5, 1, fee=100)
    with pytest.raises(InvalidTransaction, match="nonce: 1 leaves a gap"):
        mp.add(second, state, 0)
    first = transfer(ALICE, BOB, 5, 0, fee=1)
    other = transfer(BOB, CAROL, 5, 0, fee=50)
    mp.add(first, state, 0)
    mp.add(second, state, 0)
    mp.add(other, state, 0)
    # Alice's nonce 1 pays most but cannot come before her nonce 0.
    assert mp.select(10, 1 << 20) == [other, first, second]
    assert mp.by_sender(ALICE.address) == [first, second]
    with pytest.raises(InvalidTransaction, match="nonce: 3 leaves a gap"):
        mp.add(transfer(ALICE, BOB, 5, 3), state, 0)


def _best_next_first(mp: Mempool, senders, max_count: int, max_bytes: int) -> list:
    """The selection rule spelled out: take the best-paying of the senders' next
    transactions (the earlier admitted on a tie) while it fits; a sender whose next one
    does not fit is passed over for good."""
    queues = {k.address: list(mp.by_sender(k.address)) for k in senders}
    rate = {tx.txid: mp._txs[tx.txid].rate for q in queues.values() for tx in q}
    order = {tx.txid: mp._txs[tx.txid].order for q in queues.values() for tx in q}
    out, used = [], 0
    while len(out) < max_count and any(queues.values()):
        addr = min(
            (a for a in queues if queues[a]),
            key=lambda a: (-rate[queues[a][0].txid], order[queues[a][0].txid]),
        )
        tx = queues[addr].pop(0)
        size = mp._txs[tx.txid].size
        if used + size > max_bytes:
            queues[addr] = []
            continue
        out.append(tx)
        used += size
    return out


@pytest.mark.parametrize("seed", range(6))
def test_select_is_best_next_first_across_senders_with_long_queues(state, seed):
    """Senders with queues of several nonces and mixed fees (later nonces paying more or
    less than others' first), under count and byte limits: select takes exactly what the
    rule spelled out takes, in the same order."""
    import random

    rng = random.Random(seed)
    mp = pool()
    senders = [ALICE, BOB, CAROL, DAVE, ERIN]
    for key in senders:
        for nonce in range(rng.randrange(1, 6)):
            fee = rng.choice([5, 20, 20, 50, 100, 300])  # equal fees: admission order decides
            mp.add(transfer(key, BOB if key is not BOB else ALICE, 1, nonce, fee=fee), state, 0)
    size = mp._txs[next(iter(mp._txs))].size
    for max_count, max_bytes in ((100, 1 << 20), (7, 1 << 20), (100, 9 * size + 5), (3, 2 * size)):
        want = _best_next_first(mp, senders, max_count, max_bytes)
        assert mp.select(max_count, max_bytes) == want, (max_count, max_bytes)
    assert len(mp.select(100, 1 << 20)) == len(mp)


def test_a_used_nonce_is_refused():
    chain, clock = new_chain()
    chain.add_block(next_block(chain, clock, (transfer(ALICE, BOB, 5, 0),)))
    with pytest.raises(InvalidTransaction, match="nonce: 0 was already used"):
        pool().add(transfer(ALICE, BOB, 6, 0), chain.state, chain.height)


def test_pending_transactions_cannot_overspend_together(state):
    mp = pool()
    balance = state.balance(ALICE.address)
    mp.add(transfer(ALICE, BOB, balance - 110, 0, fee=10), state, 0)
    with pytest.raises(InvalidTransaction, match=r"balance: needs 210 .* pending"):
        mp.add(transfer(ALICE, BOB, 200, 1, fee=10), state, 0)
    mp.add(transfer(ALICE, BOB, 90, 1, fee=10), state, 0)
    assert len(mp) == 2
    with pytest.raises(InvalidTransaction, match="balance"):
        mp.add(transfer(NEWCOMER, BOB, 1, 0), state, 0)


def test_a_duplicate_is_refused(state):
    mp = pool()
    tx = transfer(ALICE, BOB, 5, 0)
    mp.add(tx, state, 0)
    with pytest.raises(InvalidTransaction, match="already in the mempool"):
        mp.add(tx, state, 0)
    assert len(mp) == 1


def test_replace_by_fee_needs_a_strictly_higher_fee(state):
    mp = pool()
    original = transfer(ALICE, BOB, 5, 0, fee=10)
    mp.add(original, state, 0)
    with pytest.raises(InvalidTransaction, match="replacement: fee 10 does not exceed"):
        mp.add(transfer(ALICE, CAROL, 5, 0, fee=10), state, 0)
    better = transfer(ALICE, CAROL, 5, 0, fee=11)
    mp.add(better, state, 0)
    assert len(mp) == 1 and original.txid not in mp and mp.get(better.txid) == better


def test_a_replacement_pays_a_tenth_more_so_endless_bumps_grow_costly(state):
    mp = pool()
    mp.add(transfer(ALICE, BOB, 5, 0, fee=1000), state, 0)
    with pytest.raises(InvalidTransaction, match=r"by a tenth \(at least 1100\)"):
        mp.add(transfer(ALICE, CAROL, 5, 0, fee=1099), state, 0)
    mp.add(transfer(ALICE, CAROL, 5, 0, fee=1100), state, 0)
    assert [t.fee for t in mp.by_sender(ALICE.address)] == [1100]
    assert replacement_fee(9) == 10 and replacement_fee(0) == 1


def test_a_replacement_must_keep_later_pending_txs_affordable(state):
    mp = pool()
    balance = state.balance(ALICE.address)
    mp.add(transfer(ALICE, BOB, 100, 0, fee=10), state, 0)
    mp.add(transfer(ALICE, BOB, balance - 300, 1, fee=10), state, 0)
    with pytest.raises(InvalidTransaction, match="with this replacement"):
        mp.add(transfer(ALICE, BOB, 500, 0, fee=20), state, 0)


def test_a_full_pool_evicts_the_cheapest_queue_tail_for_a_better_payer(state):
    mp = pool(max_txs=3)
    a0 = transfer(ALICE, BOB, 5, 0, fee=1)
    a1 = transfer(ALICE, BOB, 5, 1, fee=2)
    b0 = transfer(BOB, CAROL, 5, 0, fee=10)
    for tx in (a0, a1, b0):
        mp.add(tx, state, 0)
    with pytest.raises(InvalidTransaction, match="mempool full"):
        mp.add(transfer(CAROL, ALICE, 5, 0, fee=2), state, 0)
    assert set(mp.txids()) == {a0.txid, a1.txid, b0.txid}
    c0 = transfer(CAROL, ALICE, 5, 0, fee=30)
    mp.add(c0, state, 0)
    # a0 pays least but evicting it would strand a1: the tail a1 goes instead.
    assert set(mp.txids()) == {a0.txid, b0.txid, c0.txid}
    d0 = transfer(DAVE, ALICE, 5, 0, fee=40)
    mp.add(d0, state, 0)
    assert set(mp.txids()) == {b0.txid, c0.txid, d0.txid}


def test_a_pool_over_its_byte_cap_evicts_too(state):
    size = len(transfer(ALICE, BOB, 5, 0, fee=10).encoded)
    mp = pool(max_bytes=2 * size + size // 2)
    a0, b0 = transfer(ALICE, BOB, 5, 0, fee=10), transfer(BOB, CAROL, 5, 0, fee=20)
    mp.add(a0, state, 0)
    mp.add(b0, state, 0)
    c0 = transfer(CAROL, ALICE, 5, 0, fee=30)
    mp.add(c0, state, 0)
    assert set(mp.txids()) == {b0.txid, c0.txid}
    assert mp.size_bytes <= mp.max_bytes


def test_select_respects_the_byte_budget(state):
    mp = pool()
    txs = [transfer(k, ERIN, 5, 0, fee=10 * (i + 1)) for i, k in enumerate((ALICE, BOB, CAROL))]
    for tx in txs:
        mp.add(tx, state, 0)
    size = len(txs[0].encoded)
    assert mp.select(10, 2 * size + 1) == [txs[2], txs[1]]


def test_a_bad_signature_is_refused_with_the_reason(state):
    mp = pool()
    tx = transfer(ALICE, BOB, 5, 0)
    forged = dataclasses.replace(tx, signature=bytes(64))
    with pytest.raises(InvalidTransaction, match="signature: not a valid signature"):
        mp.add(forged, state, 0)
    with pytest.raises(InvalidTransaction, match="chain_id"):
        mp.add(transfer(ALICE, BOB, 5, 0, chain_id=MID.chain_id + 1), state, 0)
    assert len(mp) == 0
    mp.add(tx, state, 0)
    assert mp.verified_txids() == {tx.txid}


def test_a_job_post_below_the_minimum_is_refused_with_the_reason(state):
    mp = pool()
    tiny = JobPostPayload(64, 128, 32, bytes(32), bytes(32), 10_000, 50)
    post = signed_transaction(ALICE, chain_id=MID.chain_id, nonce=0, fee=10, payload=tiny)
    with pytest.raises(InvalidTransaction, match="job 64x128x32 is below the minimum 512x256x512"):
        mp.add(post, state, 0)
    assert len(mp) == 0


def test_expired_transactions_go_with_their_senders_later_ones(state):
    clock = FixedClock()
    mp = pool(ttl_ms=1_000, clock=clock)
    a0 = transfer(ALICE, BOB, 5, 0)
    mp.add(a0, state, 0)
    clock.now = 500
    b0 = transfer(BOB, CAROL, 5, 0)
    mp.add(b0, state, 0)
    clock.now = 900
    a1 = transfer(ALICE, BOB, 5, 1)
    mp.add(a1, state, 0)
    assert mp.expire(1_000) == 0
    assert mp.expire(1_200) == 2  # a0 is too old, and a1 cannot be mined without it
    assert mp.txids() == [b0.txid]


def test_a_block_removes_its_transactions_and_the_ones_it_made_stale():
    chain, clock = new_chain()
    mp = pool()
    mine, theirs = transfer(ALICE, BOB, 5, 0, fee=10), transfer(ALICE, CAROL, 9, 0, fee=20)
    later = transfer(ALICE, BOB, 5, 1)
    bob = transfer(BOB, CAROL, 5, 0)
    for tx in (mine, later, bob):
        mp.add(tx, chain.state, chain.height)
    block = next_block(chain, clock, (theirs, bob))  # a conflicting nonce 0 from elsewhere
    chain.add_block(block)
    mp.remove_for_block(block)
    assert mp.txids() == [later.txid]
    assert mp.select(10, 1 << 20) == [later]


def test_a_reorg_returns_transactions_and_drops_those_that_no_longer_apply():
    node, clock = new_chain()
    mp = pool()
    paid = transfer(ALICE, NEWCOMER, 1_000, 0)
    also_on_the_new_branch = transfer(BOB, CAROL, 7, 0)
    for tx in (paid, also_on_the_new_branch):
        mp.add(tx, node.state, node.height)
    block = next_block(node, clock, (paid, also_on_the_new_branch))
    node.add_block(block)
    mp.remove_for_block(block)
    # Spends money that only the old branch gave it; and Alice's next one.
    spends_it = transfer(NEWCOMER, CAROL, 500, 0)
    alice_next = transfer(ALICE, BOB, 5, 1)
    mp.add(spends_it, node.state, node.height)
    mp.add(alice_next, node.state, node.height)

    other, other_clock = new_chain()
    branch = [next_block(other, other_clock, (also_on_the_new_branch,), miner=MINER)]
    other.add_block(branch[0])
    branch.append(next_block(other, other_clock))
    other.add_block(branch[1])
    clock.now = max(clock.now, other_clock.now)
    results = [node.add_block(b) for b in branch]
    assert results[-1].reorged == 1
    mp.on_reorg(
        results[-1].disconnected,
        [node.blocks[h] for h in results[-1].connected],
        node.state,
        node.height,
    )
    assert set(mp.txids()) == {paid.txid, alice_next.txid}
    assert mp.select(10, 1 << 20) == [paid, alice_next]


def test_a_new_tip_drops_queued_spends_its_block_made_unaffordable():
    chain, clock = new_chain()
    mp = pool()
    balance = chain.state.balance(ALICE.address)
    a0, a1 = transfer(ALICE, BOB, 5, 0), transfer(ALICE, BOB, balance // 2, 1)
    carol = transfer(CAROL, BOB, 5, 0)
    for tx in (a0, a1, carol):
        mp.add(tx, chain.state, chain.height)
    # Alice's nonce 0 was spent elsewhere, on most of her balance.
    block = next_block(chain, clock, (transfer(ALICE, CAROL, balance // 2 + 1, 0),))
    result = chain.add_block(block)
    mp.on_reorg(result.disconnected, [block], chain.state, chain.height)
    assert mp.txids() == [carol.txid]


def test_long_queues_keep_their_bounds_and_spend_through_blocks_and_expiry():
    """A sender's queue keeps its lowest and highest nonce and total spend so that the
    next nonce is admitted in O(1); through appends, replacements, a mined block,
    insufficient funds and expiry they must equal what the transactions say."""
    from node.mempool import _Queue

    chain, clock = new_chain()
    tick = FixedClock()
    mp = pool(ttl_ms=10_000, clock=tick)

    def check() -> None:
        for queue in mp._senders.values():
            assert isinstance(queue, _Queue) and queue
            assert (queue.low, queue.high) == (min(queue), max(queue))
            assert queue.spend == sum(p.spend for p in queue.values())
            assert queue.others == sum(not p.transfer for p in queue.values())

    for n in range(40):
        tick.now = n * 100
        mp.add(transfer(ALICE, BOB, 7, n, fee=10), chain.state, chain.height)
        mp.add(transfer(BOB, CAROL, 3, n, fee=10), chain.state, chain.height)
        check()
    mp.add(transfer(ALICE, BOB, 9, 17, fee=50), chain.state, chain.height)  # replacement
    check()
    with pytest.raises(InvalidTransaction, match="gap"):
        mp.add(transfer(ALICE, BOB, 7, 45, fee=10), chain.state, chain.height)
    block = next_block(chain, clock, tuple(mp.select(25, 1 << 20)))
    chain.add_block(block)
    mp.on_reorg([], [block], chain.state, chain.height)
    check()
    assert mp.select(1, 1 << 20)[0].nonce >= 1
    mp.add(transfer(ALICE, BOB, 7, 40, fee=10), chain.state, chain.height)  # next after run
    check()
    assert mp.expire(10_000 + 2_050) > 0  # the first ~20 nonces of each and all after
    check()
    assert len(mp) == 0 or all(q.low == chain.state.nonce(a) for a, q in mp._senders.items())


def test_after_a_block_the_pool_keeps_exactly_what_readmission_from_scratch_would():
    """Queues of transfers skip re-application after a block (nonce and total spend
    decide); what stays must be what admitting every pending transaction again,
    in nonce order, against the new tip would keep."""
    import random

    rng = random.Random(7)
    chain, clock = new_chain()
    mp = pool()
    senders = [ALICE, BOB, CAROL, DAVE]
    balances = {k.address: chain.state.balance(k.address) for k in senders}
    pending: list = []
    for sender in senders:
        for n in range(12):
            to = senders[(senders.index(sender) + 1 + n % 3) % 4]
            amount = rng.randrange(1, balances[sender.address] // 30)
            tx = transfer(sender, to, amount, n, fee=10 + n)
            mp.add(tx, chain.state, chain.height)
            pending.append(tx)
    # The block takes some of each queue, and spends most of Bob's balance with a
    # nonce of his that the pool holds another transaction for.
    bob_nonce = 3
    heavy = transfer(BOB, CAROL, balances[BOB.address] * 9 // 10, bob_nonce, fee=99)
    included = [
        tx
        for tx in pending
        if tx.nonce < 2 or (tx.sender == BOB.public_key.data and tx.nonce < bob_nonce)
    ]
    block = next_block(chain, clock, (*included, heavy))
    result = chain.add_block(block)
    assert result.status == "connected"
    mp.on_reorg([], [block], chain.state, chain.height)

    fresh = pool()
    in_block = {tx.txid for tx in block.txs}
    for tx in sorted(pending, key=lambda t: (t.sender, t.nonce)):
        if tx.txid in in_block:
            continue
        with contextlib.suppress(InvalidTransaction):
            fresh.add(tx, chain.state, chain.height)
    assert set(mp.txids()) == set(fresh.txids())
    bob_kept = [tx for tx in mp.select(100, 1 << 20) if tx.sender == BOB.public_key.data]
    assert 0 < len(bob_kept) < 12 - bob_nonce - 1  # a prefix of what he can still pay for
    assert sum(tx.fee + tx.payload.amount for tx in bob_kept) <= chain.state.balance(BOB.address)
    assert len(mp) - len(bob_kept) == 3 * 10  # the other queues stayed whole


def test_admitted_since_gives_the_newcomers_oldest_first(state):
    """A template on the same tip takes only what was admitted since it was built:
    in admission order, so each sender's nonces stay in order."""
    mp = pool()
    first = [transfer(ALICE, BOB, 5, 0), transfer(BOB, CAROL, 5, 0)]
    for tx in first:
        mp.add(tx, state, 0)
    mark = mp.admissions
    later = [transfer(ALICE, BOB, 5, 1), transfer(CAROL, ALICE, 5, 0), transfer(ALICE, BOB, 5, 2)]
    for tx in later:
        mp.add(tx, state, 0)
    assert mp.admitted_since(mark, 10) == later
    assert mp.admitted_since(mark, 2) == later[:2]
    assert mp.admitted_since(mp.admissions, 10) == []
    assert mp.admitted_since(0, 10) == first + later


# ------------------------------------------------------------ job_result claims


@pytest.fixture
def posted_job() -> tuple[Chain, Clock]:
    """A chain whose block 1 posts JOB and JOB2 (Alice, nonces 0 and 1)."""
    chain, clock = new_chain()
    block = next_block(chain, clock, (jr.tx(ALICE, 0, jr.POST), jr.tx(ALICE, 1, jr.POST2)))
    chain.add_block(block)
    return chain, clock


def test_a_second_pending_claim_of_a_job_is_refused_and_the_first_seen_wins(posted_job):
    chain, _ = posted_job
    mp = pool()
    first = jr.claim(BOB, 0, (jr.JOB_ID, jr.C))
    mp.add(first, chain.state, chain.height)
    assert mp.claim_of(jr.JOB_ID) == first.txid
    rival = jr.claim(CAROL, 0, (jr.JOB2_ID, jr.C2), (jr.JOB_ID, jr.C))
    with pytest.raises(
        InvalidTransaction,
        match=rf"claims\[1\].job_id: job {jr.JOB_ID.hex()[:16]} is already claimed by "
        rf"pending transaction {first.txid.hex()[:16]} \(the first seen wins\)",
    ):
        mp.add(rival, chain.state, chain.height)
    assert mp.claim_of(jr.JOB2_ID) is None  # the refused one claimed nothing
    # The claimant may replace its own claim by fee.
    better = jr.claim(BOB, 0, (jr.JOB_ID, jr.C), fee=jr.FEE + 1)
    mp.add(better, chain.state, chain.height)
    assert mp.txids() == [better.txid] and mp.claim_of(jr.JOB_ID) == better.txid
    mp.add(jr.claim(CAROL, 0, (jr.JOB2_ID, jr.C2)), chain.state, chain.height)
    assert len(mp) == 2


def test_a_claim_of_a_job_the_tip_or_the_chain_claimed_is_refused(posted_job):
    chain, clock = posted_job
    jr.add_job_block(chain, clock, jr.JOB)  # its claim takes effect in the next block
    t = jr.claim(BOB, 0, (jr.JOB_ID, jr.C))
    with pytest.raises(InvalidTransaction, match="the job is mined, not open"):
        pool().add(t, chain.state, chain.height, tip=chain.tip.header)
    chain.add_block(next_block(chain, clock))
    with pytest.raises(InvalidTransaction, match="the job is mined, not open"):
        pool().add(t, chain.state, chain.height)


def test_a_block_that_claims_a_job_evicts_its_pending_claims(posted_job):
    chain, clock = posted_job
    mp = pool()
    bob_claim = jr.claim(BOB, 0, (jr.JOB_ID, jr.C))
    bob_next = transfer(BOB, CAROL, 5, 1)
    other = jr.claim(CAROL, 0, (jr.JOB2_ID, jr.C2))
    for t in (bob_claim, bob_next, other):
        mp.add(t, chain.state, chain.height, tip=chain.tip.header)
    # A job_result from a miner this pool never saw claims JOB in the next block.
    rival = jr.claim(DAVE, 0, (jr.JOB_ID, jr.C))
    block = next_block(chain, clock, (rival,))
    chain.add_block(block)
    mp.on_reorg([], [block], chain.state, chain.height)
    assert mp.txids() == [other.txid]  # Bob's claim and the transfer queued behind it
    assert mp.claim_of(jr.JOB_ID) is None
    # A block mined on JOB2 claims it as soon as it is the tip.
    block = jr.add_job_block(chain, clock, jr.JOB2)
    mp.on_reorg([], [block], chain.state, chain.height)
    assert len(mp) == 0 and mp.claim_of(jr.JOB2_ID) is None


def test_a_claim_of_a_disconnected_block_comes_back_to_the_pool(posted_job):
    chain, clock = posted_job
    t = jr.claim(BOB, 0, (jr.JOB_ID, jr.C))
    fork = chain.height
    block = next_block(chain, clock, (t,))
    chain.add_block(block)
    mp = pool()
    chain._disconnect_to(fork)
    mp.on_reorg([block], [chain.blocks[chain.tip.hash]], chain.state, chain.height)
    assert mp.claim_of(jr.JOB_ID) == t.txid


@pytest.fixture
def wrongly_claimed(posted_job) -> tuple[Chain, Clock, bytes]:
    """JOB claimed by BOB with WRONG_C (entry [3, 5] off by one): (chain, clock, claim id)."""
    chain, clock = posted_job
    t = jr.claim(BOB, 0, (jr.JOB_ID, jr.WRONG_C))
    chain.add_block(next_block(chain, clock, (t,)))
    return chain, clock, t.txid


def test_a_sender_s_second_dispute_of_a_job_is_refused_naming_the_first(wrongly_claimed):
    """Only one fraud proof of a claim can apply, and one challenge: a sender's second
    would wait for a block that refuses it, holding its later nonces, so the pool
    refuses it naming the first (a poster asking twice is told of its proof). Another
    sender's proof waits beside it: one held at a low fee cannot shut out another."""
    chain, clock, claim_id = wrongly_claimed
    mp = pool()
    proof = build_fraud_proof(claim_id, jr.JOB_ID, jr.A, jr.B, jr.WRONG_C, 3, 5)
    first = jr.tx(CAROL, 0, proof)
    mp.add(first, chain.state, chain.height)
    with pytest.raises(
        InvalidTransaction,
        match=rf"this sender's fraud_proof of job {jr.JOB_ID.hex()[:16]} is already pending: "
        rf"transaction {first.txid.hex()} \(only one can apply\)",
    ):
        mp.add(jr.tx(CAROL, 1, proof), chain.state, chain.height)
    better = jr.tx(CAROL, 0, proof, fee=jr.FEE + 1)  # a replacement by fee is no second
    mp.add(better, chain.state, chain.height)
    rival = jr.tx(DAVE, 0, proof, fee=5 * jr.FEE)
    mp.add(rival, chain.state, chain.height)
    ask = jr.tx(ALICE, 2, ResultChallengePayload(claim_id, jr.JOB_ID, (3,)))
    mp.add(ask, chain.state, chain.height)
    again = jr.tx(ALICE, 3, ResultChallengePayload(claim_id, jr.JOB_ID, (5,)))
    with pytest.raises(InvalidTransaction, match=r"result_challenge of job .* already pending"):
        mp.add(again, chain.state, chain.height)
    assert set(mp.txids()) == {better.txid, rival.txid, ask.txid}
    # DAVE's proof lands: the other disputes of the job go, with their senders'
    # transactions behind them, and the job takes a dispute no more.
    behind = transfer(CAROL, BOB, 5, 1)
    mp.add(behind, chain.state, chain.height)
    block = next_block(chain, clock, (rival,))
    chain.add_block(block)
    mp.on_reorg([], [block], chain.state, chain.height)
    assert len(mp) == 0
    assert job_record(chain.state, jr.JOB_ID)["status"] == "refunded"
    with pytest.raises(InvalidTransaction, match="not awaiting payment"):
        mp.add(jr.tx(CAROL, 0, proof), chain.state, chain.height)


def test_a_fee_below_the_relay_minimum_is_refused_with_the_reason(state):
    """Consensus allows a zero fee; the pool takes at least MIN_FEE_PER_KB per started
    1,000 bytes, so keys that were never funded cannot fill blocks and state for free."""
    mp = pool()
    free = transfer(ALICE, BOB, 5, 0, fee=0)
    with pytest.raises(InvalidTransaction, match=r"fee: 0 is below the relay minimum of 1 for"):
        mp.add(free, state, 0)
    assert min_fee(1) == 1 and min_fee(1000) == 1 and min_fee(1001) == 2
    assert len(mp) == 0
    mp.add(transfer(ALICE, BOB, 5, 0, fee=min_fee(len(free.encoded))), state, 0)
    assert len(mp) == 1


def test_a_sender_that_cannot_pay_the_fee_is_refused_before_its_signature_or_a_gap(state):
    """A key with no funds is refused for its balance at once, even for a nonce ahead
    (so the relay does not hold it for a gap)."""
    mp = pool()
    for nonce in (0, 5):
        with pytest.raises(InvalidTransaction, match="balance: the sender cannot pay the fee"):
            mp.add(transfer(NEWCOMER, BOB, 1, nonce, fee=10), state, 0)
    assert len(mp) == 0


def test_a_sender_has_at_most_max_per_sender_pending(state, monkeypatch):
    monkeypatch.setattr(mempool_module, "MAX_PER_SENDER", 3)
    mp = pool()
    for nonce in range(3):
        mp.add(transfer(ALICE, BOB, 5, nonce), state, 0)
    with pytest.raises(InvalidTransaction, match="sender: 3 pending transactions, the most"):
        mp.add(transfer(ALICE, BOB, 5, 3), state, 0)
    mp.add(transfer(ALICE, BOB, 5, 2, fee=11), state, 0)  # a replacement is not one more
    mp.add(transfer(BOB, ALICE, 5, 0), state, 0)  # other senders are not held back
    assert len(mp) == 4


def test_a_full_pool_checks_a_newcomers_signature_before_making_room(state):
    """In a full pool, a newcomer with a forged signature is refused for its signature
    (its peer is banned), not as 'mempool full' after the work of finding room."""
    mp = pool(max_txs=2)
    mp.add(transfer(ALICE, BOB, 5, 0, fee=10), state, 0)
    mp.add(transfer(BOB, CAROL, 5, 0, fee=10), state, 0)
    for fee in (5, 50):
        forged = dataclasses.replace(transfer(CAROL, ALICE, 5, 0, fee=fee), signature=bytes(64))
        with pytest.raises(InvalidTransaction, match="signature"):
            mp.add(forged, state, 0)
    assert len(mp) == 2


def test_the_cheapest_queue_tail_is_tracked_through_every_change():
    """The heap of queue tails that lets a full pool refuse a cheap newcomer at once
    agrees with a scan of every queue after random admissions, replacements, evictions,
    blocks and expiry."""
    import random

    rng = random.Random(7)
    chain, clock = new_chain()
    keys = [ALICE, BOB, CAROL, DAVE, ERIN]
    fake = FixedClock()
    mp = pool(max_txs=12, ttl_ms=50, clock=fake)
    for step in range(400):
        fake.now += 1
        key = rng.choice(keys)
        sender = key.address
        base = chain.state.nonce(sender)
        pending = len(mp.by_sender(sender))
        nonce = base + rng.randrange(pending + 1)  # next, or replace one pending
        fee = rng.randrange(1, 200)
        with contextlib.suppress(InvalidTransaction):
            mp.add(
                transfer(key, BOB if key is not BOB else ALICE, 1, nonce, fee=fee),
                chain.state,
                chain.height,
            )
        if step % 97 == 96:
            block = next_block(chain, clock, tuple(mp.select(5, 1 << 20)))
            chain.add_block(block)
            mp.remove_for_block(block)
        if step % 53 == 52:
            mp.expire(fake.now)
        tails = [(p.rate, -p.order) for q in mp._senders.values() for p in [q[q.high]]]
        cheapest = mp._cheapest_tail()
        assert (cheapest[:2] if cheapest else None) == (min(tails) if tails else None), step


def test_admission_never_writes_the_tip_state(state, monkeypatch):
    """A trial application runs on a fork: the tip's state is never written, not even for
    a moment, so a block template built from it in another thread cannot read a trial's
    writes. Refused transactions leave it alone too."""
    mp = pool()
    before = state.snapshot()

    def no_writes(*args: object) -> None:
        raise AssertionError("the mempool wrote the tip's state")

    monkeypatch.setattr(state, "begin", no_writes)
    monkeypatch.setattr(state, "set", no_writes)
    mp.add(transfer(ALICE, BOB, 1_000, nonce=0, fee=10), state, 0)
    mp.add(transfer(ALICE, BOB, 1_000, nonce=1, fee=10), state, 0)
    with pytest.raises(InvalidTransaction, match="balance"):
        mp.add(transfer(NEWCOMER, ALICE, 1, nonce=0, fee=10), state, 0)
    assert len(mp) == 2 and state.snapshot() == before
