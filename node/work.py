"""What the miner works on next: one posted job per attempt, or the null job, on
block templates kept fresh and cheap to refresh.

The miner thread asks for work before every attempt on a posted job and at the
start of every burst (half a second of attempts) on the null job. A template
is reused across jobs while the tip and the mempool stay the same (the job is
a header field that the state root does not depend on); when transactions
arrive it is refreshed at most every ``TEMPLATE_REFRESH_S`` (half a block
interval at faster blocks) or ``TEMPLATE_COST_RATIO`` times the last build of
the same kind, whichever is longer. A build runs in a thread on a fork of the
tip's state, so the event loop (peers, RPC, block relay) goes on while it runs; only
the fee-ordered selection of candidates stays on the loop. On the same tip a refresh
grows the last template
(``consensus.template``): it applies only the transactions admitted since, so
its pace is set by the last such growth, not by the full build a new tip costs
(timed by that, a refresh would wait past the next block and a new job or
claim would miss a block or two).

Several miners (``--devices``: one per GPU) share one source, each through a
``WorkShare`` of its own: the same work, less the posted jobs the others are
attempting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import TYPE_CHECKING

import numpy as np

from consensus.blocks import NULL_POSTER, Block, BlockHeader, JobSpec
from consensus.pow import Job, MinedBlock, check_job_shape, null_job
from consensus.template import TemplateBody, build_template
from node.miner import MiningWork

if TYPE_CHECKING:
    from consensus.chain import AddResult, Chain
    from consensus.params import NetworkParams
    from consensus.state import State
    from consensus.transactions import Transaction
    from consensus.validation import HeaderContext
    from node.mempool import Mempool
    from node.metrics import Metrics
    from node.net.peer import PeerSession
    from node.services.market import MarketService

log = logging.getLogger("pouw.node")

TEMPLATE_REFRESH_S = 1.0
"""A template on the same tip is rebuilt for new transactions at most this often (or every
half block interval, if shorter)."""
TEMPLATE_COST_RATIO = 10.0
TEMPLATE_MAX_TXS = 20_000
"""Transactions a block template takes from the mempool, at most (half a devnet block
holds ~27,000 transfers)."""
NULL_JOBS_KEPT = 8
THREAD_BUILDS_OVERTAKEN = 2
"""Template builds in a thread that blocks may overtake in a row; the next is built on
the event loop (see ``WorkSource._ready``)."""
_ANY_JOB = JobSpec(NULL_POSTER, 0, 0, 0, bytes(32), bytes(32))
"""The job a template is built with: no rule after the header reads it (the state root
does not depend on it), and every piece of work sets its own (``_work_on``)."""


def now_ms() -> int:
    return int(time.time() * 1000)


class WorkSource:
    """Block templates for one node's miner (see the module docstring)."""

    def __init__(
        self,
        chain: Chain,
        params: NetworkParams,
        mempool: Mempool,
        market: MarketService,
        metrics: Metrics,
        *,
        miner_address: bytes,
        process_block: Callable[[Block, PeerSession | None], Awaitable[AddResult | None]],
    ) -> None:
        """``market``: the posted jobs to attempt and where their results go;
        ``process_block``: where a mined block goes (``ChainService.process_block``)."""
        self.chain = chain
        self.params = params
        self.mempool = mempool
        self.market = market
        self.metrics = metrics
        self.miner_address = miner_address
        self._process_block = process_block
        self._null_jobs: OrderedDict[bytes, Job] = OrderedDict()
        # (tip, mempool revision, when built, header) of the last template; its body is
        # ``_body``.
        self._template_of: tuple[bytes, tuple[int, int], float, BlockHeader] | None = None
        self._cost = 0.0  # TEMPLATE_COST_RATIO × the last full build's time
        self._grow_cost = 0.0  # … × the last growth's time (a refresh on the same tip)
        self._body: TemplateBody | None = None
        self._body_removals = 0
        self._body_admissions = 0
        self._building = asyncio.Lock()
        # A thread of its own: a build does not queue behind blob reads in the loop's
        # default executor (one at a time anyway, under _building).
        self._builder = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="template")
        # At fast blocks a new transaction (a job, a claim) waits at most half a block.
        self._refresh_s = min(TEMPLATE_REFRESH_S, params.block_time_ms / 2000)

    async def null_job(self, prev_hash: bytes) -> Job:
        """The null job on top of ``prev_hash`` (its operands are derived, then kept)."""
        job = self._null_jobs.get(prev_hash)
        if job is None:
            # Off the loop: committing to its operands runs compiled kernels, and a call
            # into Numba waits while any other thread compiles (a node's first start on
            # a machine: tens of seconds), which would stall the loop, RPC and peers alike.
            job = await asyncio.to_thread(null_job, prev_hash, self.params)
            self._null_jobs[prev_hash] = job
            while len(self._null_jobs) > NULL_JOBS_KEPT:
                self._null_jobs.popitem(last=False)
        return job

    async def work(self, skip: Collection[bytes] = ()) -> MiningWork:
        """What the miner attempts next: the next posted job of the market's queue
        (one attempt each), else the null job on the tip.

        The header commits the job, so each job gets its own header: the tip's
        template (same transactions, same state root) with its job field set.
        The template is reused while the tip and mempool stay, and refreshed for
        new transactions no more often than the module docstring says.
        ``skip``: ids of posted jobs not to hand out (other miners of this node's are
        attempting them: ``WorkShare``).
        """
        while True:
            tip = await self._ready()
            posted = self.market.next_job(skip=skip)
            if posted is not None:
                return self._work_on(posted)
            job = await self.null_job(tip)
            if self.chain.tip.hash == tip and self._fresh(tip, False):  # else a block came
                return self._work_on(job)

    async def better_work(
        self, current: MiningWork, refresh: bool = False, skip: Collection[bytes] = ()
    ) -> MiningWork | None:
        """Work on a job paying more per MAC than ``current``'s, ready and ours to take
        (the miner runs it between the strips of its attempt on ``current``), or None.
        ``refresh``: a post paying more than the open jobs came (``Miner.post_arrived``);
        then, with no such job, the next posted job, and either way on a template rebuilt
        for the transactions come since, whatever its age: the post's owner can claim the
        job only once a block carries its post. ``skip``: as ``work``'s."""
        # The template first: a job taken is marked attempted, so nothing may come between
        # taking it and handing it out.
        await self._ready(refresh)
        job = self.market.next_job(above=current.rate, skip=skip)
        if job is None and refresh:
            job = self.market.next_job(skip=skip)
        return None if job is None else self._work_on(job)

    def share(self, busy: dict[int, frozenset[bytes]], slot: int) -> WorkShare:
        """Miner ``slot``'s share of this source, among those whose posted jobs in hand
        ``busy`` holds (one dict for all the shares of a pool)."""
        return WorkShare(self, busy, slot)

    def _work_on(self, job: Job) -> MiningWork:
        """``job`` on the tip's template (``_ready`` made it). A job whose job_post has not
        reached a block is handed out ``claim_only`` unless the template carries the post
        (then a winning ticket makes a block that posts the job and claims it at once): no
        block is made on its header, its result is delivered and claimed once the post
        lands. A node without the key to claim by transaction mines any other job to
        ``repeat`` (in bursts): only a block that wins it delivers its result."""
        check_job_shape(job.spec, self.params)
        assert self._template_of is not None and self._body is not None
        template, body = self._template_of[3], self._body
        assert template.prev_hash == self.chain.tip.hash, "work asked on a template not ready"
        post = self.market.post_of(job)
        claim_only = post is not None and post not in body.txids
        return MiningWork(
            template=dataclasses.replace(template, job=job.spec),
            job=job,
            txs=body.txs,
            committed=self.market.wrong_result(job),
            post_pending=post is not None,
            claim_only=claim_only,
            rate=self.market.rate_of(job),
            repeat=self.market.claim_key is None and not claim_only,
        )

    def _fresh(self, tip: bytes, refresh: bool) -> bool:
        """Whether the last template serves ``tip`` as the module docstring says (with
        ``refresh``: only if no transaction came since it was built)."""
        if self._template_of is None or self._body is None:
            return False
        t_tip, t_rev, built, _ = self._template_of
        if t_tip != tip:
            return False
        mempool = self.mempool
        if t_rev == mempool.revision:
            return True
        grows = self._body.parent == tip and self._body_removals == mempool.removals
        cost = self._grow_cost if grows else self._cost
        return not refresh and time.monotonic() - built < max(self._refresh_s, cost)

    async def _ready(self, refresh: bool = False) -> bytes:
        """Make the template on the current tip fresh (see ``_fresh``), building it if need
        be; the tip it is on.

        A build runs in a thread on a fork of the tip's state (``State.fork``), so the
        event loop, and with it peers, RPC and block relay, goes on meanwhile: from a full
        pool a fresh template takes a few hundred milliseconds. A block applied or undone
        meanwhile voids it (what it read may be half the old state, half the new); it is
        built again on the new tip, and after ``THREAD_BUILDS_OVERTAKEN`` such in a row on
        the loop, where no block can overtake it, so that a miner gets work while blocks
        come faster than templates (a catch-up). One build runs at a time; an ask that
        waited for it finds it made.
        """
        async with self._building:
            overtaken = 0
            while True:
                tip = self.chain.tip.hash
                if self._fresh(tip, refresh):
                    return tip
                if await self._build(tip, in_thread=overtaken < THREAD_BUILDS_OVERTAKEN):
                    return tip
                overtaken += 1

    async def _build(self, tip: bytes, in_thread: bool) -> bool:
        """Build the template on ``tip`` (the current tip): on top of the last one if on
        the same tip no transaction left the pool since, from a fresh fee-ordered
        selection otherwise; False if a block overtook a build ``in_thread``."""
        mempool, chain = self.mempool, self.chain
        revision, removals = mempool.revision, mempool.removals
        base = self._body
        if base is None or base.parent != tip or self._body_removals != removals:
            base = None
            candidates = mempool.select(TEMPLATE_MAX_TXS, self.params.max_block_bytes // 2)
        else:
            room = max(0, TEMPLATE_MAX_TXS - len(base.txs))
            candidates = mempool.admitted_since(self._body_admissions, room)
        admissions = mempool.admissions
        state = chain.state
        generation = state.generation
        args = (
            state.fork(),
            chain.header_context(tip),
            self.params,
            candidates,
            self.miner_address,
            base,
        )
        if not in_thread:
            template, body, seconds = _timed_build(*args)
        else:
            try:
                template, body, seconds = await asyncio.get_running_loop().run_in_executor(
                    self._builder, _timed_build, *args
                )
            except Exception:
                if chain.tip.hash != tip or state.generation != generation:
                    return False  # it read a state a block was changing: its error is moot
                raise
            if chain.tip.hash != tip or state.generation != generation:
                return False
        cost = TEMPLATE_COST_RATIO * seconds
        if base is None:
            self._cost = cost
        else:
            self._grow_cost = cost
        self._body, self._body_removals, self._body_admissions = body, removals, admissions
        self._template_of = (tip, revision, time.monotonic(), template)
        return True

    def close(self) -> None:
        """Let the build thread go (a build under way is left to finish, unread)."""
        self._builder.shutdown(wait=False, cancel_futures=True)

    async def submit(self, found: MinedBlock, work: MiningWork) -> None:
        """A block the miner found: processed (and pushed to peers) unless the tip moved."""
        market = self.market
        if found.header.prev_hash == self.chain.tip.hash:
            if found.product is None:  # the null job: nothing to keep
                header = market.finish(found, work.job)
            else:  # C is stored off the event loop (megabytes)
                header = await asyncio.to_thread(market.finish, found, work.job)
            if found.header.prev_hash == self.chain.tip.hash:
                block = Block(header, work.txs)
                self.metrics.mined.inc()
                log.info("mined block %d %s", block.header.height, block.hash.hex()[:16])
                await self._process_block(block, None)
                if found.product is not None:
                    market.serve_soon(found.product, header.result_root, found.leaves)
                return
        # The tip moved while the attempt ran or C was stored: the block is stale, the
        # result is not.
        if found.product is not None:
            await market.deliver(work.job, found.header.result_root, found.product, found.leaves)

    async def deliver(
        self, work: MiningWork, result_root: bytes, product: np.ndarray, leaves: bytes | None
    ) -> None:
        """An attempt on a posted job that made no block: its result is kept and claimed
        (``leaves``: its rows' leaf hashes, to serve it without hashing it again)."""
        await self.market.deliver(work.job, result_root, product, leaves)


class WorkShare:
    """One miner's way to a ``WorkSource`` that several share (``--devices``: a miner per
    GPU): ``work`` and ``better_work`` as the source's, less the posted jobs the other
    miners are attempting, so that concurrent miners take different jobs when more than
    one is ready, and a retry of a job attempted before never lands on two GPUs at once.
    The null job is shared (every attempt on it draws a random first nonce).

    A miner asks for work when its last attempt is over, so that ask clears what it had
    in hand; ``better_work`` adds the job it runs inside the attempt on ``current``."""

    def __init__(self, source: WorkSource, busy: dict[int, frozenset[bytes]], slot: int) -> None:
        self.source = source
        self.slot = slot
        self._busy = busy
        busy[slot] = frozenset()
        # Read when a job is picked, not when asked: another share may take one meanwhile.
        self._others = _HeldByOthers(busy, slot)

    def _ids(self, *works: MiningWork) -> frozenset[bytes]:
        p = self.source.params
        return frozenset(
            w.job.spec.job_id(p.rank, p.tile_h, p.tile_w) for w in works if not w.job.null
        )

    async def work(self) -> MiningWork:
        self._busy[self.slot] = frozenset()  # the last attempt is over
        work = await self.source.work(skip=self._others)
        self._busy[self.slot] = self._ids(work)
        return work

    async def better_work(self, current: MiningWork, refresh: bool = False) -> MiningWork | None:
        better = await self.source.better_work(current, refresh, skip=self._others)
        if better is not None:
            self._busy[self.slot] = self._ids(current, better)
        return better

    async def submit(self, found: MinedBlock, work: MiningWork) -> None:
        await self.source.submit(found, work)

    async def deliver(
        self, work: MiningWork, result_root: bytes, product: np.ndarray, leaves: bytes | None
    ) -> None:
        await self.source.deliver(work, result_root, product, leaves)


class _HeldByOthers(Collection[bytes]):
    """The posted jobs the shares but ``slot`` hold, as of each look."""

    def __init__(self, busy: dict[int, frozenset[bytes]], slot: int) -> None:
        self._busy = busy
        self._slot = slot

    def _held(self) -> frozenset[bytes]:
        return frozenset().union(*(ids for s, ids in self._busy.items() if s != self._slot))

    def __contains__(self, job_id: object) -> bool:
        return any(job_id in ids for s, ids in self._busy.items() if s != self._slot)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._held())

    def __len__(self) -> int:
        return len(self._held())


def _timed_build(
    state: State,
    context: HeaderContext,
    params: NetworkParams,
    candidates: list[Transaction],
    miner: bytes,
    on_top_of: TemplateBody | None,
) -> tuple[BlockHeader, TemplateBody, float]:
    """``build_template`` and the CPU seconds its thread spent on it: the cost that paces
    refreshes (a wall-clock time would also count the wait for a worker thread and for
    the GIL while the loop is busy)."""
    started = time.thread_time()
    template, body = build_template(
        state, context, params, candidates, miner, _ANY_JOB, now_ms(), verified=True,
        on_top_of=on_top_of,
    )  # fmt: skip
    return template, body, time.thread_time() - started
