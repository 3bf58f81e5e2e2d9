"""`pouw bench market`'s accounting of duplicate work, from the miners' getmininginfo:
with the attempt reports of a one-attempt-per-job miner, and without them."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

from benchmarks.market import (
    ClaimUndone,
    MinerSnapshot,
    PostedJob,
    _Poster,
    _see_stream_claims,
    _verify,
    duplicate_macs,
    latency_parts,
)
from node.client.rpc import RpcCallError

ONE = "11" * 32
TWO = "22" * 32
THREE = "44" * 32
FOUR = "55" * 32
OTHERS = "33" * 32  # a job somebody else posted: not ours to account for


class FakeNode:
    def __init__(self, info: dict[str, Any], claimants: dict[str, str | None]) -> None:
        self.info = info
        self.claimants = claimants

    def call(self, method: str, *params: Any) -> Any:
        if method == "getmininginfo":
            return self.info
        assert method == "getjob"
        if params[0] not in self.claimants:
            raise RpcCallError(-32000, f"unknown job {params[0]}")
        claimant = self.claimants[params[0]]
        return {"status": "open"} if claimant is None else {"claimant": claimant}


def _snapshot(address: str, attempts: list[list[Any]] | None) -> MinerSnapshot:
    info: dict[str, Any] = {"miner_address": address, "macs_done": 0}
    if attempts is not None:
        info |= {"attempted_jobs": attempts, "macs_null": 0, "macs_jobs": 0}
    return MinerSnapshot.of(FakeNode(info, {}))  # type: ignore[arg-type]


def test_duplicate_work_is_the_attempts_on_jobs_another_node_claimed_in_the_window():
    jobs = {bytes.fromhex(j): PostedJob(np.zeros(1), np.zeros(1), 0.0) for j in (ONE, TWO)}
    node0 = FakeNode({}, {ONE: "pw-a", TWO: None, OTHERS: "pw-b"})
    before_a = [[ONE, 5]]  # attempted before the window: not counted
    start = [_snapshot("pw-a", before_a), _snapshot("pw-b", [])]
    end = [
        _snapshot("pw-a", [*before_a, [ONE, 7], [TWO, 9]]),  # its own claim; an open job
        _snapshot("pw-b", [[ONE, 100], [ONE, 100], [OTHERS, 50]]),  # lost ONE to pw-a, twice
    ]
    assert duplicate_macs(node0, jobs, start, end) == 200  # type: ignore[arg-type]


def test_miners_that_do_not_report_attempts_give_no_duplicate_figure():
    old = _snapshot("pw-a", None)
    assert (old.attempts, old.macs_null, old.macs_jobs) == (None, None, None)
    new = _snapshot("pw-a", [[ONE, 3]])
    assert new.attempts == Counter({(ONE, 3): 1}) and new.macs_null == 0
    node0 = FakeNode({}, {})
    assert duplicate_macs(node0, {}, [old], [old]) is None  # type: ignore[arg-type]


class ChainNode:
    """node-0 as latency_parts reads it: blocks first seen at wall-clock times."""

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
    stream = PostedJob(np.zeros(1), np.zeros(1), t, posted=t + 1.0, txid="aa")
    stream.claim_seen, stream.verified = t + 6.5, t + 7.0
    backlog = PostedJob(np.zeros(1), np.zeros(1), t - 9, posted=t - 8, txid="bb", backlog=True)
    backlog.claim_seen, backlog.verified = t + 6.5, t + 7.0
    node0 = ChainNode(
        [(10, wall + t - 5, ["bb"]), (11, wall + t + 2.5, ["aa"]), (12, wall + t + 6.0, [])],
        {ONE: 12, TWO: 12},
    )
    jobs = {bytes.fromhex(ONE): stream, bytes.fromhex(TWO): backlog}
    parts = latency_parts(node0, jobs, start_height=10)  # type: ignore[arg-type]
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
    assert latency_parts(node0, {}, 10) == dict.fromkeys(parts)  # type: ignore[arg-type]


def test_a_streamed_job_seen_claimed_by_a_pending_job_result_skips_the_claim_seen_step():
    """Its claim is taken as sent when the client saw it pending: mined_and_claimed runs
    from the post's block to that sight, and no claim_seen step is counted for it."""
    wall = time.time() - time.monotonic()
    t = time.monotonic()
    pending = PostedJob(np.zeros(1), np.zeros(1), t, posted=t + 1.0, txid="aa")
    pending.claim_seen, pending.verified, pending.claim_pending = t + 4.0, t + 4.5, True
    node0 = ChainNode([(10, wall + t - 5, []), (11, wall + t + 2.5, ["aa"])], {ONE: 0})
    parts = latency_parts(node0, {bytes.fromhex(ONE): pending}, 10)  # type: ignore[arg-type]
    assert parts.pop("claim_seen") is None
    assert parts == pytest.approx(
        {"upload": 1.0, "post_in_block": 1.5, "mined_and_claimed": 1.5, "fetch_verify": 0.5},
        abs=0.01,
    )


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
        return PostedJob(np.zeros(1), np.zeros(1), 0.0, backlog=backlog)

    poster = _Poster([], (1, 1, 1), 10)
    poster.jobs = {bytes.fromhex(j): job() for j in (ONE, TWO, THREE)}
    poster.jobs[bytes.fromhex(FOUR)] = job(backlog=True)
    node0 = BatchNode(
        {
            ONE: {"status": "open", "pending_claim": "ab", "pending_claimant": "pw-a"},
            TWO: {"status": "mined", "claimant": "pw-b", "claim_kind": "block"},
            FOUR: {"status": "open", "pending_claim": "cd", "pending_claimant": "pw-a"},
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

    def result(self, job_id: bytes, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.asked += 1
        if self.error is not None:
            raise self.error
        return a @ b


def test_a_result_the_claimants_node_lost_in_a_reorg_is_fetched_through_node0():
    """The claimant's node said "mined", then (a reorg between the two calls) "open":
    the client asks node-0 instead of giving up on the job."""
    job = PostedJob(np.ones((1, 1)), np.ones((1, 1)), time.monotonic())
    near = FakeClient(RpcCallError(-1, "job 11 has no result yet: it is open"))
    far = FakeClient(None)
    took = _verify(near, far, bytes.fromhex(ONE), job)  # type: ignore[arg-type]
    assert took is not None and job.verified is not None
    assert (near.asked, far.asked) == (1, 1)
    with pytest.raises(ClaimUndone):
        _verify(near, near, bytes.fromhex(ONE), job)  # type: ignore[arg-type]


def test_work_on_a_job_that_node0_lost_in_a_reorg_is_not_counted_duplicate():
    """A miner attempted a job whose post is on a branch node-0 has left (the window
    closed on a fork): node-0 says "unknown job", which ends nothing."""
    jobs = {bytes.fromhex(ONE): PostedJob(np.zeros(1), np.zeros(1), 0.0)}
    node0 = FakeNode({}, {})
    start = [_snapshot("pw-a", [])]
    end = [_snapshot("pw-a", [[ONE, 7]])]
    assert duplicate_macs(node0, jobs, start, end) == 0  # type: ignore[arg-type]
