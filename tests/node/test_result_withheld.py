"""A claimant that keeps C from the network: the client cannot fetch it, so it challenges
the claim (result_challenge, random rows) once, says so, and later says whether the rows
were revealed. A real in-process node, its real RPC listener, and the synchronous client
library in a thread; the claimant (BOB) never gives the node its C."""

from __future__ import annotations

import asyncio
import json

import pytest

from consensus.market import build_result_rows, job_record, reveal_blocks
from consensus.state import JOB_CHALLENGES
from consensus.transactions import MAX_CHALLENGE_ROWS, FraudProofPayload, ResultChallengePayload
from node.app import Node
from node.client.market import MarketClient, ResultWithheld, WrongResult
from node.client.rpc import RpcClient
from tests.support import claimkit
from tests.support.chainkit import ALICE, BOB, MID, new_chain
from tests.support.clikit import one_line_error, run
from tests.support.nodekit import rpc_call


def _client(node: Node, key=ALICE) -> MarketClient:
    return MarketClient(RpcClient(f"http://127.0.0.1:{node.rpc_port}/rpc", node.token), key, MID)


async def _claimed_without_c(node: Node):
    """JOB posted by ALICE and claimed by BOB's job_result in the next block; the node
    never had BOB's C. Returns the private chain and clock the blocks came from."""
    chain, clock = new_chain()
    post = claimkit.add(chain, clock, [claimkit.tx(ALICE, 0, claimkit.POST)])
    await node.process_block(post, source=None)
    claim = claimkit.claim(BOB, 0, (claimkit.JOB_ID, claimkit.C))
    await node.process_block(claimkit.add(chain, clock, [claim]), source=None)
    assert job_record(node.chain.state, claimkit.JOB_ID)["status"] == "mined"
    return chain, clock


async def _result(client: MarketClient) -> ResultWithheld:
    with pytest.raises(ResultWithheld) as e:
        await asyncio.to_thread(client.result, claimkit.JOB_ID, claimkit.A, claimkit.B, 1.0, 0.3)
    return e.value


async def test_a_withheld_result_is_challenged_once_and_followed_until_revealed(node):
    """result() cannot fetch C: it sends one result_challenge for 8 distinct random rows
    of the product and says so; called again before a block holds it, it sends nothing
    more. Once mined, the challenge shows on the job and result() names the unrevealed
    rows and the due height (moved to reveal_blocks after the challenge); once BOB
    reveals them, result() says the claim will be paid but C is still not served."""
    chain, clock = await _claimed_without_c(node)
    client = _client(node)

    first = await _result(client)
    assert first.challenge_txid is not None
    assert "result_challenge" in str(first) and "cannot be had" in str(first)
    rows = first.rows
    assert len(rows) == MAX_CHALLENGE_ROWS == len(set(rows))
    assert all(0 <= i < claimkit.M for i in rows)
    sent = node.mempool.get(bytes.fromhex(first.challenge_txid))
    assert sent is not None and sent.sender_address == ALICE.address
    assert isinstance(sent.payload, ResultChallengePayload)
    assert sent.payload.job_id == claimkit.JOB_ID and sent.payload.rows == rows
    record = (await rpc_call(node, "getjob", claimkit.JOB_ID.hex()))["result"]
    assert sent.payload.claim_id.hex() == record["claim_id"]

    again = await _result(client)
    assert again.challenge_txid is None and again.rows == rows
    assert "not in a block yet" in str(again)
    assert len(node.mempool) == 1  # no second challenge

    block = claimkit.add(chain, clock, [sent])
    await node.process_block(block, source=None)
    record = (await rpc_call(node, "getjob", claimkit.JOB_ID.hex()))["result"]
    assert record["challenge"]["rows_unrevealed"] == sorted(rows)
    assert record["due"] >= node.chain.height + reveal_blocks(MID)
    waiting = await _result(client)
    assert waiting.challenge_txid is None and waiting.rows == tuple(sorted(rows))
    assert waiting.due == record["due"]
    assert f"has not revealed rows {sorted(rows)}" in str(waiting)
    assert f"refunded at height {record['due']}" in str(waiting)
    assert len(node.mempool) == 0

    payload = build_result_rows(sent.payload.claim_id, claimkit.JOB_ID, claimkit.C, rows)
    reveal = claimkit.tx(BOB, 1, payload)
    await node.process_block(claimkit.add(chain, clock, [reveal]), source=None)
    answered = await _result(client)
    assert answered.rows == () and answered.challenge_txid is None
    assert "revealed the rows" in str(answered) and "still not served" in str(answered)
    assert "they match A·B" in str(answered)
    assert len(node.mempool) == 0


async def _claimed_with_wrong_c(node: Node):
    """JOB claimed by BOB with WRONG_C (entry [3, 5] off by one), never given to the node."""
    chain, clock = new_chain()
    post = claimkit.add(chain, clock, [claimkit.tx(ALICE, 0, claimkit.POST)])
    await node.process_block(post, source=None)
    claim = claimkit.claim(BOB, 0, (claimkit.JOB_ID, claimkit.WRONG_C))
    await node.process_block(claimkit.add(chain, clock, [claim]), source=None)
    return chain, clock, claim.txid


async def test_a_wrong_revealed_row_is_proved_from_the_chain_and_the_job_refunded(node):
    """BOB keeps his C back and, challenged, reveals rows of it: they match his
    result_root, so the chain takes them and, unchecked, would pay him. result() checks
    each revealed row against A·B, proves the wrong one from its revealed branch, and
    that fraud proof refunds ALICE."""
    chain, clock, claim_id = await _claimed_with_wrong_c(node)
    client = _client(node)
    txid, rows = await asyncio.to_thread(client.challenge, claimkit.JOB_ID, (1, 3))
    asked = node.mempool.get(bytes.fromhex(txid))
    reveal = claimkit.tx(
        BOB, 1, build_result_rows(claim_id, claimkit.JOB_ID, claimkit.WRONG_C, rows)
    )
    await node.process_block(claimkit.add(chain, clock, [asked]), source=None)
    await node.process_block(claimkit.add(chain, clock, [reveal]), source=None)
    assert node.chain.state.get(JOB_CHALLENGES, claimkit.JOB_ID) == ()  # all revealed

    with pytest.raises(WrongResult, match=r"revealed row 3 .* C\[3, 5\] .* fraud proof sent") as e:
        await asyncio.to_thread(client.result, claimkit.JOB_ID, claimkit.A, claimkit.B, 1.0, 0.3)
    proof = node.mempool.get(bytes.fromhex(e.value.fraud_txid))
    assert proof is not None and isinstance(proof.payload, FraudProofPayload)
    assert (proof.payload.i, proof.payload.j) == (3, 5)
    # Asked again (`pouw job result` run twice): the node holds one proof of a job, and
    # the client names it instead of sending another that could never apply.
    with pytest.raises(WrongResult, match=r"a fraud proof of it already waits in tx") as again:
        await asyncio.to_thread(client.result, claimkit.JOB_ID, claimkit.A, claimkit.B, 1.0, 0.3)
    assert again.value.fraud_txid == e.value.fraud_txid and len(node.mempool) == 1
    await node.process_block(claimkit.add(chain, clock, [proof]), source=None)
    assert job_record(node.chain.state, claimkit.JOB_ID)["status"] == "refunded"


async def test_revealed_rows_the_node_gives_malformed_are_an_error_and_send_nothing(node):
    """The client checks what its node says before it signs anything on it."""
    chain, clock, claim_id = await _claimed_with_wrong_c(node)
    client = _client(node)
    txid, _ = await asyncio.to_thread(client.challenge, claimkit.JOB_ID, (3,))
    await node.process_block(
        claimkit.add(chain, clock, [node.mempool.get(bytes.fromhex(txid))]), source=None
    )
    real_call = client.rpc.call
    good_row = {"index": 3, "row": "00" * (4 * claimkit.N), "branch": [], "txid": "ab" * 32}
    for bad, said in (
        ({**good_row, "row": "zz"}, "malformed"),
        ({"index": 3}, "malformed"),
        ({**good_row, "index": claimkit.M}, "not a row"),
        ({**good_row, "row": "00" * 4}, "not a row"),
    ):

        def call(method, *params, bad=bad):
            if method == "getrevealedrows":
                return {"claim_id": claim_id.hex(), "rows": [bad]}
            return real_call(method, *params)

        client.rpc.call = call  # type: ignore[method-assign]
        with pytest.raises(ValueError, match=said):
            await asyncio.to_thread(
                client.result, claimkit.JOB_ID, claimkit.A, claimkit.B, 1.0, 0.3
            )
        assert len(node.mempool) == 0


async def test_a_challenge_is_refused_before_sending_when_it_cannot_apply(node):
    """challenge() sends nothing for a job whose claim is not on chain, for a job that is
    not ours, or for rows outside the product or too many: a ValueError says which."""
    chain, clock = new_chain()
    await node.process_block(
        claimkit.add(chain, clock, [claimkit.tx(ALICE, 0, claimkit.POST)]), source=None
    )
    alice, bob = _client(node), _client(node, BOB)
    with pytest.raises(ValueError, match="is open: only a claim recorded on chain"):
        await asyncio.to_thread(alice.challenge, claimkit.JOB_ID)
    claim = claimkit.claim(BOB, 0, (claimkit.JOB_ID, claimkit.C))
    await node.process_block(claimkit.add(chain, clock, [claim]), source=None)
    with pytest.raises(ValueError, match="only its poster may challenge"):
        await asyncio.to_thread(bob.challenge, claimkit.JOB_ID)
    with pytest.raises(ValueError, match=f"rows 0 to {claimkit.M - 1}"):
        await asyncio.to_thread(alice.challenge, claimkit.JOB_ID, (0, claimkit.M))
    with pytest.raises(ValueError, match="1 to 8 distinct rows"):
        await asyncio.to_thread(alice.challenge, claimkit.JOB_ID, tuple(range(9)))
    with pytest.raises(ValueError, match="1 to 8 distinct rows"):
        await asyncio.to_thread(alice.challenge, claimkit.JOB_ID, (3, 3))
    assert len(node.mempool) == 0
    txid, rows = await asyncio.to_thread(alice.challenge, claimkit.JOB_ID, (5, 1))
    assert rows == (5, 1) and bytes.fromhex(txid) in node.mempool


async def test_job_challenge_cli_sends_the_rows_asked_and_refuses_bad_ones_cleanly(node, tmp_path):
    """`pouw job challenge JOB --rows 5,1` against the node sends that challenge and
    prints it; rows named twice, or not numbers, are a one-line error and nothing is sent."""
    await _claimed_without_c(node)
    wallet = str(tmp_path / "alice.key")
    assert run("wallet", "new", "--from-label", "devnet-0", "--wallet", wallet).exit_code == 0
    where = ["--datadir", str(node.config.datadir), "--wallet", wallet]
    twice = await asyncio.to_thread(
        run, "job", "challenge", claimkit.JOB_ID.hex(), "--rows", "1,1", *where
    )
    one_line_error(twice, "1 to 8 distinct rows")
    words = await asyncio.to_thread(
        run, "job", "challenge", claimkit.JOB_ID.hex(), "--rows", "one", *where
    )
    assert words.exit_code == 2 and "--rows" in words.stderr
    assert len(node.mempool) == 0
    sent = await asyncio.to_thread(
        run, "job", "challenge", claimkit.JOB_ID.hex()[:12], "--rows", "5,1", *where, "--json"
    )
    assert sent.exit_code == 0, sent.output
    said = json.loads(sent.stdout)
    assert said["job_id"] == claimkit.JOB_ID.hex() and said["rows"] == [5, 1]
    tx = node.mempool.get(bytes.fromhex(said["challenge_txid"]))
    assert tx is not None and tx.payload.rows == (5, 1)
