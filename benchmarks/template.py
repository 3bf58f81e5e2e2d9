"""`pouw bench template`: how long a node's event loop waits while a block template
is built from a full mempool.

A mining node builds a fresh, fee-ordered template on every new tip. From a pool
of thousands of transactions that takes a few hundred milliseconds; while it ran on
the event loop, every peer, RPC client and block relay waited that long. This
benchmark starts a real node in this process (the collector set as ``pouw node``
sets it: tuned, the loaded chain frozen), fills its mempool with ``txs`` transfers
from as many prefunded senders (each sender's queue its own: the costliest case for
the selection), asks for work once (the tip's null job is derived and kept), then
``builds`` times more, each time on no template (as on a new tip), while a coroutine
measures how late the loop wakes it from 2 ms sleeps. Keys: ``work_s`` (the ask,
template built; median and max over the builds), ``loop_lag_max_ms`` (the longest
the loop was held in any build) and ``loop_lag_median_ms`` (the median over the
builds of each build's longest hold).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.chain import _senders, _transfer, bench_params
from consensus.keys import PrivateKey

TICK_S = 0.002


async def _one_build(node: Any) -> tuple[float, float, int]:
    """(seconds the ask took, the loop's longest hold in seconds, transactions taken)."""
    node.work._template_of = None  # as on a new tip: nothing to reuse or grow
    node.work._body = None
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(TICK_S)
            lags.append(time.perf_counter() - t - TICK_S)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(10 * TICK_S)
    started = time.perf_counter()
    work = await node.work.work()
    took = time.perf_counter() - started
    await asyncio.sleep(10 * TICK_S)
    stop.set()
    await task
    return took, max(lags), len(work.txs)


async def _run(txs: int, builds: int) -> dict[str, Any]:
    from node import collector
    from node.app import Node
    from node.config import NodeConfig

    params = bench_params(txs)
    senders = _senders(params)
    transfers = [
        _transfer(s, senders[(i + 1) % txs].address, 0, params.chain_id)
        for i, s in enumerate(senders)
    ]
    collector.tune()
    with tempfile.TemporaryDirectory() as tmp:
        config = NodeConfig(
            params=params,
            datadir=Path(tmp) / "node",
            miner_key=PrivateKey.from_label("bench-template-miner"),
        )
        node = Node(config)
        await node.start()
        collector.freeze()  # as `pouw node` does once started
        try:
            for tx in transfers:
                node.txs.admit(tx, None)
            if len(node.mempool) != txs:
                raise RuntimeError(f"the pool took {len(node.mempool)} of {txs} transfers")
            del transfers
            await node.work.work()  # untimed: the tip's null job is derived once, then kept
            runs = [await _one_build(node) for _ in range(builds)]
        finally:
            await node.stop()
    taken = {n for _, _, n in runs}
    if taken != {txs}:
        raise RuntimeError(f"templates took {sorted(taken)} transactions, not all {txs}")
    work_s = [w for w, _, _ in runs]
    holds = [h for _, h, _ in runs]
    return {
        "txs": txs,
        "builds": builds,
        "work_s": round(statistics.median(work_s), 4),
        "work_max_s": round(max(work_s), 4),
        "loop_lag_max_ms": round(max(holds) * 1e3, 1),
        "loop_lag_median_ms": round(statistics.median(holds) * 1e3, 1),
        "per_build": [
            {"work_s": round(w, 4), "loop_lag_max_ms": round(h * 1e3, 1)}
            for w, h in zip(work_s, holds, strict=True)
        ],
    }


def bench_template(txs: int = 17_000, builds: int = 5) -> dict[str, Any]:
    """Fill a node's pool with ``txs`` transfers, build ``builds`` fresh templates (see
    the module docstring); the JSON record."""
    return asyncio.run(_run(txs, builds))
