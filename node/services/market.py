"""What a node does for the compute market (PROTOCOL §8).

* A stream of attempts, one per job: ``next_job`` hands the miner an open
  posted job whose operands it holds, each job once. It skips jobs claimed on
  chain or by a pending ``job_result``, and miners split the best-paying ones
  by rendezvous hashing (``pick_job``), so that they rarely race each other
  for one job. With none left it returns None and the miner mines the null
  job; a job attempted before is handed out again only then, and only if it
  is still unclaimed ``RETRY_AFTER_S`` after its last attempt.
* Operands are fetched ahead in the background, our own share first
  (row-chunked blobs, every row checked against root_a/root_b), so the kernel
  does not wait between attempts; those of a job whose job_post is still in
  the mempool too, so that it can be attempted as soon as its block lands.
* A job whose job_post is still in the mempool is attempted before its block
  when it pays strictly more per MAC than the open job the miner would otherwise
  take (the null job pays nothing), at most ``EARLY_PER_TIP`` per tip: on a
  template that carries the post a winning ticket makes a block that posts and
  claims the job; otherwise (``claim_only``: a block would claim nothing) C is
  ready when the post lands, and the claim goes out at the first flush after
  that block. A job paying what the open ones pay waits for its block, as they do.
* A job paying more than the one being mined is offered inside the running
  attempt, between its strips (``next_job(above=)``, asked once its operands are
  ready: the ``on_job_ready`` listeners hear its pay). Another miner's post that
  pays more than the open jobs makes the miner start its next job there on a
  fresh template that carries the post (``post_admitted`` gives its pay).
* A block on a posted job: C is kept as a row-chunked blob whose id is the
  block's result_root, so requesters (and fraud provers) can fetch it.
* An attempt that did not win is delivered all the same: C is kept the same
  way and the job is claimed by a ``job_result`` transaction signed by the
  miner's key, several claims to one transaction (``CLAIM_FLUSH_S``, at most
  ``MAX_RESULT_CLAIMS``), each locking its bond. A miner whose spendable
  balance cannot cover the bonds and the fee skips claiming and keeps mining.
* A ``result_challenge`` on one of our claims is answered (``result_rows``) from the
  C we kept; a C lost from disk meanwhile is computed again from the job's operands,
  held or fetched, one at a time, and checked against the claim's result_root first.
* ``--dishonest-results`` (tests only) commits a wrong C, in blocks and in
  job_result claims alike, to show that the client catches it and that the
  fraud proof takes the miner's coinbase or bond.
* ``--withhold-results`` (tests only) claims posted jobs with the right C but never
  keeps it to serve, nor answers a result_challenge: its poster's challenge refunds
  the job. With ``--reveal-withheld`` it keeps its newest C in memory, served to
  nobody, and answers challenges from it; with ``--dishonest-results`` too, the rows it
  reveals are those of its wrong C, which the poster's client proves wrong.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import numpy as np
from blake3 import blake3

from consensus.blocks import NULL_RESULT_ROOT, BlockHeader, JobSpec
from consensus.errors import InvalidTransaction
from consensus.hashing import HASH_SIZE
from consensus.market import OPEN, build_result_rows, claim_bond, job_id_of, job_record
from consensus.merkle import matrix_rows_commitment
from consensus.pow import Job, MinedBlock
from consensus.state import JOB_CHALLENGES, JOBS
from consensus.transactions import (
    MAX_RESULT_CLAIMS,
    MAX_TX_SIZE,
    JobClaim,
    JobPostPayload,
    JobResultPayload,
    ResultChallengePayload,
    ResultRowsPayload,
    Transaction,
    signed_transaction,
)
from kernels.backends import get_backend
from kernels.layout import transposed
from node.relay.blobs import BlobFetchError

if TYPE_CHECKING:
    from consensus.chain import Chain
    from consensus.keys import PrivateKey
    from consensus.params import NetworkParams
    from node.chain_service import ChainChange
    from node.mempool import Mempool
    from node.relay.blobs import BlobExchange

log = logging.getLogger("pouw.market")

FETCH_TIMEOUT = 60.0
UNAVAILABLE_RETRY_S = 60.0
"""A job whose operands could not be fetched (no peer had them, or none served them in
time) is tried again after this long, while it is open; one whose operands are of the
wrong shape is not."""
MAX_KEPT_BYTES = 384 * 1024 * 1024
"""Operands held in memory for jobs to mine, at most: A, B and Bᵀ (for proofs), 24 MiB
for a 2048×4096×2048 job, so our share ahead and the posts waiting for their block
(``PREFETCH_AHEAD`` each) fit."""
MAX_FETCHES = 4
"""Operand downloads under way at once. The peers serving them set the pace (a
row-chunked blob comes one row per chunk): more at once only delays the first."""
URGENT_FETCHES = 1
"""Downloads beyond ``MAX_FETCHES`` for posts that pay more than every open job: they
jump the queue (``BlobExchange.fetch``'s ``urgent``) instead of waiting behind it."""
PREFETCH_AHEAD = 8
"""Jobs of our share held or on their way, not attempted yet, at most: the kernel never
waits for a download, and a long queue is not fetched (loading the peers serving it)
long before its jobs come up, by which time others may have taken them."""
MAX_PENDING_POSTS = 256
"""job_posts still in the mempool whose operands may be fetched ahead, at most."""
HELP_FETCHES = 2
"""Downloads at once of jobs other miners rank first on, once our own share runs out."""
PICK_POOL = 64
"""A miner picks among this many of the best-paying waiting jobs."""
RIVALS_BLOCKS = 64
"""Miners of this many recent blocks (and their job_result senders) split the jobs."""
HELP_AFTER_S = 1.5
"""A miner with no job of its own helps with another's once it has waited this long
(longer than an attempt and a claim's way to us: its owner is slow or gone)."""
RETRY_AFTER_S = 2.0
"""With nothing else to mine, a job attempted this long ago and still unclaimed is tried
again (a miner that could not claim it by transaction may still win a block on it): long
enough for another miner's claim of it to reach us."""
MAX_ATTEMPTED = 10_000
"""Jobs remembered as attempted (and results remembered as delivered), at most."""
PRUNE_EVERY_BLOCKS = 10
"""How often the blobs kept for jobs are looked at for pruning."""
CLAIM_FLUSH_S = 0.05
"""Delivered results are claimed in one job_result this often (or at MAX_RESULT_CLAIMS):
results that finish together share a transaction, and a claim, which is what a client
waits for, is not held back (a miner finishes about one attempt a second)."""
CLAIM_RECHECK_S = 2.0
"""How often results not yet claimed are looked at again (a claim dropped from the
mempool, a balance that matured)."""
CLAIM_FEE = 1_000
"""The job_result's transaction fee: the wallet's default, far above the relay's
minimum (``node.mempool.min_fee``), which keeps the claim ahead of cheap transactions
in a full mempool."""
EARLY_PER_TIP = 2
"""Jobs attempted before their job_post's block, per tip, at most: most such attempts make
no block (those on a template without the post), so posts that keep coming (or never
land) cannot hold the miner off the attempts that make the blocks which land them."""
EARLY_RESULT_BLOCKS = 20
"""A result computed before its job_post's block is kept this many blocks, at most,
while the post waits: a post that never lands leaves no blob behind."""


def pick_job(
    pool: list[tuple[float, bytes]],
    me: bytes,
    rivals: frozenset[bytes],
    may_help: Callable[[bytes], bool],
) -> bytes | None:
    """The job of ``pool`` ((reward per MAC, job id), best-paying first, oldest first
    among equal pay) that ``me`` takes, if any.

    Rendezvous hashing: each job ranks the miners by a hash of (miner, job), and
    a miner takes the jobs it ranks first on (its share), best-paying first, then
    in ``pool``'s order, so that a job waits behind no newer one of its pay. With
    its share done it helps with the jobs that ``may_help`` allows (those their
    owner has left waiting a while), taking the job the owner would reach last.
    So miners race for one job only when its owner is slow or gone.
    """
    best: tuple[int, float, int, bytes] | None = None
    for place, (rate, job_id) in enumerate(pool):
        rank = standing(me, rivals, job_id)[0]
        if rank and not may_help(job_id):
            continue
        # Our share in the pool's order; else the owner's last job first.
        key = (0, -rate, place, job_id) if rank == 0 else (rank, rate, -place, job_id)
        if best is None or key < best:
            best = key
    return None if best is None else best[3]


class _Settled(Exception):
    """A result challenge was answered, settled or reorganised away meanwhile."""


def _operand_rows(
    m: int, k: int, n: int, raw_a: bytes, raw_bt: bytes
) -> tuple[np.ndarray, np.ndarray]:
    """A (m×k) and Bᵀ (n×k) of fetched operands, writable copies (each fetched as a blob
    cut into rows of k bytes: its root, checked as it came, is then their row root)."""
    a = np.frombuffer(raw_a, dtype=np.int8).reshape(m, k).copy()
    bt = np.frombuffer(raw_bt, dtype=np.int8).reshape(n, k).copy()
    return a, bt


def _job_of(spec: JobSpec, raw_a: bytes, raw_bt: bytes) -> Job:
    """The job of fetched operands (``_operand_rows``; their roots are ``spec``'s). Bᵀ,
    as it came, is the root's matrix and is kept for proofs."""
    a, bt = _operand_rows(spec.m, spec.k, spec.n, raw_a, raw_bt)
    return Job(a=a, b=transposed(bt), spec=spec, bt=bt)


def _post_record(tx: Transaction) -> dict[str, Any]:
    """A job_post's job as ``open_jobs`` lists an open one (the fields the miner uses)."""
    p = tx.payload
    assert type(p) is JobPostPayload
    return {
        "poster": tx.sender_address,
        "m": p.m,
        "k": p.k,
        "n": p.n,
        "root_a": p.root_a,
        "root_b": p.root_b,
        "reward": p.fee,  # a job_post's fee is the job's reward
    }


def _rate(rec: dict[str, Any]) -> float:
    """A job's reward per MAC."""
    return float(rec["reward"]) / (rec["m"] * rec["k"] * rec["n"])


def _job_bytes(job: Job) -> int:
    return job.a.nbytes + job.b.nbytes + (0 if job.bt is None else job.bt.nbytes)


def standing(me: bytes, rivals: frozenset[bytes], job_id: bytes) -> tuple[int, bytes, bytes]:
    """Where ``me`` stands on ``job_id`` among ``rivals``: (how many rank before it,
    its hash, the hash of the miner ranking first)."""
    mine = blake3(me + job_id).digest()
    theirs = [blake3(rival + job_id).digest() for rival in rivals]
    return sum(h > mine for h in theirs), mine, max([mine, *theirs])


class MarketService:
    def __init__(
        self,
        chain: Chain,
        params: NetworkParams,
        mempool: Mempool,
        blobs: BlobExchange,
        *,
        admit_tx: Callable[[Transaction], bytes],
        miner_address: bytes,
        claim_key: PrivateKey | None,
        dishonest: bool = False,
        withhold: bool = False,
        reveal_withheld: bool = False,
    ) -> None:
        """``blobs``: where operands are fetched from and results kept; ``admit_tx``:
        admits our own job_result claims to the mempool (and relays them), raising
        InvalidTransaction if refused; ``claim_key``: signs those claims (None: results
        are kept but not claimed by transaction)."""
        self.chain = chain
        self.params = params
        self.mempool = mempool
        self.blobs = blobs
        self._admit_tx = admit_tx
        self.miner_address = miner_address
        self.claim_key = claim_key
        self._job_ready_listeners: list[Callable[[float], None]] = []
        self.dishonest = dishonest
        self.withhold = withhold
        self.reveal_withheld = reveal_withheld
        # --withhold-results --reveal-withheld: result_root → C, served to nobody.
        self._kept_back: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.jobs: dict[bytes, Job] = {}  # job id → verified operands
        # Downloads under way: job id → (its task, the bytes its operands will hold).
        self._fetching: dict[bytes, tuple[asyncio.Task[None], int]] = {}
        self._unavailable: dict[bytes, float] = {}
        """Job id → when its operands may be fetched again (inf: never, wrong shape)."""
        self._open: tuple[bytes, list[tuple[float, bytes, dict[str, Any]]]] | None = None
        self._rivals_of: tuple[bytes, frozenset[bytes]] | None = None
        self._order_of: tuple[bytes, list[tuple[bool, bytes, dict[str, Any]]]] | None = None
        self._ready_at: dict[bytes, float] = {}  # job id → when its operands were ready
        self._pay: dict[bytes, float] = {}  # job id → its reward per MAC (operands held)
        # Jobs whose job_post is still in the mempool: job id → (its txid, its record).
        self._pending_posts: OrderedDict[bytes, tuple[bytes, dict[str, Any]]] = OrderedDict()
        self._posts_read = 0  # mempool admissions looked at for job_posts
        self._seen_at: dict[bytes, int] = {}  # open job id → the height it was first open at
        self._attempted: OrderedDict[bytes, float] = OrderedDict()  # job id → last attempt
        self._delivered: OrderedDict[bytes, bytes] = OrderedDict()  # job id → result_root
        # Results computed before their job_post's block: blob root → the height stored at.
        self._early_results: dict[bytes, int] = {}
        self._early_of: tuple[bytes, int] = (b"", 0)  # (tip, jobs attempted early on it)
        self._pruned_at = 0  # the height of the last look
        self._pruning: asyncio.Task[None] | None = None  # blobs of finished jobs being deleted
        self._closed = False
        self._new_results = asyncio.Event()
        self._warming: set[asyncio.Task[bool]] = set()  # results being readied to serve
        self._revealing: set[asyncio.Task[None]] = set()  # answers to result challenges
        self._recomputing = asyncio.Lock()  # one lost C computed again at a time (A, B, C held)
        self._claim_task: asyncio.Task[None] | None = None
        self._cannot_claim: str | None = None  # why the last claim was skipped (logged once)
        self.jobs_mined = 0
        self.claims_sent = 0
        self.challenges_answered = 0  # result_challenges on our claims, their rows revealed
        self.results_recomputed = 0  # claimed Cs lost and computed again to answer one

    def on_job_ready(self, listener: Callable[[float], None]) -> None:
        """``listener`` hears that a job's operands are ready to mine, and what it pays
        per MAC (the miner: leave the null job at the end of its burst, and look for a
        better-paying job between the strips of its attempt)."""
        self._job_ready_listeners.append(listener)

    def _job_id(self, spec: JobSpec) -> bytes:
        p = self.params
        return spec.job_id(p.rank, p.tile_h, p.tile_w)

    # ------------------------------------------------------------ choosing jobs

    def open_jobs(self) -> list[tuple[float, bytes, dict[str, Any]]]:
        """Open, unexpired jobs, best reward per MAC first, then oldest first (by the
        height this node first saw them open at, then id), computed once per tip."""
        chain = self.chain
        if self._open is not None and self._open[0] == chain.tip.hash:
            return self._open[1]
        next_height = chain.height + 1
        tip_job = self._job_id(chain.tip.header.job) if chain.height else None
        out = []
        now = time.monotonic()
        for job_id in chain.state.tables[JOBS]:
            rec = job_record(chain.state, job_id)
            assert rec is not None
            if rec["status"] != OPEN or rec["expiry"] < next_height or job_id == tip_job:
                continue  # the tip's own job is claimed as soon as a child lands
            out.append((_rate(rec), job_id, rec))
            if job_id not in self._seen_at:
                self._seen_at[job_id] = next_height
                # Fetched or attempted while its post waited: a helper and a retry wait
                # from now on, as the owner's claim of it can only go out now.
                if job_id in self._ready_at:
                    self._ready_at[job_id] = now
                if job_id in self._attempted:
                    self._attempted[job_id] = now
        out.sort(key=lambda t: (-t[0], self._seen_at[t[1]], t[1]))
        self._open = (chain.tip.hash, out)
        self._forget_closed({job_id for _, job_id, _ in out} | self._pending_posts.keys())
        return out

    def chain_changed(self, change: ChainChange) -> None:
        """Claim by transaction the jobs of our blocks that left the active chain (a
        block that lost a race to another miner's took its header's claim with it, and
        the job, attempted already, would wait for a retry behind every other); prune
        the blobs kept for jobs every ``PRUNE_EVERY_BLOCKS`` of height, whether or not
        this node mines now (those of an earlier run too). A block may also open jobs
        whose results we hold (computed while their post waited): they are claimed at
        the next flush, not at the next recheck."""
        for block in change.connected:
            for tx in block.txs:
                if type(tx.payload) is ResultChallengePayload:
                    self._answer_soon(tx.payload)
        kept = self.blobs.store.kept_blobs() if change.disconnected else {}
        for block in change.disconnected:
            h = block.header
            if (
                h.miner == self.miner_address
                and h.result_root != NULL_RESULT_ROOT
                and h.result_root in kept  # its C: finish() kept it
            ):
                self._to_claim(self._job_id(h.job), h.result_root)
        height = self.chain.height
        pruning = self._pruning is not None and not self._pruning.done()
        if abs(height - self._pruned_at) >= PRUNE_EVERY_BLOCKS and not pruning:
            self._pruned_at = height
            self.prune_blobs()
        if self._delivered and self._claim_task is not None:
            self._new_results.set()

    def prune_blobs(self) -> int:
        """Delete the blobs kept for jobs that nobody will ask for again (those this node
        keeps only because it mined the job: the C it computed, the operands it fetched,
        each recorded in the store with its job, so those of a run before a restart too);
        how many. A result is kept until its job was paid or refunded a challenge window
        ago (the requester's time to fetch it), or, if another claim took the job, a
        window after that claim; operands until the job is claimed, cancelled or expired,
        a window after that. So a miner's disk holds the work of the last few windows.

        The blobs are chosen here, from the chain's state, on the event loop; they are
        deleted on a worker thread (``_pruning``; inline where no loop runs). When their
        bytes were SQLite rows, freeing a 16 MiB blob's pages took 20–45 ms, and a prune
        of many jobs held the loop, and every peer and RPC call with it, for a second;
        a blob's file is unlinked in ~1.5 ms, and the deletes stay off the loop."""
        chain = self.chain
        grace = self.params.challenge_window
        doomed: list[bytes] = []
        for root, job_id in self.blobs.store.kept_blobs().items():
            if job_id in self._pending_posts:
                stored_at = self._early_results.get(root)
                if stored_at is None or chain.height - stored_at <= EARLY_RESULT_BLOCKS:
                    continue  # fetched or computed ahead of its block, which may land yet
                self._delivered.pop(job_id, None)
            else:
                self._early_results.pop(root, None)  # landed (or dropped): the rules below
                rec = job_record(chain.state, job_id)
                if rec is not None and not self._done_with(root, rec, chain.height, grace):
                    continue  # (a job no longer on the chain, after a reorg, is done with)
            doomed.append(root)
            self._early_results.pop(root, None)
        if doomed:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._delete_blobs(doomed)
            else:
                work = asyncio.to_thread(self._delete_blobs, doomed)
                self._pruning = loop.create_task(work, name="prune blobs")
        return len(doomed)

    async def pruning_done(self) -> None:
        """Wait until the blobs of the last prune are deleted (or it stopped: the node is
        closing)."""
        if self._pruning is not None:
            await asyncio.gather(self._pruning, return_exceptions=True)

    def _delete_blobs(self, roots: list[bytes]) -> None:
        """Delete ``roots`` and their records (a worker thread); stops if the node closes."""
        deleted = 0
        for root in roots:
            if self._closed:
                break
            try:
                self.blobs.delete(root)
            except Exception as e:  # a disk error: the record stays, for the next prune
                log.warning("could not delete blob %s: %s", root.hex()[:16], e)
                continue
            deleted += 1
        log.info("pruned %d blob(s) of finished jobs", deleted)

    @staticmethod
    def _done_with(root: bytes, rec: dict[str, Any], height: int, grace: int) -> bool:
        if rec["status"] == OPEN:
            return rec["expiry"] + grace < height
        if rec["status"] == "cancelled":
            return True
        if root != rec["result_root"]:  # an operand, or a result that lost the race
            return rec["claim_height"] + grace < height
        return rec["status"] in ("paid", "refunded") and rec["due"] + grace < height

    def _forget_closed(self, still_open: set[bytes]) -> None:
        """Drop the operands and bookkeeping of jobs that are no longer open."""
        for job_id in [j for j in self.jobs if j not in still_open]:
            del self.jobs[job_id]
        for job_id in [j for j in self._ready_at if j not in self.jobs]:
            del self._ready_at[job_id]
        for job_id in [j for j in self._pay if j not in self.jobs]:
            del self._pay[job_id]
        for job_id in [j for j in self._seen_at if j not in still_open]:
            del self._seen_at[job_id]
        for job_id in [j for j in self._unavailable if j not in still_open]:
            del self._unavailable[job_id]

    def _claimed(self, job_id: bytes) -> bool:
        return self.mempool.claim_of(job_id) is not None

    def next_job(self, above: float | None = None, skip: Collection[bytes] = ()) -> Job | None:
        """The posted job to attempt next, or None (mine the null job).

        Each job is handed out once: a job whose operands we hold, not claimed
        by a pending job_result and not attempted yet, among the ``PICK_POOL``
        best-paying ones. Miners split that pool without talking (``pick_job``)
        among the miners seen lately. Only when no job waits does an earlier one
        come back (``RETRY_AFTER_S``). A job whose post still waits for its block
        comes first if it pays more (``post_of``; see the module docstring).
        Starts fetching the operands of the jobs that come next.

        ``above``: only a job paying more than that per MAC, and none again (the miner
        runs it inside a running attempt on a job paying ``above``). ``skip``: ids of jobs
        never to hand out now (this node's other miners are attempting them, ``--devices``).
        """
        open_jobs = self.open_jobs()
        self._prefetch(open_jobs)
        now = time.monotonic()
        if above is not None:
            open_jobs = [t for t in open_jobs if t[0] > above]
        picked = self._pick_open(open_jobs, now, retry=above is None, skip=skip)
        rate = next((r for r, job_id, _ in open_jobs if job_id == picked), above or 0.0)
        job_id = self._pick_before_post(rate, skip) or picked
        if job_id is None:
            return None
        self._attempted[job_id] = now
        self._attempted.move_to_end(job_id)
        while len(self._attempted) > MAX_ATTEMPTED:
            self._attempted.popitem(last=False)
        return self.jobs[job_id]

    def _pick_open(
        self,
        open_jobs: list[tuple[float, bytes, dict[str, Any]]],
        now: float,
        retry: bool,
        skip: Collection[bytes] = (),
    ) -> bytes | None:
        """The open job ``next_job`` takes, if any (``retry``: one attempted before, when
        none waits), never one in ``skip``."""
        waiting = [
            (rate, job_id)
            for rate, job_id, _ in open_jobs
            if job_id in self.jobs
            and job_id not in self._attempted
            and not self._claimed(job_id)
            and job_id not in skip
        ]
        if waiting:
            # None: others' jobs, not waiting long enough to help with
            return pick_job(
                waiting[:PICK_POOL],
                self.miner_address,
                self.rivals(),
                lambda job_id: now - self._ready_at.get(job_id, now) >= HELP_AFTER_S,
            )
        if not retry:
            return None
        # A node that cannot claim by transaction delivers only by winning a block:
        # it tries again at once, as another miner's claim is not on its way.
        wait = RETRY_AFTER_S if self.claim_key is not None else 0.0
        again = [
            (when, job_id)
            for _, job_id, _ in open_jobs
            if (when := self._attempted.get(job_id)) is not None
            and now - when >= wait
            and job_id in self.jobs
            and not self._claimed(job_id)
            and job_id not in skip
        ]
        return min(again)[1] if again else None

    def _pick_before_post(self, rate: float, skip: Collection[bytes] = ()) -> bytes | None:
        """A job of our share whose job_post is still in the mempool, paying more per MAC
        than ``rate`` (the open job we would take; 0 for the null job), its operands held
        and not attempted yet; at most ``EARLY_PER_TIP`` per tip. Never another miner's
        share: its owner's claim cannot show before the block, so a helper would race."""
        tip, count = self._early_of
        if tip != self.chain.tip.hash:
            tip, count = self.chain.tip.hash, 0
        if count >= EARLY_PER_TIP:
            return None
        pool = [
            (r, job_id)
            for r, job_id, _ in self.pending_posts()
            if r > rate
            and job_id in self.jobs
            and job_id not in self._attempted
            and job_id not in skip
        ]
        picked = pick_job(pool[:PICK_POOL], self.miner_address, self.rivals(), lambda _: False)
        self._early_of = (tip, count + (picked is not None))
        return picked

    def post_admitted(self, txid: bytes) -> float | None:
        """A transaction entered the mempool (the miner's listener): if it posts a job
        paying more per MAC than every open job, its operands are fetched now (urgently),
        not when the running attempt ends and asks for the next job. The job can then be
        attempted at that attempt's end, before its post's block, and its claim goes out
        as that block lands. Such a post of another miner's share gives its pay: this
        miner's next block should carry it (``Miner.post_arrived``), so that the post's
        owner can claim the job one block sooner; None otherwise (ours is attempted on a
        template that carries it as soon as its operands are here)."""
        tx = self.mempool.get(txid)
        if tx is None or type(tx.payload) is not JobPostPayload:
            return None
        p = tx.payload
        rate = _rate(_post_record(tx))
        open_jobs = self.open_jobs()  # (once per tip)
        # Only one that would be urgent: the others wait for the next ask, as before, and
        # a flood of posts costs the event loop a comparison each.
        if open_jobs and rate <= open_jobs[0][0]:
            return None
        if open_jobs:
            self._prefetch(open_jobs)
        job_id = job_id_of(tx.sender_address, p, self.params)
        if standing(self.miner_address, self.rivals(), job_id)[0] == 0:
            return None
        return rate

    def post_of(self, job: Job) -> bytes | None:
        """The txid of ``job``'s job_post if it is still in the mempool: only a block that
        carries it claims the job (an attempt on a template without it delivers a result
        to claim), else None."""
        if job.null:
            return None
        pending = self._pending_posts.get(self._job_id(job.spec))
        return None if pending is None else pending[0]

    def rate_of(self, job: Job) -> float:
        """What ``job`` pays per MAC (its reward over m·k·n; 0 for the null job)."""
        return 0.0 if job.null else self._pay.get(self._job_id(job.spec), 0.0)

    def rivals(self) -> frozenset[bytes]:
        """The other miners seen lately: those of the last ``RIVALS_BLOCKS`` blocks and
        the senders of the job_results they hold (computed once per tip)."""
        chain = self.chain
        if self._rivals_of is not None and self._rivals_of[0] == chain.tip.hash:
            return self._rivals_of[1]
        seen: set[bytes] = set()
        for h in chain.active[-RIVALS_BLOCKS:]:
            block = chain.blocks[h]
            if block.header.height:
                seen.add(block.header.miner)
            seen.update(
                tx.sender_address for tx in block.txs if type(tx.payload) is JobResultPayload
            )
        seen.discard(self.miner_address)
        rivals = frozenset(seen)
        self._rivals_of = (chain.tip.hash, rivals)
        return rivals

    def pending_posts(self) -> list[tuple[float, bytes, dict[str, Any]]]:
        """Jobs whose job_post is in the mempool, not in a block yet, best-paying first,
        as ``open_jobs`` lists them: their operands are fetched while the post waits."""
        mempool = self.mempool
        for tx in mempool.admitted_since(self._posts_read, len(mempool)):
            p = tx.payload
            if type(p) is JobPostPayload:
                job_id = job_id_of(tx.sender_address, p, self.params)
                self._pending_posts[job_id] = (tx.txid, _post_record(tx))
        self._posts_read = mempool.admissions
        for job_id, (txid, _) in list(self._pending_posts.items()):
            if txid not in mempool:  # in a block now (then open), or dropped
                del self._pending_posts[job_id]
        while len(self._pending_posts) > MAX_PENDING_POSTS:
            self._pending_posts.popitem(last=False)
        out = [(_rate(rec), job_id, rec) for job_id, (_, rec) in self._pending_posts.items()]
        out.sort(key=lambda t: -t[0])
        return out

    def _held_bytes(self) -> int:
        """Operand bytes held, and on their way (a download counts from its start)."""
        held = sum(_job_bytes(j) for j in self.jobs.values())
        return held + sum(
            size for job_id, (_, size) in self._fetching.items() if job_id not in self.jobs
        )

    def _prefetch(self, open_jobs: list[tuple[float, bytes, dict[str, Any]]]) -> None:
        """Fetch the operands of jobs not attempted yet, within the bounds: our own share
        first (see ``pick_job``), best-paying first."""
        held = self._held_bytes()
        own_ahead = 0  # jobs of our share held or on their way, not attempted yet
        # Those whose post waits for its block count apart: they cannot be mined yet.
        posts_ahead = 0
        order = self._fetch_order(open_jobs)
        pending = self.pending_posts()
        waiting_posts = {job_id for _, job_id, _ in pending}
        # With no job open there is no queue to jump (a backlog of posts waiting for
        # their first block): nothing is urgent.
        best_open = open_jobs[0][0] if open_jobs else float("inf")
        if pending:
            # Each among the open jobs by pay, ours first (a stable sort: the open jobs'
            # order stays among equal pay, and they come before the posts)
            me, rivals = self.miner_address, self.rivals()
            order = sorted(
                [*order, *((standing(me, rivals, j)[0] == 0, j, rec) for _, j, rec in pending)],
                key=lambda t: (not t[0], -_rate(t[2])),
            )
        for own, job_id, rec in order:
            post_waits = job_id in waiting_posts
            urgent = post_waits and _rate(rec) > best_open
            if len(self._fetching) >= MAX_FETCHES + (URGENT_FETCHES if urgent else 0):
                if urgent:
                    continue  # (the urgent come first: the rest wait as before)
                return
            if job_id in self._attempted or self._claimed(job_id):
                continue
            if job_id in self.jobs or job_id in self._fetching:
                if post_waits:
                    posts_ahead += own
                else:
                    own_ahead += own
                continue
            if self._unavailable.get(job_id, 0.0) > time.monotonic():
                continue
            if post_waits and posts_ahead >= PREFETCH_AHEAD:
                continue
            if own_ahead >= PREFETCH_AHEAD:
                return  # enough to mine on while these come; the rest may be gone by then
            if not own and (own_ahead or len(self._fetching) >= HELP_FETCHES):
                # Others' jobs only as our share runs out, a few at a time: their
                # owners fetch them, and every download loads the peers serving it.
                return
            size = rec["m"] * rec["k"] + 2 * rec["k"] * rec["n"]  # A, B and Bᵀ
            if held + size > MAX_KEPT_BYTES:
                if not self._make_room(size, _rate(rec) if urgent else None):
                    return
                held = self._held_bytes()
            held += size
            # A post that pays more than every open job jumps the download queue: it is
            # to be attempted as soon as it is here, before its block if it can.
            task = asyncio.create_task(self._fetch(job_id, rec, urgent), name="fetch-operands")
            self._fetching[job_id] = (task, size)
            task.add_done_callback(self._fetched)

    def _fetch_order(
        self, open_jobs: list[tuple[float, bytes, dict[str, Any]]]
    ) -> list[tuple[bool, bytes, dict[str, Any]]]:
        """``open_jobs`` with our share first, each marked whether it is ours (computed
        once per tip)."""
        tip = self.chain.tip.hash
        if self._order_of is not None and self._order_of[0] == tip:
            return self._order_of[1]
        me, rivals = self.miner_address, self.rivals()
        ranked = sorted(
            (standing(me, rivals, job_id)[0], i, job_id, rec)
            for i, (_, job_id, rec) in enumerate(open_jobs)
        )
        order = [(rank == 0, job_id, rec) for rank, _, job_id, rec in ranked]
        self._order_of = (tip, order)
        return order

    def _fetched(self, task: asyncio.Task[None]) -> None:
        for job_id, (t, _) in list(self._fetching.items()):
            if t is task:
                del self._fetching[job_id]
        if not task.cancelled():
            self._prefetch(self.open_jobs())  # the next download takes the freed place

    def _make_room(self, size: int, paying: float | None = None) -> bool:
        """Drop operands of attempted jobs, oldest attempt first, until ``size`` more
        bytes fit; then, for a job ``paying`` that much per MAC, of jobs not attempted yet
        that pay less, the lowest-paying first (fetched again if their turn comes);
        whether they fit."""
        held = self._held_bytes()
        for job_id in list(self._attempted):
            if held + size <= MAX_KEPT_BYTES:
                break
            job = self.jobs.pop(job_id, None)
            if job is not None:
                held -= _job_bytes(job)
        if held + size > MAX_KEPT_BYTES and paying is not None:
            known = {job_id: rec for _, job_id, rec in [*self.open_jobs(), *self.pending_posts()]}
            cheaper = sorted(
                (_rate(rec), job_id)
                for job_id, rec in known.items()
                if job_id in self.jobs and _rate(rec) < paying
            )
            for _, job_id in cheaper:
                if held + size <= MAX_KEPT_BYTES:
                    break
                held -= _job_bytes(self.jobs.pop(job_id))
        return held + size <= MAX_KEPT_BYTES

    def _keep_fetched(self, job_id: bytes, roots: tuple[bytes, ...]) -> None:
        store = self.blobs.store
        fetched = [root for root in roots if not store.has_blob(root)]
        if fetched:
            store.keep_blobs(fetched, job_id)

    async def _fetch(self, job_id: bytes, rec: dict[str, Any], urgent: bool = False) -> None:
        m, k, n = rec["m"], rec["k"], rec["n"]
        # Operands this node held already (its client posted them) are not ours to prune.
        # Recorded before they are stored: a restart in between leaks nothing (pruning a
        # blob never stored deletes nothing). Off the loop: a worker storing a blob holds
        # the store's lock for tens of milliseconds.
        await asyncio.to_thread(self._keep_fetched, job_id, (rec["root_a"], rec["root_b"]))
        try:
            raw_a, raw_bt = await self._fetch_operands(rec, urgent)
        except BlobFetchError as e:
            log.info("operands of job %s unavailable: %s", job_id.hex()[:16], e)
            retry = math.inf if e.wrong else time.monotonic() + UNAVAILABLE_RETRY_S
            self._unavailable[job_id] = retry
            return
        if len(raw_a) != m * k or len(raw_bt) != k * n:
            log.warning("operands of job %s have the wrong size", job_id.hex()[:16])
            self._unavailable[job_id] = math.inf
            return
        spec = JobSpec(rec["poster"], m, k, n, rec["root_a"], rec["root_b"])
        # Off the event loop: copying and transposing megabytes of operands held it for
        # a tenth of a second per job, while it relays blocks and serves operands. (Their
        # rows were checked against the roots as they came: no need to hash them again.)
        job = await asyncio.to_thread(_job_of, spec, raw_a, raw_bt)
        self.jobs[job_id] = job
        self._unavailable.pop(job_id, None)
        self._ready_at[job_id] = time.monotonic()
        self._pay[job_id] = _rate(rec)
        log.info("job %s: operands %dx%d·%dx%d ready to mine", job_id.hex()[:16], m, k, k, n)
        for listener in self._job_ready_listeners:
            listener(self._pay[job_id])

    async def _fetch_operands(self, rec: dict[str, Any], urgent: bool) -> tuple[bytes, bytes]:
        """A's rows and Bᵀ's rows of the job ``rec``, from the store or peers, each checked
        against its root as it came; BlobFetchError if they cannot be had."""
        m, k, n = rec["m"], rec["k"], rec["n"]
        raw_a, raw_bt = await asyncio.gather(  # both at once: half the wait for a job
            self.blobs.fetch(rec["root_a"], FETCH_TIMEOUT, urgent, chunk_size=k, chunk_count=m),
            self.blobs.fetch(rec["root_b"], FETCH_TIMEOUT, urgent, chunk_size=k, chunk_count=n),
        )
        return raw_a, raw_bt

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

    # ------------------------------------------------------------ results

    def finish(self, found: MinedBlock, job: Job) -> BlockHeader:
        """Keep the product of a posted job and return the header to publish."""
        job_id = self._job_id(job.spec)
        if job.null or found.product is None:
            return found.header  # the null job: nobody asked for C
        if not self.withhold:
            self.blobs.put_matrix(found.product, job_id, found.header.result_root)
        self._keep_back(found.product, found.header.result_root)
        self.jobs_mined += 1
        log.info(
            "block on job %s: result %s kept",
            job_id.hex()[:16],
            found.header.result_root.hex()[:16],
        )
        return found.header

    async def deliver(
        self, job: Job, result_root: bytes, product: np.ndarray, leaves: bytes | None = None
    ) -> None:
        """An attempt on ``job`` that made no block: keep C (its blob id is
        ``result_root``; ``leaves``, its rows' leaf hashes, if the miner kept them) and
        claim the job by transaction at the next flush."""
        if job.null:
            return
        job_id = self._job_id(job.spec)
        # A retry waits from the attempt's end and again from the store's, not from the
        # hand-out: on a loaded machine the attempt and the store can each take longer than
        # RETRY_AFTER_S, and our own claim is still to come (at the next flush). The first
        # mark is made before this coroutine yields: the miner asks for its next job
        # right after handing this result over, and must not be given this job again.
        self._retry_from_now(job_id)
        # Off the loop: a 2048² C is 16 MiB to hash into chunks and write. A result
        # delivered before and still kept (a miner retrying the job: one without the miner
        # key's retries until its block wins) is neither written nor hashed again.
        # --withhold-results: claimed, never kept to serve.
        store = not self.withhold and not (
            self._delivered.get(job_id) == result_root
            and await asyncio.to_thread(self.blobs.store.has_blob, result_root)
        )
        if store:
            stored = await asyncio.to_thread(self.blobs.put_matrix, product, job_id, result_root)
            if job_id in self._pending_posts:
                self._early_results[stored] = self.chain.height
            self._retry_from_now(job_id)
        self._to_claim(job_id, result_root)
        if store:
            self.serve_soon(product, result_root, leaves)
        self._keep_back(product, result_root)

    def _keep_back(self, product: np.ndarray, result_root: bytes) -> None:
        """--withhold-results --reveal-withheld (tests only): keep C where only the answers
        to result challenges read it, the newest 8."""
        if not (self.withhold and self.reveal_withheld):
            return
        self._kept_back[result_root] = product
        self._kept_back.move_to_end(result_root)
        while len(self._kept_back) > 8:
            self._kept_back.popitem(last=False)

    def serve_soon(
        self, product: np.ndarray, result_root: bytes, leaves: bytes | None = None
    ) -> None:
        """Ready C to be served (``BlobExchange.warm``), in the background: its client asks
        for it as soon as it sees the claim, and the first ask would otherwise wait for
        16 MiB to be read back and hashed. ``leaves``: its rows' leaf hashes, kept from
        the attempt that committed its root (else its rows are hashed again)."""
        if self.withhold:  # --withhold-results: never served
            return
        task = asyncio.create_task(asyncio.to_thread(self.blobs.warm, product, result_root, leaves))
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    def _to_claim(self, job_id: bytes, result_root: bytes) -> None:
        """Claim ``job_id`` with ``result_root`` (its C kept) by transaction, at the next
        flush, if it is still open and unclaimed then."""
        self._delivered[job_id] = result_root
        self._delivered.move_to_end(job_id)
        while len(self._delivered) > MAX_ATTEMPTED:
            self._delivered.popitem(last=False)
        self._new_results.set()
        if self._claim_task is None:
            self._claim_task = asyncio.create_task(self._claim_loop(), name="claim-results")

    def _answer_soon(self, challenge: ResultChallengePayload) -> None:
        """Reveal the rows a poster's result_challenge asks of one of our claims (its C
        read back from the store off the event loop), or the claim is refunded."""
        task = asyncio.create_task(self._answer(challenge), name="answer result challenge")
        self._revealing.add(task)
        task.add_done_callback(self._revealing.discard)

    def _still_asked(
        self, challenge: ResultChallengePayload
    ) -> tuple[dict[str, Any], tuple[int, ...]] | None:
        """(the job's record, the rows still to reveal) while ``challenge`` is open at the
        tip; None once it was answered, settled or reorganised away."""
        state = self.chain.state
        rec = job_record(state, challenge.job_id)
        asked = state.get(JOB_CHALLENGES, challenge.job_id)
        if rec is None or not asked or rec["claim_id"] != challenge.claim_id:
            return None
        return rec, asked

    async def _answer(self, challenge: ResultChallengePayload) -> None:
        key = self.claim_key
        found = self._still_asked(challenge)
        if found is None:
            return  # answered, settled or reorganised away meanwhile
        rec, asked = found
        if rec["claimant"] not in (self.miner_address, key.address if key else None):
            return  # another's claim
        job = challenge.job_id.hex()[:16]
        if key is None:
            log.warning("job %s: our claim is challenged but no key can sign the answer", job)
            return
        m, n, root = rec["m"], rec["n"], rec["result_root"]
        try:
            payloads = await asyncio.to_thread(
                self._reveal_payloads,
                challenge.claim_id,
                challenge.job_id,
                root,
                m,
                n,
                asked,
                self._kept_back.get(root),  # --reveal-withheld (tests only)
            )
        except Exception:
            log.exception("job %s: could not read the challenged rows of our C", job)
            return
        if payloads is None and not self.withhold:
            # The C we kept is gone (a disk fault, a machine that lost its last writes, a
            # file removed by hand): computed again from the operands, or the bond burns.
            try:
                c = await self._recomputed(challenge, rec)
            except _Settled:
                log.info("job %s: its challenge was settled while C waited to be recomputed", job)
                return
            except Exception:
                log.exception("job %s: computing the lost C of our claim again failed", job)
                return
            if c is not None:
                payloads = await asyncio.to_thread(
                    self._reveal_payloads, challenge.claim_id, challenge.job_id, root, m, n,
                    asked, c,
                )  # fmt: skip
        if payloads is None:
            log.warning("job %s: our claim is challenged but its C is no longer stored", job)
            return
        sender = key.address
        for payload in payloads:
            _, nonce = self.chain.state.account(sender)
            tx = signed_transaction(
                key,
                chain_id=self.params.chain_id,
                nonce=nonce + len(self.mempool.by_sender(sender)),
                fee=CLAIM_FEE,
                payload=payload,
            )
            try:
                self._admit_tx(tx)
            except InvalidTransaction as e:
                log.warning("job %s: the answer to its result challenge was refused: %s", job, e)
                return
        self.challenges_answered += 1
        log.info("job %s: revealed rows %s of our C, as its poster asked", job, list(asked))

    async def _recomputed(
        self, challenge: ResultChallengePayload, rec: dict[str, Any]
    ) -> np.ndarray | None:
        """C of our challenged claim computed again, A·B from the job's operands (held
        here, or fetched as a miner fetches them, ahead of the other fetches), and kept to
        be served again; None, logged, if the operands cannot be had or their product is
        not the claim's result_root (nothing can answer for such a claim). One at a time:
        each holds its operands and its product; ``_Settled`` if the challenge was
        answered or settled while this one waited its turn (a node catching up with the
        chain meets challenges that later blocks settle)."""
        async with self._recomputing:
            if self._still_asked(challenge) is None:
                raise _Settled
            return await self._recompute(challenge.job_id, rec)

    async def _recompute(self, job_id: bytes, rec: dict[str, Any]) -> np.ndarray | None:
        job = job_id.hex()[:16]
        m, k, n, root = rec["m"], rec["k"], rec["n"], rec["result_root"]
        log.warning("job %s: the C of our challenged claim is lost; computing it again", job)
        await asyncio.to_thread(self._keep_fetched, job_id, (rec["root_a"], rec["root_b"]))
        try:
            raw_a, raw_bt = await self._fetch_operands(rec, urgent=True)
        except BlobFetchError as e:
            log.warning("job %s: cannot compute C again, its operands are unavailable: %s", job, e)
            return None
        shape = (m, k, n)
        c, product_root, leaves = await asyncio.to_thread(self._product, shape, raw_a, raw_bt)
        if product_root != root:
            log.error("job %s: A·B is not the C our claim committed to: it cannot be answered", job)
            return None
        try:
            await asyncio.to_thread(self.blobs.put_matrix, c, job_id, root)
        except Exception as e:  # a full disk: the rows are answered all the same
            log.warning("job %s: C computed again but not kept: %s", job, e)
        else:
            self.serve_soon(c, root, leaves)
        self.results_recomputed += 1
        return c

    def _product(
        self, shape: tuple[int, int, int], raw_a: bytes, raw_bt: bytes
    ) -> tuple[np.ndarray, bytes, bytes]:
        """A·B of fetched operands (``_operand_rows``; no B is built: the kernel takes Bᵀ),
        exact (the miners' kernel without noise or folds), its row root and its rows' leaf
        hashes."""
        a, bt = _operand_rows(*shape, raw_a, raw_bt)
        p = self.params
        c = get_backend("cpu").plain_matmul(a, bt, p.rank, p.tile_h, p.tile_w)
        root, leaves = matrix_rows_commitment(c)
        return c, root, leaves

    def _reveal_payloads(
        self,
        claim_id: bytes,
        job_id: bytes,
        root: bytes,
        m: int,
        n: int,
        rows: tuple[int, ...],
        c: np.ndarray | None = None,
    ) -> list[ResultRowsPayload] | None:
        """The result_rows transactions' payloads opening ``rows`` of the stored C
        (``root``; ``c`` if given), as many rows a transaction as fit; None if C is not
        stored."""
        if c is None:
            found = self.blobs.store.get_blob_chunked(root)
            if found is None:
                return None
            data, _ = found
            c = np.frombuffer(data, dtype="<i4").reshape(m, n)
        per_tx = max(1, (MAX_TX_SIZE - 4096) // (4 * n + HASH_SIZE * (m.bit_length() + 2) + 16))
        full = build_result_rows(claim_id, job_id, c, rows)
        return [
            ResultRowsPayload(claim_id, job_id, full.rows[i : i + per_tx])
            for i in range(0, len(full.rows), per_tx)
        ]

    def _retry_from_now(self, job_id: bytes) -> None:
        if job_id in self._attempted:
            self._attempted[job_id] = time.monotonic()

    async def _claim_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(CLAIM_RECHECK_S):
                    await self._new_results.wait()
                # Let results that finish close together share one transaction.
                await asyncio.sleep(CLAIM_FLUSH_S)
            except TimeoutError:
                pass
            self._new_results.clear()
            try:
                while self.claim_delivered() == MAX_RESULT_CLAIMS:
                    pass
            except Exception:
                log.exception("claiming results failed")

    def claim_delivered(self) -> int:
        """Claim delivered results whose jobs are open and unclaimed, in one job_result
        (as many as the miner's spendable balance covers); how many were claimed."""
        chain = self.chain
        key = self.claim_key
        open_ids = {job_id: rec for _, job_id, rec in self.open_jobs()}
        waiting = {job_id for _, job_id, _ in self.pending_posts()}  # claimed once it lands
        for job_id in [j for j in self._delivered if j not in open_ids and j not in waiting]:
            del self._delivered[job_id]  # claimed (by us or another), paid, expired
        wanted = [
            (job_id, root, open_ids[job_id]["reward"])
            for job_id, root in self._delivered.items()
            if job_id in open_ids and not self._claimed(job_id)
        ]
        if not wanted:
            return 0
        if key is None:
            return self._skip(
                "this node does not hold the miner address's key (see --miner-key): "
                "results are kept but not claimed by transaction"
            )
        sender = key.address
        # The balance is what the sender can spend: immature coinbases are LOCKED apart.
        balance, nonce = chain.state.account(sender)
        spendable = balance - self.mempool.pending_spend(sender)
        claims: list[JobClaim] = []
        cost = CLAIM_FEE
        for job_id, root, reward in wanted[:MAX_RESULT_CLAIMS]:
            bond = claim_bond(reward, self.params)
            if cost + bond <= spendable:
                claims.append(JobClaim(job_id, root))
                cost += bond
        if not claims:
            return self._skip(
                f"spendable balance {spendable} cannot cover a claim's bond and fee: "
                "results are kept but not claimed by transaction"
            )
        tx = signed_transaction(
            key,
            chain_id=self.params.chain_id,
            nonce=nonce + len(self.mempool.by_sender(sender)),
            fee=CLAIM_FEE,
            payload=JobResultPayload(tuple(claims)),
        )
        try:
            self._admit_tx(tx)
        except InvalidTransaction as e:
            return self._skip(f"the job_result was refused: {e}")
        self._cannot_claim = None
        self.claims_sent += len(claims)
        log.info(
            "claimed %d job(s) by transaction %s (bonds and fee %d)",
            len(claims),
            tx.txid.hex()[:16],
            cost,
        )
        return len(claims)

    def _skip(self, why: str) -> int:
        if why != self._cannot_claim:
            log.warning("%s", why)
            self._cannot_claim = why
        return 0

    def close(self) -> None:
        self._closed = True  # a prune under way stops after the blob it is deleting
        for task, _ in list(self._fetching.values()):
            task.cancel()
        if self._claim_task is not None:
            self._claim_task.cancel()
        for task in list(self._revealing):
            task.cancel()
