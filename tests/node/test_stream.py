"""Issue 15, the miner's side, on a real in-process node: a stream of attempts,
one per posted job, and the results of attempts that won no block delivered
and claimed by a job_result from the miner's key (PROTOCOL §8)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest

from consensus import pow as pow_module
from consensus.blocks import Block
from consensus.difficulty import MAX_TARGET
from consensus.keys import PrivateKey, address_to_text
from consensus.market import build_job_result, claim_bond, job_id_of, job_record
from consensus.merkle import matrix_rows_root
from consensus.params import with_block_time
from consensus.pow import Job, null_job
from consensus.state import LOCKED
from consensus.transactions import (
    JobPostPayload,
    Transaction,
    TransferPayload,
    signed_transaction,
)
from node import work as work_module
from node.app import INV_TX, Node
from node.config import NodeConfig
from node.miner import Miner, MiningWork
from node.net.wire import BlobGetRange, GetData, Inv, InvItem, TxMsg
from node.relay.blobs import decode_matrix
from node.services import market as market_module
from node.services.market import pick_job
from tests.support.chainkit import ALICE, BOB, CAROL, MID, MINER, extend, new_chain, next_block
from tests.support.nodekit import connected_peer, rpc_call

MINER_KEY = PrivateKey.from_label("devnet-6")
REWARD = 9_000
M, K, N = MID.min_job_shape
rng = np.random.default_rng(1515)


def _jobs(
    count: int, first_nonce: int = 0, key: PrivateKey = ALICE
) -> list[tuple[Job, Transaction, bytes]]:
    """``count`` minimum-shape jobs and the job_post transactions (by ``key``) posting them:
    a job's id, and so which miner it falls to, is its poster's."""
    out = []
    for i in range(count):
        job = Job.from_operands(
            rng.integers(-64, 64, (M, K), dtype=np.int8),
            rng.integers(-64, 64, (K, N), dtype=np.int8),
            key.address,
        )
        post = JobPostPayload(M, K, N, job.spec.root_a, job.spec.root_b, REWARD, 1_000)
        tx = signed_transaction(
            key, chain_id=MID.chain_id, nonce=first_nonce + i, fee=10, payload=post
        )
        out.append((job, tx, job_id_of(key.address, post, MID)))
    return out


def _product(job: Job) -> np.ndarray:
    return (job.a.astype(np.int64) @ job.b.astype(np.int64)).astype(np.int32)


def _id(work: MiningWork) -> bytes:
    return work.job.spec.job_id(MID.rank, MID.tile_h, MID.tile_w)


@pytest.fixture
async def node(tmp_path):
    n = Node(NodeConfig(params=MID, datadir=tmp_path / "node", miner_key=MINER_KEY))
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


async def _until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def _set_targets(
    node: Node, monkeypatch: pytest.MonkeyPatch, target_of: Callable[[MiningWork], int | None]
) -> None:
    """The miner's templates get the target ``target_of`` gives for each work (1: no ticket
    wins; MAX_TARGET: every one does), or keep theirs where it gives None."""
    real_work = node.work.work

    async def work() -> MiningWork:
        w = await real_work()
        target = target_of(w)
        if target is None:
            return w
        return dataclasses.replace(w, template=dataclasses.replace(w.template, target=target))

    monkeypatch.setattr(node.work, "work", work)


def _block_for(node: Node, txs: tuple[Transaction, ...] = (), miner=MINER_KEY) -> Block:
    """A valid next block for the node's tip, mined on a private copy of its chain; by
    default by the node's own miner, so that no other miner shares the queue."""
    chain, clock = new_chain()
    clock.now = max(clock.now, node.chain.tip.header.timestamp_ms)  # (blocks the node mined)
    for h in node.chain.active[1:]:
        chain.add_block(node.chain.blocks[h])
    return next_block(chain, clock, txs, miner=miner)


async def _post(node: Node, jobs, claims: tuple[Transaction, ...] = (), miner=MINER_KEY) -> None:
    """Post ``jobs`` in one block (with ``claims``), their operands served by the node."""
    for job, _, _ in jobs:
        node.blobs.put_matrix(job.a)
        node.blobs.put_matrix(np.ascontiguousarray(job.b.T))
    block = _block_for(node, (*(tx for _, tx, _ in jobs), *claims), miner)
    assert (await node.process_block(block, None)) is not None


async def _operands_ready(node: Node, count: int) -> None:
    """Ask for work once (the null job: nothing is held yet), which starts the fetches."""
    assert (await node.work.work()).job.null
    await _until(lambda: len(node.market.jobs) == count, 30, f"operands of {count} jobs")


async def test_a_job_is_fetched_while_its_post_waits_and_attempted_as_its_block_lands(node):
    """The operands of a job whose job_post is still in the mempool are fetched
    meanwhile: once its block lands the job is attempted at the first ask, not after
    a download."""
    [(job, tx, job_id)] = _jobs(1)
    node.blobs.put_matrix(job.a)
    node.blobs.put_matrix(np.ascontiguousarray(job.b.T))
    node.txs.admit(tx, None)
    assert (await node.work.work()).job.null  # not open yet: nothing to attempt
    await _until(lambda: job_id in node.market.jobs, 10, "the operands, fetched ahead")
    assert (await node.process_block(_block_for(node, (tx,)), None)) is not None
    assert _id(await node.work.work()) == job_id


async def test_jobs_fetched_ahead_of_their_block_do_not_stand_in_for_minable_ones(
    node, monkeypatch
):
    """A better-paying job whose post still waits for its block is fetched ahead (and
    attempted once, for a claim only), but it does not stand in for the jobs that can
    make blocks: an open job coming after it is fetched all the same and mined next,
    where the miner would fall back to the null job."""
    monkeypatch.setattr(market_module, "PREFETCH_AHEAD", 1)
    [(waiting, _, waiting_id)] = _jobs(1, key=CAROL)
    post = JobPostPayload(M, K, N, waiting.spec.root_a, waiting.spec.root_b, 2 * REWARD, 1_000)
    node.blobs.put_matrix(waiting.a)
    node.blobs.put_matrix(np.ascontiguousarray(waiting.b.T))
    node.txs.admit(
        signed_transaction(CAROL, chain_id=MID.chain_id, nonce=0, fee=10, payload=post), None
    )
    assert (await node.work.work()).job.null  # nothing open: only the fetch starts
    await _until(lambda: waiting_id in node.market.jobs, 10, "the waiting job's operands")
    [(_, _, open_id)] = jobs = _jobs(1)
    await _post(node, jobs)
    early = await node.work.work()  # the better-paying job, while its post waits
    assert early.post_pending and _id(early) == waiting_id
    assert (await node.work.work()).job.null  # the open job's operands are not held yet
    await _until(lambda: open_id in node.market.jobs, 10, "the open job's operands")
    assert _id(await node.work.work()) == open_id


async def test_each_queued_job_is_handed_out_once_then_the_null_job(node, monkeypatch):
    jobs = _jobs(4)
    await _post(node, jobs)
    await _operands_ready(node, 4)
    handed = [await node.work.work() for _ in range(4)]
    assert sorted(_id(w) for w in handed) == sorted(job_id for _, _, job_id in jobs)
    for w in handed:  # each attempt's header commits its own job, on one shared template
        assert w.template.job == w.job.spec and not w.job.null
        assert dataclasses.replace(w.template, job=handed[0].template.job) == handed[0].template
    # Every queued job was attempted once: nothing waits, so the null job comes next,
    # however often the miner asks, until an attempted job has waited RETRY_AFTER_S.
    assert [(await node.work.work()).job.null for _ in range(3)] == [True] * 3
    monkeypatch.setattr(market_module, "RETRY_AFTER_S", 0.0)
    again = await node.work.work()
    assert _id(again) == _id(handed[0])  # still unclaimed: the oldest attempt comes back


async def test_equal_paying_jobs_are_attempted_oldest_first(node):
    """Jobs posted a block later wait behind the earlier ones of the same pay, whatever
    their ids' hashes: a job's wait is bounded by the work posted before it."""
    jobs = _jobs(6)
    me = node.miner_address
    # The later block gets the jobs a hash order would hand out first.
    by_hash = sorted(jobs, key=lambda j: market_module.standing(me, frozenset(), j[2])[1])
    late, early = by_hash[:3], by_hash[3:]
    posts = [_repost(job, nonce) for nonce, job in enumerate(early + late)]
    await _post(node, posts[:3])
    assert (await node.work.work()).job.null  # the miner asks while only the early ones are open
    await _post(node, posts[3:])
    # A block opening jobs starts no fetch; the miner's next ask does (or the end of a
    # fetch in flight, which the early ones' may or may not still be): start it as the
    # ask would, without handing a job out, so the test does not depend on that race.
    node.market._prefetch(node.market.open_jobs())
    await _until(lambda: len(node.market.jobs) == 6, 30, "operands of 6 jobs")
    handed = [_id(await node.work.work()) for _ in range(6)]
    assert set(handed[:3]) == {job_id for _, _, job_id in early}
    assert set(handed[3:]) == {job_id for _, _, job_id in late}


def _repost(job: tuple[Job, Transaction, bytes], nonce: int) -> tuple[Job, Transaction, bytes]:
    """``job`` posted by a job_post with ``nonce``."""
    tx = signed_transaction(
        ALICE, chain_id=MID.chain_id, nonce=nonce, fee=10, payload=job[1].payload
    )
    return job[0], tx, job[2]


async def test_no_job_is_re_attempted_while_another_waits(node, monkeypatch):
    monkeypatch.setattr(market_module, "RETRY_AFTER_S", 0.0)
    jobs = _jobs(6)
    await _post(node, jobs)
    await _operands_ready(node, 6)
    seen = [_id(await node.work.work()) for _ in range(6)]
    assert len(set(seen)) == 6  # retries are allowed at once, yet none came before the last


async def test_jobs_claimed_on_chain_or_in_the_mempool_are_skipped(node, monkeypatch):
    # CAROL's job_result makes her a miner that shares the queue: help her at once.
    monkeypatch.setattr(market_module, "HELP_AFTER_S", 0.0)
    jobs = _jobs(4)
    (job0, _, id0), (job1, _, id1), (_, _, id2), (_, _, id3) = jobs
    await _post(node, jobs)
    on_chain = signed_transaction(
        CAROL,
        chain_id=MID.chain_id,
        nonce=0,
        fee=10,
        payload=build_job_result([(id1, _product(job1))]),
    )
    await node.process_block(_block_for(node, (on_chain,)), None)
    pending = signed_transaction(
        BOB,
        chain_id=MID.chain_id,
        nonce=0,
        fee=10,
        payload=build_job_result([(id0, _product(job0))]),
    )
    await node.submit_transaction(pending)
    assert node.mempool.claim_of(id0) == pending.txid
    assert job_record(node.chain.state, id1)["status"] == "mined"
    handed: list[bytes] = []

    async def two_handed_out() -> bool:
        work = await node.work.work()
        if not work.job.null:
            handed.append(_id(work))
        return len(handed) == 2

    deadline = asyncio.get_running_loop().time() + 30
    while not await two_handed_out():
        assert asyncio.get_running_loop().time() < deadline, f"only {len(handed)} handed out"
        await asyncio.sleep(0.02)
    assert sorted(handed) == sorted([id2, id3])
    assert (await node.work.work()).job.null
    assert id0 not in node.market.jobs and id1 not in node.market.jobs  # never even fetched


async def test_a_result_that_won_no_block_is_claimed_served_and_paid(node, monkeypatch):
    """The miner's attempt on a posted job loses (its template's target is 1: no ticket
    wins); the node keeps C, claims the job by a job_result signed with the miner key,
    serves C under the claimed root, and the claim settles after W blocks, paying
    the reward and returning the bond."""
    ((job, _, job_id),) = jobs = _jobs(1)
    await _post(node, jobs)
    losing = True
    _set_targets(node, monkeypatch, lambda _: 1 if losing else None)
    miner_addr = address_to_text(MINER_KEY.address)
    before = (await rpc_call(node, "getaccount", miner_addr))["result"]["balance"]
    node.start_mining()
    await _until(lambda: node.market.claims_sent == 1, 60, "the job_result claim")
    await node.stop_mining()
    info = (await rpc_call(node, "getmininginfo"))["result"]
    assert info["claims_sent"] == 1 and info["jobs_attempted"] == 1 and info["blocks_found"] == 0
    assert info["attempted_jobs"] == [[job_id.hex(), M * K * N]]
    assert info["macs_jobs"] == M * K * N and info["macs_done"] == info["macs_null"] + M * K * N
    c = _product(job)
    claim = node.mempool.get(node.mempool.claim_of(job_id))
    assert claim is not None and claim.sender_address == MINER_KEY.address
    assert [(cl.job_id, cl.result_root) for cl in claim.payload.claims] == [
        (job_id, matrix_rows_root(c))
    ]
    # Kept under the claimed root, before any block holds the claim.
    assert await node.fetch_blob(matrix_rows_root(c), 1.0) == c.astype("<i4").tobytes()

    losing = False  # now every attempt wins (MID): the node mines the claim, then W blocks
    node.start_mining()
    await _until(
        lambda: job_record(node.chain.state, job_id)["status"] == "paid", 120, "settlement"
    )
    await node.stop_mining()
    served = decode_matrix(
        bytes.fromhex((await rpc_call(node, "getresult", job_id.hex()))["result"])
    )
    assert np.array_equal(served, c)
    rec = (await rpc_call(node, "getjob", job_id.hex()))["result"]
    assert (rec["claim_kind"], rec["claim_id"], rec["claimant"]) == (
        "tx",
        claim.txid.hex(),
        miner_addr,
    )
    assert rec["bond"] == claim_bond(REWARD, MID)
    chain = node.chain
    coinbases = sum(
        chain.blocks[h].header.reward
        for h in chain.active[1:]
        if chain.blocks[h].header.miner == MINER_KEY.address
    )
    after = (await rpc_call(node, "getaccount", miner_addr))["result"]
    # Paid: the reward, and the bond back; the claim's fee went to this miner's own
    # block. Coinbases count once mature.
    matured = coinbases - after["immature"]
    assert after["balance"] == before + matured - market_module.CLAIM_FEE + REWARD
    # A challenge window after the payment nobody asks for C any more: the miner's disk
    # lets it go (the poster's operands, which this node was given, stay).
    root = matrix_rows_root(c)
    node.start_mining()
    await _until(lambda: not node.blobs.store.has_blob(root), 60, "the result pruned")
    await node.stop_mining()
    assert node.chain.height > rec["due"] + MID.challenge_window
    assert node.blobs.store.has_blob(job.spec.root_a)


async def test_a_result_kept_before_a_restart_is_pruned_after_it(tmp_path, monkeypatch):
    """The miner claims a job by transaction and its claim is mined; the node restarts
    (what it keeps for the jobs it mined was in memory only): a challenge window after
    the payment the C it kept is deleted all the same, not left on its disk for good."""
    config = NodeConfig(params=MID, datadir=tmp_path / "node", miner_key=MINER_KEY)
    node = Node(config)
    await node.start()
    try:
        ((job, _, job_id),) = jobs = _jobs(1)
        await _post(node, jobs)
        losing = True
        _set_targets(node, monkeypatch, lambda _: 1 if losing else None)
        node.start_mining()
        await _until(lambda: node.market.claims_sent == 1, 60, "the job_result claim")
        losing = False  # every attempt wins now (MID): a block takes the claim
        await _until(
            lambda: job_record(node.chain.state, job_id)["status"] == "mined", 60, "the claim"
        )
        await node.stop_mining()
    finally:
        await node.stop()
    root = matrix_rows_root(_product(job))

    node = Node(config)
    await node.start()
    try:
        assert node.blobs.store.has_blob(root)
        node.start_mining()
        await _until(lambda: not node.blobs.store.has_blob(root), 60, "the result pruned")
        await node.stop_mining()
        rec = job_record(node.chain.state, job_id)
        assert rec["status"] == "paid" and node.chain.height > rec["due"] + MID.challenge_window
        assert node.blobs.store.has_blob(job.spec.root_a)  # the poster's, given to the node
        assert node.blobs.store.kept_blobs() == {}
    finally:
        await node.stop()


async def test_a_miner_with_immature_coinbases_claims_from_its_spendable_balance(tmp_path):
    """A miner's immature coinbases are counted apart from its balance: they do not make
    the balance it can bond look negative (every young miner's case)."""
    key = PrivateKey.from_label("young-miner")
    n = Node(NodeConfig(params=MID, datadir=tmp_path / "node", miner_key=key))
    await n.start()
    try:
        fund = TransferPayload(key.address, 50_000)
        funding = signed_transaction(ALICE, chain_id=MID.chain_id, nonce=0, fee=10, payload=fund)
        await _post(n, [], claims=(funding,), miner=key)
        jobs = _jobs(1, first_nonce=1)
        await _post(n, jobs, miner=key)
        state = n.chain.state
        assert state.get(LOCKED, key.address, 0) > state.balance(key.address) == 50_000
        job, _, job_id = jobs[0]
        c = _product(job)
        await n.market.deliver(job, matrix_rows_root(c), c)
        assert n.market.claim_delivered() == 1
        claim = n.mempool.get(n.mempool.claim_of(job_id))
        assert claim is not None and claim.sender_address == key.address
    finally:
        await n.stop()


async def test_at_fast_blocks_a_new_transaction_waits_half_a_block_for_a_template(tmp_path):
    """With 300 ms blocks a job or a claim admitted 0.2 s after the template was built
    is in the next attempt's template: it is not left out for seconds of blocks."""
    fast = with_block_time(MID, 300)
    n = Node(NodeConfig(params=fast, datadir=tmp_path / "node", miner_key=MINER_KEY))
    await n.start()
    try:
        assert (await n.work.work()).txs == ()
        pay = TransferPayload(BOB.address, 1_000)
        tx = signed_transaction(ALICE, chain_id=fast.chain_id, nonce=0, fee=10, payload=pay)
        n.txs.admit(tx, None)
        tip, revision, built, template = n.work._template_of
        n.work._template_of = (tip, revision, built - 0.2, template)  # built 0.2 s ago
        assert [t.txid for t in (await n.work.work()).txs] == [tx.txid]
    finally:
        await n.stop()


async def test_a_slow_template_on_a_new_tip_does_not_hold_back_the_next_transactions(
    tmp_path, monkeypatch
):
    """A new tip's template is built from scratch, which on a loaded machine takes a
    while; a job or claim arriving after it still joins the template half a block
    later (the refresh only grows the template), not after ten times that build."""
    fast = with_block_time(MID, 300)
    n = Node(NodeConfig(params=fast, datadir=tmp_path / "node", miner_key=MINER_KEY))
    await n.start()
    clock = [1_000.0]
    real_build = work_module.build_template

    def slow_build(*args, **kwargs):
        clock[0] += 0.5 if kwargs["on_top_of"] is None else 0.001  # from scratch: 0.5 s
        return real_build(*args, **kwargs)

    fake_time = SimpleNamespace(
        monotonic=lambda: clock[0], thread_time=lambda: clock[0], time=time.time
    )
    monkeypatch.setattr(work_module, "time", fake_time)
    monkeypatch.setattr(work_module, "build_template", slow_build)
    try:
        assert (await n.work.work()).txs == ()  # the tip's template, from scratch
        pay = TransferPayload(BOB.address, 1_000)
        tx = signed_transaction(ALICE, chain_id=fast.chain_id, nonce=0, fee=10, payload=pay)
        n.txs.admit(tx, None)
        clock[0] += 0.2  # more than half a 300 ms block
        assert [t.txid for t in (await n.work.work()).txs] == [tx.txid]
    finally:
        await n.stop()


class _HeldBuilds:
    """The node's template builds, counted; those in a worker thread wait for the test
    (``started`` once each, then ``let_go``); ``fail_first``: the first threaded build
    raises once let go, as one that read a block's half-applied state could."""

    def __init__(self, monkeypatch, fail_first: bool = False) -> None:
        self.threaded = self.on_loop = 0
        self._started, self._go = threading.Semaphore(0), threading.Semaphore(0)
        real_build = work_module.build_template

        def held_build(*args, **kwargs):
            if threading.current_thread() is threading.main_thread():
                self.on_loop += 1
                return real_build(*args, **kwargs)
            self.threaded += 1
            self._started.release()
            assert self._go.acquire(timeout=10), "the test never let the template build go on"
            if fail_first and self.threaded == 1:
                raise AssertionError("the state changed between two reads of one rule")
            return real_build(*args, **kwargs)

        monkeypatch.setattr(work_module, "build_template", held_build)

    async def started(self) -> None:
        assert await asyncio.to_thread(self._started.acquire, True, 10), "no build started"

    def let_go(self) -> None:
        self._go.release()


async def test_the_event_loop_serves_rpc_while_a_template_is_built(node, monkeypatch):
    """A template from a full pool takes hundreds of milliseconds; it is built off the
    event loop, so RPC (and peers, and block relay) are answered meanwhile."""
    builds = _HeldBuilds(monkeypatch)
    asked = asyncio.create_task(node.work.work())
    try:
        await builds.started()
        reply = await asyncio.wait_for(rpc_call(node, "getinfo"), 5)
        assert reply["result"]["height"] == node.chain.height
        assert not asked.done()  # the build still waits for us: the loop answered anyway
    finally:
        builds.let_go()
    work = await asyncio.wait_for(asked, 10)
    assert work.template.prev_hash == node.chain.tip.hash
    assert (builds.threaded, builds.on_loop) == (1, 0)


async def test_a_template_a_block_overtook_is_built_again_on_the_new_tip(node, monkeypatch):
    """The build reads the tip's state from another thread; a block connected meanwhile
    changes that state, so what was built is dropped and built again on the new tip,
    without the block's transactions."""
    pay = TransferPayload(BOB.address, 1_000)
    tx = signed_transaction(ALICE, chain_id=node.params.chain_id, nonce=0, fee=10, payload=pay)
    node.txs.admit(tx, None)
    block = _block_for(node, (tx,))
    builds = _HeldBuilds(monkeypatch)
    asked = asyncio.create_task(node.work.work())
    await builds.started()
    assert (await node.process_block(block, None)) is not None  # meanwhile, a block
    builds.let_go()
    await builds.started()  # again, on the new tip
    builds.let_go()
    work = await asyncio.wait_for(asked, 10)
    assert work.template.prev_hash == block.hash == node.chain.tip.hash
    assert work.template.height == block.header.height + 1
    assert tx.txid not in {t.txid for t in work.txs}
    assert (builds.threaded, builds.on_loop) == (2, 0)


async def test_a_build_that_failed_on_a_changing_state_is_built_again(node, monkeypatch):
    """A build racing a block may read two rows the block's rules keep in step, one
    before and one after, and trip a consensus assertion: that build is dropped like
    one that returned, and the work comes from the next."""
    block = _block_for(node)
    builds = _HeldBuilds(monkeypatch, fail_first=True)
    asked = asyncio.create_task(node.work.work())
    await builds.started()
    assert (await node.process_block(block, None)) is not None
    builds.let_go()  # it raises
    await builds.started()
    builds.let_go()
    work = await asyncio.wait_for(asked, 10)
    assert work.template.prev_hash == block.hash


async def test_a_build_that_fails_with_nothing_changing_is_an_error(node, monkeypatch):
    """With no block meanwhile a build's error is the node's own fault: it is raised (the
    miner logs it and asks again), not taken for a race."""
    builds = _HeldBuilds(monkeypatch, fail_first=True)
    asked = asyncio.create_task(node.work.work())
    await builds.started()
    builds.let_go()
    with pytest.raises(AssertionError, match="two reads of one rule"):
        await asyncio.wait_for(asked, 10)
    builds.let_go()  # the next build goes through
    work = await asyncio.wait_for(node.work.work(), 10)
    assert work.template.prev_hash == node.chain.tip.hash


async def test_work_comes_while_blocks_overtake_every_build_in_a_thread(node, monkeypatch):
    """In a catch-up blocks may come faster than templates are built: after
    THREAD_BUILDS_OVERTAKEN builds in a thread are overtaken, the next is built on the
    loop, where no block can overtake it, and the miner gets work on the tip."""
    builds = _HeldBuilds(monkeypatch)
    asked = asyncio.create_task(node.work.work())
    for _ in range(work_module.THREAD_BUILDS_OVERTAKEN):
        await builds.started()
        assert (await node.process_block(_block_for(node), None)) is not None
        builds.let_go()
    work = await asyncio.wait_for(asked, 10)
    assert work.template.prev_hash == node.chain.tip.hash
    assert (builds.threaded, builds.on_loop) == (work_module.THREAD_BUILDS_OVERTAKEN, 1)


async def test_a_better_job_is_handed_out_though_a_block_overtook_its_template(node, monkeypatch):
    """Between strips the miner asks for better work; a block landing while that
    template is built does not cost the answer (the miner would not ask again before
    its attempt ends): the job comes on a template on the new tip."""
    jobs = _jobs(1)
    await _post(node, jobs)
    current = await node.work.work()  # the null job; the operands are fetched meanwhile
    assert current.job.null
    await _until(lambda: len(node.market.jobs) == 1, 30, "the job's operands")
    assert (await node.process_block(_block_for(node), None)) is not None  # template stale
    builds = _HeldBuilds(monkeypatch)
    asked = asyncio.create_task(node.work.better_work(current, False))
    await builds.started()
    assert (await node.process_block(_block_for(node), None)) is not None
    builds.let_go()
    await builds.started()
    builds.let_go()
    better = await asyncio.wait_for(asked, 10)
    assert better is not None and _id(better) == jobs[0][2]
    assert better.template.prev_hash == node.chain.tip.hash


async def test_refreshes_are_paced_by_a_builds_cpu_time_not_its_waits(node, monkeypatch):
    """A build in a thread may wait for a worker or for the GIL while the loop is busy;
    that wait is no cost of the template's, so it does not hold back refreshes."""
    real_build = work_module.build_template

    def waiting_build(*args, **kwargs):
        time.sleep(0.3)  # stands for a wait: no CPU spent
        return real_build(*args, **kwargs)

    monkeypatch.setattr(work_module, "build_template", waiting_build)
    await node.work.work()
    assert node.work._cost < work_module.TEMPLATE_COST_RATIO * 0.3 / 2


def test_miners_split_the_queue_and_help_the_owner_from_its_last_job():
    """Three miners that see each other take disjoint shares of 30 equal jobs; one
    that has finished its share helps another from the end of that one's order."""
    miners = [PrivateKey.from_label(f"split-{i}").address for i in range(3)]
    pool = [(1.0, bytes([i]) * 32) for i in range(30)]

    def share(me: bytes) -> list[bytes]:
        rivals = frozenset(miners) - {me}
        left, taken = list(pool), []
        while (job_id := pick_job(left, me, rivals, lambda _: False)) is not None:
            taken.append(job_id)
            left = [c for c in left if c[1] != job_id]
        return taken

    shares = [share(me) for me in miners]
    assert sorted(j for s in shares for j in s) == sorted(j for _, j in pool)  # disjoint, all
    assert all(len(s) >= 3 for s in shares)  # each gets a share (30 jobs, 3 miners)
    # Miner 0 has done its share; what is left of miner 1's share is all it may help with.
    left = [c for c in pool if c[1] in shares[1]]
    helper = pick_job(left, miners[0], frozenset(miners[1:]), lambda _: True)
    assert helper == shares[1][-1]  # the job miner 1 would reach last
    # A better-paying job comes first in the share of exactly one miner.
    rich = bytes([99]) * 32
    firsts = [
        pick_job([(2.0, rich), *pool], me, frozenset(miners) - {me}, lambda _: False)
        for me in miners
    ]
    assert firsts.count(rich) == 1
    assert all(f in (rich, s[0]) for f, s in zip(firsts, shares, strict=True))


async def test_a_job_another_miner_ranks_first_on_is_left_to_it_for_a_while(node, monkeypatch):
    """The chain's blocks come from another miner too: the node fetches and takes its
    own share of the queue, then mines the null job rather than race that miner, and
    helps with the rest only once it has waited HELP_AFTER_S."""
    jobs = _jobs(8)
    await _post(node, jobs, miner=MINER)
    assert (await node.work.work()).job.null  # nothing held yet: the fetches start
    own: list[bytes] = []
    while len(own) < 8:
        await asyncio.sleep(0.2)  # time for the fetches
        work = await node.work.work()
        if work.job.null:
            break
        own.append(_id(work))
    assert 0 < len(own) < 8  # (8 jobs: both miners get some, but for 1 chance in 128)
    assert (await node.work.work()).job.null
    monkeypatch.setattr(market_module, "HELP_AFTER_S", 0.0)
    rest: list[bytes] = []

    async def helped() -> bool:
        work = await node.work.work()
        if not work.job.null:
            rest.append(_id(work))
        return len(own) + len(rest) == 8

    deadline = asyncio.get_running_loop().time() + 30
    while not await helped():
        assert asyncio.get_running_loop().time() < deadline, "the other share never came"
        await asyncio.sleep(0.02)
    assert set(rest) | set(own) == {job_id for _, _, job_id in jobs}
    assert len(set(rest) | set(own)) == 8


async def _relay(peer, tx: Transaction) -> None:
    """Announce ``tx`` and send it when the node asks, as a peer relaying it would."""
    await peer.send(Inv((InvItem(INV_TX, tx.txid),)))
    await peer.wait_for_message(GetData)
    await peer.send(TxMsg(tx))


async def test_a_peer_relaying_a_claim_that_lost_its_race_is_not_banned(node):
    """Two miners claim one job by transaction at about the same time; a node that
    heard the other claim first refuses the second, but the peer that relayed it in
    good faith is no cheat. A forged transaction still gets its sender banned."""
    ((job, _, job_id),) = jobs = _jobs(1)
    await _post(node, jobs)
    first = signed_transaction(
        BOB,
        chain_id=MID.chain_id,
        nonce=0,
        fee=10,
        payload=build_job_result([(job_id, _product(job))]),
    )
    await node.submit_transaction(first)
    rival = signed_transaction(
        CAROL,
        chain_id=MID.chain_id,
        nonce=0,
        fee=10,
        payload=build_job_result([(job_id, _product(job))]),
    )
    peer = await connected_peer(node)
    await _relay(peer, rival)
    await _until(lambda: rival.txid in node.txs.rejected, 10, "the rival claim to be refused")
    await peer.sync()
    assert node.p2p.bans() == [] and not peer.closed.is_set()
    forged = dataclasses.replace(rival, fee=11)  # the signature no longer matches
    await _relay(peer, forged)
    await _until(lambda: node.p2p.bans(), 10, "the forger's ban")
    await peer.close()


async def test_a_job_whose_result_is_being_delivered_is_not_handed_out_again(node, monkeypatch):
    """An attempt slower than RETRY_AFTER_S (a loaded machine) must not make the job come
    straight back: the miner asks for its next job right after handing the result to
    ``deliver``, before C is stored and claimed, and recomputing it would be waste."""
    monkeypatch.setattr(market_module, "RETRY_AFTER_S", 0.2)
    ((job, _, job_id),) = jobs = _jobs(1)
    await _post(node, jobs)
    await _operands_ready(node, 1)
    first = await node.work.work()
    assert _id(first) == job_id
    await asyncio.sleep(0.3)  # the attempt outlasts the retry delay
    c = _product(job)
    delivering = asyncio.create_task(node.market.deliver(first.job, matrix_rows_root(c), c))
    await asyncio.sleep(0)  # the miner's next ask follows the hand-over on the loop
    again = await node.work.work()
    assert again.job.null, "the job being delivered was handed out again"
    await delivering


async def test_getmininginfo_reads_the_attempt_counters_as_of_one_moment(node):
    """getmininginfo is answered while the miner thread counts attempts: every attempt
    is in all of its counters or in none (the bench's accounting of MACs adds up)."""
    node.miner = Miner(MID, asyncio.get_running_loop(), node.work.work, None, None)  # type: ignore[arg-type]
    ((job, _, _),) = _jobs(1)
    posted = MiningWork(None, job, ())  # type: ignore[arg-type]
    null = MiningWork(None, null_job(bytes(32), MID), ())  # type: ignore[arg-type]

    def count() -> None:
        for _ in range(3_000):  # fewer than the attempts a miner lists
            node.miner._count(M * K * N, posted)
            node.miner._count(M * K * N, null)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the threads interleave as often as they can
    counting = threading.Thread(target=count)
    counting.start()
    try:
        reads = 0
        while counting.is_alive() or not reads:
            info = await node.rpc.read("getmininginfo")
            reads += 1
            assert info["macs_done"] == info["macs_null"] + info["macs_jobs"]
            assert info["jobs_attempted"] == len(info["attempted_jobs"])
            assert sum(macs for _, macs in info["attempted_jobs"]) == info["macs_jobs"]
    finally:
        counting.join()
        sys.setswitchinterval(switch)
        node.miner = None


async def test_a_job_whose_block_left_the_chain_is_claimed_by_transaction(node):
    """The miner's block on a posted job loses to another miner's branch: the claim its
    header made goes with it, so the node claims the job by a job_result with the C
    it kept, instead of leaving it for a retry behind every other job."""
    ((job, _, job_id),) = jobs = _jobs(1)
    await _post(node, jobs)
    await _operands_ready(node, 1)
    node.start_mining()  # every attempt wins (MID): its first posted-job attempt is a block
    await _until(
        lambda: any(node.chain.blocks[h].header.job == job.spec for h in node.chain.active),
        60,
        "a block on the job",
    )
    await node.stop_mining()
    won = next(h for h in node.chain.active if node.chain.blocks[h].header.job == job.spec)
    at = node.chain.blocks[won].header.height
    assert node.mempool.claim_of(job_id) is None

    # Another miner's branch from below that block, longer than ours: a reorg.
    chain, clock = new_chain()
    for h in node.chain.active[1:at]:
        chain.add_block(node.chain.blocks[h])
    clock.now = chain.tip.header.timestamp_ms
    for block in extend(chain, clock, node.chain.height - at + 3, miner=BOB):
        assert (await node.process_block(block, None)) is not None
    assert not node.chain.is_active(won)
    assert job_record(node.chain.state, job_id)["status"] == "open"

    await _until(lambda: node.mempool.claim_of(job_id) is not None, 10, "the job_result claim")
    claim = node.mempool.get(node.mempool.claim_of(job_id))
    assert claim.sender_address == MINER_KEY.address
    assert [(c.job_id, c.result_root) for c in claim.payload.claims] == [
        (job_id, matrix_rows_root(_product(job)))
    ]


def _pending_post(job: Job, reward: int, key: PrivateKey = CAROL) -> Transaction:
    """A job_post of ``job`` paying ``reward`` (by ``key``, nonce 0)."""
    post = JobPostPayload(M, K, N, job.spec.root_a, job.spec.root_b, reward, 1_000)
    return signed_transaction(key, chain_id=MID.chain_id, nonce=0, fee=10, payload=post)


def _admit_post(node: Node, job: Job, reward: int, key: PrivateKey = CAROL) -> bytes:
    """``job`` posted to the node's mempool only (its operands served by the node);
    its job id."""
    node.blobs.put_matrix(job.a)
    node.blobs.put_matrix(np.ascontiguousarray(job.b.T))
    tx = _pending_post(job, reward, key)
    node.txs.admit(tx, None)
    return job_id_of(tx.sender_address, tx.payload, MID)


async def test_a_better_paying_job_is_computed_while_its_post_waits_and_claimed_as_it_lands(
    node, monkeypatch
):
    """A job paying twice the open one is attempted while its job_post is still in the
    mempool, on a template from before the post came (templates are reused a while). Its
    attempt "wins" (the target is the largest), yet no block comes of it: a block without
    the post would claim nothing. C is kept, and the claim is pending as soon as the post's
    block is processed, not at the next recheck of the results."""
    monkeypatch.setattr(market_module, "CLAIM_RECHECK_S", 60.0)
    ((_, _, backlog_id),) = jobs = _jobs(1)
    await _post(node, jobs)
    monkeypatch.setattr(node.work, "_refresh_s", 3600.0)  # this tip's template stays
    assert (await node.work.work()).job.null  # the template, before the post
    [(rich, _, _)] = _jobs(1)
    rich_id = _admit_post(node, rich, 2 * REWARD)
    node.market.post_admitted(_pending_post(rich, 2 * REWARD).txid)  # fetched at once
    await _until(lambda: len(node.market.jobs) == 2, 30, "operands of both jobs")
    real_work = node.work.work
    handed: list[MiningWork] = []
    # Attempts before the post would all win; others all lose: no block comes from here.
    _set_targets(
        node, monkeypatch, lambda w: handed.append(w) or (MAX_TARGET if w.post_pending else 1)
    )
    height = node.chain.height
    node.start_mining()
    await _until(lambda: node.miner.jobs_attempted == 2, 60, "both jobs attempted")
    c = _product(rich)
    root = matrix_rows_root(c)
    await _until(lambda: node.blobs.store.has_blob(root), 30, "C of the waiting job kept")
    await node.stop_mining()
    info = (await rpc_call(node, "getmininginfo"))["result"]
    assert [j for j, _ in info["attempted_jobs"]] == [rich_id.hex(), backlog_id.hex()]
    assert info["attempts_before_post"] == 1 and info["macs_jobs"] == 2 * M * K * N
    assert info["blocks_found"] == 0 and node.chain.height == height
    assert [w.claim_only for w in handed if _id(w) == rich_id] == [True]
    assert node.mempool.claim_of(rich_id) is None  # its job is not open yet
    await _until(lambda: node.mempool.claim_of(backlog_id) is not None, 10, "the open claim")

    post = next(
        tx for tx in node.mempool.select(100, 1 << 20) if tx.sender_address == CAROL.address
    )
    assert (await node.process_block(_block_for(node, (post,)), None)) is not None
    assert job_record(node.chain.state, rich_id)["status"] == "open"
    await _until(lambda: node.mempool.claim_of(rich_id) is not None, 3, "the claim, at once")
    claim = node.mempool.get(node.mempool.claim_of(rich_id))
    assert claim.sender_address == MINER_KEY.address
    assert (rich_id, root) in [(cl.job_id, cl.result_root) for cl in claim.payload.claims]
    assert await node.fetch_blob(root, 1.0) == c.astype("<i4").tobytes()
    # Once open, the job is not handed out again: its result is on its way.
    assert all(_id(w) != rich_id for w in [await real_work() for _ in range(3)])


async def test_a_job_attempted_on_a_template_carrying_its_post_posts_and_claims_it_at_once(
    node, monkeypatch
):
    """A better-paying job attempted while its job_post waits, on a template that carries
    that post: a winning ticket makes a block that posts the job and claims it, so its
    result is there one block earlier. The tip's claim shows as pending (kind "block"),
    and is recorded as the block's child lands."""
    [(rich, _, _)] = _jobs(1)
    rich_id = _admit_post(node, rich, 2 * REWARD)
    await _operands_ready(node, 1)
    # Every attempt wins on MID; all but the one before the post lose here.
    _set_targets(node, monkeypatch, lambda w: None if w.post_pending else 1)
    height = node.chain.height
    node.start_mining()
    await _until(lambda: node.chain.height == height + 1, 60, "the job's block")
    await node.stop_mining()
    tip = node.chain.tip
    assert tip.header.job.job_id(MID.rank, MID.tile_h, MID.tile_w) == rich_id
    block = node.chain.blocks[tip.hash]
    assert [tx.txid for tx in block.txs] == [_pending_post(rich, 2 * REWARD).txid]
    c = _product(rich)
    assert tip.header.result_root == matrix_rows_root(c)
    assert await node.fetch_blob(tip.header.result_root, 1.0) == c.astype("<i4").tobytes()
    info = (await rpc_call(node, "getmininginfo"))["result"]
    assert info["attempts_before_post"] == 1 and info["blocks_found"] == 1
    job = (await rpc_call(node, "getjob", rich_id.hex()))["result"]
    assert job["status"] == "open" and job["pending_claim_kind"] == "block"
    assert (await node.process_block(_block_for(node), None)) is not None
    rec = job_record(node.chain.state, rich_id)
    assert rec["status"] == "mined" and rec["claim_kind"] == "block"
    assert rec["claimant"] == MINER_KEY.address and rec["claim_height"] == height + 1


async def test_a_miner_interrupted_for_a_better_paying_job_is_offered_only_such_a_job(
    node, monkeypatch
):
    """What the miner may run inside an attempt (``next_job(above=)``): a job paying more
    per MAC than the one it is computing, held and not attempted; never a retry of one
    attempted before, which the miner gets only when it asks for its next job."""
    monkeypatch.setattr(market_module, "RETRY_AFTER_S", 0.0)
    (cheap, _, cheap_id), (dear, _, _) = _jobs(2)
    posts = []
    for nonce, (job, reward) in enumerate(((cheap, REWARD), (dear, 3 * REWARD))):
        post = JobPostPayload(M, K, N, job.spec.root_a, job.spec.root_b, reward, 1_000)
        tx = signed_transaction(ALICE, chain_id=MID.chain_id, nonce=nonce, fee=10, payload=post)
        posts.append((job, tx, job_id_of(ALICE.address, post, MID)))
    dear_id = posts[1][2]
    await _post(node, posts)
    await _operands_ready(node, 2)
    cheap_rate = node.market.rate_of(cheap)
    assert cheap_rate == REWARD / (M * K * N) and node.market.rate_of(dear) == 3 * cheap_rate
    assert node.market.next_job(above=3 * cheap_rate) is None  # nothing pays more than that
    assert node.market._job_id(node.market.next_job(above=cheap_rate).spec) == dear_id
    assert node.market.next_job(above=cheap_rate) is None  # dear is attempted: no retry
    assert node.market._job_id(node.market.next_job().spec) == cheap_id
    assert node.market.next_job(above=0.0) is None  # both attempted: still no retry
    assert node.market.next_job() is not None  # the miner's own ask retries one


async def test_a_post_paying_what_the_open_jobs_pay_waits_behind_them(node):
    """A job_post paying what the open jobs pay waits for its block behind them, as
    they did; with nothing open left it goes before the null job, which pays nothing."""
    jobs = _jobs(2)
    await _post(node, jobs)
    [(same, _, _)] = _jobs(1)
    same_id = _admit_post(node, same, REWARD)
    await _operands_ready(node, 3)
    handed = [await node.work.work() for _ in range(2)]
    assert sorted(_id(w) for w in handed) == sorted(job_id for _, _, job_id in jobs)
    assert not any(w.post_pending for w in handed)
    early = await node.work.work()
    assert _id(early) == same_id and early.post_pending
    assert (await node.work.work()).job.null  # each job once, this one included


async def test_attempts_before_their_post_are_bounded_per_tip(node, monkeypatch):
    """Posts that keep coming cannot hold the miner off the attempts that make blocks:
    at most EARLY_PER_TIP jobs per tip are attempted before their post lands."""
    monkeypatch.setattr(market_module, "EARLY_PER_TIP", 1)
    waiting = [j for j, _, _ in _jobs(2)]
    ids = {
        _admit_post(node, job, REWARD, key) for job, key in zip(waiting, (CAROL, BOB), strict=True)
    }
    await _operands_ready(node, 2)
    first = await node.work.work()
    assert first.post_pending and _id(first) in ids
    assert (await node.work.work()).job.null  # the tip's allowance is spent
    assert (await node.process_block(_block_for(node), None)) is not None
    second = await node.work.work()
    assert second.post_pending and {_id(first), _id(second)} == ids


async def test_a_result_computed_before_a_post_that_never_lands_is_not_kept(node, monkeypatch):
    """C of a job attempted while its post waited is kept for the claim, but a post that
    never reaches a block does not leave it on disk for good."""
    monkeypatch.setattr(market_module, "PRUNE_EVERY_BLOCKS", 1)
    monkeypatch.setattr(market_module, "EARLY_RESULT_BLOCKS", 2)
    deleted_on: list[int] = []  # the threads the store deleted blobs on
    real_delete = node.blobs.store.delete_blob

    def delete_blob(root: bytes) -> None:
        deleted_on.append(threading.get_ident())
        real_delete(root)

    monkeypatch.setattr(node.blobs.store, "delete_blob", delete_blob)
    [(job, _, _)] = _jobs(1)
    job_id = _admit_post(node, job, 2 * REWARD)
    await _operands_ready(node, 1)
    work = await node.work.work()
    assert _id(work) == job_id and work.post_pending
    c = _product(job)
    root = matrix_rows_root(c)
    await node.market.deliver(work.job, root, c)
    assert node.blobs.store.has_blob(root)
    await asyncio.gather(*node.market._warming)  # readied to serve, in the background
    assert root in node.blobs._trees
    for _ in range(2):  # blocks without the post: it still waits, and so does C
        assert (await node.process_block(_block_for(node), None)) is not None
        node.market.open_jobs()
    assert node.blobs.store.has_blob(root)
    assert node.mempool.get(_pending_post(job, 2 * REWARD).txid) is not None
    assert (await node.process_block(_block_for(node), None)) is not None
    node.market.open_jobs()
    await node.market.pruning_done()
    assert not node.blobs.store.has_blob(root)
    # Off the event loop: SQLite takes tens of milliseconds to free a 16 MiB blob.
    assert deleted_on and threading.get_ident() not in deleted_on


async def test_another_miners_better_paying_post_is_carried_by_the_next_job_at_once(
    node, monkeypatch
):
    """Another miner's post paying more than the open jobs cannot be computed here, but
    its owner can claim it only once a block carries it: the market tells the miner its
    pay (``post_admitted``), and the work the miner then runs inside its attempt is its
    next job on a template rebuilt for the post, however young the last one was. Our own
    such post, or one paying what the open jobs pay, does not call for that."""
    monkeypatch.setattr(node.work, "_refresh_s", 3600.0)  # a template stays for the tip
    await _post(node, [], miner=MINER)  # MINER mines here too: it owns some posts
    rivals = node.market.rivals()
    assert MINER.address in rivals

    def share(mine: bool, count: int, key: PrivateKey) -> list[tuple[Job, Transaction, bytes]]:
        """``count`` jobs posted by ``key`` that fall to this miner (``mine``) or not."""
        ranked = (
            (market_module.standing(node.miner_address, rivals, j[2])[0], j)
            for j in _jobs(64, key=key)
        )
        return [j for rank, j in ranked if (rank == 0) == mine][:count]

    backlog = [_repost(job, nonce) for nonce, job in enumerate(share(True, 2, ALICE))]
    await _post(node, backlog)
    await _operands_ready(node, 2)
    current = await node.work.work()  # a backlog job, on this tip's template
    assert current.rate == node.market.rate_of(current.job) == REWARD / (M * K * N)
    (theirs, _, _), (ours, _, _) = share(False, 1, CAROL)[0], share(True, 3, BOB)[2]
    posts = {  # (their operands are nowhere: none of them can be computed here)
        "theirs": _pending_post(theirs, 2 * REWARD, CAROL),
        "ours": _pending_post(ours, 2 * REWARD, BOB),
        "same pay": _pending_post(_jobs(1)[0][0], REWARD, PrivateKey.from_label("devnet-5")),
    }
    rates = {}
    for name, tx in posts.items():
        node.txs.admit(tx, None)
        rates[name] = node.market.post_admitted(tx.txid)
    assert rates == {"theirs": 2 * current.rate, "ours": None, "same pay": None}
    await node.work._ready()  # as a plain ask
    assert node.work._body is not None
    assert posts["theirs"].txid not in node.work._body.txids  # the template stayed
    assert await node.work.better_work(current, False) is None  # nothing better is ready
    fresh = await node.work.better_work(current, True)
    assert fresh is not None and _id(fresh) != _id(current)
    assert _id(fresh) in {job_id for _, _, job_id in backlog}
    assert posts["theirs"].txid in {tx.txid for tx in fresh.txs}


async def test_a_job_fetched_while_its_post_waited_is_left_to_its_owner_once_it_lands(
    node, monkeypatch
):
    """Another miner's job whose operands came long before its block is neither computed
    early nor helped with as its block lands: its owner computes it (maybe while the
    post waited) and can claim it only now, so helping at once would race it. The
    helper's wait runs from the landing."""
    await _post(node, [], miner=MINER)  # MINER mines here too: it owns some jobs
    rivals = frozenset({MINER.address})
    job, job_id = next(
        (job, job_id)
        for job, _, job_id in _jobs(32, key=CAROL)  # posted by CAROL (_admit_post)
        if market_module.standing(node.miner_address, rivals, job_id)[0] == 1
    )
    _admit_post(node, job, 2 * REWARD)
    await _operands_ready(node, 1)
    assert (await node.work.work()).job.null  # not ours to compute before its block
    node.market._ready_at[job_id] -= 60  # fetched a minute ago, the post still waiting
    post = next(t for t in node.mempool.select(100, 1 << 20) if t.sender_address == CAROL.address)
    assert (await node.process_block(_block_for(node, (post,), miner=MINER), None)) is not None
    assert (await node.work.work()).job.null  # its owner's claim has not had time to come
    monkeypatch.setattr(market_module, "HELP_AFTER_S", 0.0)
    assert _id(await node.work.work()) == job_id  # still unclaimed: now we help


async def test_a_post_paying_more_than_the_open_jobs_is_fetched_as_it_arrives(node, monkeypatch):
    """The operands of a job_post paying more than every open job are fetched as the post
    enters the mempool, while the miner is busy (here: waiting for work that does not
    come), and past the downloads already under way (``MAX_FETCHES`` of the open jobs',
    stuck on a peer that never answers): the job can be attempted at the next ask."""
    monkeypatch.setattr(market_module, "MAX_FETCHES", 1)
    silent = await connected_peer(node)  # asked for the open jobs' operands; never answers
    cheap = _jobs(2)
    block = _block_for(node, tuple(tx for _, tx, _ in cheap))
    assert (await node.process_block(block, None)) is not None
    released = asyncio.Event()

    async def no_work() -> MiningWork:
        await released.wait()
        raise RuntimeError("no work in this test")

    monkeypatch.setattr(node.work, "work", no_work)
    node.start_mining()
    try:
        node.market.next_job()  # the open jobs' download starts: one, the most at once
        await silent.wait_for(lambda: silent.of_type(BlobGetRange))
        assert len(node.market._fetching) == 1 and not node.market.jobs
        [(rich, _, _)] = _jobs(1)
        rich_id = _admit_post(node, rich, 2 * REWARD)
        # (well before the stuck download times out and frees its place: REQUEST_TIMEOUT)
        await _until(lambda: rich_id in node.market.jobs, 3, "the better-paying operands")
        assert not any(job_id in node.market.jobs for _, _, job_id in cheap)
    finally:
        released.set()
        await node.stop_mining()
        await silent.close()


async def test_a_better_paying_post_makes_room_by_dropping_cheaper_operands(node, monkeypatch):
    """Memory for operands stays bounded: when it is full of cheaper jobs not attempted
    yet, a post paying more than all of them drops the cheapest to fit (it is fetched
    again if its turn comes), and nothing else grows."""
    job_bytes = M * K + 2 * K * N  # A, B and Bᵀ
    monkeypatch.setattr(market_module, "MAX_KEPT_BYTES", 2 * job_bytes)
    cheap = _jobs(2)
    await _post(node, cheap)
    await _operands_ready(node, 2)
    [(rich, _, _)] = _jobs(1)
    rich_id = _admit_post(node, rich, 2 * REWARD)
    node.market.post_admitted(_txid_of_post(node, rich_id))
    await _until(lambda: rich_id in node.market.jobs, 10, "the better-paying operands")
    assert len(node.market.jobs) == 2
    assert sum(j.a.nbytes + j.b.nbytes + j.bt.nbytes for j in node.market.jobs.values()) <= (
        2 * job_bytes
    )


def _txid_of_post(node: Node, job_id: bytes) -> bytes:
    return next(
        tx.txid
        for tx in node.mempool.select(100, 1 << 20)
        if isinstance(tx.payload, JobPostPayload)
        and job_id_of(tx.sender_address, tx.payload, MID) == job_id
    )


async def test_a_block_whose_tip_moved_while_its_result_was_stored_is_claimed_instead(
    node, monkeypatch
):
    """C is stored off the event loop; a block that arrives meanwhile makes the miner's
    block stale. It is not published (it would lose the race at best), and the job is
    claimed by a job_result with the C that was kept."""
    ((job, _, job_id),) = jobs = _jobs(1)
    await _post(node, jobs)
    await _operands_ready(node, 1)
    storing, release = threading.Event(), threading.Event()
    real_finish = node.market.finish

    def slow_finish(found, job):  # on the worker thread: stores C, then waits
        header = real_finish(found, job)
        storing.set()
        release.wait(30)
        return header

    monkeypatch.setattr(node.market, "finish", slow_finish)
    height = node.chain.height
    node.start_mining()  # every attempt wins (MID): its posted-job attempt makes a block
    await _until(storing.is_set, 60, "the block's C being stored")
    rival = _block_for(node, miner=BOB)  # another miner's block lands meanwhile
    assert (await node.process_block(rival, None)) is not None
    release.set()

    def claimed_by_tx() -> bool:  # pending, or already in a block the miner went on to make
        rec = job_record(node.chain.state, job_id)
        return node.mempool.claim_of(job_id) is not None or rec["claim_kind"] == "tx"

    await _until(claimed_by_tx, 10, "the job_result claim")
    await node.stop_mining()
    assert node.chain.blocks[node.chain.active[height + 1]].header.miner == BOB.address
    assert all(node.chain.blocks[h].header.job != job.spec for h in node.chain.active)
    rec = job_record(node.chain.state, job_id)
    if rec["claim_kind"] == "tx":
        assert (rec["claimant"], rec["result_root"]) == (
            MINER_KEY.address,
            matrix_rows_root(_product(job)),
        )
    else:
        claim = node.mempool.get(node.mempool.claim_of(job_id))
        assert [(c.job_id, c.result_root) for c in claim.payload.claims] == [
            (job_id, matrix_rows_root(_product(job)))
        ]


async def test_operands_no_peer_served_are_fetched_again_later_wrong_ones_never(node, monkeypatch):
    """A job whose operands could not be fetched (no peer had them, or none served them in
    time) was skipped for as long as it stayed open. It is tried again after
    UNAVAILABLE_RETRY_S; one whose operands are of another shape is not."""
    monkeypatch.setattr(market_module, "FETCH_TIMEOUT", 0.3)
    monkeypatch.setattr(market_module, "UNAVAILABLE_RETRY_S", 0.5)
    (job, tx, job_id), (bad, _, _) = _jobs(2)
    cut_otherwise = node.blobs.put(bad.a.tobytes(), chunk_size=2 * K)  # two rows a chunk
    node.blobs.put_matrix(np.ascontiguousarray(bad.b.T))
    post = JobPostPayload(M, K, N, cut_otherwise, bad.spec.root_b, REWARD, 1_000)
    bad_tx = signed_transaction(ALICE, chain_id=MID.chain_id, nonce=1, fee=10, payload=post)
    bad_id = job_id_of(ALICE.address, post, MID)
    assert (await node.process_block(_block_for(node, (tx, bad_tx)), None)) is not None
    market = node.market

    assert (await node.work.work()).job.null  # starts both fetches
    await _until(lambda: job_id in market._unavailable, 10, "the first fetch to fail")
    await _until(lambda: bad_id in market._unavailable, 10, "the wrong shape to be found")
    node.blobs.put_matrix(job.a)  # a peer would serve them now
    node.blobs.put_matrix(np.ascontiguousarray(job.b.T))
    assert (await node.work.work()).job.null and job_id not in market._fetching  # not yet

    async def asked_until_ready() -> None:
        while job_id not in market.jobs:
            await node.work.work()
            await asyncio.sleep(0.05)

    await asyncio.wait_for(asked_until_ready(), 10)
    assert bad_id not in market.jobs and market._unavailable[bad_id] == float("inf")


async def test_a_miner_without_its_key_mines_open_jobs_in_bursts_computing_c_once(
    tmp_path, monkeypatch
):
    """A node whose miner address's key it does not hold delivers a job's result only
    by a block that wins it, so it mines the job, as the null job, in bursts of
    extra-nonces until one does. Each further attempt must cost what a null-job attempt
    does: C recovered and hashed once per job and kept once, even while the miner
    alternates between two open jobs. Then its winning attempts make the blocks that
    claim both jobs."""
    monkeypatch.setattr(pow_module.ResultCommitment, "_commit", _counted(recovered := []))
    n = Node(NodeConfig(params=MID, datadir=tmp_path / "keyless", miner_address=MINER.address))
    await n.start()
    try:
        assert n.claim_key is None
        jobs = _jobs(2)
        await _post(n, jobs, miner=MINER)  # (no other miner seen: both jobs are its share)
        await _operands_ready(n, 2)
        stored: list[bytes] = []
        put_matrix = n.blobs.put_matrix
        n.blobs.put_matrix = lambda x, kept_for=None, root=None: (  # type: ignore[method-assign]
            stored.append(kept_for),
            put_matrix(x, kept_for, root),
        )[1]
        losing = True
        _set_targets(n, monkeypatch, lambda _: 1 if losing else None)
        handed: list[bytes] = []
        targeted = n.work.work

        async def work() -> MiningWork:
            w = await targeted()
            if not w.job.null:
                handed.append(_id(w))
            return w

        monkeypatch.setattr(n.work, "work", work)
        n.start_mining()
        ids = {job_id for _, _, job_id in jobs}
        await _until(lambda: all(handed.count(i) >= 2 for i in ids), 60, "two turns each")
        await n.stop_mining()
        attempted = n.miner.counters().jobs_attempted if n.miner else 0
        assert attempted >= 5 * len(handed), f"{attempted} attempts in {len(handed)} turns"
        assert len(recovered) == 2, f"C computed {len(recovered)} times for 2 jobs"
        assert sorted(stored) == sorted(ids), "a job's result was stored more than once"

        losing = False  # every attempt wins on MID: blocks claim the jobs
        n.start_mining()
        await _until(
            lambda: all(
                (rec := job_record(n.chain.state, i)) is not None and rec["status"] == "mined"
                for i in ids
            ),
            60,
            "both jobs claimed by the miner's blocks",
        )
        await n.stop_mining()
        for job, _, job_id in jobs:
            rec = job_record(n.chain.state, job_id)
            assert (rec["claim_kind"], rec["claimant"]) == ("block", MINER.address)
            assert rec["result_root"] == matrix_rows_root(_product(job))
    finally:
        await n.stop()


def _counted(calls: list[bytes]):
    """``ResultCommitment._commit`` that records each C it commits to (a recovery)."""
    commit = pow_module.ResultCommitment._commit

    def counted(self, c: np.ndarray, seed_a: bytes) -> bytes:
        calls.append(seed_a)
        return commit(self, c, seed_a)

    return counted
