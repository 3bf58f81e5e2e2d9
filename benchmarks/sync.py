"""`pouw bench sync`: how fast a fresh node downloads and connects a chain from a peer.

Phase 1 (not timed) builds N valid devnet blocks in-process and writes them
into a datadir with node.store.Store, in one transaction. Each block is real:
a null job mined with the CPU kernels, a proof tile, a state root, optional
signed transfers; only its timestamp is spaced far apart (``SPACING_MS``,
still in the past), so that the devnet's ASERT difficulty drops to its floor
and the first tile of every block wins. That is how a chain of thousands of
blocks is built in seconds instead of hours; the syncing node checks every
rule (headers, PoUW proof, timestamps, state) exactly as for any block.

Phase 2 (timed): a serving node starts on that datadir, then an empty node
with ``--peer`` pointing at it. From the empty node's spawn to its height N:
``seconds`` and ``blocks_per_s``; ``time_to_first_block_s`` (spawn → block 1
first seen, which includes interpreter start-up, the handshake and the first
headers round trip) and ``steady_blocks_per_s`` (block 1 → block N) separately.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consensus.blocks import Block
from consensus.keys import PrivateKey
from consensus.params import DEVNET, NetworkParams
from consensus.pow import mine, null_job
from node.client.rpc import RpcClient
from node.store import Store

SPACING_MS = 600_000
"""Ten ASERT half-lives between blocks: the target sits at its floor."""
MINER_LABEL = "bench-sync-miner"


def build_chain_datadir(
    datadir: Path,
    blocks: int,
    txs_per_block: int = 0,
    params: NetworkParams = DEVNET,
    on_block: Callable[[int], None] | None = None,
) -> None:
    """Write ``blocks`` mined devnet blocks into ``datadir/chain.sqlite``."""
    from benchmarks.consensus import _accounts, _sign

    now = int(time.time() * 1000)
    spacing = min(SPACING_MS, (now - params.genesis_timestamp_ms) // (blocks + 2))
    if spacing < 10 * params.block_time_ms:
        raise RuntimeError(f"{blocks} blocks do not fit between the devnet genesis and now")
    datadir.mkdir(parents=True, exist_ok=True)
    store = Store(datadir / "chain.sqlite", params)
    try:
        chain = store.load_chain(lambda: int(time.time() * 1000))
        accts = _accounts(len(params.prefunded_labels)) if txs_per_block else []
        miner = PrivateKey.from_label(MINER_LABEL).address
        ts = params.genesis_timestamp_ms
        cursor = 0
        for i in range(blocks):
            ts += spacing
            txs = []
            for _ in range(txs_per_block):
                txs.append(_sign(accts[cursor % len(accts)], params.chain_id))
                cursor += 1
            job = null_job(chain.tip.hash, params)
            template, included = chain.build_template(txs, miner, job.spec, ts)
            # ASERT is anchored at block 1 and reads the parent's timestamp: blocks
            # 1-3 still need seconds of real mining; from then on the first tile wins.
            mined = mine(template, job, params)
            assert mined is not None  # no stop event, no attempt limit
            result = chain.add_block(Block(mined.header, included))
            if result.status != "connected":
                raise RuntimeError(f"block {i + 1} did not connect: {result.status}")
            if on_block is not None:
                on_block(i + 1)
        store.sync(chain)
    finally:
        store.close()


def _spawn(datadir: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    datadir.mkdir(parents=True, exist_ok=True)
    (datadir / "node.json").unlink(missing_ok=True)
    log = (datadir / "stdout.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "node.cli", "node", "--datadir", str(datadir), "--no-mine", *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True,
    )


def _wait_info(proc: subprocess.Popen[bytes], datadir: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}; see {datadir / 'stdout.log'}")
        path = datadir / "node.json"
        if path.exists():
            info: dict[str, Any] = json.loads(path.read_text())
            if info.get("pid") == proc.pid:
                return info
        time.sleep(0.02)
    raise RuntimeError(f"node in {datadir} did not start within {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def bench_sync(
    blocks: int,
    txs_per_block: int = 0,
    root: Path | None = None,
    timeout: float = 600.0,
    on_progress: Callable[[str, int], None] | None = None,
) -> dict[str, Any]:
    """Build N blocks, serve them, time a fresh node's sync; the JSON record."""
    report = on_progress or (lambda _phase, _n: None)
    root = root or Path(tempfile.mkdtemp(prefix="pouw-bench-sync-"))
    t0 = time.perf_counter()
    build_chain_datadir(
        root / "server", blocks, txs_per_block, on_block=lambda n: report("build", n)
    )
    build_s = time.perf_counter() - t0
    server = client = None
    try:
        server = _spawn(root / "server", [])
        info = _wait_info(server, root / "server", 120)
        rpc_server = RpcClient.for_datadir(root / "server")
        if rpc_server.call("getinfo")["height"] != blocks:
            raise RuntimeError("the serving node did not load the built chain")
        t_spawn = time.time()
        client = _spawn(root / "client", ["--peer", info["p2p"]])
        _wait_info(client, root / "client", 120)
        t_ready = time.time()
        rpc = RpcClient.for_datadir(root / "client")
        deadline = time.monotonic() + timeout
        height = 0
        while height < blocks:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sync stalled at height {height} of {blocks}")
            if client.poll() is not None:
                raise RuntimeError(f"the syncing node exited with {client.returncode}")
            height = rpc.call("getinfo")["height"]
            report("sync", height)
            time.sleep(0.05)
        t_done = time.time()
        times = rpc.call("getblocktimes", 2 * blocks + 1, False)["active"]
        first = next(b["first_seen"] for b in times if b["height"] == 1)
        last = next(b["first_seen"] for b in times if b["height"] == blocks)
        # The last block is connected right after it is first seen; t_done is
        # only as precise as the polling, so the node's own record is used.
        seconds = last - t_spawn
        return {
            "blocks": blocks,
            "txs_per_block": txs_per_block,
            "seconds": round(seconds, 3),
            "blocks_per_s": round(blocks / seconds, 1),
            "time_to_first_block_s": round(first - t_spawn, 3),
            "node_start_s": round(t_ready - t_spawn, 3),
            "steady_blocks_per_s": round((blocks - 1) / (last - first), 1)
            if last > first
            else None,
            "poll_seconds": round(t_done - t_spawn, 3),
            "build_s": round(build_s, 2),
            "network": DEVNET.name,
            "datadir": str(root),
        }
    finally:
        _stop(client)
        _stop(server)
