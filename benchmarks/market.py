"""The compute market under load on a fresh local testnet: how much of the mining is useful.

1. Start ``nodes`` mining nodes; during ``warmup`` seconds of null-job mining,
   measure the network's rate (Σ Δ``macs_done`` of getmininginfo over all nodes).
2. For ``duration`` seconds (the measured window) post jobs through node-0 at
   ``offered_ratio`` × that rate, in MACs/s, each of ``shape`` (default: the
   network's minimum job, so a claim transaction is a negligible part of a
   job's work), while following the chain: a claim seen in ``getmarket`` is
   fetched and checked with Freivalds at once, which is when the client has
   its result (latency = post → verified).
3. The shares, over all the MACs the nodes mined in the window:

   * ``useful_mac_share``: the m·k·n of every job claimed in the window whose
     result the client verified;
   * ``duplicate_mac_share``: attempts on a job that another node claimed
     first (a node's getmininginfo ``attempted_jobs`` against the job's
     claimant); null when the nodes' miners do not report their attempts.

The record keeps ``job_block_share`` (blocks whose PoUW ran on a posted job)
and the client's verification cost (Freivalds against the int64 matmul it
replaces, and against fetching C).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from consensus.keys import PrivateKey
from consensus.params import DEVNET, NetworkParams, with_block_time
from kernels.freivalds import freivalds_check
from node.client.market import MarketClient, WrongResult
from node.client.rpc import RpcClient
from node.devtools.testnet import Testnet, TestnetNode

POSTER_LABELS = ("devnet-11", "devnet-12", "devnet-13", "devnet-14")
"""One posting thread per key: one poster's RPC round trips cannot keep up with miners."""
REWARD = 10_000
SAMPLE_S = 1.0
"""How often the nodes' MAC counters are sampled for the plot."""
GRACE_S = 20.0
"""After the window, how long the client may take to verify the claims seen in it."""
CLAIMED = ("mined", "paid")


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
        )


def _total_macs(nodes: list[TestnetNode]) -> int:
    return sum(int(n.call("getmininginfo")["macs_done"]) for n in nodes)


@dataclass
class PostedJob:
    """A job the bench posted: its operands, when, and what became of it."""

    a: np.ndarray
    b: np.ndarray
    sent: float
    claim_seen: float | None = None
    claimant: str | None = None
    claim_kind: str | None = None
    verified: float | None = None
    wrong: bool = False


@dataclass
class _Poster:
    """Posts jobs at a steady MAC rate, from ``threads`` keys at once, until told to stop."""

    clients: list[MarketClient]
    shape: tuple[int, int, int]
    jobs_per_s: float
    expiry_blocks: int
    jobs: dict[bytes, PostedJob] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i, client in enumerate(self.clients):
            t = threading.Thread(target=self._run, args=(i, client), name=f"poster-{i}")
            t.daemon = True
            t.start()
            self._threads.append(t)

    def join(self) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _run(self, index: int, client: MarketClient) -> None:
        rng = np.random.default_rng(7 + index)
        m, k, n = self.shape
        interval = len(self.clients) / self.jobs_per_s  # each thread its share of the rate
        due = time.monotonic() + index * interval / len(self.clients)
        try:
            while not self.stop.is_set():
                wait = due - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    return
                a = rng.integers(-64, 64, (m, k), dtype=np.int8)
                b = rng.integers(-64, 64, (k, n), dtype=np.int8)
                sent = time.monotonic()
                job = client.submit(a, b, REWARD, expiry_blocks=self.expiry_blocks)
                with self.lock:
                    self.jobs[job.job_id] = PostedJob(a, b, sent)
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
    """Start a testnet, measure it as the module docstring says; the testnet always stops."""
    params = with_block_time(DEVNET, block_time_ms)
    shape = shape or params.min_job_shape
    too_small = params.job_too_small(*shape)
    if too_small:
        raise ValueError(f"--shape: {too_small}")
    say = on_progress or (lambda _line: None)
    job_macs = math.prod(shape)
    with tempfile.TemporaryDirectory(prefix="pouw-bench-market-") as tmp:
        net = Testnet(Path(tmp), nodes, block_time_ms=block_time_ms)
        try:
            started = time.monotonic()
            net.start()
            startup_s = time.monotonic() - started
            say(f"{nodes} nodes up in {startup_s:.1f} s; warming up for {warmup:g} s")
            return _measure(net, params, shape, job_macs, duration, warmup, offered_ratio,
                            plot_path, say) | {"startup_s": round(startup_s, 2)}  # fmt: skip
        finally:
            net.stop()


def _measure(
    net: Testnet,
    params: NetworkParams,
    shape: tuple[int, int, int],
    job_macs: int,
    duration: float,
    warmup: float,
    offered_ratio: float,
    plot_path: str | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    node0 = net.nodes[0]
    assert node0.rpc is not None

    def client(key: PrivateKey) -> MarketClient:
        assert node0.rpc is not None
        return MarketClient(RpcClient(node0.rpc.url, node0.rpc.token), key, params)

    # -- warmup: the network's own rate on null jobs
    w0, tw0 = _total_macs(net.nodes), time.monotonic()
    time.sleep(warmup)
    w1, tw1 = _total_macs(net.nodes), time.monotonic()
    warmup_rate = (w1 - w0) / (tw1 - tw0)
    if warmup_rate <= 0:
        raise RuntimeError(f"the nodes mined nothing in the {warmup:g} s warmup")
    jobs_per_s = offered_ratio * warmup_rate / job_macs
    say(
        f"network {warmup_rate / 1e9:.2f} GMAC/s; posting {jobs_per_s:.2f} jobs/s of "
        f"{'x'.join(map(str, shape))} for {duration:g} s"
    )

    # -- the measured window
    expiry = math.ceil((duration + GRACE_S + 60) * 1000 / params.block_time_ms)
    poster = _Poster([client(PrivateKey.from_label(label)) for label in POSTER_LABELS],
                     shape, jobs_per_s, expiry)  # fmt: skip
    follower = client(PrivateKey.from_label(POSTER_LABELS[0]))
    start = [MinerSnapshot.of(n) for n in net.nodes]
    start_height = node0.call("getinfo")["height"]
    t0 = time.monotonic()
    t1 = t0 + duration
    useful = [0]
    sampler = _Sampler(net.nodes, t0, lambda: useful[0])
    sampling = threading.Thread(target=sampler.run, name="bench-sampler", daemon=True)
    poster.start()
    sampling.start()
    fetch_s: list[float] = []
    height = -1
    end: list[MinerSnapshot] | None = None
    window_s = duration
    end_height = start_height
    try:
        while True:
            now = time.monotonic()
            if poster.error is not None:
                raise RuntimeError(f"posting a job failed: {poster.error}")
            if end is None and now >= t1:
                poster.join()
                sampler.stop.set()
                end = [MinerSnapshot.of(n) for n in net.nodes]
                window_s = time.monotonic() - t0
                end_height = node0.call("getinfo")["height"]
                say("window over; verifying the claims seen in it")
            tip = node0.call("getinfo")["height"]
            if tip != height:
                height = tip
                _see_claims(node0, poster, now if end is None else None)
            with poster.lock:
                todo = [
                    (job_id, j)
                    for job_id, j in poster.jobs.items()
                    if j.claim_seen is not None and j.verified is None and not j.wrong
                ]
            for job_id, job in todo:
                t = time.perf_counter()
                try:
                    follower.result(job_id, job.a, job.b)  # Freivalds inside
                except WrongResult:
                    job.wrong = True
                    continue
                fetch_s.append(time.perf_counter() - t)
                job.verified = time.monotonic()
                useful[0] += job_macs
                if end is None and time.monotonic() >= t1:
                    break  # take the window's end snapshot on time
            if end is not None and (not todo or time.monotonic() > t1 + GRACE_S):
                break
            time.sleep(0.05)
    finally:
        poster.join()
        sampler.stop.set()
        sampling.join(timeout=10)
    return _record(
        net, node0, params, shape, job_macs, poster, start, end, start_height, end_height,
        window_s, warmup_rate, sampler.samples, fetch_s, plot_path,
    )  # fmt: skip


def _see_claims(node0: TestnetNode, poster: _Poster, now: float | None) -> None:
    """Mark our jobs the chain shows claimed; ``now`` None (after the window): none new."""
    claims = node0.call("getmarket", 1000)["recent_claims"]
    with poster.lock:
        for c in claims:
            job = poster.jobs.get(bytes.fromhex(c["job_id"]))
            if job is None or job.claim_seen is not None or c["status"] not in CLAIMED:
                continue
            if now is None:
                continue  # claimed after the window: neither counted nor verified
            job.claim_seen = now
            job.claimant = c["claimant"]
            job.claim_kind = c["claim_kind"]


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
    verified = [j for j in jobs.values() if j.verified is not None]
    useful = job_macs * len(verified)
    latencies = [j.verified - j.sent for j in verified if j.verified is not None]
    duplicate = duplicate_macs(node0, jobs, start, end)
    blocks = end_height - start_height
    job_blocks = _job_blocks(node0, params, set(jobs), start_height, end_height)
    kinds = Counter(j.claim_kind for j in jobs.values() if j.claim_seen is not None)
    record: dict[str, Any] = {
        "bench": "market",
        "nodes": len(net.nodes),
        "block_time_ms": params.block_time_ms,
        "shape": list(shape),
        "macs_per_job": job_macs,
        "window_s": round(window_s, 2),
        "warmup_macs_per_s": round(warmup_rate),
        "offered_macs_per_s": round(len(jobs) * job_macs / window_s),
        "offered_over_network": round(len(jobs) * job_macs / window_s / warmup_rate, 3),
        "jobs_posted": len(jobs),
        "jobs_claimed": sum(kinds.values()),
        "claims_by_block": kinds.get("block", 0),
        "claims_by_tx": kinds.get("tx", 0),
        "jobs_verified": len(verified),
        "wrong_results": sum(j.wrong for j in jobs.values()),
        "fraud_caught": node0.call("getmarket", 1)["jobs"]["refunded"],
        "network_macs": mined,
        "useful_macs": useful,
        "useful_mac_share": round(min(1.0, useful / mined), 4) if mined else 0.0,
        "duplicate_mac_share": (
            None if duplicate is None else round(min(1.0, duplicate / mined), 4) if mined else 0.0
        ),
        "null_mac_share": _share(start, end, "macs_null", mined),
        "network_macs_per_s": round(mined / window_s),
        "useful_macs_per_s": round(useful / window_s),
        "jobs_per_s": round(len(verified) / window_s, 3),
        "latency_p50_s": _quantile(latencies, 0.5),
        "latency_p95_s": _quantile(latencies, 0.95),
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "blocks_in_window": blocks,
        "block_interval_s": round(window_s / blocks, 3) if blocks else None,
        "job_blocks": job_blocks,
        "job_block_share": round(job_blocks / blocks, 4) if blocks else 0.0,
        "miners_report_attempts": all(s.attempts is not None for s in end),
        "fetch_c_s": round(statistics.median(fetch_s), 6) if fetch_s else None,
        **_verification_cost(shape),
    }
    if fetch_s:
        record["freivalds_over_fetch"] = round(record["freivalds_s"] / record["fetch_c_s"], 4)
    if plot_path is not None:
        plot_market(samples, plot_path)
        record["plot"] = plot_path
    return record


def _share(
    start: list[MinerSnapshot], end: list[MinerSnapshot], key: str, mined: int
) -> float | None:
    deltas = [(getattr(s, key), getattr(e, key)) for s, e in zip(start, end, strict=True)]
    if not mined or any(a is None or b is None for a, b in deltas):
        return None
    return round(sum(b - a for a, b in deltas) / mined, 4)


def duplicate_macs(
    node0: TestnetNode,
    jobs: dict[bytes, PostedJob],
    start: list[MinerSnapshot],
    end: list[MinerSnapshot],
) -> int | None:
    """MACs the nodes spent in the window on jobs another node claimed first."""
    claimant: dict[str, str | None] = {}
    total = 0
    for s, e in zip(start, end, strict=True):
        if s.attempts is None or e.attempts is None:
            return None
        for (job_hex, macs), count in (e.attempts - s.attempts).items():
            if bytes.fromhex(job_hex) not in jobs:
                continue
            if job_hex not in claimant:
                rec = node0.call("getjob", job_hex)
                claimant[job_hex] = rec.get("claimant") or None
            winner = claimant[job_hex]
            if winner is not None and winner != e.address:
                total += macs * count
    return total


def _job_blocks(
    node0: TestnetNode, params: NetworkParams, ours: set[bytes], low: int, high: int
) -> int:
    from consensus.blocks import JobSpec

    count = 0
    for h in range(low + 1, high + 1):
        j = node0.call("getblockbyheight", h, False)["job"]
        spec = JobSpec(
            j["m"], j["k"], j["n"], bytes.fromhex(j["root_a"]), bytes.fromhex(j["root_b"])
        )
        count += spec.job_id(params.rank, params.tile_h, params.tile_w) in ours
    return count


def _verification_cost(shape: tuple[int, int, int]) -> dict[str, float]:
    """Freivalds on one job of this shape against the int64 matmul it saves the client."""
    m, k, n = shape
    rng = np.random.default_rng(11)
    a = rng.integers(-64, 64, (m, k), dtype=np.int8)
    b = rng.integers(-64, 64, (k, n), dtype=np.int8)
    c = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    freivalds_s = _timed(lambda: freivalds_check(a, b, c), 5)
    matmul_s = _timed(lambda: a.astype(np.int64) @ b.astype(np.int64), 1)  # slow: no BLAS
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
