"""The miner: PoUW attempts on a worker thread, off the event loop.

The kernels are Numba ``nogil`` functions, so while a product runs the event
loop keeps serving peers and RPC. The thread asks the loop for a block
template, mines it in short bursts (so a new tip or new transactions are
picked up within a burst), and hands a winning block back to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from consensus.blocks import BlockHeader
from consensus.params import NetworkParams
from consensus.pow import Job, MinedBlock, ResultCommitment, mine

log = logging.getLogger("pouw.miner")

BURST_SECONDS = 0.5


@dataclass
class MiningWork:
    template: BlockHeader
    job: Job
    txs: tuple
    committed: Callable[[np.ndarray], np.ndarray] | None = None  # tests: a wrong C to commit


class Miner:
    """Owns one mining thread; ``start``/``stop`` from the event loop."""

    def __init__(
        self,
        params: NetworkParams,
        loop: asyncio.AbstractEventLoop,
        get_work: Callable[[], Awaitable[MiningWork]],
        submit: Callable[[MinedBlock, MiningWork], Awaitable[None]],
        backend: str = "cpu",
        threads: int | None = None,
        nice: int = 0,
    ) -> None:
        self.params = params
        self.loop = loop
        self.get_work = get_work
        self.submit = submit
        self.backend = backend
        self.threads = threads
        self.nice = nice
        self._stop = threading.Event()
        self._new_tip = threading.Event()
        self._thread: threading.Thread | None = None
        self.macs_done = 0
        self.blocks_found = 0
        self._rate_window: list[tuple[float, int]] = []
        self.last_error: str | None = None
        self._commitment: ResultCommitment | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pouw-miner", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        self._new_tip.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 30)

    def tip_changed(self) -> None:
        """Abandon the current template at the end of the running attempt."""
        self._new_tip.set()

    def hashrate(self) -> float:
        """Multiply-accumulates per second over the last ~10 s."""
        now = time.monotonic()
        window = [(t, n) for t, n in self._rate_window if now - t <= 10.0]
        self._rate_window = window
        if len(window) < 2:
            return 0.0
        span = window[-1][0] - window[0][0]
        return sum(n for _, n in window[1:]) / span if span > 0 else 0.0

    def _count(self, macs: int) -> None:
        self.macs_done += macs
        self._rate_window.append((time.monotonic(), macs))
        if len(self._rate_window) > 10_000:
            del self._rate_window[:5_000]

    def _commitment_for(self, work: MiningWork) -> ResultCommitment:
        """The job's result commitment, kept across bursts: C is recovered once per job."""
        if self._commitment is None or self._commitment.spec != work.job.spec:
            self._commitment = ResultCommitment(work.job, work.committed)
        return self._commitment

    def _run(self) -> None:
        if self.nice:
            # Linux niceness is per thread (and inherited by threads it starts): the
            # node's event loop keeps priority over the miner, which only gets the
            # CPU the node does not need.
            with contextlib.suppress(OSError, AttributeError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        if self.threads:
            import numba

            # Numba's thread count is per calling thread: set it in the miner's own.
            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        while not self._stop.is_set():
            try:
                work = asyncio.run_coroutine_threadsafe(self.get_work(), self.loop).result(30)
            except Exception as e:  # the loop is shutting down, or a template failed
                if self._stop.is_set():
                    return
                self.last_error = str(e)
                log.warning("could not get mining work: %s", e)
                self._stop.wait(1.0)
                continue
            self._new_tip.clear()
            deadline = time.monotonic() + BURST_SECONDS
            stop_burst = _DeadlineEvent(deadline, self._stop, self._new_tip)
            try:
                found = mine(
                    work.template,
                    work.job,
                    self.params,
                    self.backend,
                    stop=stop_burst,  # type: ignore[arg-type]
                    # A random start per burst: a re-used template never repeats work.
                    first_nonce=secrets.randbits(63),
                    on_attempt=self._count,
                    commitment=self._commitment_for(work),
                )
            except Exception as e:
                self.last_error = str(e)
                log.exception("mining failed")
                self._stop.wait(1.0)
                continue
            if found is None:
                continue
            self.blocks_found += 1
            try:
                asyncio.run_coroutine_threadsafe(self.submit(found, work), self.loop).result(60)
            except Exception as e:
                if self._stop.is_set():
                    return
                log.warning("submitting a mined block failed: %s", e)


class _DeadlineEvent:
    """Looks like a threading.Event to ``mine``: set once the burst should end."""

    def __init__(self, deadline: float, *events: threading.Event) -> None:
        self.deadline = deadline
        self.events = events

    def is_set(self) -> bool:
        return time.monotonic() >= self.deadline or any(e.is_set() for e in self.events)
