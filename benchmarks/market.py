"""The compute market on a fresh local testnet: latency, useful share, verification cost.

* latency: job_post sent → verified C in hand (Freivalds passed), p50/p95 over
  N jobs of a typical training shape (posted padded to the minimum job shape),
  with a few in flight at a time;
* useful share: during that window, the MACs of blocks whose header job is one
  of the posted jobs, over the m·k·n of every block in the window (the rest
  are null jobs: PoW that computed nothing anyone asked for);
* verification cost: Freivalds over the local int64 matmul it replaces, and
  over the time to fetch C from the node.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from consensus.keys import PrivateKey
from consensus.params import DEVNET, NetworkParams, with_block_time
from kernels.freivalds import freivalds_check
from node.blobs import decode_matrix
from node.client import MarketClient, posted_spec
from node.rpc_client import RpcCallError, RpcClient
from node.testnet import Testnet

POSTER_LABEL = "devnet-11"


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_market(
    jobs: int = 20,
    shape: tuple[int, int, int] = (64, 64, 32),
    block_time_ms: int = 300,
    nodes: int = 3,
    in_flight: int = 4,
    job_timeout: float = 120.0,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Start a testnet, post ``jobs`` jobs through node-0, measure; the testnet always stops."""
    m, k, n = shape
    params = with_block_time(DEVNET, block_time_ms)
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory(prefix="pouw-bench-market-") as tmp:
        net = Testnet(Path(tmp), nodes, block_time_ms=block_time_ms)
        try:
            started = time.monotonic()
            net.start()
            startup_s = time.monotonic() - started
            node0 = net.nodes[0]
            assert node0.rpc is not None
            client = MarketClient(
                RpcClient(node0.rpc.url, node0.rpc.token),
                PrivateKey.from_label(POSTER_LABEL),
                params,
            )
            start_height = node0.call("getinfo")["height"]
            t_window = time.monotonic()
            latencies: list[float] = []
            fetch_s: list[float] = []
            posted: dict[bytes, tuple[np.ndarray, np.ndarray, float]] = {}
            done: dict[bytes, np.ndarray] = {}
            next_job = 0
            while len(done) < jobs:
                while next_job < jobs and len(posted) - len(done) < in_flight:
                    a = rng.integers(-64, 64, (m, k), dtype=np.int8)
                    b = rng.integers(-64, 64, (k, n), dtype=np.int8)
                    sent = time.monotonic()
                    job = client.submit(a, b, reward=10_000)
                    posted[job.job_id] = (a, b, sent)
                    next_job += 1
                for job_id, (a, b, sent) in posted.items():
                    if job_id in done:
                        continue
                    try:
                        status = client.status(job_id)["status"]
                    except RpcCallError:
                        status = "pending"
                    if status in ("mined", "paid"):
                        done[job_id] = client.result(job_id, a, b)  # Freivalds inside
                        latencies.append(time.monotonic() - sent)
                        if on_progress:
                            on_progress(len(done))
                    elif time.monotonic() - sent > job_timeout:
                        raise TimeoutError(f"job {job_id.hex()[:16]} not mined in {job_timeout}s")
                time.sleep(0.02)
            window_s = time.monotonic() - t_window
            end_height = node0.call("getinfo")["height"]
            # The jobs as posted: padded to the minimum job shape by the client.
            ours = {_roots(a, b, params) for a, b, _ in posted.values()}
            job_macs = all_macs = job_blocks = 0
            for h in range(start_height + 1, end_height + 1):
                blk = node0.call("getblockbyheight", h, False)
                j = blk["job"]
                macs = j["m"] * j["k"] * j["n"]
                all_macs += macs
                if (bytes.fromhex(j["root_a"]), bytes.fromhex(j["root_b"])) in ours:
                    job_macs += macs
                    job_blocks += 1
            for job_id in list(done)[: min(10, len(done))]:
                t = time.perf_counter()
                decode_matrix(bytes.fromhex(node0.call("getresult", job_id.hex())))
                fetch_s.append(time.perf_counter() - t)
            a, b, _ = next(iter(posted.values()))
            c = done[next(iter(posted))]
            freivalds_s = _timed(lambda: freivalds_check(a, b, c), 20)
            matmul_s = _timed(lambda: a.astype(np.int64) @ b.astype(np.int64), 20)
            fetch = statistics.median(fetch_s)
            blocks = end_height - start_height
            return {
                "bench": "market",
                "nodes": nodes,
                "block_time_ms": block_time_ms,
                "jobs": jobs,
                "shape": [m, k, n],
                "in_flight": in_flight,
                "startup_s": round(startup_s, 2),
                "window_s": round(window_s, 2),
                "blocks_in_window": blocks,
                "block_interval_s": round(window_s / max(1, blocks), 3),
                "latency_p50_s": round(_quantile(latencies, 0.5), 3),
                "latency_p95_s": round(_quantile(latencies, 0.95), 3),
                "latency_max_s": round(max(latencies), 3),
                "job_blocks": job_blocks,
                "job_macs": job_macs,
                "all_macs": all_macs,
                "useful_mac_share": round(job_macs / all_macs, 4) if all_macs else 0.0,
                "job_block_share": round(job_blocks / max(1, blocks), 4),
                "freivalds_s": freivalds_s,
                "local_matmul_s": matmul_s,
                "fetch_c_s": round(fetch, 6),
                "freivalds_over_matmul": round(freivalds_s / matmul_s, 3),
                "freivalds_over_fetch": round(freivalds_s / fetch, 4),
            }
        finally:
            net.stop()


def _roots(a: np.ndarray, b: np.ndarray, params: NetworkParams) -> tuple[bytes, bytes]:
    spec = posted_spec(a, b, params)
    return spec.root_a, spec.root_b
