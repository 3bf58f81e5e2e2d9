"""The miner: PoUW attempts on a worker thread, off the event loop.

The kernels are Numba ``nogil`` functions, so while a product runs the event
loop keeps serving peers and RPC. The thread asks the loop for work before
each attempt: a posted job gets exactly one attempt (every attempt is a
distinct job, PROTOCOL §8), whose result goes back to the loop either as a
block (``submit``, awaited: the next attempt builds on it) or, when no tile
won, as a delivered result to claim by transaction (``deliver``, not awaited:
the next attempt runs while the node stores C, one C in flight at most). An
attempt on a job whose job_post is still in the mempool (``claim_only``) makes
no block, its header's job not being on chain yet (such a block would claim
nothing): even a winning ticket only delivers C. The null job, mined when no
posted job waits, is tried in short bursts of extra-nonces (so a new tip, job or
transactions are picked up within a burst).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from consensus.blocks import BlockHeader
from consensus.params import NetworkParams
from consensus.pow import Job, MinedBlock, ResultCommitment, mine

log = logging.getLogger("pouw.miner")

BURST_SECONDS = 0.5
ATTEMPTS_KEPT = 10_000
"""Posted-job attempts listed by ``getmininginfo`` (the newest)."""


@dataclass
class MiningWork:
    template: BlockHeader
    job: Job
    txs: tuple
    committed: Callable[[np.ndarray], np.ndarray] | None = None  # tests: a wrong C to commit
    claim_only: bool = False
    """The job's post is not in a block yet: the result is claimed by job_result once it
    is, and a winning ticket is not published (a block on a job not on chain would claim
    nothing)."""


@dataclass(frozen=True)
class MinerCounters:
    """A miner's attempt counters at one moment: every attempt is in all of them or none."""

    macs_done: int
    macs_null: int
    macs_jobs: int
    jobs_attempted: int
    attempts_before_post: int
    attempted_jobs: list[tuple[bytes, int]]
    """(job id, MACs) of the newest posted-job attempts (``ATTEMPTS_KEPT``), oldest first."""


class Miner:
    """Owns one mining thread; ``start``/``stop`` from the event loop."""

    def __init__(
        self,
        params: NetworkParams,
        loop: asyncio.AbstractEventLoop,
        get_work: Callable[[], Coroutine[Any, Any, MiningWork]],
        submit: Callable[[MinedBlock, MiningWork], Coroutine[Any, Any, None]],
        deliver: Callable[[MiningWork, bytes, np.ndarray], Coroutine[Any, Any, None]],
        backend: str = "cpu",
        threads: int | None = None,
        nice: int = 0,
    ) -> None:
        self.params = params
        self.loop = loop
        self.get_work = get_work
        self.submit = submit
        self.deliver = deliver
        self.backend = backend
        self.threads = threads
        self.nice = nice
        self._stop = threading.Event()
        self._new_tip = threading.Event()
        self._thread: threading.Thread | None = None
        # The counters below change together, on the miner thread: ``counters`` reads them
        # under this lock, so a reader never sees an attempt in one and not in another.
        self._counting = threading.Lock()
        self.macs_done = 0
        self.macs_null = 0
        self.macs_jobs = 0
        self.jobs_attempted = 0
        self.attempts_before_post = 0
        """Posted-job attempts made while the job's post waited for its block."""
        self.attempted_jobs: deque[tuple[bytes, int]] = deque(maxlen=ATTEMPTS_KEPT)
        """(job id, MACs) of the newest posted-job attempts."""
        self.blocks_found = 0
        self._rate_window: list[tuple[float, int]] = []
        self.last_error: str | None = None
        self._commitment: ResultCommitment | None = None
        """The last posted job's C and root: a job attempted again (its result not
        claimed yet) needs neither recovered a second time (C = A·B whatever the noise)."""

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

    def counters(self) -> MinerCounters:
        """The attempt counters as of one moment (the miner thread updates them)."""
        with self._counting:
            return MinerCounters(
                self.macs_done,
                self.macs_null,
                self.macs_jobs,
                self.jobs_attempted,
                self.attempts_before_post,
                list(self.attempted_jobs),
            )

    def _count(self, macs: int, work: MiningWork) -> None:
        p = self.params
        job_id = None if work.job.null else work.job.spec.job_id(p.rank, p.tile_h, p.tile_w)
        with self._counting:
            self.macs_done += macs
            if job_id is None:
                self.macs_null += macs
            else:
                self.macs_jobs += macs
                self.jobs_attempted += 1
                self.attempts_before_post += work.claim_only
                self.attempted_jobs.append((job_id, macs))
        self._rate_window.append((time.monotonic(), macs))
        if len(self._rate_window) > 10_000:
            del self._rate_window[:5_000]

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
            numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
        # The last result handed to ``deliver``: the kernel goes on with the next job while
        # the node stores C and claims it, but waits for it before handing over another
        # (one C at a time in flight: memory stays bounded if stores fall behind).
        delivering: Future[None] | None = None
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
            try:
                found, commitment = self._attempt(work)
            except Exception as e:
                self.last_error = str(e)
                log.exception("mining failed")
                self._stop.wait(1.0)
                continue
            try:
                if found is not None and not work.claim_only:
                    self.blocks_found += 1
                    # Waited for: the next work must be on the block's tip.
                    outcome = self.submit(found, work)
                    asyncio.run_coroutine_threadsafe(outcome, self.loop).result(60)
                elif commitment.product is not None and commitment.root is not None:
                    last, delivering = delivering, None
                    if last is not None:
                        last.result(60)  # (its failure is logged once, below)
                    outcome = self.deliver(work, commitment.root, commitment.product)
                    delivering = asyncio.run_coroutine_threadsafe(outcome, self.loop)
            except Exception as e:
                if self._stop.is_set():
                    return
                log.warning("handing a mining result to the node failed: %s", e)

    def _attempt(self, work: MiningWork) -> tuple[MinedBlock | None, ResultCommitment]:
        """One attempt on a posted job; a burst of attempts on the null job."""
        # A random start: a template reused for another attempt never repeats work.
        first_nonce = secrets.randbits(63)
        last = self._commitment
        if work.job.null or last is None or last.spec != work.job.spec or last.root is None:
            commitment = ResultCommitment(work.job, work.committed)
        else:
            commitment = last
        if not work.job.null:
            self._commitment = commitment
        if work.job.null:
            stop: object = _DeadlineEvent(
                time.monotonic() + BURST_SECONDS, self._stop, self._new_tip
            )
            max_attempts = None
        else:
            stop, max_attempts = self._stop, 1
        found = mine(
            work.template,
            work.job,
            self.params,
            self.backend,
            stop=stop,  # type: ignore[arg-type]
            first_nonce=first_nonce,
            max_attempts=max_attempts,
            on_attempt=lambda macs: self._count(macs, work),
            commitment=commitment,
        )
        return found, commitment


class _DeadlineEvent:
    """Looks like a threading.Event to ``mine``: set once the burst should end."""

    def __init__(self, deadline: float, *events: threading.Event) -> None:
        self.deadline = deadline
        self.events = events

    def is_set(self) -> bool:
        return time.monotonic() >= self.deadline or any(e.is_set() for e in self.events)
