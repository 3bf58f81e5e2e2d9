"""What the miner works on next: block templates, kept fresh and cheap to refresh.

The miner thread asks for work at the start of every burst (half a second of
attempts). A template is reused while the tip, the job and the mempool stay
the same; when transactions arrive it is refreshed at most every
``TEMPLATE_REFRESH_S`` or ``TEMPLATE_COST_RATIO`` times its last build time,
whichever is longer, so templates never take more than ~1/10 of the event
loop. On the same tip a refresh grows the last template
(``consensus.template``): it applies only the transactions admitted since.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from consensus.blocks import Block, JobSpec
from consensus.pow import Job, MinedBlock, check_job_shape, null_job
from consensus.template import TemplateBody, build_template
from node.miner import MiningWork

if TYPE_CHECKING:
    from node.node import Node

log = logging.getLogger("pouw.node")

TEMPLATE_REFRESH_S = 1.0
"""A template on the same tip and job is rebuilt for new transactions at most this often."""
TEMPLATE_COST_RATIO = 10.0
TEMPLATE_MAX_TXS = 20_000
"""Transactions a block template takes from the mempool, at most (half a devnet block
holds ~27,000 transfers)."""
NULL_JOBS_KEPT = 8


def now_ms() -> int:
    return int(time.time() * 1000)


class WorkSource:
    """Block templates for one node's miner (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._null_jobs: OrderedDict[bytes, Job] = OrderedDict()
        self._work: tuple[bytes, JobSpec, tuple[int, int], float, MiningWork] | None = None
        self._cost = 0.0
        self._body: TemplateBody | None = None
        self._body_removals = 0
        self._body_admissions = 0

    def null_job(self, prev_hash: bytes) -> Job:
        """The null job on top of ``prev_hash`` (its operands are derived, then kept)."""
        job = self._null_jobs.get(prev_hash)
        if job is None:
            job = null_job(prev_hash, self.node.params)
            self._null_jobs[prev_hash] = job
            while len(self._null_jobs) > NULL_JOBS_KEPT:
                self._null_jobs.popitem(last=False)
        return job

    async def work(self) -> MiningWork:
        """A block template: reused while the tip, job and mempool stay, refreshed
        for new transactions no more often than the module docstring says."""
        node = self.node
        tip = node.chain.tip.hash
        job = node.market.pick_job() or self.null_job(tip)
        mempool = node.mempool
        revision = mempool.revision
        if self._work is not None:
            w_tip, w_job, w_rev, built, work = self._work
            age = time.monotonic() - built
            fresh = w_rev == revision or age < max(TEMPLATE_REFRESH_S, self._cost)
            if w_tip == tip and w_job == job.spec and fresh:
                return work
        check_job_shape(job.spec, node.params)
        started = time.monotonic()
        # On the same tip the last template's transactions stay and only those admitted
        # since are applied; one that left the pool (replaced, evicted) means a fresh,
        # fee-ordered start.
        base = self._body
        if base is None or base.parent != tip or self._body_removals != mempool.removals:
            base = None
            candidates = mempool.select(TEMPLATE_MAX_TXS, node.params.max_block_bytes // 2)
        else:
            room = max(0, TEMPLATE_MAX_TXS - len(base.txs))
            candidates = mempool.admitted_since(self._body_admissions, room)
        self._body_admissions = mempool.admissions
        chain = node.chain
        template, body = build_template(
            chain.state,
            chain.header_context(tip),
            node.params,
            candidates,
            node.miner_address,
            job.spec,
            now_ms(),
            verified=True,
            on_top_of=base,
        )
        self._body, self._body_removals = body, mempool.removals
        work = MiningWork(
            template=template,
            job=job,
            txs=body.txs,
            committed=node.market.wrong_result(job),
        )
        self._work = (tip, job.spec, revision, time.monotonic(), work)
        self._cost = TEMPLATE_COST_RATIO * (time.monotonic() - started)
        return work

    async def submit(self, found: MinedBlock, work: MiningWork) -> None:
        """A block the miner found: processed (and pushed to peers) unless the tip moved."""
        node = self.node
        if found.header.prev_hash != node.chain.tip.hash:
            return  # the tip moved while the last attempt ran: stale, drop it
        block = Block(node.market.finish(found, work.job), work.txs)
        node.metrics.mined.inc()
        log.info("mined block %d %s", block.header.height, block.hash.hex()[:16])
        await node.process_block(block, source=None)
