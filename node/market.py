"""What a node does for the compute market (PROTOCOL §8).

* Pick the posted job that pays best per multiply-accumulate among those whose
  operands it holds, else mine the null job; fetch operands of the others in
  the background (row-chunked blobs, every row checked against root_a/root_b).
* After a block on a posted job: keep C as a row-chunked blob whose id is the
  block's result_root, so requesters (and fraud provers) can fetch it.
* ``--dishonest-results`` (tests only) commits a wrong C, to show that the
  client catches it and the fraud proof takes the miner's fee and coinbase.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from consensus.blocks import BlockHeader, JobSpec
from consensus.market import OPEN, job_record
from consensus.merkle import matrix_cols_root, matrix_rows_root
from consensus.pow import Job, MinedBlock
from consensus.state import JOBS
from node.blobs import BlobFetchError

if TYPE_CHECKING:
    from node.node import Node

log = logging.getLogger("pouw.market")

FETCH_TIMEOUT = 60.0
MAX_KEPT_JOBS = 16


class MarketService:
    def __init__(self, node: Node, dishonest: bool = False) -> None:
        self.node = node
        self.dishonest = dishonest
        self.jobs: dict[bytes, Job] = {}  # job id → verified operands
        self._fetching: dict[bytes, asyncio.Task[None]] = {}
        self._unavailable: set[bytes] = set()
        self.jobs_mined = 0

    def _job_id(self, spec: JobSpec) -> bytes:
        p = self.node.params
        return spec.job_id(p.rank, p.tile_h, p.tile_w)

    def open_jobs(self) -> list[tuple[float, bytes, dict[str, Any]]]:
        """Open, unexpired jobs, best reward per MAC first."""
        chain = self.node.chain
        next_height = chain.height + 1
        tip_job = self._job_id(chain.tip.header.job) if chain.height else None
        out = []
        for job_id in chain.state.tables[JOBS]:
            rec = job_record(chain.state, job_id)
            assert rec is not None
            if rec["status"] != OPEN or rec["expiry"] < next_height or job_id == tip_job:
                continue  # the tip's own job is claimed as soon as a child lands
            out.append((rec["reward"] / (rec["m"] * rec["k"] * rec["n"]), job_id, rec))
        out.sort(key=lambda t: (-t[0], t[1]))
        return out

    def pick_job(self) -> Job | None:
        """The best-paying job we can mine now; starts fetching the operands of others."""
        for _, job_id, rec in self.open_jobs():
            job = self.jobs.get(job_id)
            if job is not None:
                return job
            if job_id not in self._fetching and job_id not in self._unavailable:
                task = asyncio.create_task(self._fetch(job_id, rec), name="fetch-operands")
                self._fetching[job_id] = task
                task.add_done_callback(lambda _t, j=job_id: self._fetching.pop(j, None))
        return None

    async def _fetch(self, job_id: bytes, rec: dict[str, Any]) -> None:
        m, k, n = rec["m"], rec["k"], rec["n"]
        try:
            raw_a = await self.node.fetch_blob(rec["root_a"], FETCH_TIMEOUT)
            raw_bt = await self.node.fetch_blob(rec["root_b"], FETCH_TIMEOUT)
        except BlobFetchError as e:
            log.info("operands of job %s unavailable: %s", job_id.hex()[:16], e)
            self._unavailable.add(job_id)
            return
        if len(raw_a) != m * k or len(raw_bt) != k * n:
            log.warning("operands of job %s have the wrong size", job_id.hex()[:16])
            self._unavailable.add(job_id)
            return
        a = np.frombuffer(raw_a, dtype=np.int8).reshape(m, k).copy()
        b = np.ascontiguousarray(np.frombuffer(raw_bt, dtype=np.int8).reshape(n, k).T)
        if matrix_rows_root(a) != rec["root_a"] or matrix_cols_root(b) != rec["root_b"]:
            log.warning("operands of job %s do not match its roots", job_id.hex()[:16])
            self._unavailable.add(job_id)
            return
        self.jobs[job_id] = Job(a=a, b=b, spec=JobSpec(m, k, n, rec["root_a"], rec["root_b"]))
        while len(self.jobs) > MAX_KEPT_JOBS:
            self.jobs.pop(next(iter(self.jobs)))
        log.info("job %s: operands %dx%d·%dx%d ready to mine", job_id.hex()[:16], m, k, k, n)
        if self.node.miner is not None:
            self.node.miner.tip_changed()  # switch to it at the end of the running attempt

    def wrong_result(self, job: Job) -> Callable[[np.ndarray], np.ndarray] | None:
        """What a ``--dishonest-results`` miner commits instead of C on a posted job
        (it is bound by the proof of work, so it must be chosen before mining)."""
        if not self.dishonest or job.null:
            return None

        def corrupt(c: np.ndarray) -> np.ndarray:
            wrong = c.copy()
            wrong[c.shape[0] // 2, c.shape[1] // 3] += 1
            return wrong

        return corrupt

    def finish(self, found: MinedBlock, job: Job) -> BlockHeader:
        """Keep the product of a posted job and return the header to publish."""
        job_id = self._job_id(job.spec)
        if job_id not in self.jobs or found.product is None:
            return found.header  # the null job: nobody asked for C
        self.node.blobs.put_matrix(found.product)
        self.jobs_mined += 1
        log.info(
            "block on job %s: result %s kept",
            job_id.hex()[:16],
            found.header.result_root.hex()[:16],
        )
        return found.header

    def close(self) -> None:
        for task in list(self._fetching.values()):
            task.cancel()
