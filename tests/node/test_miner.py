"""The miner thread hands results to the node without idling the kernel."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import numpy as np

from node.miner import Miner, MiningWork
from tests.support.chainkit import MID


async def test_the_next_job_is_attempted_while_the_last_result_is_stored():
    """Storing and claiming C takes the node a while; the kernel goes on with the next
    job meanwhile, but never runs ahead of more than one result not yet stored."""
    loop = asyncio.get_running_loop()
    next_attempt_started = threading.Event()
    stored = asyncio.Event()
    in_flight = [0]  # results handed over, not stored yet
    seen_in_flight: list[int] = []  # at the start of each attempt
    miner: Miner

    async def get_work() -> MiningWork:
        job = SimpleNamespace(null=False, spec=None)
        return MiningWork(template=None, job=job, txs=())  # type: ignore[arg-type]

    def attempt(work: MiningWork) -> tuple[None, SimpleNamespace]:
        seen_in_flight.append(in_flight[0])
        if len(seen_in_flight) == 2:
            next_attempt_started.set()
        if len(seen_in_flight) == 4:
            miner._stop.set()
        return None, SimpleNamespace(product=np.zeros((2, 2), np.int32), root=b"r" * 32)

    async def deliver(work: MiningWork, root: bytes, product: np.ndarray) -> None:
        in_flight[0] += 1
        # The first store lasts until the kernel has moved on (or 5 s, if it never does).
        await loop.run_in_executor(None, next_attempt_started.wait, 5.0)
        in_flight[0] -= 1
        stored.set()

    async def submit(*_: object) -> None:
        raise AssertionError("no block is found here")

    miner = Miner(MID, loop, get_work, submit, deliver)
    miner._attempt = attempt  # type: ignore[method-assign]
    miner.start()
    await asyncio.wait_for(stored.wait(), 10)
    await miner.stop()
    assert next_attempt_started.is_set(), "the kernel waited for C to be stored"
    assert seen_in_flight[:2] == [0, 1]
    assert max(seen_in_flight) <= 1
