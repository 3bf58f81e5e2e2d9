"""The miner: PoUW attempts on a worker thread, off the event loop.

The kernels are Numba ``nogil`` functions, so while a product runs the event
loop keeps serving peers and RPC. The thread asks the loop for work before
each attempt: a posted job gets exactly one attempt (every attempt is a
distinct job, PROTOCOL §8), whose result goes back to the loop either as a
block (``submit``, awaited: the next attempt builds on it) or, when no tile
won, as a delivered result to claim by transaction (``deliver``, not awaited:
the next attempt runs while the node stores C, one C in flight at most). An
attempt on a job whose job_post is neither on chain nor in its template
(``claim_only``) makes no block (it would claim nothing): even a winning ticket
only delivers C. An attempt on a posted job runs by row strips; between them, a
job paying more that became ready (``job_ready``) is attempted first
(``better_work``), so it waits a strip, not a whole attempt. The null job, mined
when no posted job waits, is tried in short bursts of extra-nonces (so a new
tip, job or transactions are picked up within a burst); so is a posted job whose
result only a block can deliver (``MiningWork.repeat``: the node has no key to claim
it by transaction). A posted job's C and root are computed once and kept for its next
attempts (``_commitment_for``).

With ``--devices`` (CUDA) a ``MinerPool`` runs one such miner per GPU, each on its own
thread, which selects its GPU as it starts (numba-cuda's current context is per
thread, so every kernel of that thread runs there), and each asking for its own work
(``WorkSource.share``: a posted job one GPU attempts is not handed to another).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from consensus.blocks import BlockHeader, JobSpec
from consensus.params import NetworkParams
from consensus.pow import Job, MinedBlock, ResultCommitment, mine

log = logging.getLogger("pouw.miner")

BURST_SECONDS = 0.5
WORK_TIMEOUT_S = 30
"""How long the miner thread waits for the node to hand it work before asking again."""
ATTEMPTS_KEPT = 10_000
"""Posted-job attempts listed by ``getmininginfo`` (the newest)."""
RESULTS_KEPT_BYTES = 64 << 20
"""C of the newest posted jobs the miner keeps for their next attempts, in bytes at most
(four of the mainnet's minimum job; the newest is kept whatever its size)."""


@dataclass
class MiningWork:
    template: BlockHeader
    job: Job
    txs: tuple
    committed: Callable[[np.ndarray], np.ndarray] | None = None  # tests: a wrong C to commit
    post_pending: bool = False
    """The job's post is still in the mempool, not in a block yet."""
    claim_only: bool = False
    """The job's post is neither in a block yet nor in ``txs``: the result is claimed by
    job_result once it is, and a winning ticket is not published (the block would claim
    nothing). With the post in ``txs`` a winning ticket makes a block that posts the job
    and claims it."""
    rate: float = 0.0
    """What the job pays per MAC (0: the null job): a job ready that pays more interrupts
    an attempt on this one between its row strips."""
    repeat: bool = False
    """Attempt the posted job in a burst of extra-nonces, as the null job, not once: only a
    block that it wins delivers its result (the node has no key to claim it by
    transaction), so every further attempt is another chance at that block, and costs
    what a null-job attempt does (C is recovered and hashed once, ``_commitment_for``)."""


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
    interruptions: int = 0
    """Attempts that a better-paying job ran inside, between their strips."""


def visible_gpu_count() -> int:
    """The CUDA GPUs this process sees (CUDA_VISIBLE_DEVICES applies), numbered 0 on as
    numba-cuda numbers them; 0 without a driver, a GPU or the 'cuda' extra, and under the
    CUDA simulator (whose one fake GPU mines nothing). Never raises."""
    from kernels.backends import cuda_available

    try:
        if not cuda_available():
            return 0
        from numba import cuda

        return len(cuda.gpus)
    except Exception:  # a driver that fails to initialise: no GPU to mine on
        return 0


class Miner:
    """Owns one mining thread; ``start``/``stop`` from the event loop."""

    def __init__(
        self,
        params: NetworkParams,
        loop: asyncio.AbstractEventLoop,
        get_work: Callable[[], Coroutine[Any, Any, MiningWork]],
        submit: Callable[[MinedBlock, MiningWork], Coroutine[Any, Any, None]],
        deliver: Callable[[MiningWork, bytes, np.ndarray, bytes | None], Coroutine[Any, Any, None]],
        backend: str = "cpu",
        threads: int | None = None,
        nice: int = 0,
        better_work: Callable[[MiningWork, bool], Coroutine[Any, Any, MiningWork | None]]
        | None = None,
        device: int | None = None,
    ) -> None:
        """``better_work(current, refresh)``: asked, between the row strips of an attempt
        on a posted job, once a job paying more is ready (``job_ready``), for work on such
        a job, or, with ``refresh`` (a post paying more came: ``post_arrived``), else for
        the next job on a template made afresh (None: no such work); the attempt waits
        while it runs. ``device``: the GPU the thread selects as it starts, if the backend
        is CUDA (None: the thread's current device, GPU 0)."""
        self.params = params
        self.loop = loop
        self.get_work = get_work
        self.submit = submit
        self.deliver = deliver
        self.better_work = better_work
        self.backend = backend
        self.threads = threads
        self.nice = nice
        self.device = device
        self._stop = threading.Event()
        self._new_tip = threading.Event()
        self._ready_rate = 0.0
        """The best pay per MAC of the jobs made ready since the last look (``job_ready``)."""
        self._post_rate = 0.0
        """The best pay per MAC of the others' posts come since the last look
        (``post_arrived``)."""
        self._delivering: Future[None] | None = None
        """The last result handed to ``deliver``: the kernel goes on with the next job while
        the node stores C and claims it, but waits for it before handing over another (one C
        at a time in flight: memory stays bounded if stores fall behind)."""
        self.interruptions = 0
        """Attempts interrupted by a better-paying job (run between their strips)."""
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
        self._commitments: OrderedDict[JobSpec, ResultCommitment] = OrderedDict()
        """The newest posted jobs' C and root (``RESULTS_KEPT_BYTES`` of C at most, the
        newest always): a job attempted again (its result not claimed yet: a node without
        the miner key's retries until a block of its wins it, often alternating between
        open jobs) needs neither recovered nor hashed a second time (C = A·B whatever the
        noise). Recovery and the row root cost twice a devnet attempt's product."""

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        name = "pouw-miner" if self.device is None else f"pouw-miner-gpu{self.device}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
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

    def job_ready(self, rate: float) -> None:
        """A job's operands are ready, paying ``rate`` per MAC: the null job's burst ends,
        and a running attempt on a job paying less asks for it between its strips."""
        self._ready_rate = max(self._ready_rate, rate)
        self._new_tip.set()

    def post_arrived(self, rate: float) -> None:
        """Another miner's job_post paying ``rate`` per MAC, more than every open job,
        entered the mempool: the running attempt's template lacks it, and the job's owner
        can claim it only once a block carries it. The null job's burst ends, and a
        running attempt on a job paying less runs the next job between its strips, on a
        template that carries the post (``better_work(…, refresh=True)``), then goes on."""
        self._post_rate = max(self._post_rate, rate)
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
                self.interruptions,
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
                self.attempts_before_post += work.post_pending
                self.attempted_jobs.append((job_id, macs))
        self._rate_window.append((time.monotonic(), macs))
        if len(self._rate_window) > 10_000:
            del self._rate_window[:5_000]

    def _select_device(self) -> bool:
        """Make ``device`` the current CUDA device of this thread (each thread has its own
        current context in numba-cuda: every kernel the thread runs then runs on it);
        False if it cannot be selected (the thread then mines nothing)."""
        if self.device is None:
            return True
        try:
            from kernels.backends import get_backend

            if get_backend(self.backend).name != "cuda":
                return True  # the CPU backend runs on no GPU
            from numba import cuda

            cuda.select_device(self.device)
        except Exception as e:
            self.last_error = f"GPU {self.device}: {e or type(e).__name__}"
            log.error("mining on GPU %d failed: it could not be selected: %s", self.device, e)
            return False
        log.info("mining on GPU %d", self.device)
        return True

    def _run(self) -> None:
        if not self._select_device():
            return
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
        while not self._stop.is_set():
            asked: concurrent.futures.Future[MiningWork] | None = None
            try:
                asked = asyncio.run_coroutine_threadsafe(self.get_work(), self.loop)
                work = asked.result(WORK_TIMEOUT_S)
            except Exception as e:  # the loop is shutting down, or a template failed
                if self._stop.is_set():
                    return
                self.last_error = str(e) or type(e).__name__
                if isinstance(e, TimeoutError):  # a first start's compile holds the kernels
                    # Given up on: cancelled, so that it cannot take a job later for nobody.
                    if asked is not None:
                        asked.cancel()
                    log.warning("no mining work after %d s; asking again", WORK_TIMEOUT_S)
                else:
                    log.warning("could not get mining work: %s", self.last_error)
                self._stop.wait(1.0)
                continue
            self._new_tip.clear()
            try:
                found, commitment = self._attempt(work, interruptible=True)
            except Exception as e:
                self.last_error = str(e)
                log.exception("mining failed")
                self._stop.wait(1.0)
                continue
            self._hand_over(work, found, commitment)

    def _hand_over(
        self, work: MiningWork, found: MinedBlock | None, commitment: ResultCommitment
    ) -> None:
        """An attempt's outcome to the node: a block (waited for: the next work must be on
        its tip), else a posted job's result to deliver (not waited for)."""
        try:
            if found is not None and not work.claim_only:
                self.blocks_found += 1
                outcome = self.submit(found, work)
                asyncio.run_coroutine_threadsafe(outcome, self.loop).result(60)
            elif commitment.product is not None and commitment.root is not None:
                last, self._delivering = self._delivering, None
                if last is not None:
                    last.result(60)  # (its failure is logged once, below)
                outcome = self.deliver(work, commitment.root, commitment.product, commitment.leaves)
                self._delivering = asyncio.run_coroutine_threadsafe(outcome, self.loop)
        except Exception as e:
            if not self._stop.is_set():
                log.warning("handing a mining result to the node failed: %s", e)

    def _between_strips(self, work: MiningWork) -> None:
        """Between two strips of an attempt on ``work``: if a job paying more became
        ready, attempt it now (whole, not interruptible) and hand its outcome over; if a
        post paying more came, likewise the next job, on a template that carries it. The
        attempt on ``work`` then goes on. Its template may be stale by then: a winning
        ticket of it makes a stale block, whose C is delivered all the same."""
        ready, posted = self._ready_rate > work.rate, self._post_rate > work.rate
        if self.better_work is None or not (ready or posted) or self._stop.is_set():
            return
        self._ready_rate = self._post_rate = 0.0
        future: concurrent.futures.Future[MiningWork | None] | None = None
        try:
            future = asyncio.run_coroutine_threadsafe(self.better_work(work, posted), self.loop)
            better = future.result(WORK_TIMEOUT_S)
        except Exception as e:
            if future is not None:
                future.cancel()  # (it cannot take a job later for nobody)
            log.warning("could not get better-paying work: %s", e)
            return
        if better is None:
            return
        with self._counting:
            self.interruptions += 1
        try:
            found, commitment = self._attempt(better, interruptible=False)
        except Exception as e:  # that job's failure is not this attempt's
            self.last_error = str(e)
            log.exception("mining a better-paying job failed")
            return
        self._hand_over(better, found, commitment)

    def _attempt(
        self, work: MiningWork, interruptible: bool = False
    ) -> tuple[MinedBlock | None, ResultCommitment]:
        """One attempt on a posted job (``interruptible``: by a better-paying one, between
        its strips); a burst of attempts on the null job or a job to ``repeat`` (a job
        ready, a post paying more or a new tip ends it after the running attempt)."""
        # A random start: a template reused for another attempt never repeats work.
        first_nonce = secrets.randbits(63)
        commitment = self._commitment_for(work)
        burst = work.job.null or work.repeat
        if burst:
            stop: object = _DeadlineEvent(
                time.monotonic() + BURST_SECONDS, self._stop, self._new_tip
            )
            max_attempts = None
        else:
            stop, max_attempts = self._stop, 1
        between = None
        if interruptible and not burst and self.better_work is not None:
            between = functools.partial(self._between_strips, work)
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
            between_strips=between,
        )
        return found, commitment

    def _commitment_for(self, work: MiningWork) -> ResultCommitment:
        """The result commitment an attempt on ``work`` uses: a posted job's kept one if C
        is known already (an attempt that ran to its tickets), else a new one, kept."""
        if work.job.null:
            return ResultCommitment(work.job)
        kept = self._commitments
        spec = work.job.spec
        commitment = kept.get(spec)
        if commitment is None or commitment.root is None:
            commitment = ResultCommitment(work.job, work.committed)
        kept[spec] = commitment
        kept.move_to_end(spec)
        held = sum(c.product.nbytes for c in kept.values() if c.product is not None)
        while len(kept) > 1 and held > RESULTS_KEPT_BYTES:
            _, dropped = kept.popitem(last=False)
            held -= 0 if dropped.product is None else dropped.product.nbytes
        return commitment


@dataclass(frozen=True)
class DeviceFigures:
    """One GPU's miner's figures (``getmininginfo``'s ``devices``)."""

    device: int | None
    mining: bool
    hashrate_macs: float
    blocks_found: int
    counters: MinerCounters
    last_error: str | None


class MinerPool:
    """One ``Miner`` per GPU (``--devices``), each on its own thread and GPU, each with
    its own stream of work; to the node it is one miner: ``start``, ``stop``, and the
    notifications (a new tip, a job ready, a post arrived) reach them all, and its
    figures are their sums (``device_figures``: each one's)."""

    def __init__(self, miners: Sequence[Miner]) -> None:
        if not miners:
            raise ValueError("a miner pool needs a miner")
        self.miners = tuple(miners)

    @property
    def devices(self) -> list[int | None]:
        return [m.device for m in self.miners]

    @property
    def running(self) -> bool:
        return any(m.running for m in self.miners)

    def start(self) -> None:
        for m in self.miners:
            m.start()

    async def stop(self) -> None:
        await asyncio.gather(*(m.stop() for m in self.miners))

    def tip_changed(self) -> None:
        for m in self.miners:
            m.tip_changed()

    def job_ready(self, rate: float) -> None:
        for m in self.miners:
            m.job_ready(rate)

    def post_arrived(self, rate: float) -> None:
        for m in self.miners:
            m.post_arrived(rate)

    @property
    def blocks_found(self) -> int:
        return sum(m.blocks_found for m in self.miners)

    @property
    def last_error(self) -> str | None:
        return next((m.last_error for m in self.miners if m.last_error), None)

    def hashrate(self) -> float:
        return sum(m.hashrate() for m in self.miners)

    def counters(self) -> MinerCounters:
        """The miners' counters added up (each one's read as of one moment);
        ``attempted_jobs`` lists each miner's newest in turn, in device order."""
        each = [m.counters() for m in self.miners]
        return MinerCounters(
            sum(c.macs_done for c in each),
            sum(c.macs_null for c in each),
            sum(c.macs_jobs for c in each),
            sum(c.jobs_attempted for c in each),
            sum(c.attempts_before_post for c in each),
            [attempt for c in each for attempt in c.attempted_jobs],
            sum(c.interruptions for c in each),
        )

    def device_figures(self) -> list[DeviceFigures]:
        return [
            DeviceFigures(
                m.device, m.running, m.hashrate(), m.blocks_found, m.counters(), m.last_error
            )
            for m in self.miners
        ]


class _DeadlineEvent:
    """Looks like a threading.Event to ``mine``: set once the burst should end."""

    def __init__(self, deadline: float, *events: threading.Event) -> None:
        self.deadline = deadline
        self.events = events

    def is_set(self) -> bool:
        return time.monotonic() >= self.deadline or any(e.is_set() for e in self.events)
