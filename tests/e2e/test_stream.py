"""Issue 15 end to end on real node processes: three miners work through a
stream of 30 posted jobs, one attempt per job, and every result is delivered
(by block, or by a bonded job_result), Freivalds-checked by the client and paid
exactly once; a dishonest miner's job_result is caught and its bond burned."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from consensus.keys import PrivateKey, address_to_text
from consensus.params import DEVNET, with_block_time
from node.client.market import MarketClient, SubmittedJob, WrongResult
from node.client.rpc import RpcClient
from tests.support.framework import NodeProcess, wait_until

pytestmark = pytest.mark.slow

BLOCK_MS = 500
PARAMS = with_block_time(DEVNET, BLOCK_MS)
POSTER = PrivateKey.from_label("devnet-3")
MINER_LABELS = ("devnet-10", "devnet-11", "devnet-12")  # prefunded: they can lock bonds
CHEAT_LABEL = "devnet-13"
CHEAT = PrivateKey.from_label(CHEAT_LABEL)
JOBS = 30
REWARD = 30_000
rng = np.random.default_rng(1515)


def _operands() -> tuple[np.ndarray, np.ndarray]:
    return (
        rng.integers(-64, 64, (64, 128), dtype=np.int8),
        rng.integers(-64, 64, (128, 32), dtype=np.int8),
    )


def _exact(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("stream")
    common = ["--devnet-block-time-ms", str(BLOCK_MS), "--threads", "1"]
    nodes: list[NodeProcess] = []
    try:
        poster = NodeProcess(root / "poster", common, "poster").start()
        nodes.append(poster)

        def miner(name: str, label: str, *flags: str) -> NodeProcess:
            (root / f"{name}.key").write_text(f"label:{label}\n")
            args = [*common, "--peer", poster.p2p, "--miner-key", str(root / f"{name}.key")]
            node = NodeProcess(root / name, [*args, *flags], name).start()
            nodes.append(node)
            return node

        miners = [miner(f"miner{i}", label, "--mine") for i, label in enumerate(MINER_LABELS)]
        cheat = miner("cheat", CHEAT_LABEL, "--dishonest-results")
        wait_until(lambda: len(poster.call("getpeers")) == 4, 30, "the poster's four peers")
        # The miners split posted jobs among the miners of recent blocks: a miner that has
        # not seen the others' blocks yet would take every job as its own.
        wait_until(
            lambda: all(m.call("getmininginfo")["miners_seen"] == 2 for m in miners),
            90,
            "each miner seeing the other two in recent blocks",
        )
        assert poster.rpc is not None
        client = MarketClient(RpcClient(poster.rpc.url, poster.rpc.token), POSTER, PARAMS)
        yield client, poster, miners, cheat
    finally:
        for n in nodes:
            n.kill()


def test_thirty_jobs_are_each_computed_delivered_verified_and_paid_once(network):
    client, _, miners, _ = network
    posted: list[tuple[SubmittedJob, np.ndarray, np.ndarray]] = []
    for _ in range(JOBS):
        a, b = _operands()
        posted.append((client.submit(a, b, reward=REWARD), a, b))
    claims = {}
    for job, a, b in posted:
        status = client.wait(job.job_id, timeout=90)
        assert np.array_equal(client.result(job.job_id, a, b), _exact(a, b))  # Freivalds'd
        claims[job.job_id] = status
    for job, _, _ in posted:
        paid = client.wait(job.job_id, timeout=60, until=("paid", "refunded"))
        assert paid["status"] == "paid" and paid["claimant"] == claims[job.job_id]["claimant"]
        assert paid["bond"] == (REWARD if paid["claim_kind"] == "tx" else 0)
    kinds = Counter(s["claim_kind"] for s in claims.values())
    assert kinds["tx"] > 0, f"no result was claimed by transaction: {kinds}"
    infos = [m.call("getmininginfo") for m in miners]
    attempts = Counter(job for info in infos for job, _ in info["attempted_jobs"])
    ours = {job.job_id.hex() for job, _, _ in posted}
    assert ours <= set(attempts), "a job was paid that no miner attempted"
    # Miners split the queue: most jobs are attempted once. A miner helps with a job
    # its owner has left waiting (1.5 s), which a loaded machine makes common, so
    # the bound is what a split that works gives, not the quiet machine's figure;
    # without the split every miner attempts every job (3x).
    assert sum(attempts[j] for j in ours) <= 2 * JOBS, attempts
    for info in infos:
        assert info["macs_done"] == info["macs_null"] + info["macs_jobs"]
    assert sum(info["claims_sent"] for info in infos) >= kinds["tx"]
    # Exactly once: the claims on chain are the first per job; no miner was paid twice.
    payees = Counter(s["claimant"] for s in claims.values())
    assert sum(payees.values()) == JOBS


def test_a_dishonest_job_result_is_caught_and_its_bond_burned(network):
    client, poster, miners, cheat = network
    for m in miners:
        m.call("setmining", False)
    cheat.call("setmining", True)
    posted = []
    for _ in range(6):  # some attempts may win blocks: most are claimed by transaction
        a, b = _operands()
        posted.append((client.submit(a, b, reward=REWARD), a, b))

    def claimed_everywhere() -> bool:
        for node in (poster, miners[0]):
            for job, _, _ in posted:
                rec = node.call("getjob", job.job_id.hex())
                if rec["status"] == "open" and not rec["pending_claim"]:
                    return False
        return True

    wait_until(claimed_everywhere, 60, "the cheat's claims of the six jobs")
    cheat.call("setmining", False)
    miners[0].call("setmining", True)  # an honest miner mines the claims
    wait_until(
        lambda: all(
            poster.call("getjob", j.job_id.hex())["status"] == "mined" for j, _, _ in posted
        ),
        60,
        "the six claims in blocks",
    )
    # Hold the chain at once: the challenge windows (W blocks) must stay open while the
    # client checks, which a loaded machine can make slower than W fast devnet blocks.
    miners[0].call("setmining", False)
    records = {job.job_id: client.wait(job.job_id, timeout=60) for job, _, _ in posted}
    assert {r["claimant"] for r in records.values()} == {address_to_text(CHEAT.address)}
    by_tx = [j for j, r in records.items() if r["claim_kind"] == "tx"]
    assert by_tx, "every attempt of the cheat won a block: no job_result to catch"
    cheat_addr = address_to_text(CHEAT.address)

    def wealth() -> int:
        acct = poster.call("getaccount", cheat_addr)
        return int(acct["balance"] + acct["immature"])

    before = wealth()
    proofs = []
    for job, a, b in posted:
        with pytest.raises(WrongResult, match="fraud proof sent") as caught:
            client.result(job.job_id, a, b)
        proofs.append(caught.value.fraud_txid)
    # The miner takes them in its next block: it must hold them before it mines again.
    wait_until(
        lambda: set(proofs) <= set(miners[0].call("getmempool")["txids"]),
        30,
        "the fraud proofs at the miner",
    )
    miners[0].call("setmining", True)
    for job, _, _ in posted:
        assert client.wait(job.job_id, timeout=60, until=("refunded", "paid"))["status"] == (
            "refunded"
        )
    last_due = max(r["due"] for r in records.values())
    wait_until(lambda: poster.height() > last_due, 60, "the end of every challenge window")
    # The bonds are not paid back, and the coinbase of every block the cheat claimed
    # a job with is burned: nothing else changes the cheat's wealth (it stopped mining).
    burned = sum(
        poster.call("getblock", r["claim_id"], False)["reward"]
        for r in records.values()
        if r["claim_kind"] == "block"
    )
    assert wealth() == before - burned
    for job_id in by_tx:
        assert records[job_id]["bond"] == REWARD
