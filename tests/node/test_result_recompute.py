"""A miner whose kept C is lost before its claim is challenged: it computes C again from
the job's operands and answers, instead of losing its bond. A real in-process node whose
miner key (BOB) made the claim; the blocks come from a private chain as a peer's would."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from consensus.market import build_result_rows, job_record
from consensus.merkle import matrix_rows_root
from consensus.state import JOB_CHALLENGES
from consensus.transactions import ResultChallengePayload, ResultRowsPayload
from kernels.layout import transposed
from node.app import Node
from node.config import NodeConfig
from node.services import market as market_module
from node.services.market import MarketService
from tests.support import claimkit
from tests.support.chainkit import ALICE, BOB, MID, new_chain
from tests.support.nodekit import rpc_call, until

ROWS = (0, 5, claimkit.M - 1)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(NodeConfig(params=MID, datadir=tmp_path / "node", miner_key=BOB))
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


async def _challenged(node: Node, c: np.ndarray, operands: bool):
    """ALICE's job, claimed by BOB's key (this node's) with ``c``, whose C this node does
    not hold; then ALICE's result_challenge of ROWS. ``operands``: the node holds A and
    Bᵀ (as the miner that fetched them to compute C does)."""
    chain, clock = new_chain()
    await node.process_block(
        claimkit.add(chain, clock, [claimkit.tx(ALICE, 0, claimkit.POST)]), source=None
    )
    if operands:
        node.market.blobs.put_matrix(claimkit.A)
        node.market.blobs.put_matrix(transposed(claimkit.B))
    claim = claimkit.claim(BOB, 0, (claimkit.JOB_ID, c))
    await node.process_block(claimkit.add(chain, clock, [claim]), source=None)
    challenge = claimkit.tx(ALICE, 1, ResultChallengePayload(claim.txid, claimkit.JOB_ID, ROWS))
    await node.process_block(claimkit.add(chain, clock, [challenge]), source=None)
    return chain, clock


async def _both_challenged(node: Node):
    """Both claimkit jobs posted by ALICE, their operands held here, claimed by BOB's key
    (this node's) in one job_result whose Cs this node does not hold, and both claims
    challenged (ROWS) in one block. Returns the private chain, its clock and the claim's
    id."""
    chain, clock = new_chain()
    posts = [claimkit.tx(ALICE, 0, claimkit.POST), claimkit.tx(ALICE, 1, claimkit.POST2)]
    await node.process_block(claimkit.add(chain, clock, posts), source=None)
    for x in (claimkit.A, transposed(claimkit.B), claimkit.JOB2.a, transposed(claimkit.JOB2.b)):
        node.market.blobs.put_matrix(x)
    claim = claimkit.claim(BOB, 0, (claimkit.JOB_ID, claimkit.C), (claimkit.JOB2_ID, claimkit.C2))
    await node.process_block(claimkit.add(chain, clock, [claim]), source=None)
    challenges = [
        claimkit.tx(ALICE, 2 + i, ResultChallengePayload(claim.txid, job_id, ROWS))
        for i, job_id in enumerate((claimkit.JOB_ID, claimkit.JOB2_ID))
    ]
    await node.process_block(claimkit.add(chain, clock, challenges), source=None)
    return chain, clock, claim.txid


def _answers(node: Node) -> list[ResultRowsPayload]:
    return [
        tx.payload
        for tx in node.mempool.by_sender(BOB.address)
        if isinstance(tx.payload, ResultRowsPayload)
    ]


async def test_a_lost_c_is_computed_again_and_the_challenge_answered(node):
    """The C this miner claimed is not stored (nothing was kept, as after a lost disk
    write), but A and B are: it computes A·B, checks it against the claim's result_root,
    reveals the asked rows (the chain takes them: the claim will be paid) and keeps C
    to serve it again."""
    chain, clock = await _challenged(node, claimkit.C, operands=True)
    root = matrix_rows_root(claimkit.C)
    assert not node.market.blobs.store.has_blob(root)

    await until(lambda: _answers(node), timeout=30)
    (answer,) = _answers(node)
    assert [r.index for r in answer.rows] == list(ROWS)
    for r in answer.rows:
        assert np.array_equal(np.frombuffer(r.row, "<i4"), claimkit.C[r.index])
    await node.process_block(claimkit.add(chain, clock, node.mempool.by_sender(BOB.address)), None)
    assert node.chain.state.get(JOB_CHALLENGES, claimkit.JOB_ID) == ()  # every row revealed
    assert job_record(node.chain.state, claimkit.JOB_ID)["status"] == "mined"  # paid when due

    info = (await rpc_call(node, "getmininginfo"))["result"]
    assert (info["challenges_answered"], info["results_recomputed"]) == (1, 1)
    # C is kept again, under the claim's root, for its poster to fetch.
    data = node.market.blobs.store.get_blob_chunked(root)
    assert data is not None
    assert np.array_equal(np.frombuffer(data[0], "<i4").reshape(claimkit.C.shape), claimkit.C)


async def test_a_claim_whose_product_is_not_its_root_is_not_answered(node, caplog):
    """BOB's claim committed a wrong C: A·B computed again does not open against it, so
    nothing is revealed (no row could be) and nothing is kept under either root."""
    caplog.set_level(logging.INFO, logger="pouw.market")
    await _challenged(node, claimkit.WRONG_C, operands=True)
    await until(lambda: "A·B is not the C our claim committed to" in caplog.text, timeout=30)
    await until(lambda: "no longer stored" in caplog.text, timeout=5)
    assert _answers(node) == []
    info = (await rpc_call(node, "getmininginfo"))["result"]
    assert (info["challenges_answered"], info["results_recomputed"]) == (0, 0)
    for c in (claimkit.C, claimkit.WRONG_C):
        assert not node.market.blobs.store.has_blob(matrix_rows_root(c))


async def test_without_the_operands_the_loss_is_said_and_nothing_sent(node, caplog, monkeypatch):
    """Neither C nor its operands here, and no peer to fetch them from: the log names
    why the claim goes unanswered, and no transaction is sent."""
    monkeypatch.setattr(market_module, "FETCH_TIMEOUT", 1.0)
    caplog.set_level(logging.INFO, logger="pouw.market")
    await _challenged(node, claimkit.C, operands=False)
    await until(lambda: "its operands are unavailable" in caplog.text, timeout=30)
    await until(lambda: "no longer stored" in caplog.text, timeout=5)
    await asyncio.sleep(0)
    assert _answers(node) == []


async def test_lost_results_are_computed_again_one_at_a_time(node, monkeypatch):
    """Two claims of this miner lost their C and are challenged in one block: both are
    answered, one product computed at a time (each holds its operands and its C)."""
    running, most = 0, 0
    lock = threading.Lock()
    product = MarketService._product

    def counted(self, *args):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.2)  # long enough for a second product to start beside it, if it may
            return product(self, *args)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(MarketService, "_product", counted)
    await _both_challenged(node)
    await until(lambda: len(_answers(node)) == 2, timeout=30)
    assert {a.job_id for a in _answers(node)} == {claimkit.JOB_ID, claimkit.JOB2_ID}
    assert most == 1


async def test_a_failure_computing_c_again_is_logged_and_the_node_goes_on(
    node, caplog, monkeypatch
):
    """Whatever breaks while C is computed again (here the product itself) is logged with
    its job, nothing is sent, and the node goes on importing blocks."""

    def broken(self, *args):
        raise RuntimeError("the product failed")

    monkeypatch.setattr(MarketService, "_product", broken)
    caplog.set_level(logging.INFO, logger="pouw.market")
    chain, clock = await _challenged(node, claimkit.C, operands=True)
    await until(lambda: "computing the lost C of our claim again failed" in caplog.text, 30)
    assert "the product failed" in caplog.text and _answers(node) == []
    height = node.chain.height
    await node.process_block(claimkit.add(chain, clock), source=None)
    assert node.chain.height == height + 1


async def test_a_challenge_settled_while_its_c_waited_is_not_computed(node, caplog, monkeypatch):
    """Two lost claims are challenged; while the first C is computed, a block reveals the
    other's rows (another holder of C answered; a node catching up with the chain meets
    challenges that later blocks settle). The second product is never computed."""
    gate, computing = threading.Event(), []
    product = MarketService._product

    def gated(self, shape, raw_a, raw_bt):
        computing.append(bytes(raw_a))
        assert gate.wait(30)
        return product(self, shape, raw_a, raw_bt)

    monkeypatch.setattr(MarketService, "_product", gated)
    caplog.set_level(logging.INFO, logger="pouw.market")
    chain, clock, claim_id = await _both_challenged(node)
    await until(lambda: computing, timeout=30)
    jobs = [(claimkit.JOB_ID, claimkit.C), (claimkit.JOB2_ID, claimkit.C2)]
    if computing[0] != claimkit.A.tobytes():
        jobs.reverse()
    (first, _), (other, other_c) = jobs
    reveal = claimkit.tx(BOB, 1, build_result_rows(claim_id, other, other_c, ROWS))
    await node.process_block(claimkit.add(chain, clock, [reveal]), source=None)
    assert node.chain.state.get(JOB_CHALLENGES, other) == ()
    gate.set()
    await until(lambda: "settled while C waited to be recomputed" in caplog.text, timeout=30)
    await until(lambda: _answers(node), timeout=30)
    assert [a.job_id for a in _answers(node)] == [first] and len(computing) == 1
