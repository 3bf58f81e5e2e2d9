"""The compute market end to end on real node processes: a job is posted, mined,
its result verified and the miner paid after the window; a dishonest miner's
wrong result is caught by the client, whose fraud proof refunds the poster and
burns the miner's coinbase."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

from consensus.keys import PrivateKey, address_to_text
from consensus.params import DEVNET, with_block_time
from node.client.market import MarketClient, ResultWithheld, WrongResult
from node.client.rpc import RpcClient
from tests.support.framework import NodeProcess, wait_until

pytestmark = pytest.mark.slow

BLOCK_MS = 400
PARAMS = with_block_time(DEVNET, BLOCK_MS)
POSTER = PrivateKey.from_label("devnet-3")
HONEST = PrivateKey.from_label("market-honest")
CHEAT = PrivateKey.from_label("market-cheat")
rng = np.random.default_rng(21)


def _operands() -> tuple[np.ndarray, np.ndarray]:
    return (
        rng.integers(-64, 64, (64, 128), dtype=np.int8),
        rng.integers(-64, 64, (128, 32), dtype=np.int8),
    )


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("market")
    common = ["--devnet-block-time-ms", str(BLOCK_MS), "--threads", "1"]
    nodes = []
    try:
        poster = NodeProcess(root / "poster", common, "poster").start()
        nodes.append(poster)
        honest = NodeProcess(
            root / "honest",
            [
                *common,
                "--peer",
                poster.p2p,
                "--mine",
                "--miner-address",
                address_to_text(HONEST.address),
            ],
            "honest",
        )
        nodes.append(honest.start())
        cheat = NodeProcess(
            root / "cheat",
            [
                *common,
                "--peer",
                poster.p2p,
                "--dishonest-results",
                "--miner-address",
                address_to_text(CHEAT.address),
            ],
            "cheat",
        )
        nodes.append(cheat.start())
        wait_until(lambda: len(poster.call("getpeers")) == 2, 30, "the poster's two peers")
        assert poster.rpc is not None
        client = MarketClient(RpcClient(poster.rpc.url, poster.rpc.token), POSTER, PARAMS)
        yield client, poster, honest, cheat
    finally:
        for n in nodes:
            n.kill()


def test_honest_miner_is_paid_after_the_window_and_the_result_verifies(market):
    client, _, _, _ = market
    a, b = _operands()
    job = client.submit(a, b, reward=50_000)
    status = client.wait(job.job_id, timeout=120)
    assert status["claimant"] == address_to_text(HONEST.address)
    assert status["claim_kind"] == "block" and status["bond"] == 0
    c = client.result(job.job_id, a, b)
    assert np.array_equal(c, (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32))
    paid = client.wait(job.job_id, timeout=120, until=("paid",))
    assert paid["status"] == "paid"


def test_tiny_jobs_are_delivered_while_blocks_keep_their_interval(market):
    """Issue 13: tiny jobs that every miner switches to must not stall the chain.

    Posted as they are, the smallest jobs that tile (16×64·64×16) are mined at
    a fraction of a percent of the null job's rate (the per-attempt overhead
    dominates), so a block on one takes tens of intervals. Posted padded to
    the minimum job shape, they cost the miner what the null job does.
    Intervals are compared with this miner's own on the null job just before:
    a freshly started devnet on a shared machine is not at its target yet.
    """
    client, poster, honest, _ = market
    first = wait_until(lambda: honest.height() >= 6 and poster.height(), 60, "six null blocks")
    stamps = [poster.call("getblockbyheight", h, False)["timestamp_ms"] for h in (1, first)]
    null_interval = (stamps[1] - stamps[0]) / (first - 1)
    posted = []
    for _ in range(3):
        a = rng.integers(-64, 64, (16, 64), dtype=np.int8)
        b = rng.integers(-64, 64, (64, 16), dtype=np.int8)
        posted.append((client.submit(a, b, reward=30_000), a, b))
    job_heights = []
    for job, a, b in posted:
        status = client.wait(job.job_id, timeout=60)
        c = client.result(job.job_id, a, b)
        assert np.array_equal(c, (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32))
        job_heights.append(poster.call("getblock", status["claim_id"], False)["height"])
    window = [
        poster.call("getblockbyheight", h, False)["timestamp_ms"]
        for h in range(first, max(job_heights) + 1)
    ]
    gaps = [later - earlier for earlier, later in itertools.pairwise(window)]
    # The honest miner holds no key to claim by transaction, so only its blocks deliver
    # the jobs: it mines each in bursts, C computed once (3.5-4x slower per attempt when
    # it recovered, hashed and stored C at every attempt: a 7.4 s gap in CI).
    # Unpadded, a tiny job stalled the chain for tens of intervals (38 s against 1.3 s
    # here). Padded, a gap can still hold a miner's first attempts on posted jobs,
    # which load the recovery kernels (~2.5 s seen on a fresh start, where the null
    # job's blocks came faster than the target): the bound is against the larger of
    # that start and the target interval.
    limit = 15 * max(null_interval, BLOCK_MS)
    assert max(gaps) <= limit, (
        f"block gaps {gaps} ms while tiny jobs were open (blocks {job_heights}); "
        f"the null job's interval was {null_interval:.0f} ms; the miner's log:\n"
        + honest.log_tail(80)
    )


def _pouw(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=300
    )


def _cli_wallet(poster: NodeProcess, label: str, path: str) -> list[str]:
    """A wallet file of ``label`` at ``path`` and the options that make `pouw job` use it
    with the poster's node, in JSON."""
    assert _pouw("wallet", "new", "--from-label", label, "--wallet", path).returncode == 0
    return [
        "--datadir",
        str(poster.datadir),
        "--wallet",
        path,
        "--devnet-block-time-ms",
        str(BLOCK_MS),
        "--json",
    ]


def test_job_cli_submits_waits_and_writes_a_verified_result(market, tmp_path):
    _, poster, _, _ = market
    a, b = _operands()
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    where = _cli_wallet(poster, "devnet-4", str(tmp_path / "w.key"))
    addr = address_to_text(PrivateKey.from_label("devnet-4").address)
    nonce_before = poster.call("getaccount", addr)["next_nonce"]
    bad = np.full((64, 128), 64, dtype=np.int64)  # outside int7
    np.save(tmp_path / "bad.npy", bad)
    refused = _pouw(
        "job",
        "submit",
        "--a",
        str(tmp_path / "bad.npy"),
        "--b",
        str(tmp_path / "b.npy"),
        "--reward",
        "0.00005",
        *where,
    )
    assert refused.returncode == 2 and "outside int7" in refused.stderr
    assert poster.call("getaccount", addr)["next_nonce"] == nonce_before  # no tx sent
    done = _pouw(
        "job",
        "submit",
        "--a",
        str(tmp_path / "a.npy"),
        "--b",
        str(tmp_path / "b.npy"),
        "--reward",
        "0.00005",
        "--wait",
        "120",
        *where,
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] in ("mined", "paid")
    assert job["reward"] == "0.00005000"  # coins, as typed
    assert poster.call("getjob", job["job_id"])["reward"] == 5_000  # base units on chain
    assert job["result_shape"] == "64x32"
    assert job["posted_shape"] == "x".join(map(str, PARAMS.min_job_shape))  # padded
    result = _pouw(
        "job",
        "result",
        job["job_id"],
        "--out",
        str(tmp_path / "c.npy"),
        "--shape",
        job["result_shape"],
        *where,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verified"] is True
    c = np.load(tmp_path / "c.npy")
    assert np.array_equal(c, (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32))


def test_dishonest_result_is_caught_and_the_fraud_proof_lands(market):
    client, poster, honest, cheat = market
    honest.call("setmining", False)
    cheat.call("setmining", True)
    a, b = _operands()
    before = poster.call("getaccount", address_to_text(POSTER.address))["balance"]
    job = client.submit(a, b, reward=40_000)
    status = client.wait(job.job_id, timeout=120)
    assert status["claimant"] == address_to_text(CHEAT.address)
    with pytest.raises(WrongResult, match="fraud proof sent") as caught:
        client.result(job.job_id, a, b)
    assert caught.value.fraud_txid
    refunded = client.wait(job.job_id, timeout=120, until=("refunded",))
    assert refunded["status"] == "refunded"
    after = poster.call("getaccount", address_to_text(POSTER.address))["balance"]
    # The poster paid two transaction fees (job post, fraud proof) and got the reward back.
    assert after == before - 2 * 1_000
    # The cheat's coinbase for that block is burned: it never matures, while
    # its other coinbases do. Stop mining so the chain holds still, then count.
    block = poster.call("getblock", status["claim_id"], False)
    burned_at = block["height"] + PARAMS.coinbase_maturity
    wait_until(lambda: cheat.height() >= burned_at + 1, 120, "the burned coinbase's maturity")
    cheat.call("setmining", False)
    height = cheat.height()
    cheat_addr = address_to_text(CHEAT.address)
    matured = 0
    for h in range(1, height - PARAMS.coinbase_maturity + 1):
        blk = cheat.call("getblockbyheight", h, False)
        if blk["miner"] == cheat_addr and h != block["height"]:
            matured += blk["reward"]
    assert cheat.call("getaccount", cheat_addr)["balance"] == matured


WITHHOLDER = PrivateKey.from_label("market-withholder")
LIAR_LABEL = "devnet-5"


def _withholding_node(market, tmp_path, *flags: str) -> NodeProcess:
    """A fifth node, peered to the poster's, that claims posted jobs but never serves C
    (``--withhold-results``, and ``flags``, which name its miner); not mining at first."""
    _, poster, _, _ = market
    node = NodeProcess(
        tmp_path / "withholder",
        [
            "--devnet-block-time-ms",
            str(BLOCK_MS),
            "--threads",
            "1",
            "--peer",
            poster.p2p,
            "--withhold-results",
            *flags,
        ],
        "withholder",
    ).start()
    try:
        wait_until(lambda: len(poster.call("getpeers")) == 3, 30, "the withholder's peering")
    except BaseException:
        node.kill()
        raise
    return node


@pytest.fixture
def withholder(market, tmp_path):
    """Claims posted jobs with the right C but never serves it nor answers a challenge."""
    node = _withholding_node(
        market, tmp_path, "--miner-address", address_to_text(WITHHOLDER.address)
    )
    yield node
    node.kill()


@pytest.fixture
def lying_withholder(market, tmp_path):
    """Claims posted jobs with a wrong C (``--dishonest-results``), never serves it, and
    answers a challenge with the rows of that wrong C asked for (``--reveal-withheld``):
    each matches the claim's result_root, so the chain accepts them. Its miner key is a
    funded account's: the reveals cost a fee before its first coinbase matures."""
    key = tmp_path / "liar.key"
    key.write_text(f"label:{LIAR_LABEL}\n")
    flags = ("--dishonest-results", "--reveal-withheld", "--miner-key", str(key))
    node = _withholding_node(market, tmp_path, *flags)
    yield node
    node.kill()


def _a_job_mined_only_by(market, miner: NodeProcess, claimant: PrivateKey):
    """A job posted with only ``miner`` mining, waited on until claimed (by ``claimant``):
    (the job, its status, A, B, the poster's balance before the post)."""
    client, poster, honest, cheat = market
    honest.call("setmining", False)
    cheat.call("setmining", False)
    miner.call("setmining", True)
    a, b = _operands()
    before = poster.call("getaccount", address_to_text(POSTER.address))["balance"]
    job = client.submit(a, b, reward=40_000)
    status = client.wait(job.job_id, timeout=120)
    assert status["status"] == "mined"
    assert status["claimant"] == address_to_text(claimant.address)
    return job, status, a, b, before


def test_a_withheld_result_is_challenged_and_the_job_refunded(market, withholder, tmp_path):
    """The only miner claims the job but keeps C to itself: the client cannot fetch C, so
    it challenges the claim for random rows and says so; `pouw job result` then names the
    rows still unrevealed and the due height (exit code 4); the claim never reveals them,
    and at the due height the poster gets the reward back (two fees spent: post and
    challenge)."""
    client, poster, _, _ = market
    poster_addr = address_to_text(POSTER.address)
    job, _, a, b, before = _a_job_mined_only_by(market, withholder, WITHHOLDER)
    with pytest.raises(ResultWithheld, match=r"result_challenge .* sent for rows") as withheld:
        client.result(job.job_id, a, b, fetch_timeout_s=1.0)
    txid, rows = withheld.value.challenge_txid, withheld.value.rows
    assert txid is not None and 1 <= len(rows) <= 8 and all(0 <= i < 64 for i in rows)

    def challenged() -> bool:
        return "challenge" in poster.call("getjob", job.job_id.hex())

    wait_until(challenged, 60, "the challenge in a block")
    withholder.call("setmining", False)  # the chain holds still while the CLI asks
    where = _cli_wallet(poster, "devnet-3", str(tmp_path / "poster.key"))  # POSTER's
    asked = _pouw("job", "result", job.job_id.hex(), "--out", str(tmp_path / "c.npy"), *where)
    assert asked.returncode == 4, asked.stderr
    said = json.loads(asked.stdout)
    record = poster.call("getjob", job.job_id.hex())
    assert said["verified"] is False and said["challenge_txid"] is None
    assert said["rows_unrevealed"] == sorted(rows) == record["challenge"]["rows_unrevealed"]
    assert said["due"] == record["due"] and "has not revealed rows" in said["error"]
    assert not (tmp_path / "c.npy").exists()

    withholder.call("setmining", True)
    refunded = client.wait(job.job_id, timeout=120, until=("refunded",))
    withholder.call("setmining", False)
    assert refunded["status"] == "refunded"
    assert poster.call("getaccount", poster_addr)["balance"] == before - 2 * 1_000


def test_a_wrong_row_revealed_for_a_withheld_result_is_proved_and_refunded(
    market, lying_withholder
):
    """A claim that keeps its C back, challenged, reveals rows matching its result_root:
    the chain cannot tell right rows from wrong ones, so unchecked it would be paid. The
    client checks each revealed row against A·B (the row of the wrong entry and a right
    one), proves the wrong one from the chain's row alone, and the poster is refunded."""
    client, poster, _, _ = market
    poster_addr = address_to_text(POSTER.address)
    liar = PrivateKey.from_label(LIAR_LABEL)
    job, status, a, b, before = _a_job_mined_only_by(market, lying_withholder, liar)
    m = status["m"]  # --dishonest-results makes entry (m // 2, n // 3) wrong
    client.challenge(job.job_id, rows=(0, m // 2))

    def revealed() -> bool:
        asked = poster.call("getjob", job.job_id.hex()).get("challenge")
        return asked is not None and asked["rows_unrevealed"] == []

    wait_until(revealed, 60, "the challenged rows revealed on chain")
    on_chain = poster.call("getrevealedrows", job.job_id.hex())
    assert on_chain["claim_id"] == status["claim_id"]
    assert sorted(r["index"] for r in on_chain["rows"]) == [0, m // 2]
    with pytest.raises(WrongResult, match=rf"revealed row {m // 2} .* fraud proof sent") as wrong:
        client.result(job.job_id, a, b, fetch_timeout_s=1.0)
    assert wrong.value.fraud_txid
    refunded = client.wait(job.job_id, timeout=120, until=("refunded",))
    lying_withholder.call("setmining", False)
    assert refunded["status"] == "refunded"
    # Three fees spent (post, challenge, fraud proof), the reward back.
    assert poster.call("getaccount", poster_addr)["balance"] == before - 3 * 1_000
