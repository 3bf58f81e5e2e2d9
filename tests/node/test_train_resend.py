"""`pouw train` after a reorg drops its transactions: a step's model_record is valid only
while its jobs are claimed, so a reorg that puts a job back to open drops the record
from the mempool, and with it the next step's job_post (its nonce now skips one). The
trainer posts the job again and sends the record again once its job is claimed again.

A real in-process node on MID, its real RPC listener and mempool, the real reorg, and
the synchronous client library in a thread; blocks come from private chains."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from consensus.datashare import owned_id
from consensus.market import job_record
from consensus.transactions import JobPostPayload, ModelRecordPayload
from node.app import Node
from node.apps.train_net import LineageRecorder, NetworkMatmul, _Posted, dropped
from node.client.market import MarketClient, NoResult
from node.client.rpc import RpcClient
from tests.support import claimkit
from tests.support.chainkit import ALICE, BOB, MID, new_chain
from tests.support.nodekit import until

WEIGHTS = bytes(range(32))


def _client(node: Node) -> MarketClient:
    return MarketClient(RpcClient(f"http://127.0.0.1:{node.rpc_port}/rpc", node.token), ALICE, MID)


def _pending(node: Node, kind: type) -> list:
    return [tx for tx in node.mempool.by_sender(ALICE.address) if type(tx.payload) is kind]


async def test_a_reorg_that_reopens_a_recorded_job_does_not_strand_the_trainer(node):
    # Ours: block 1 posts JOB (ALICE), block 2 claims it (BOB).
    ours, clock = new_chain()
    post = claimkit.add(ours, clock, [claimkit.tx(ALICE, 0, claimkit.POST)])
    await node.process_block(post, source=None)
    await node.process_block(
        claimkit.add(ours, clock, [claimkit.claim(BOB, 0, (claimkit.JOB_ID, claimkit.C))]),
        source=None,
    )
    client = _client(node)
    model = owned_id(ALICE.address, bytes([7]) * 32)
    recorder = LineageRecorder(client, model, "breast_cancer", timeout=30.0)
    record = await asyncio.to_thread(recorder.record, 0, (claimkit.JOB_ID,), WEIGHTS)
    net = NetworkMatmul(client, reward=claimkit.REWARD, expiry_blocks=30)
    a, b, job, *_ = claimkit.new_job(expiry=0)
    posted = await asyncio.to_thread(net._post, a, b)  # the next step's first product
    assert posted.txid is not None and len(node.mempool) == 2

    # A heavier branch from block 1 without the claim: JOB is open again there.
    theirs, their_clock = new_chain()
    theirs.add_block(post)
    their_clock.now = clock.now
    for _ in range(2):
        await node.process_block(claimkit.add(theirs, their_clock), source=None)
    assert job_record(node.chain.state, claimkit.JOB_ID)["status"] == "open"
    # The node let both go: the record no longer applies, the post's nonce skips it.
    assert await asyncio.to_thread(dropped, client, record)
    assert await asyncio.to_thread(dropped, client, posted.txid)

    # The trainer, waiting for the post's claim, posts it again: same job, next nonce.
    await asyncio.to_thread(net._post_again_if_dropped, posted)
    assert net.posts_resent == 1
    (again,) = _pending(node, JobPostPayload)
    assert again.txid.hex() == posted.txid and again.nonce == 1
    assert (again.payload.root_a, again.payload.root_b) == (job.spec.root_a, job.spec.root_b)

    # Waiting for step 0 on chain, the recorder sends its record again once the job is
    # claimed again (BOB's claim came back to the mempool with the reorg).
    waited = asyncio.create_task(asyncio.to_thread(recorder.wait_all, 1))
    claim = node.mempool.by_sender(BOB.address)
    await node.process_block(claimkit.add(theirs, their_clock, [*claim, again]), source=None)
    assert job_record(node.chain.state, claimkit.JOB_ID)["status"] == "mined"
    await until(lambda: _pending(node, ModelRecordPayload), 10)
    (resent,) = _pending(node, ModelRecordPayload)
    assert resent.nonce == 2 and resent.payload.weights_hash == WEIGHTS
    assert not waited.done()  # on chain only once a block holds it
    await node.process_block(claimkit.add(theirs, their_clock, [resent]), source=None)
    await asyncio.wait_for(waited, 10)
    assert recorder.resent == 1 and recorder.sent == [resent.txid.hex()]


async def test_a_claim_taken_back_before_its_result_is_fetched_is_waited_on_again(node):
    """The round saw JOB claimed by a block mined on it; before the trainer fetched C, a
    reorg took that block back (a header's claim does not return to the mempool: JOB is
    open and nothing claims it). The trainer waits for the next claim and gets the
    Freivalds-checked C, instead of failing with 'has no result'."""
    ours, clock = new_chain()
    post = claimkit.add(ours, clock, [claimkit.tx(ALICE, 0, claimkit.POST)])
    await node.process_block(post, source=None)
    await node.process_block(claimkit.add_job_block(ours, clock, claimkit.JOB), source=None)
    node.blobs.put_matrix(claimkit.C)  # the claimant's C, as the network would serve it
    net = NetworkMatmul(_client(node), reward=claimkit.REWARD, timeout=30.0)
    posted = _Posted(claimkit.JOB_ID, claimkit.A, claimkit.B, time.monotonic())
    seen = await asyncio.to_thread(net._wait_claimed, [posted])  # the tip's header claims it
    assert (await asyncio.to_thread(net.client.status, claimkit.JOB_ID))["pending_claim"]

    theirs, their_clock = new_chain()  # heavier, from block 1, without the job block
    theirs.add_block(post)
    their_clock.now = clock.now
    for _ in range(2):
        await node.process_block(claimkit.add(theirs, their_clock), source=None)
    assert job_record(node.chain.state, claimkit.JOB_ID)["status"] == "open"
    assert node.mempool.claim_of(claimkit.JOB_ID) is None
    collecting = asyncio.create_task(asyncio.to_thread(net._collect, posted, seen[claimkit.JOB_ID]))
    await until(lambda: net.claims_undone == 1, 10)
    assert not collecting.done()
    claim = claimkit.claim(BOB, 0, (claimkit.JOB_ID, claimkit.C))
    await node.process_block(claimkit.add(theirs, their_clock, [claim]), source=None)
    c = await asyncio.wait_for(collecting, 10)
    assert np.array_equal(c, claimkit.C)
    assert net.claims_undone == 1 and net.step_job_ids() == (claimkit.JOB_ID,)


def test_a_job_refunded_before_its_result_is_fetched_fails_at_once() -> None:
    """Only an open job is waited on again: one refunded (a fraud proof, an unanswered
    challenge) will never be claimed, and the trainer says so instead of timing out."""

    class RefundedJob:
        params = MID

        def result(self, job_id: bytes, a: np.ndarray, b: np.ndarray) -> np.ndarray:
            raise NoResult(f"job {job_id.hex()[:16]} has no result: it is refunded")

        def status(self, job_id: bytes) -> dict[str, str]:
            return {"status": "refunded"}

    net = NetworkMatmul(RefundedJob(), reward=claimkit.REWARD, timeout=30.0)  # type: ignore[arg-type]
    posted = _Posted(claimkit.JOB_ID, claimkit.A, claimkit.B, time.monotonic())
    with pytest.raises(NoResult, match="it is refunded"):
        net._collect(posted, time.monotonic())
    assert net.claims_undone == 0 and net.step_job_ids() == ()
