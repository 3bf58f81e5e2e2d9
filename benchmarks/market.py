"""The compute market under load on a fresh local testnet: how much of the mining is useful.

1. Warmup, on a first testnet of ``nodes`` mining nodes: for ``warmup`` seconds of
   null-job mining, measure the network's rate (Σ Δ``macs_done`` of getmininginfo).
2. A second, fresh testnet of as many nodes, its miners still off: the demand
   that stands when the window opens. A backlog of jobs is posted through node-0,
   ``offered_ratio`` × that rate × ``duration`` MACs of them, at ``REWARD``, and
   each miner is given ``MINER_STAKE`` to bond its job_result claims with.
   Posting a job costs its poster CPU of the order of mining it (random operands,
   their roots, the upload and the node storing them: ~0.1 s per 2 GMAC of a job on
   one core with the binary upload, ~0.2 s when operands travelled as hex over
   JSON-RPC, against ~0.2 s of a miner's kernel), so on a small machine posters
   that start with the window reach only a fraction of the miners' rate and the
   miners mine null jobs: a real market's queue stands before the miners
   arrive. The miners start only now, so the posting is not charged to them and
   the chain's difficulty anchor (block 1) is not set before a pause.
3. The miners start; once every one of them has attempted a posted job (a miner whose
   downloads came late may find the backlog taken by the others: more jobs are
   posted while the queue stands empty, ``_until_every_miner_joins``) and sees
   the others (they split the queue), the lead-in measures their rate for
   ``LEAD_IN_S`` (now that they download operands, store C and claim, a fraction
   of the warmup's), then the window opens: for ``duration`` seconds a stream of
   jobs is posted at ``STREAM_RATIO`` × the lead-in's rate, paying
   ``STREAM_REWARD`` (more per MAC, so miners take it before the backlog: its
   latency is a job's that pays to be served at once), while the chain is
   followed: a claim seen is fetched and checked with Freivalds at once (the
   stream's client apart from the backlog's), which is when the client has its
   result (latency = post → verified; ``latency_parts_p50_s`` says where it went,
   see ``latency_steps``). The stream's client looks its waiting jobs up
   (``getjob``, one batch every ``STREAM_POLL_S``) and takes a claim as soon as its
   job_result is pending in node-0's mempool (its claimant already serves C); the
   backlog's claims are read from ``getmarket`` at each new tip. When the window
   closes the stream stops but the miners go on (their blocks carry the claims still
   on their way) until the claims of the jobs attempted in the window are in, or
   ``CLAIM_WAIT_S``; the client checks those of them whose claimant attempted them
   in the window, and has ``GRACE_S`` in all.
4. The window's MACs, from each node's getmininginfo: ``macs_done``, ``macs_null``
   and ``attempted_jobs`` (job → MACs, one entry per attempt, counted when the
   attempt ends) at its opening and its close; ``mac_breakdown`` sorts every MAC
   mined into one fate (``mac_breakdown``, the function):

   * ``useful``: a job's m·k·n, once, for each job the client verified whose
     claimant attempted it in the window (``useful_mac_share``), whenever the
     claim landed;
   * ``duplicate``: attempts on a job that another node claimed
     (``duplicate_mac_share``); null when the nodes' miners do not report them;
   * ``repeated``: the claimant's own attempts beyond its first;
   * ``unverified``: claimed by the node that attempted it, its result not
     verified (wrong, or not checked within the grace);
   * ``unclaimed``: attempts on jobs nobody had claimed by the end of the grace
     (``unclaimed_jobs`` says why: a claim pending, a block that left the chain...);
   * ``null``: null-job mining;
   * ``unattributed``: MACs the attempt lists miss (0 unless a list overflowed).

``offered_over_network`` is the job work open at the window's start (the
backlog) plus that posted in it, over the window's length × the warmup rate.
The record keeps ``job_block_share`` (blocks whose PoUW ran on a posted job),
``attempts_before_post`` (attempts the miners made on a job whose job_post still
waited for its block: the stream, which pays more), ``attempts_interrupted`` (attempts
that a better-paying job, the stream's, ran inside between their strips) and the
client's verification
cost (Freivalds against the exact float32 BLAS matmul it replaces, and against
fetching C).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.operands import DrawnOperands, random_operands
from benchmarks.sgemm_baseline import measure_sgemm
from consensus.keys import PrivateKey, address_to_text
from consensus.params import COIN, DEVNET, NetworkParams, with_block_time
from consensus.transactions import TransferPayload, encode_tx, signed_transaction
from kernels.freivalds import freivalds_check
from node.client.market import MarketClient, ResultWithheld, WrongResult
from node.client.rpc import RpcCallError, RpcClient
from node.devtools.testnet import Testnet, TestnetNode, miner_key

POSTER_LABELS = ("devnet-11", "devnet-12", "devnet-13", "devnet-14")
"""One posting thread per key: one poster's RPC round trips cannot keep up with miners."""
DEFAULT_SHAPE = (2048, 4096, 2048)
"""17 GMAC jobs, operands of 8 MiB and C of 16 MiB: half the bytes posted, fetched,
stored and returned per MAC of the 1024×1920×1024 jobs that one putoperand request
(4 MiB of hex) allowed before the binary upload (operands ∝ 1/m + 1/n, C ∝ 4/k), and
still within devnet's largest operand (16 MiB). On one small machine those bytes, not
the kernel, bound the window's rate: with 2 GMAC jobs the three miners there mined
the null job 15 % of the window for want of operands, with these none. A claim (one
64-byte entry of a job_result) is nothing beside a job's work, and an attempt takes
about a second."""
REWARD = 10_000
STREAM_RATIO = 0.1
"""The jobs posted during the window, as a multiple of the lead-in's rate (the miners'
rate on the queue: a fraction of the null-job warmup's on a small machine)."""
STREAM_REWARD = 2 * REWARD
VERIFIERS = 2
"""Client threads fetching and checking results, the backlog's and the stream's each: a
queue of results waiting to be checked would be counted as the network's latency (one
thread fell behind the stream when C came as hex over JSON-RPC)."""
CLAIMS_SEEN = 200
"""Claims read at each new tip (newest first)."""
STREAM_POLL_S = 0.1
"""How often the stream's waiting jobs are looked up (getjob) for a claim, pending or mined."""
SAMPLE_S = 1.0
"""How often the nodes' MAC counters are sampled for the plot."""
GRACE_S = 60.0
"""After the window, how long the client may take to verify the claims of its work."""
CLAIM_WAIT_S = 20.0
"""After the window, how long the claims of the attempts made in it may take to land
(an attempt's C is stored, claimed by a job_result and mined: seconds)."""
LEAD_IN_S = 5.0
"""Mining on the queue before the window opens, once every miner works on it: the rate
that sizes the stream is measured over it."""
MINER_STAKE = 100 * COIN
"""Given to each miner before its start, to bond its claims (a job's bond is its reward)."""
CLAIMED = ("mined", "paid")
WITHHELD_RETRY_S = 1.0
"""After a fetch of C that the network could not serve (the claimant's node slow to hand
it to node-0, say), how long the client waits to fetch it again, as a client would."""
MINING_START_S = 300.0
"""How long the nodes may take to start mining (the kernels compile on first use)."""


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 3)


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@dataclass
class MinerSnapshot:
    """One node's getmininginfo counters; None where its miner does not report them."""

    address: str
    macs_done: int
    macs_null: int | None
    macs_jobs: int | None
    attempts: Counter[tuple[str, int]] | None
    attempts_before_post: int | None = None
    attempts_interrupted: int | None = None

    @classmethod
    def of(cls, node: TestnetNode) -> MinerSnapshot:
        info = node.call("getmininginfo")
        attempted = info.get("attempted_jobs")
        return cls(
            info["miner_address"],
            int(info["macs_done"]),
            info.get("macs_null"),
            info.get("macs_jobs"),
            None if attempted is None else Counter((j, int(m)) for j, m in attempted),
            info.get("attempts_before_post"),
            info.get("attempts_interrupted"),
        )


def _wait_for(nodes: list[TestnetNode], counter: str, timeout: float, at_least: int = 1) -> None:
    """Until every node's getmininginfo ``counter`` is at least ``at_least``."""
    deadline = time.monotonic() + timeout
    while not all(int(n.call("getmininginfo").get(counter) or 0) >= at_least for n in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"a node's {counter} stayed below {at_least} for {timeout:g} s")
        time.sleep(0.2)


TOPUP_WAIT_S = 2.0
"""How long the queue stays empty (no job open, nothing in node-0's mempool) while a
miner has mined no posted job, before ``_until_every_miner_joins`` posts more."""


def _until_every_miner_joins(
    nodes: list[TestnetNode], poster: _Poster, timeout: float, say: Callable[[str], None]
) -> int:
    """Until every node has mined on a posted job; how many jobs were posted meanwhile.

    A miner whose downloads came late can find the whole backlog taken: the others help
    with a slow owner's jobs, as they should. Waiting for it then waits for jobs that
    never come, so whenever the queue has stood empty for ``TOPUP_WAIT_S``, a job per
    node is posted (``topup_jobs`` in the record), until every miner has mined one."""
    deadline = time.monotonic() + timeout
    node0 = nodes[0]
    posted = 0
    empty_since: float | None = None
    while True:
        idle = [n.index for n in nodes if not int(n.call("getmininginfo").get("macs_jobs") or 0)]
        if not idle:
            return posted
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(
                f"node(s) {idle} mined no posted job in {timeout:g} s "
                f"({posted} jobs posted after the backlog)"
            )
        queued = node0.call("getmarket")["jobs"]["open"] or node0.call("getinfo")["mempool"]
        if queued:
            empty_since = None
        elif empty_since is None:
            empty_since = now
        elif now - empty_since >= TOPUP_WAIT_S:
            say(f"the backlog is gone and node(s) {idle} mined none: posting {len(nodes)} more")
            poster.post_backlog(len(nodes))
            posted += len(nodes)
            empty_since = None
        time.sleep(0.2)


def _total_macs(nodes: list[TestnetNode]) -> int:
    return sum(int(n.call("getmininginfo")["macs_done"]) for n in nodes)


@dataclass
class PostedJob:
    """A job the bench posted: its operands (by their seed), when, and what became of it."""

    operands: DrawnOperands
    sent: float
    posted: float = 0.0
    """When the node admitted its job_post (``sent``: when its upload began)."""
    txid: str = ""
    backlog: bool = False
    claim_seen: float | None = None
    claimant: str | None = None
    claim_kind: str | None = None
    claim_pending: bool = False
    """Its claim was seen while a job_result still waited in node-0's mempool."""
    verified: float | None = None
    wrong: bool = False
    withheld: int = 0
    """Fetches of its C that the network could not serve yet (``ResultWithheld``)."""
    retry_at: float = 0.0
    """Not fetched again before this (``WITHHELD_RETRY_S`` after one was withheld)."""
    before_window: bool = False
    after_window: bool = False
    """Its claim was first seen after the window closed."""


@dataclass
class _Poster:
    """Posts jobs from ``len(clients)`` keys at once: a backlog as fast as they can, then a
    stream at a steady rate until told to stop."""

    clients: list[MarketClient]
    shape: tuple[int, int, int]
    expiry_blocks: int
    jobs: dict[bytes, PostedJob] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    _backlogs: int = 0

    def post_backlog(self, count: int) -> None:
        """Post ``count`` jobs at ``REWARD``, spread over the keys; returns when all are sent."""
        threads = [
            threading.Thread(
                target=self._backlog, args=(i, client, count), name=f"backlog-{i}", daemon=True
            )
            for i, client in enumerate(self.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._backlogs += 1
        if self.error is not None:
            raise RuntimeError(f"posting the backlog failed: {self.error}")

    def start_stream(self, jobs_per_s: float) -> None:
        for i, client in enumerate(self.clients):
            t = threading.Thread(
                target=self._stream, args=(i, client, jobs_per_s), name=f"poster-{i}"
            )
            t.daemon = True
            t.start()
            self._threads.append(t)

    def join(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _post(
        self, client: MarketClient, seed: tuple[int, ...], reward: int, backlog: bool
    ) -> None:
        operands = DrawnOperands(seed, self.shape)
        a, b = operands.draw()
        sent = time.monotonic()
        job = client.submit(a, b, reward, expiry_blocks=self.expiry_blocks)
        with self.lock:
            self.jobs[job.job_id] = PostedJob(
                operands, sent, time.monotonic(), job.txid, backlog=backlog
            )

    def _backlog(self, index: int, client: MarketClient, count: int) -> None:
        try:
            for j, _ in enumerate(range(index, count, len(self.clients))):
                # New operands each job and each call (a top-up is another backlog).
                self._post(client, (1_000 + index, self._backlogs, j), REWARD, backlog=True)
        except BaseException as e:  # reported by post_backlog
            self.error = e

    def _stream(self, index: int, client: MarketClient, jobs_per_s: float) -> None:
        posted = 0
        interval = len(self.clients) / jobs_per_s  # each thread its share of the rate
        due = time.monotonic() + index * interval / len(self.clients)
        try:
            while not self.stop.is_set():
                wait = due - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    return
                self._post(client, (7 + index, posted), STREAM_REWARD, backlog=False)
                posted += 1
                due += interval
        except BaseException as e:  # reported by the main thread, which stops the testnet
            self.error = e


@dataclass
class _Sampler:
    """Every SAMPLE_S: (t, all MACs the nodes mined, useful MACs verified so far)."""

    nodes: list[TestnetNode]
    t0: float
    useful: Callable[[], int]
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        due = self.t0
        while not self.stop.is_set():
            self.samples.append(
                (time.monotonic() - self.t0, _total_macs(self.nodes), self.useful())
            )
            due += SAMPLE_S
            self.stop.wait(max(0.0, due - time.monotonic()))


def bench_market(
    nodes: int = 3,
    duration: float = 30.0,
    warmup: float = 10.0,
    offered_ratio: float = 2.0,
    shape: tuple[int, int, int] | None = None,
    block_time_ms: int = 300,
    plot_path: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Start the testnets, measure as the module docstring says; every node always stops."""
    params = with_block_time(DEVNET, block_time_ms)
    shape = shape or DEFAULT_SHAPE
    too_small = params.job_too_small(*shape)
    if too_small:
        raise ValueError(f"--shape: {too_small}")
    say = on_progress or (lambda _line: None)
    job_macs = math.prod(shape)
    with tempfile.TemporaryDirectory(prefix="pouw-bench-market-") as tmp:
        warmup_rate = _warmup(Path(tmp) / "warmup", nodes, block_time_ms, warmup, say)
        net = Testnet(Path(tmp) / "market", nodes, block_time_ms=block_time_ms, mine=False)
        try:
            started = time.monotonic()
            net.start()
            startup_s = time.monotonic() - started
            return _measure(net, params, shape, job_macs, duration, warmup_rate, offered_ratio,
                            plot_path, say) | {"startup_s": round(startup_s, 2)}  # fmt: skip
        finally:
            net.stop()


def _warmup(
    root: Path, nodes: int, block_time_ms: int, seconds: float, say: Callable[[str], None]
) -> float:
    """The network's MAC rate on null jobs, on a testnet of its own (stopped after)."""
    net = Testnet(root, nodes, block_time_ms=block_time_ms)
    try:
        net.start()
        say(f"{nodes} nodes up; warming up for {seconds:g} s")
        # Every miner under way first: its first attempt may wait for the kernels to compile.
        _wait_for(net.nodes, "macs_done", MINING_START_S)
        w0, tw0 = _total_macs(net.nodes), time.monotonic()
        time.sleep(seconds)
        w1, tw1 = _total_macs(net.nodes), time.monotonic()
    finally:
        net.stop()
    rate = (w1 - w0) / (tw1 - tw0)
    if rate <= 0:
        raise RuntimeError(f"the nodes mined nothing in the {seconds:g} s warmup")
    return rate


def _measure(
    net: Testnet,
    params: NetworkParams,
    shape: tuple[int, int, int],
    job_macs: int,
    duration: float,
    warmup_rate: float,
    offered_ratio: float,
    plot_path: str | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    node0 = net.nodes[0]
    assert node0.rpc is not None

    def client(key: PrivateKey, node: TestnetNode = node0) -> MarketClient:
        assert node.rpc is not None
        return MarketClient(RpcClient(node.rpc.url, node.rpc.token), key, params)

    # The backlog alone offers the ratio, and what the lead-in takes of it (at most its
    # length of work at the warmup rate, twice over): what the stream adds is on top.
    backlog_jobs = math.ceil(offered_ratio * warmup_rate * (duration + LEAD_IN_S) / job_macs)
    expiry = math.ceil((duration + GRACE_S + MINING_START_S) * 1000 / params.block_time_ms)
    poster = _Poster([client(PrivateKey.from_label(label)) for label in POSTER_LABELS],
                     shape, expiry)  # fmt: skip
    say(
        f"network {warmup_rate / 1e9:.2f} GMAC/s; posting a backlog of {backlog_jobs} jobs of "
        f"{'x'.join(map(str, shape))}"
    )
    _fund_miners(node0, params, PrivateKey.from_label(POSTER_LABELS[0]), len(net.nodes))
    posting = time.monotonic()
    poster.post_backlog(backlog_jobs)
    backlog_s = time.monotonic() - posting
    for n in net.nodes:
        n.call("setmining", True)
    # Every miner at work on the queue, splitting it with all the others.
    topup_jobs = _until_every_miner_joins(net.nodes, poster, MINING_START_S, say)
    _wait_for(net.nodes, "miners_seen", MINING_START_S, at_least=len(net.nodes) - 1)
    # Their downloads under way: the window measures the steady state, and the stream is
    # sized from the rate they mine the queue at (operand downloads, C stores and claims
    # share the machine with the kernels, as in the window), not the null job's.
    lead0, tl0 = _total_macs(net.nodes), time.monotonic()
    time.sleep(LEAD_IN_S)
    lead_rate = (_total_macs(net.nodes) - lead0) / (time.monotonic() - tl0)
    if lead_rate <= 0:
        raise RuntimeError(f"the miners mined nothing in the {LEAD_IN_S:g} s lead-in")
    jobs_per_s = min(offered_ratio, STREAM_RATIO) * lead_rate / job_macs
    lead_in_s = time.monotonic() - posting - backlog_s
    say(
        f"backlog posted in {backlog_s:.0f} s; streaming {jobs_per_s:.2f} jobs/s for {duration:g} s"
    )

    # -- the measured window
    start = [MinerSnapshot.of(n) for n in net.nodes]
    start_height = node0.call("getinfo")["height"]
    t0 = time.monotonic()
    _claimed_before(node0, poster)
    t1 = t0 + duration
    useful = [0]
    sampler = _Sampler(net.nodes, t0, lambda: useful[0])
    sampling = threading.Thread(target=sampler.run, name="bench-sampler", daemon=True)
    poster.start_stream(jobs_per_s)
    sampling.start()
    fetch_s: list[float] = []
    height = -1
    end: list[MinerSnapshot] | None = None
    # The stream's client follows its jobs on a thread of its own, as a real one would:
    # the main loop's getmarket reads (the backlog's claims) must not delay it.
    watcher = _StreamWatcher(node0, poster)
    watching = threading.Thread(target=watcher.run, name="stream-watcher", daemon=True)
    watching.start()
    # Once the window closed: the jobs attempted in it, and by which nodes.
    attempters: dict[bytes, set[str]] = {}
    mining = True
    window_s = duration
    end_height = start_height
    # A client fetches C from the node of the miner that claimed it, which holds it: on
    # this one machine, fetching it through node-0 would load the node that serves every
    # miner its operands with work a real client's own node does elsewhere.
    checker = client(PrivateKey.from_label(POSTER_LABELS[0]))
    checkers = {
        address_to_text(miner_key(i).address): client(checker.key, n)
        for i, n in enumerate(net.nodes)
    }
    checking: dict[bytes, Future[float | None]] = {}
    with (
        ThreadPoolExecutor(VERIFIERS) as verifiers,
        ThreadPoolExecutor(VERIFIERS) as stream_verifier,
    ):
        try:
            while True:
                now = time.monotonic()
                if poster.error is not None:
                    raise RuntimeError(f"posting a job failed: {poster.error}")
                if watcher.error is not None:
                    raise RuntimeError(f"following the stream failed: {watcher.error}")
                if end is None and now >= t1:
                    end = [MinerSnapshot.of(n) for n in net.nodes]
                    window_s = time.monotonic() - t0
                    end_height = node0.call("getinfo")["height"]
                    poster.join()
                    sampler.stop.set()
                    watcher.stop.set()
                    attempters = window_attempters(start, end)
                    say("window over; following the claims of the work done in it")
                tip = node0.call("getinfo")["height"]
                if tip != height:
                    height = tip
                    _see_claims(node0, poster, None if end is None else attempters.keys())
                if (
                    mining
                    and end is not None
                    and (_claims_in(poster, attempters) or now > t1 + CLAIM_WAIT_S)
                ):
                    # The window's claims are in: the client's checks need not share the
                    # machine with the miners any more.
                    for n in net.nodes:
                        n.call("setmining", False)
                    mining = False
                with poster.lock:
                    todo = sorted(
                        (
                            (job_id, j)
                            for job_id, j in poster.jobs.items()
                            if j.claim_seen is not None
                            and job_id not in checking
                            and j.retry_at <= now
                            # after the window, only a result of the window's work
                            and (not j.after_window or j.claimant in attempters[job_id])
                        ),
                        key=lambda item: item[1].claim_seen or 0.0,
                    )
                for job_id, job in todo:
                    # The stream's client checks its results apart from the backlog's.
                    pool = verifiers if job.backlog else stream_verifier
                    near = checkers.get(job.claimant or "", checker)
                    checking[job_id] = pool.submit(_verify, near, checker, job_id, job)
                for job_id, done in list(checking.items()):
                    if done.done() and isinstance(done.exception(), ClaimUndone):
                        del checking[job_id]  # seen again when claimed again
                        poster.jobs[job_id].claim_seen = None
                        poster.jobs[job_id].claim_pending = False
                    elif done.done() and isinstance(done.exception(), ResultLate):
                        del checking[job_id]  # fetched again at its retry_at
                    elif done.done() and (took := done.result()) is not None:
                        fetch_s.append(took)
                        useful[0] += job_macs
                        checking[job_id] = _DONE
                with poster.lock:  # a withheld C waiting to be fetched again is pending too
                    retrying = any(j.retry_at > now for j in poster.jobs.values())
                pending = retrying or any(not f.done() for f in checking.values())
                if end is not None and (not (pending or mining) or now > t1 + GRACE_S):
                    break
                time.sleep(0.05)
        finally:
            poster.join()
            sampler.stop.set()
            watcher.stop.set()
            sampling.join(timeout=10)
            watching.join(timeout=10)
            for f in checking.values():
                f.cancel()
    return _record(
        net, node0, params, shape, job_macs, poster, start, end, start_height, end_height,
        window_s, warmup_rate, sampler.samples, fetch_s, plot_path,
    ) | {"backlog_jobs": backlog_jobs, "topup_jobs": topup_jobs,
         "backlog_post_s": round(backlog_s, 1), "lead_in_s": round(lead_in_s, 1),
         "lead_in_macs_per_s": round(lead_rate),
         "stream_jobs_per_s": round(jobs_per_s, 3)}  # fmt: skip


def _fund_miners(node0: TestnetNode, params: NetworkParams, payer: PrivateKey, count: int) -> None:
    """Give each testnet miner a balance to bond its job_result claims with: a fresh
    miner's coinbases mature only after the challenge window, and a real market's
    miners hold a stake."""
    nonce = node0.call("getaccount", address_to_text(payer.address))["next_nonce"]
    for i in range(count):
        tx = signed_transaction(
            payer,
            chain_id=params.chain_id,
            nonce=nonce + i,
            fee=1_000,
            payload=TransferPayload(miner_key(i).address, MINER_STAKE),
        )
        node0.call("sendtransaction", encode_tx(tx).hex())


def _verify(near: MarketClient, far: MarketClient, job_id: bytes, job: PostedJob) -> float | None:
    """Fetch and check one claimed job's C, from ``near`` (the claimant's node) or, while
    that node has not seen the block with the claim yet, ``far`` (node-0, which has); the
    time it took, or None if it was wrong; ``ResultLate`` if the network could not serve
    C yet (fetched again ``WITHHELD_RETRY_S`` later)."""
    a, b = job.operands.draw()
    t = time.perf_counter()
    try:
        try:
            near.result(job_id, a, b)  # Freivalds inside
        except (ValueError, RpcCallError):
            # "has no result": the claim's block has not reached it yet, or a reorg on
            # it took the claim back between the status and the fetch
            far.result(job_id, a, b)
    except (ValueError, RpcCallError) as e:  # node-0 too: a reorg took the claim back
        raise ClaimUndone(str(e)) from None
    except WrongResult:
        job.wrong = True
        return None
    except ResultWithheld as e:
        job.withheld += 1
        job.retry_at = time.monotonic() + WITHHELD_RETRY_S
        raise ResultLate(str(e)) from None
    took = time.perf_counter() - t
    job.verified = time.monotonic()
    return took


class ClaimUndone(Exception):
    """The block holding a job's claim left the chain before the client fetched C."""


class ResultLate(Exception):
    """The network could not serve a claim's C yet: it is fetched again later."""


_DONE: Future[float | None] = Future()
_DONE.set_result(None)
"""Stands for a check already counted."""


def _claimed_before(node0: TestnetNode, poster: _Poster) -> None:
    """Mark our jobs claimed before the window opens (in the lead-in): not the window's."""
    claims = node0.call("getmarket", 1000)["recent_claims"]
    with poster.lock:
        for c in claims:
            job = poster.jobs.get(bytes.fromhex(c["job_id"]))
            if job is not None and c["status"] in CLAIMED:
                job.before_window = True


def _claims_in(poster: _Poster, attempters: dict[bytes, set[str]]) -> bool:
    """Whether every job attempted in the window has a claim seen (or had one before)."""
    with poster.lock:
        return all(
            (j := poster.jobs.get(job_id)) is None or j.claim_seen is not None or j.before_window
            for job_id in attempters
        )


def _see_claims(node0: TestnetNode, poster: _Poster, follow: Collection[bytes] | None) -> None:
    """Mark our jobs the chain shows claimed now; after the window (``follow`` given),
    only those in ``follow``."""
    # Newest first: more than a few blocks' claims since the last look (node-0 builds
    # every row of every section, a load on the node the miners fetch from).
    claims = node0.call("getmarket", CLAIMS_SEEN)["recent_claims"]
    now = time.monotonic()
    with poster.lock:
        for c in claims:
            job_id = bytes.fromhex(c["job_id"])
            job = poster.jobs.get(job_id)
            if job is None or job.claim_seen is not None or job.before_window:
                continue
            if c["status"] not in CLAIMED:
                continue
            if follow is not None:
                if job_id not in follow:
                    continue  # neither attempted in the window nor claimed in it
                job.after_window = True
            job.claim_seen = now
            job.claimant = c["claimant"]
            job.claim_kind = c["claim_kind"]


@dataclass
class _StreamWatcher:
    """Every STREAM_POLL_S until told to stop: :func:`_see_stream_claims`."""

    node0: TestnetNode
    poster: _Poster
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(STREAM_POLL_S):
                _see_stream_claims(self.node0, self.poster)
        except BaseException as e:  # reported by the main thread, which stops the testnet
            self.error = e


def _see_stream_claims(node0: TestnetNode, poster: _Poster) -> None:
    """Mark the stream's jobs claimed now, in a block or by a job_result pending in
    node-0's mempool (its claimant already serves C): ``getjob`` for each one still
    waiting, in one batch."""
    with poster.lock:
        waiting = [
            job_id
            for job_id, j in poster.jobs.items()
            if not j.backlog and j.claim_seen is None and not j.before_window
        ]
    assert node0.rpc is not None
    records = node0.rpc.call_many("getjob", [[job_id.hex()] for job_id in waiting])
    now = time.monotonic()
    with poster.lock:
        for job_id, rec in zip(waiting, records, strict=True):
            job = poster.jobs[job_id]
            if isinstance(rec, RpcCallError) or job.claim_seen is not None:
                continue  # "unknown job": its post is not in a block yet
            if rec["status"] in CLAIMED:
                job.claimant, job.claim_kind = rec["claimant"], rec["claim_kind"]
            elif rec.get("pending_claim"):  # the tip's header, or a job_result in the mempool
                job.claimant, job.claim_kind = rec["pending_claimant"], rec["pending_claim_kind"]
                job.claim_pending = True
            else:
                continue
            job.claim_seen = now


def _record(
    net: Testnet,
    node0: TestnetNode,
    params: NetworkParams,
    shape: tuple[int, int, int],
    job_macs: int,
    poster: _Poster,
    start: list[MinerSnapshot],
    end: list[MinerSnapshot] | None,
    start_height: int,
    end_height: int,
    window_s: float,
    warmup_rate: float,
    samples: list[tuple[float, int, int]],
    fetch_s: list[float],
    plot_path: str | None,
) -> dict[str, Any]:
    assert end is not None
    jobs = poster.jobs
    mined = sum(e.macs_done - s.macs_done for s, e in zip(start, end, strict=True))
    tip = node0.call("getblockbyheight", node0.call("getinfo")["height"], False)
    outcomes = job_outcomes(
        node0,
        jobs,
        window_attempters(start, end),
        jobs_of_blocks_left(net.nodes, params, start_height),
        _block_job(tip, params),
    )
    breakdown = mac_breakdown(start, end, outcomes)
    if breakdown is None:  # miners that do not report attempts: the claims seen in the window
        verified = [j for j in jobs.values() if j.verified is not None and not j.before_window]
    else:
        verified = [jobs[bytes.fromhex(job_hex)] for job_hex in breakdown.useful_jobs]
    useful = job_macs * len(verified)
    # Latency is the stream's: a backlog job's is how long the bench queued it before.
    latencies = [j.verified - j.sent for j in verified if j.verified is not None and not j.backlog]
    waited = [j.verified - j.sent for j in verified if j.verified is not None and j.backlog]
    offered = sum(not j.before_window for j in jobs.values()) * job_macs
    duplicate = None if breakdown is None else breakdown.macs["duplicate"]
    blocks = end_height - start_height
    # The bound on the median latency: two block intervals and one job's compute
    # (a job's MACs at one node's share of the window's rate: the nodes share the box).
    job_compute_s = job_macs * len(net.nodes) * window_s / mined if mined else None
    latency_target = (
        round(2 * window_s / blocks + job_compute_s, 3) if blocks and job_compute_s else None
    )
    job_blocks = _job_blocks(node0, params, set(jobs), start_height, end_height)
    steps = latency_steps(node0, jobs, start_height)
    kinds = Counter(j.claim_kind for j in jobs.values() if j.claim_seen is not None)
    record: dict[str, Any] = {
        "bench": "market",
        "nodes": len(net.nodes),
        "block_time_ms": params.block_time_ms,
        "shape": list(shape),
        "macs_per_job": job_macs,
        "window_s": round(window_s, 2),
        "warmup_macs_per_s": round(warmup_rate),
        "offered_macs_per_s": round(offered / window_s),
        "offered_over_network": round(offered / window_s / warmup_rate, 3),
        "jobs_posted": len(jobs),
        "jobs_streamed": sum(not j.backlog for j in jobs.values()),
        "jobs_claimed_before_window": sum(j.before_window for j in jobs.values()),
        "jobs_claimed": sum(kinds.values()),
        "claims_by_block": kinds.get("block", 0),
        "claims_by_tx": kinds.get("tx", 0),
        "jobs_verified": len(verified),
        "jobs_claimed_after_window": sum(j.after_window for j in verified),
        "wrong_results": sum(j.wrong for j in jobs.values()),
        "results_withheld": sum(j.withheld for j in jobs.values()),
        "fraud_caught": node0.call("getmarket", 1)["jobs"]["refunded"],
        "network_macs": mined,
        "useful_macs": useful,
        "useful_mac_share": round(min(1.0, useful / mined), 4) if mined else 0.0,
        "duplicate_mac_share": (
            None if duplicate is None else round(min(1.0, duplicate / mined), 4) if mined else 0.0
        ),
        "null_mac_share": _share(start, end, "macs_null", mined),
        "mac_breakdown": None if breakdown is None else breakdown.macs,
        "unclaimed_jobs": None if breakdown is None else breakdown.unclaimed_jobs,
        "network_macs_per_s": round(mined / window_s),
        "useful_macs_per_s": round(useful / window_s),
        "jobs_per_s": round(len(verified) / window_s, 3),
        "latency_p50_s": _quantile(latencies, 0.5),
        "latency_p95_s": _quantile(latencies, 0.95),
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "latency_parts_p50_s": step_quantiles(steps, 0.5),
        "latency_parts_p95_s": step_quantiles(steps, 0.95),
        "stream_jobs_verified": len(latencies),
        "backlog_jobs_verified": len(waited),
        "backlog_wait_p50_s": _quantile(waited, 0.5),
        "blocks_in_window": blocks,
        "block_interval_s": round(window_s / blocks, 3) if blocks else None,
        "job_compute_s": round(job_compute_s, 3) if job_compute_s else None,
        "latency_target_s": latency_target,
        "job_blocks": job_blocks,
        "job_block_share": round(job_blocks / blocks, 4) if blocks else 0.0,
        "miners_report_attempts": all(s.attempts is not None for s in end),
        "attempts_before_post": _delta(start, end, "attempts_before_post"),
        "attempts_interrupted": _delta(start, end, "attempts_interrupted"),
        "fetch_c_s": round(statistics.median(fetch_s), 6) if fetch_s else None,
        **_verification_cost(shape),
    }
    if fetch_s:
        record["freivalds_over_fetch"] = round(record["freivalds_s"] / record["fetch_c_s"], 4)
    if plot_path is not None:
        plot_market(samples, plot_path)
        record["plot"] = plot_path
    return record


LATENCY_PARTS = ("upload", "post_in_block", "mined_and_claimed", "claim_seen", "fetch_verify")


def latency_steps(
    node0: TestnetNode, jobs: dict[bytes, PostedJob], start_height: int
) -> dict[str, list[float]]:
    """Where each streamed job's latency went, step by step, over the verified stream
    (:func:`step_quantiles` sums them up): ``upload`` (its operands and job_post sent
    to node-0), ``post_in_block`` (→ node-0 has the block with the job_post),
    ``mined_and_claimed`` (→ the claim is sent: operands fetched, the attempt, C
    stored, and the job_result seen pending in node-0's mempool, within the client's
    STREAM_POLL_S; or, for a claim first seen in a block, → node-0 has that block; a
    job attempted while its post waited has only the claim's flush and relay left
    here, its compute is within ``post_in_block``), ``claim_seen`` (→ the client sees
    a claim first seen in a block; a pending one it sees as it polls: no step of its
    own) and ``fetch_verify`` (→ C fetched and checked). Blocks are timed by node-0's
    first sight of them. A step that an earlier event overtook counts 0: a claim sent
    while its post still waited, before node-0 had the post's block."""
    parts: dict[str, list[float]] = {name: [] for name in LATENCY_PARTS}
    stream = {job_id: j for job_id, j in jobs.items() if not j.backlog and j.verified is not None}
    if not stream:
        return parts
    height = node0.call("getinfo")["height"]
    blocks = node0.call("getblocktimes", height - start_height + 1, True)["active"]
    clock = time.time() - time.monotonic()  # node-0's first_seen is wall-clock time
    seen_at = {b["height"]: b["first_seen"] - clock for b in blocks if b["first_seen"]}
    tx_height = {txid: b["height"] for b in blocks for txid in b["txids"]}
    for job_id, j in stream.items():
        try:
            claim_height = node0.call("getjob", job_id.hex()).get("claim_height")
        except RpcCallError:  # "unknown job": a reorg took its post back since
            continue
        posted_at = seen_at.get(tx_height.get(j.txid, -1))
        claimed_at = j.claim_seen if j.claim_pending else seen_at.get(claim_height or -1)
        if posted_at is None or claimed_at is None or j.claim_seen is None:
            continue  # a block node-0 keeps no first-seen time for any more
        assert j.verified is not None
        # Running maxima: a miner may attempt a job while its post waits and send the
        # claim before node-0 has the post's block; that step then counts 0, never less.
        times = (j.sent, j.posted, posted_at, claimed_at, j.claim_seen, j.verified)
        steps = tuple(accumulate(times, max))
        for name, (a, b) in zip(LATENCY_PARTS, pairwise(steps), strict=True):
            if not (name == "claim_seen" and j.claim_pending):
                parts[name].append(b - a)
    return parts


def step_quantiles(steps: dict[str, list[float]], q: float) -> dict[str, float | None]:
    """The ``q`` quantile of each step of :func:`latency_steps` (None for a step no job
    took). The quantiles of the steps need not add up to the latency's."""
    return {name: _quantile(values, q) for name, values in steps.items()}


def _delta(start: list[MinerSnapshot], end: list[MinerSnapshot], key: str) -> int | None:
    """How much the nodes' counter ``key`` grew; None where a miner does not report it."""
    deltas = [(getattr(s, key), getattr(e, key)) for s, e in zip(start, end, strict=True)]
    if any(a is None or b is None for a, b in deltas):
        return None
    return sum(b - a for a, b in deltas)


def _share(
    start: list[MinerSnapshot], end: list[MinerSnapshot], key: str, mined: int
) -> float | None:
    deltas = [(getattr(s, key), getattr(e, key)) for s, e in zip(start, end, strict=True)]
    if not mined or any(a is None or b is None for a, b in deltas):
        return None
    return round(sum(b - a for a, b in deltas) / mined, 4)


def window_attempters(
    start: list[MinerSnapshot], end: list[MinerSnapshot]
) -> dict[bytes, set[str]]:
    """The posted jobs attempted between two snapshots, and the nodes that attempted each."""
    out: dict[bytes, set[str]] = {}
    for s, e in zip(start, end, strict=True):
        if s.attempts is not None and e.attempts is not None:
            for job_hex, _ in e.attempts - s.attempts:
                out.setdefault(bytes.fromhex(job_hex), set()).add(e.address)
    return out


@dataclass(frozen=True)
class JobOutcome:
    """What became of a job by the end of the grace, as the breakdown needs it."""

    claimant: str | None
    """The node whose claim holds on node-0's chain; None while nobody's does."""
    claimed_before: bool = False
    """Claimed before the window opened."""
    verified: bool = False
    """The client fetched the claimed result and Freivalds accepted it."""
    claim_pending: bool = False
    """Unclaimed on chain, with a job_result claiming it in node-0's mempool."""
    block_left: bool = False
    """Unclaimed on chain, the job of a block some node holds off its active chain (a
    block that lost a race or left in a reorg: its header's claim went with it)."""
    tip_job: bool = False
    """Unclaimed yet as the job of node-0's tip (claimed once a child lands)."""


MAC_FATES = ("useful", "duplicate", "repeated", "unverified", "unclaimed", "null", "unattributed")


@dataclass
class MacBreakdown:
    """Every MAC mined in the window in one fate (``macs``, summing to the MACs mined), the
    jobs whose work counts useful, and why the unclaimed jobs were."""

    macs: dict[str, int]
    useful_jobs: list[str]
    unclaimed_jobs: dict[str, int]


def mac_breakdown(
    start: list[MinerSnapshot], end: list[MinerSnapshot], outcomes: dict[str, JobOutcome]
) -> MacBreakdown | None:
    """Sort the MACs the nodes mined between ``start`` and ``end`` by what became of them
    (see the module docstring, 4.): each node's attempts in between, against what became
    of their jobs (``outcomes``, by job id in hex; a job missing is one nobody claimed).
    None when a node's miner does not report its attempts."""
    macs = dict.fromkeys(MAC_FATES, 0)
    useful: list[str] = []
    reasons = ("claim_pending", "block_left", "tip_job", "no_claim")
    unclaimed: dict[str, set[str]] = {why: set() for why in reasons}
    for s, e in zip(start, end, strict=True):
        if s.attempts is None or e.attempts is None or s.macs_null is None or e.macs_null is None:
            return None
        macs["null"] += e.macs_null - s.macs_null
        for (job_hex, job_macs), count in sorted((e.attempts - s.attempts).items()):
            fate = outcomes.get(job_hex, JobOutcome(None))
            if fate.claimant is None:
                macs["unclaimed"] += job_macs * count
                why = [fate.claim_pending, fate.block_left, fate.tip_job, True].index(True)
                unclaimed[reasons[why]].add(job_hex)
            elif fate.claimant != e.address:
                macs["duplicate"] += job_macs * count
            elif fate.claimed_before:  # claimed by its work before the window
                macs["repeated"] += job_macs * count
            else:
                macs["useful" if fate.verified else "unverified"] += job_macs
                macs["repeated"] += job_macs * (count - 1)
                if fate.verified:
                    useful.append(job_hex)
    mined = sum(e.macs_done - s.macs_done for s, e in zip(start, end, strict=True))
    macs["unattributed"] = mined - sum(macs.values())
    return MacBreakdown(macs, useful, {why: len(jobs) for why, jobs in unclaimed.items()})


def job_outcomes(
    node0: TestnetNode,
    jobs: dict[bytes, PostedJob],
    attempted: Collection[bytes],
    blocks_left: Collection[bytes] = (),
    tip_job: bytes | None = None,
) -> dict[str, JobOutcome]:
    """What became of each job in ``attempted``, from node-0's chain and the client's
    checks (``blocks_left``: the jobs of blocks off the nodes' active chains;
    ``tip_job``: node-0's tip's); jobs we did not post, or that node-0 does not know
    (their post is on a branch it left), are left out: nobody's claim of them holds."""
    out: dict[str, JobOutcome] = {}
    for job_id in attempted:
        job = jobs.get(job_id)
        if job is None:
            continue
        try:
            rec = node0.call("getjob", job_id.hex())
        except RpcCallError:  # "unknown job"
            continue
        out[job_id.hex()] = JobOutcome(
            rec.get("claimant") or None,
            claimed_before=job.before_window,
            verified=job.verified is not None,
            claim_pending=rec.get("pending_claim") is not None,
            block_left=job_id in blocks_left,
            tip_job=job_id == tip_job,
        )
    return out


def _block_job(block: dict[str, Any], params: NetworkParams) -> bytes:
    from consensus.blocks import JobSpec
    from consensus.keys import parse_address

    j = block["job"]
    roots = bytes.fromhex(j["root_a"]), bytes.fromhex(j["root_b"])
    spec = JobSpec(parse_address(j["poster"]), j["m"], j["k"], j["n"], *roots)
    return spec.job_id(params.rank, params.tile_h, params.tile_w)


def jobs_of_blocks_left(nodes: list[TestnetNode], params: NetworkParams, since: int) -> set[bytes]:
    """The jobs of the blocks above height ``since`` that some node holds off its active
    chain."""
    out = set()
    for n in nodes:
        height = n.call("getinfo")["height"]
        for row in n.call("getblocktimes", max(1, height - since + 1))["side"]:
            out.add(_block_job(n.call("getblock", row["hash"], False), params))
    return out


def _job_blocks(
    node0: TestnetNode, params: NetworkParams, ours: set[bytes], low: int, high: int
) -> int:
    return sum(
        _block_job(node0.call("getblockbyheight", h, False), params) in ours
        for h in range(low + 1, high + 1)
    )


def _verification_cost(shape: tuple[int, int, int]) -> dict[str, float]:
    """Freivalds on one job of this shape against the product it saves the client: numpy's
    float32 matmul (BLAS, timed in a child with a clean BLAS environment), exact for
    int8 operands in [-64, 63] up to k = 4,096 (every sum stays within ±2^24)."""
    m, k, n = shape
    a, b = random_operands(np.random.default_rng(11), m, k, n)
    c = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int32)  # exact: |sums| < 2^53
    freivalds_s = _timed(lambda: freivalds_check(a, b, c), 5)
    matmul_s = float(measure_sgemm(m, k, n, 3)["sgemm_s"])  # type: ignore[arg-type]
    return {
        "freivalds_s": round(freivalds_s, 6),
        "local_matmul_s": round(matmul_s, 6),
        "freivalds_over_matmul": round(freivalds_s / matmul_s, 4),
    }


def plot_market(samples: list[tuple[float, int, int]], path: str) -> None:
    """Useful and total MAC/s over the window, from the ~1 s samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s[0] for s in samples]
    total = [(b[1] - a[1]) / (b[0] - a[0]) / 1e9 for a, b in pairwise(samples)]
    useful = [(b[2] - a[2]) / (b[0] - a[0]) / 1e9 for a, b in pairwise(samples)]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(t[1:], total, label="all MACs mined")
    ax.plot(t[1:], useful, label="useful (verified job results)")
    ax.set_xlabel("seconds into the window")
    ax.set_ylabel("GMAC/s")
    ax.set_title("pouw bench market: useful and total work")
    ax.set_ylim(bottom=0)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
