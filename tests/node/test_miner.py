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

    def attempt(work: MiningWork, interruptible: bool = False) -> tuple[None, SimpleNamespace]:
        seen_in_flight.append(in_flight[0])
        if len(seen_in_flight) == 2:
            next_attempt_started.set()
        if len(seen_in_flight) == 4:
            miner._stop.set()
        return None, SimpleNamespace(
            product=np.zeros((2, 2), np.int32), root=b"r" * 32, leaves=None
        )

    async def deliver(
        work: MiningWork, root: bytes, product: np.ndarray, leaves: bytes | None
    ) -> None:
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


def _interrupting_miner(
    loop, ready_rate: float, events: list[str], delivered: list[str], signal: str = "job_ready"
):
    """A miner whose kernel is faked: an attempt on job "outer" (paying 1 per MAC) hears,
    before its second strip, ``signal`` (a job paying ``ready_rate`` is ready, or another
    miner's post paying that came); ``better_work`` offers job "inner" (paying 2) then.
    ``events`` and ``delivered`` record the order."""
    miner: Miner
    strips_seen: dict[str, bool] = {}

    def work_on(name: str, rate: float) -> MiningWork:
        job = SimpleNamespace(null=False, spec=name, name=name)
        return MiningWork(template=None, job=job, txs=(), rate=rate)  # type: ignore[arg-type]

    async def get_work() -> MiningWork:
        if "start outer" in events:
            miner._stop.set()
        return work_on("outer", 1.0)

    async def better_work(current: MiningWork, refresh: bool) -> MiningWork | None:
        events.append(f"asked above {current.rate:g}" + (", fresh" if refresh else ""))
        return work_on("inner", 2.0) if current.rate < 2.0 else None

    def fake_mine(template, job, params, backend, *, stop, commitment, between_strips, **_):
        strips_seen[job.name] = between_strips is not None
        events.append(f"start {job.name}")
        if job.name == "outer":
            getattr(miner, signal)(ready_rate)  # the market: a job paying that is ready/posted
            for _ in range(3):
                between_strips()
        events.append(f"end {job.name}")
        commitment.product, commitment.root = np.zeros((2, 2), np.int32), job.name.encode()
        return None

    async def deliver(
        work: MiningWork, root: bytes, product: np.ndarray, leaves: bytes | None
    ) -> None:
        delivered.append(root.decode())

    async def submit(*_: object) -> None:
        raise AssertionError("no block is found here")

    miner = Miner(MID, loop, get_work, submit, deliver, better_work=better_work)
    return miner, fake_mine, strips_seen


async def test_a_better_paying_job_ready_mid_attempt_runs_between_its_strips(monkeypatch):
    """A job paying more whose operands arrive while the miner is computing a cheaper
    one does not wait for that attempt's end: the attempt stops after its running strip,
    the better-paying job is attempted whole and its result delivered first, then the
    interrupted attempt goes on and delivers its own. Only one job is asked for."""
    from node import miner as miner_module

    events: list[str] = []
    delivered: list[str] = []
    miner, fake_mine, strips_seen = _interrupting_miner(
        asyncio.get_running_loop(), 2.0, events, delivered
    )
    monkeypatch.setattr(miner_module, "mine", fake_mine)
    miner.start()
    await asyncio.wait_for(asyncio.to_thread(miner._thread.join, 10), 15)
    await miner.stop()
    await asyncio.sleep(0)  # the last delivery's coroutine
    assert events[:5] == ["start outer", "asked above 1", "start inner", "end inner", "end outer"]
    assert events.count("asked above 1") == 1  # asked once per job made ready
    assert delivered[:2] == ["inner", "outer"]
    assert strips_seen == {"outer": True, "inner": False}  # one level deep
    assert miner.counters().interruptions == 1


async def test_a_job_ready_that_pays_no_more_does_not_interrupt(monkeypatch):
    """A job made ready that pays what the running attempt's job pays (or less) waits for
    that attempt's end: the miner does not even ask for it."""
    from node import miner as miner_module

    events: list[str] = []
    delivered: list[str] = []
    miner, fake_mine, _ = _interrupting_miner(asyncio.get_running_loop(), 1.0, events, delivered)
    monkeypatch.setattr(miner_module, "mine", fake_mine)
    miner.start()
    await asyncio.wait_for(asyncio.to_thread(miner._thread.join, 10), 15)
    await miner.stop()
    assert events[:2] == ["start outer", "end outer"]
    assert not any(e.startswith("asked") for e in events)
    assert miner.counters().interruptions == 0


async def test_another_miners_better_paying_post_starts_a_fresh_template_between_strips(
    monkeypatch,
):
    """Another miner's post paying more than the running attempt's job: the attempt's
    template lacks it, and its owner can claim the job only once a block carries it. The
    miner runs its next job between two strips on a template made afresh (``refresh``),
    then goes on with the interrupted attempt; a post paying no more does nothing."""
    from node import miner as miner_module

    for rate, expected in ((2.0, ["start outer", "asked above 1, fresh", "start inner"]),
                           (1.0, ["start outer", "end outer"])):  # fmt: skip
        events: list[str] = []
        delivered: list[str] = []
        miner, fake_mine, _ = _interrupting_miner(
            asyncio.get_running_loop(), rate, events, delivered, "post_arrived"
        )
        monkeypatch.setattr(miner_module, "mine", fake_mine)
        miner.start()
        await asyncio.wait_for(asyncio.to_thread(miner._thread.join, 10), 15)
        await miner.stop()
        assert events[: len(expected)] == expected


async def test_an_ask_for_work_given_up_on_is_cancelled(monkeypatch):
    """When the node takes longer than WORK_TIMEOUT_S to hand out work, the miner asks
    again; the ask it gave up on is cancelled, not left to take a job for nobody later."""
    from node import miner as miner_module

    monkeypatch.setattr(miner_module, "WORK_TIMEOUT_S", 0.2)
    loop = asyncio.get_running_loop()
    asks: list[asyncio.Task[object]] = []
    cancelled = asyncio.Event()

    async def get_work() -> MiningWork:
        asks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await asyncio.Event().wait()  # never answers
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    async def unused(*_: object) -> None:
        raise AssertionError("nothing is mined here")

    miner = Miner(MID, loop, get_work, unused, unused)
    miner.start()
    try:
        await asyncio.wait_for(cancelled.wait(), 10)
    finally:
        await miner.stop()
    assert asks and asks[0].cancelled()
