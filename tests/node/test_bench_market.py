"""`pouw bench market`'s accounting of the window's MACs, from the miners' getmininginfo:
with the attempt reports of a one-attempt-per-job miner, and without them."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

from benchmarks.market import (
    ClaimUndone,
    JobOutcome,
    MinerSnapshot,
    PostedJob,
    ResultLate,
    _Poster,
    _see_stream_claims,
    _until_every_miner_joins,
    _verify,
    job_outcomes,
    latency_steps,
    mac_breakdown,
    step_quantiles,
    window_attempters,
)
from benchmarks.operands import DrawnOperands
from node.client.market import ResultWithheld
from node.client.rpc import RpcCallError

ONE = "11" * 32
TWO = "22" * 32
THREE, FOUR, FIVE, SIX, SEVEN = ("33" * 32, "44" * 32, "55" * 32, "66" * 32, "77" * 32)
OTHERS = "99" * 32  # a job somebody else posted: not ours to account for
TINY = DrawnOperands((0,), (1, 1, 1))  # a job's operands, 1×1 each


class FakeNode:
    def __init__(
        self,
        info: dict[str, Any],
        claimants: dict[str, str | None],
        pending: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        self.info = info
        self.claimants = claimants
        self.pending = pending

    def call(self, method: str, *params: Any) -> Any:
        if method == "getmininginfo":
            return self.info
        assert method == "getjob"
        if params[0] not in self.claimants:
            raise RpcCallError(-32000, f"unknown job {params[0]}")
        claimant = self.claimants[params[0]]
        if claimant is None:
            return {"status": "open", "pending_claim": "ab" if params[0] in self.pending else None}
        return {"claimant": claimant}


def _snapshot(address: str, attempts: list[list[Any]] | None) -> MinerSnapshot:
    info: dict[str, Any] = {"miner_address": address, "macs_done": 0}
    if attempts is not None:
        info |= {"attempted_jobs": attempts, "macs_null": 0, "macs_jobs": 0}
    return MinerSnapshot.of(FakeNode(info, {}))  # type: ignore[arg-type]


def _snap(address: str, null: int, attempts: list[tuple[str, int]]) -> MinerSnapshot:
    """A node's counters: every MAC on the null job or in an attempt it lists."""
    done = null + sum(macs for _, macs in attempts)
    return MinerSnapshot(
        address, done, null, done - null, Counter((job, macs) for job, macs in attempts)
    )


def test_every_mac_mined_in_the_window_is_given_exactly_one_fate():
    """Three nodes' attempts in the window against what became of their jobs: useful
    once per verified job of its claimant, duplicate for the losers, the claimant's
    retries repeated, a wrong result unverified, nobody's claim unclaimed."""
    lead_in = [(ONE, 5)]  # pw-a's, before the window: its claim lands in it, not its MACs
    start = [_snap("pw-a", 10, lead_in), _snap("pw-b", 20, []), _snap("pw-c", 0, [])]
    end = [
        _snap("pw-a", 13, [*lead_in, (TWO, 7), (TWO, 7), (THREE, 9)]),
        _snap("pw-b", 20, [(TWO, 7), (FOUR, 11), (SEVEN, 2)]),
        _snap("pw-c", 1, [(FIVE, 13), (SIX, 3)]),
    ]
    outcomes = {
        ONE: JobOutcome("pw-a", verified=True),
        TWO: JobOutcome("pw-a", verified=True),  # pw-a attempted it twice, pw-b lost it
        THREE: JobOutcome("pw-a", verified=False),  # a wrong result, or not checked in time
        FOUR: JobOutcome(None, claim_pending=True),  # its job_result still in the mempool
        SIX: JobOutcome("pw-c", claimed_before=True),  # a retry of a job claimed already
        SEVEN: JobOutcome(None, block_left=True),  # pw-b's block on it lost a race
    }  # FIVE: node-0 does not know it (a reorg took its post back)
    got = mac_breakdown(start, end, outcomes)
    assert got is not None
    assert got.macs == {
        "useful": 7,
        "duplicate": 7,
        "repeated": 7 + 3,
        "unverified": 9,
        "unclaimed": 11 + 13 + 2,
        "null": 3 + 0 + 1,
        "unattributed": 0,
    }
    mined = sum(e.macs_done - s.macs_done for s, e in zip(start, end, strict=True))
    assert sum(got.macs.values()) == mined
    assert got.useful_jobs == [TWO]
    assert got.unclaimed_jobs == {"claim_pending": 1, "block_left": 1, "tip_job": 0, "no_claim": 1}


def test_work_of_the_window_claimed_after_it_is_useful_and_the_lead_ins_is_not():
    """The edges of the window: a job attempted before it opened and claimed in it adds
    nothing (its MACs were mined before); one attempted at its close whose claim lands
    after it counts in full once the client verified it."""
    start = [_snap("pw-a", 0, [(ONE, 5)])]
    end = [_snap("pw-a", 0, [(ONE, 5), (TWO, 5)])]
    verified_later = {
        ONE: JobOutcome("pw-a", verified=True),
        TWO: JobOutcome("pw-a", verified=True),
    }
    got = mac_breakdown(start, end, verified_later)
    assert got is not None and got.macs["useful"] == 5 and got.useful_jobs == [TWO]
    not_yet = mac_breakdown(start, end, {ONE: verified_later[ONE]})
    assert not_yet is not None and not_yet.macs["useful"] == 0
    assert not_yet.macs["unclaimed"] == 5


def test_mining_the_attempt_lists_miss_is_unattributed_not_lost():
    """A list that dropped attempts (more than a node keeps): the MACs still add up."""
    start = [_snap("pw-a", 0, [])]
    end = [_snap("pw-a", 0, [(ONE, 5)])]
    end[0].macs_done += 8  # mined, but no longer listed
    got = mac_breakdown(start, end, {ONE: JobOutcome("pw-a", verified=True)})
    assert got is not None and got.macs["unattributed"] == 8
    assert sum(got.macs.values()) == end[0].macs_done


def test_miners_that_do_not_report_attempts_give_no_breakdown():
    old = _snapshot("pw-a", None)
    assert (old.attempts, old.macs_null, old.macs_jobs) == (None, None, None)
    new = _snapshot("pw-a", [[ONE, 3]])
    assert new.attempts == Counter({(ONE, 3): 1}) and new.macs_null == 0
    assert mac_breakdown([old], [old], {}) is None
    assert window_attempters([old], [old]) == {}


def test_outcomes_come_from_node0s_chain_and_the_clients_checks():
    """node-0's claimant and pending claim; the client's verdict; a job node-0 lost in
    a reorg (unknown) or that the bench did not post is left out (nobody's claim holds)."""
    jobs = {bytes.fromhex(j): PostedJob(TINY, 0.0) for j in (ONE, TWO, SIX)}
    jobs[bytes.fromhex(ONE)].verified = 1.0
    node0 = FakeNode({}, {ONE: "pw-a", TWO: None, OTHERS: "pw-b"}, pending={TWO})
    attempted = [bytes.fromhex(j) for j in (ONE, TWO, SIX, OTHERS)]
    assert job_outcomes(node0, jobs, attempted) == {  # type: ignore[arg-type]
        ONE: JobOutcome("pw-a", verified=True),
        TWO: JobOutcome(None, claim_pending=True),
    }
    two = bytes.fromhex(TWO)
    left = job_outcomes(node0, jobs, attempted, blocks_left={two}, tip_job=two)  # type: ignore[arg-type]
    assert left[TWO] == JobOutcome(None, claim_pending=True, block_left=True, tip_job=True)


class ChainNode:
    """node-0 as latency_steps reads it: blocks first seen at wall-clock times."""

    def __init__(self, blocks: list[tuple[int, float, list[str]]], claims: dict[str, int]):
        self.blocks = blocks
        self.claims = claims

    def call(self, method: str, *params: Any) -> Any:
        if method == "getinfo":
            return {"height": self.blocks[-1][0]}
        if method == "getblocktimes":
            rows = [{"height": h, "first_seen": t, "txids": txids} for h, t, txids in self.blocks]
            return {"active": rows[-params[0] :]}
        assert method == "getjob"
        return {"claim_height": self.claims[params[0]]}


def test_a_streamed_jobs_latency_is_split_into_the_steps_it_waited_on():
    wall = time.time() - time.monotonic()  # node-0's clock against the bench's
    t = time.monotonic()
    stream = PostedJob(TINY, t, posted=t + 1.0, txid="aa")
    stream.claim_seen, stream.verified = t + 6.5, t + 7.0
    backlog = PostedJob(TINY, t - 9, posted=t - 8, txid="bb", backlog=True)
    backlog.claim_seen, backlog.verified = t + 6.5, t + 7.0
    # A second streamed job whose claim waited five blocks more: the tail's quantile
    # shows where, the median does not move.
    slow = PostedJob(TINY, t, posted=t + 1.0, txid="aa")
    slow.claim_seen, slow.verified = t + 16.5, t + 17.0
    node0 = ChainNode(
        [(10, wall + t - 5, ["bb"]), (11, wall + t + 2.5, ["aa"]), (12, wall + t + 6.0, []),
         (13, wall + t + 16.0, [])],
        {ONE: 12, TWO: 12, THREE: 13},
    )  # fmt: skip
    jobs = {bytes.fromhex(ONE): stream, bytes.fromhex(TWO): backlog}
    tail = step_quantiles(latency_steps(node0, jobs | {bytes.fromhex(THREE): slow}, 10), 0.95)  # type: ignore[arg-type]
    assert tail["mined_and_claimed"] == pytest.approx(13.5, abs=0.01)
    assert tail["post_in_block"] == pytest.approx(1.5, abs=0.01)
    parts = step_quantiles(latency_steps(node0, jobs, start_height=10), 0.5)  # type: ignore[arg-type]
    assert parts == pytest.approx(
        {
            "upload": 1.0,
            "post_in_block": 1.5,
            "mined_and_claimed": 3.5,
            "claim_seen": 0.5,
            "fetch_verify": 0.5,
        },
        abs=0.01,
    )
    assert step_quantiles(latency_steps(node0, {}, 10), 0.5) == dict.fromkeys(parts)  # type: ignore[arg-type]


def test_a_streamed_job_seen_claimed_by_a_pending_job_result_skips_the_claim_seen_step():
    """Its claim is taken as sent when the client saw it pending: mined_and_claimed runs
    from the post's block to that sight, and no claim_seen step is counted for it."""
    wall = time.time() - time.monotonic()
    t = time.monotonic()
    pending = PostedJob(TINY, t, posted=t + 1.0, txid="aa")
    pending.claim_seen, pending.verified, pending.claim_pending = t + 4.0, t + 4.5, True
    node0 = ChainNode([(10, wall + t - 5, []), (11, wall + t + 2.5, ["aa"])], {ONE: 0})
    parts = step_quantiles(latency_steps(node0, {bytes.fromhex(ONE): pending}, 10), 0.5)  # type: ignore[arg-type]
    assert parts.pop("claim_seen") is None
    assert parts == pytest.approx(
        {"upload": 1.0, "post_in_block": 1.5, "mined_and_claimed": 1.5, "fetch_verify": 0.5},
        abs=0.01,
    )


def test_a_claim_sent_before_node0_had_the_posts_block_counts_no_negative_step():
    """A miner attempted the job while its post waited and its job_result was seen
    pending before node-0 had the post's block: that step counts 0, and the steps
    still add up to the job's latency."""
    wall = time.time() - time.monotonic()
    t = time.monotonic()
    early = PostedJob(TINY, t, posted=t + 1.0, txid="aa")
    early.claim_seen, early.verified, early.claim_pending = t + 2.0, t + 4.5, True
    node0 = ChainNode([(10, wall + t - 5, []), (11, wall + t + 3.0, ["aa"])], {ONE: 0})
    steps = latency_steps(node0, {bytes.fromhex(ONE): early}, 10)  # type: ignore[arg-type]
    parts = step_quantiles(steps, 0.5)
    assert parts.pop("claim_seen") is None
    assert parts == pytest.approx(
        {"upload": 1.0, "post_in_block": 2.0, "mined_and_claimed": 0.0, "fetch_verify": 1.5},
        abs=0.01,
    )
    assert sum(v[0] for v in steps.values() if v) == pytest.approx(4.5, abs=0.01)


class BatchNode:
    """node-0 answering a batch of getjob: each job's record, or "unknown job"."""

    def __init__(self, records: dict[str, dict[str, Any]]) -> None:
        self.records = records
        self.rpc = self
        self.asked: list[str] = []

    def call_many(self, method: str, params: list[list[Any]]) -> list[Any]:
        assert method == "getjob"
        self.asked += [p[0] for p in params]
        return [self.records.get(p[0], RpcCallError(-32002, f"unknown job {p[0]}")) for p in params]


def test_the_streams_claims_are_seen_pending_or_mined_and_the_backlogs_left_alone():
    def job(backlog: bool = False) -> PostedJob:
        return PostedJob(TINY, 0.0, backlog=backlog)

    poster = _Poster([], (1, 1, 1), 10)
    poster.jobs = {bytes.fromhex(j): job() for j in (ONE, TWO, THREE)}
    poster.jobs[bytes.fromhex(FOUR)] = job(backlog=True)
    node0 = BatchNode(
        {
            ONE: {
                "status": "open",
                "pending_claim": "ab",
                "pending_claimant": "pw-a",
                "pending_claim_kind": "tx",
            },
            TWO: {"status": "mined", "claimant": "pw-b", "claim_kind": "block"},
            FOUR: {
                "status": "open",
                "pending_claim": "cd",
                "pending_claimant": "pw-a",
                "pending_claim_kind": "block",
            },
        }
    )  # THREE: its post is not in a block yet
    _see_stream_claims(node0, poster)  # type: ignore[arg-type]
    one, two, three, four = (poster.jobs[bytes.fromhex(j)] for j in (ONE, TWO, THREE, FOUR))
    assert (one.claimant, one.claim_kind, one.claim_pending) == ("pw-a", "tx", True)
    assert (two.claimant, two.claim_kind, two.claim_pending) == ("pw-b", "block", False)
    assert one.claim_seen is not None and two.claim_seen is not None
    assert three.claim_seen is None and four.claim_seen is None
    assert FOUR not in node0.asked
    node0.asked.clear()
    _see_stream_claims(node0, poster)  # type: ignore[arg-type]
    assert node0.asked == [THREE]  # only the jobs still waiting are looked up


class FakeClient:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.asked = 0
        self.operands: tuple[np.ndarray, np.ndarray] | None = None

    def result(self, job_id: bytes, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.asked += 1
        self.operands = (a, b)
        if self.error is not None:
            raise self.error
        return a @ b


def test_a_result_the_claimants_node_lost_in_a_reorg_is_fetched_through_node0():
    """The claimant's node said "mined", then (a reorg between the two calls) "open":
    the client asks node-0 instead of giving up on the job."""
    job = PostedJob(TINY, time.monotonic())
    near = FakeClient(RpcCallError(-1, "job 11 has no result yet: it is open"))
    far = FakeClient(None)
    took = _verify(near, far, bytes.fromhex(ONE), job)  # type: ignore[arg-type]
    assert took is not None and job.verified is not None
    assert (near.asked, far.asked) == (1, 1)
    with pytest.raises(ClaimUndone):
        _verify(near, near, bytes.fromhex(ONE), job)  # type: ignore[arg-type]


def test_a_result_the_network_cannot_serve_yet_is_fetched_again_later_not_a_crash():
    """C could not be had (the claimant's node slow to hand it over: ResultWithheld):
    the bench counts it, waits WITHHELD_RETRY_S and fetches it again, as a client would;
    a stalled run ended the whole bench with that exception."""
    job = PostedJob(TINY, time.monotonic())
    withheld = FakeClient(ResultWithheld("the result is not available: no answer in 10s"))
    before = time.monotonic()
    with pytest.raises(ResultLate, match="no answer in 10s"):
        _verify(withheld, withheld, bytes.fromhex(ONE), job)  # type: ignore[arg-type]
    assert job.withheld == 1 and job.retry_at >= before + 0.5 and job.verified is None
    served = FakeClient(None)
    took = _verify(served, served, bytes.fromhex(ONE), job)  # type: ignore[arg-type]
    assert took is not None and job.verified is not None and not job.wrong


class QueueNode:
    """A testnet node as ``_until_every_miner_joins`` reads it: its getmininginfo
    ``macs_jobs`` and node-0's open jobs and mempool."""

    def __init__(self, index: int, market: QueueMarket) -> None:
        self.index = index
        self.market = market

    def call(self, method: str, *args: Any) -> Any:
        if method == "getmininginfo":
            return {"macs_jobs": self.market.macs_jobs[self.index]}
        if method == "getmarket":
            return {"jobs": {"open": self.market.open}}
        assert method == "getinfo"
        return {"mempool": self.market.mempool}


class QueueMarket:
    """Jobs that the miners ``able`` mine as soon as they are posted."""

    def __init__(self, nodes: int, able: set[int], open_jobs: int = 0) -> None:
        self.macs_jobs = [0] * nodes
        self.able = able
        self.open = open_jobs
        self.mempool = 0
        self.posted: list[int] = []

    def post_backlog(self, count: int) -> None:
        self.posted.append(count)
        for i in self.able:
            self.macs_jobs[i] += 1


def test_a_miner_that_found_the_backlog_taken_gets_more_jobs_posted(monkeypatch):
    monkeypatch.setattr("benchmarks.market.TOPUP_WAIT_S", 0.1)
    market = QueueMarket(3, able={0, 1, 2})
    market.macs_jobs[:2] = [5, 4]  # node 2's downloads came late: the others took it all
    said: list[str] = []
    nodes = [QueueNode(i, market) for i in range(3)]
    posted = _until_every_miner_joins(nodes, market, 5, said.append)  # type: ignore[arg-type]
    assert market.posted == [3] and posted == 3
    assert market.macs_jobs[2] == 1
    assert any("node(s) [2]" in line for line in said)


def test_no_job_is_added_while_the_queue_holds_any_and_a_miner_that_never_joins_is_named(
    monkeypatch,
):
    monkeypatch.setattr("benchmarks.market.TOPUP_WAIT_S", 0.1)
    market = QueueMarket(3, able={0, 1}, open_jobs=2)
    market.macs_jobs[:2] = [5, 4]
    nodes = [QueueNode(i, market) for i in range(3)]
    with pytest.raises(RuntimeError, match=r"node\(s\) \[2\] mined no posted job"):
        _until_every_miner_joins(nodes, market, 1.0, lambda _: None)  # type: ignore[arg-type]
    assert market.posted == []
    market.open, market.mempool = 0, 1  # a post waiting for its block is queued work too
    with pytest.raises(RuntimeError):
        _until_every_miner_joins(nodes, market, 1.0, lambda _: None)  # type: ignore[arg-type]
    assert market.posted == []
    market.mempool = 0  # the queue is empty: jobs come, but node 2 never mines one
    with pytest.raises(RuntimeError) as failed:
        _until_every_miner_joins(nodes, market, 1.0, lambda _: None)  # type: ignore[arg-type]
    assert market.posted and set(market.posted) == {3}
    assert f"({sum(market.posted)} jobs posted after the backlog)" in str(failed.value)


@pytest.mark.parametrize("shape", [(64, 128), (3, 5), (1, 1), (257, 33)])
def test_posted_operands_are_int8_uniform_on_the_job_range_and_follow_the_seed(
    shape: tuple[int, int],
) -> None:
    from benchmarks.operands import random_operand, random_operands

    a = random_operand(np.random.default_rng(5), shape)
    assert a.shape == shape and a.dtype == np.int8 and a.flags.c_contiguous
    assert np.array_equal(a, random_operand(np.random.default_rng(5), shape))
    # The whole range of a job's entries and nothing outside it, each value about as
    # often as the others (a 7-bit mask that kept a bit too many or too few fails here).
    big = random_operand(np.random.default_rng(6), (512, 512)).astype(np.int64)
    assert big.min() == -64 and big.max() == 63
    counts = np.bincount(big.ravel() + 64, minlength=128)
    expected = big.size / 128
    chi2 = float(((counts - expected) ** 2 / expected).sum())  # 127 degrees of freedom
    assert counts.size == 128 and chi2 < 200  # p ≈ 1e-4 for a uniform draw
    # Entries are not correlated with their neighbours (the bytes of one raw word).
    x = big.ravel().astype(np.float64)
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 0.01
    # A job's two operands are different draws.
    a2, b2 = random_operands(np.random.default_rng(7), 64, 64, 64)
    assert a2.shape == b2.shape == (64, 64) and not np.array_equal(a2, b2)


def test_a_posted_job_holds_its_seed_and_its_check_gets_the_operands_it_posted():
    """The bench keeps a seed per posted job, not its megabytes (the backlog's operands
    took ~12 GB at the defaults); the check draws the same A and B again."""
    ops = DrawnOperands((3, 1, 4), (32, 64, 16))
    a, b = ops.draw()
    assert a.shape == (32, 64) and b.shape == (64, 16)
    assert all(np.array_equal(x, y) for x, y in zip(ops.draw(), (a, b), strict=True))
    assert not np.array_equal(DrawnOperands((3, 1, 5), ops.shape).draw()[0], a)
    job = PostedJob(ops, time.monotonic())
    assert not any(isinstance(v, np.ndarray) for v in vars(job).values())
    client = FakeClient(None)
    assert _verify(client, client, bytes.fromhex(ONE), job) is not None  # type: ignore[arg-type]
    assert client.operands is not None
    assert np.array_equal(client.operands[0], a) and np.array_equal(client.operands[1], b)
