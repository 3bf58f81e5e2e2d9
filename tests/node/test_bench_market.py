"""`pouw bench market`'s accounting of duplicate work, from the miners' getmininginfo:
with the attempt reports of a one-attempt-per-job miner, and without them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from benchmarks.market import MinerSnapshot, PostedJob, duplicate_macs

ONE = "11" * 32
TWO = "22" * 32
OTHERS = "33" * 32  # a job somebody else posted: not ours to account for


class FakeNode:
    def __init__(self, info: dict[str, Any], claimants: dict[str, str | None]) -> None:
        self.info = info
        self.claimants = claimants

    def call(self, method: str, *params: Any) -> Any:
        if method == "getmininginfo":
            return self.info
        assert method == "getjob"
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
