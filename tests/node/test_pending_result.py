"""Issue 15, the client's side: a job's result is there as soon as the job_result claiming
it is in the node's mempool (its claimant stored C before sending it, and the client checks
C with Freivalds), a block interval before any block holds the claim. A real in-process
node, its real RPC listener, and the synchronous client library in a thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest

from consensus.keys import address_to_text
from consensus.market import job_record
from consensus.transactions import Transaction, encode_tx
from node.app import Node
from node.client.market import RESULT_AVAILABLE, MarketClient, WrongResult
from node.client.rpc import RpcClient
from node.relay.blobs import decode_matrix
from tests.support import claimkit
from tests.support.chainkit import ALICE, BOB, MID, Clock, new_chain
from tests.support.nodekit import rpc_call

WRONG_C2 = claimkit.C2.copy()
WRONG_C2[7, 2] -= 1


async def _posted(node: Node) -> tuple[Any, Clock, bytes]:
    """JOB and JOB2 posted by ALICE in a block, and a third job left alone: the private
    chain and clock the node's blocks came from, and the third job's id."""
    chain, clock = new_chain()
    _, _, _, lone_post, lone_id, _ = claimkit.new_job(expiry=40)
    block = claimkit.add(
        chain,
        clock,
        [
            claimkit.tx(ALICE, 0, claimkit.POST),
            claimkit.tx(ALICE, 1, claimkit.POST2),
            claimkit.tx(ALICE, 2, lone_post),
        ],
    )
    await node.process_block(block, source=None)
    return chain, clock, lone_id


async def _send(node: Node, tx: Transaction) -> None:
    reply = await rpc_call(node, "sendtransaction", encode_tx(tx).hex())
    assert "result" in reply, reply


def _client(node: Node) -> MarketClient:
    return MarketClient(RpcClient(f"http://127.0.0.1:{node.rpc_port}/rpc", node.token), ALICE, MID)


async def _get(node: Node, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", node.rpc_port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{node.rpc_port}\r\n\r\n".encode())
        reply = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_a_result_is_served_and_verified_while_its_claim_is_pending(node):
    """BOB's job_result claiming JOB waits in the mempool, C stored: getresult and
    GET /result serve that C, the client's wait for RESULT_AVAILABLE returns, and
    result() gives the Freivalds-checked A·B, with no block holding the claim; a job
    nobody claims still has no result."""
    _, _, lone_id = await _posted(node)
    client = _client(node)
    height = node.chain.height
    claim = claimkit.claim(BOB, 0, (claimkit.JOB_ID, claimkit.C))
    node.blobs.put_matrix(claimkit.C)
    await _send(node, claim)

    job = claimkit.JOB_ID.hex()
    status, blob = await _get(node, f"/result/{job}?timeout=1")
    assert status == 200, blob[:200]
    assert np.array_equal(decode_matrix(blob), claimkit.C)
    served = (await rpc_call(node, "getresult", job, 1))["result"]
    assert bytes.fromhex(served) == blob
    record = await asyncio.to_thread(client.wait, claimkit.JOB_ID, 10, RESULT_AVAILABLE)
    assert record["status"] == "open" and record["pending_claim"] == claim.txid.hex()
    assert record["pending_claimant"] == address_to_text(BOB.address)
    c = await asyncio.to_thread(client.result, claimkit.JOB_ID, claimkit.A, claimkit.B)
    assert np.array_equal(c, claimkit.C)
    assert node.chain.height == height and claim.txid in node.mempool  # still only pending

    status, body = await _get(node, f"/result/{lone_id.hex()}?timeout=1")
    assert status == 409 and b"has no result yet: it is open" in body
    with pytest.raises(ValueError, match="has no result: it is open"):
        await asyncio.to_thread(client.result, lone_id, claimkit.A, claimkit.B)


async def test_a_wrong_result_under_a_pending_claim_is_refused_then_proved_once_mined(node):
    """BOB's pending claim on JOB2 commits to a wrong C. The client refuses it; with no
    block taking the claim it says no fraud proof could be sent yet and sends nothing
    (the job stays open, nothing is paid). Once a block holds the claim, result()
    waiting for it proves the fraud."""
    chain, clock, _ = await _posted(node)
    client = _client(node)
    claim = claimkit.claim(BOB, 0, (claimkit.JOB2_ID, WRONG_C2))
    node.blobs.put_matrix(WRONG_C2)
    await _send(node, claim)
    a, b = claimkit.JOB2.a, claimkit.JOB2.b
    alice = address_to_text(ALICE.address)
    before = (await rpc_call(node, "getaccount", alice))["result"]

    with pytest.raises(
        WrongResult, match=r"C\[7, 2\] is wrong; its claim .* not recorded on chain"
    ) as e:
        await asyncio.to_thread(client.result, claimkit.JOB2_ID, a, b, 0.3)
    assert e.value.fraud_txid is None
    assert node.mempool.txids() == [claim.txid]  # no fraud proof sent
    assert (await rpc_call(node, "getaccount", alice))["result"] == before
    assert job_record(node.chain.state, claimkit.JOB2_ID)["status"] == "open"

    fetched = threading.Event()
    real_get_result = client.rpc.get_result

    def get_result(job_id: bytes, timeout: float = 60.0) -> bytes:
        fetched.set()
        return real_get_result(job_id, timeout)

    client.rpc.get_result = get_result  # type: ignore[method-assign]
    proving = asyncio.ensure_future(asyncio.to_thread(client.result, claimkit.JOB2_ID, a, b, 30.0))
    assert await asyncio.to_thread(fetched.wait, 10)  # C fetched under the pending claim
    await node.process_block(claimkit.add(chain, clock, [claim]), source=None)
    with pytest.raises(WrongResult, match="fraud proof sent") as proved:
        await asyncio.wait_for(proving, 30)
    assert proved.value.fraud_txid is not None
    assert bytes.fromhex(proved.value.fraud_txid) in node.mempool


async def test_a_result_is_served_while_the_tip_block_claims_it(node):
    """A block whose PoUW ran on JOB claims it, but the chain records the claim only when
    the block's child is applied: while that block is the tip, getjob shows it as the
    pending claim (kind "block", its miner the claimant), and GET /result and the
    client serve and check the C its header committed to, a block before the record."""
    chain, clock, _ = await _posted(node)
    client = _client(node)
    tip = claimkit.add_job_block(chain, clock, claimkit.JOB)
    node.blobs.put_matrix(claimkit.C)  # its miner's C, under the header's result_root
    assert tip.header.result_root == node.blobs.put_matrix(claimkit.C)
    await node.process_block(tip, source=None)
    job = claimkit.JOB_ID.hex()
    record = (await rpc_call(node, "getjob", job))["result"]
    assert record["status"] == "open" and record["pending_claim"] == tip.hash.hex()
    assert record["pending_claim_kind"] == "block"
    assert record["pending_claimant"] == address_to_text(tip.header.miner)
    status, blob = await _get(node, f"/result/{job}?timeout=1")
    assert status == 200 and np.array_equal(decode_matrix(blob), claimkit.C)
    c = await asyncio.to_thread(client.result, claimkit.JOB_ID, claimkit.A, claimkit.B)
    assert np.array_equal(c, claimkit.C)
    other = (await rpc_call(node, "getjob", claimkit.JOB2_ID.hex()))["result"]
    assert other["pending_claim"] is None and other["pending_claim_kind"] is None

    await node.process_block(claimkit.add(chain, clock), source=None)  # the child
    record = (await rpc_call(node, "getjob", job))["result"]
    assert record["status"] == "mined" and record["claim_id"] == tip.hash.hex()
    assert "pending_claim" not in record
