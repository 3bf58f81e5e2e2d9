"""`pouw bench consensus`: a real multi-node testnet under a transaction load.

N `pouw node` processes (node.devtools.testnet.Testnet, optionally each in its own
network namespace behind netem) mine a devnet while one sender thread per
node pushes signed transfers from the prefunded ``devnet-i`` accounts through
JSON-RPC ``sendtransactions`` batches. Account ``a`` always goes to node
``a % N``: a sender's nonces then arrive in order at one mempool, never as a
gap at another. With ``--tx-rate`` the load is open-loop at that rate.
Without it the senders go as fast as the network keeps up: each sender's pace
grows while its node answers a getinfo probe within 30 ms and backs off when
the answer takes over 100 ms or the mempool holds more than 10,000 transactions.
An open-loop flood past capacity measures a queue, not the chain: the nodes'
relay pipelines fill and drop announcements, and latency grows with the queue.

Everything is measured from the nodes' own records once the load stops and
the nodes agree on a tip (``getblocktimes``: each block's first-seen time on
each node, its miner and its txids):

- confirmed_tx_per_s: our transfers in the blocks of the final chain (the
  active chain every node shares) mined after the first and up to the last
  block of the load window, over the time between those two blocks.
- tx latency: send time → first-seen time, on the node it was sent to, of the
  block that included it.
- propagation: first seen on the miner's node → first seen on each other node
  (one clock: every node runs on this machine).
- stale rate: blocks that reached the network during the window but are not
  in the final chain, over all such blocks.
- CPU seconds per node: utime + stime from /proc, start → end of the window.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nacl.signing

from consensus.keys import PrivateKey, address_to_text
from consensus.params import DEVNET, with_block_time
from consensus.transactions import (
    UNSIGNED,
    Transaction,
    TransferPayload,
    encode_tx,
    kind_of,
    signing_digest,
)
from node.devtools.testnet import Testnet, TestnetNode, miner_key

BATCH = 250
"""Transactions per JSON-RPC batch request, at most."""
LANES = 4
"""Concurrent request streams per node, each with its own accounts."""
REQUESTS_PER_S = 5
"""Requests per second per lane: a lane sends what is due every 200 ms. Every
request costs both processes a fixed ~0.5 ms of HTTP and JSON work, so at one
transaction per request (20 a second per lane, as before) the load generator
and the nodes' RPC took more CPU than the transactions themselves."""
START_RATE = 50.0
MIN_RATE = 10.0
"""Adaptive pace (no --tx-rate), per sender: tx/s to start from, and the floor."""
PROBE_S = 0.5
LAG_LOW_S = 0.03
LAG_HIGH_S = 0.1
"""A getinfo answered within LAG_LOW_S lets the pace grow; beyond LAG_HIGH_S it backs off."""
MAX_BACKLOG = 10_000
"""Adaptive pace: back off while the node's mempool holds more than this."""
TRANSFER_FEE = 1_000
TRANSFER_AMOUNT = 1


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


@dataclass
class _Account:
    signer: nacl.signing.SigningKey
    public: bytes
    address: bytes
    to: bytes
    nonce: int = 0
    resync: bool = False


@dataclass
class _SenderStats:
    sent: dict[str, float] = field(default_factory=dict)  # txid → send time
    rejected: int = 0
    errors: list[str] = field(default_factory=list)


def _accounts(count: int) -> list[_Account]:
    keys = [PrivateKey.from_label(f"devnet-{i}") for i in range(count)]
    out = []
    for i, k in enumerate(keys):
        signer = nacl.signing.SigningKey(k.seed)
        out.append(
            _Account(signer, bytes(signer.verify_key), k.address, keys[(i + 1) % count].address)
        )
    return out


def _sign(acct: _Account, chain_id: int) -> Transaction:
    payload = TransferPayload(acct.to, TRANSFER_AMOUNT)
    unsigned = Transaction(
        chain_id, kind_of(payload), acct.public, acct.nonce, TRANSFER_FEE, payload, UNSIGNED
    )
    sig = acct.signer.sign(signing_digest(unsigned)).signature
    acct.nonce += 1
    return Transaction(
        chain_id, unsigned.kind, acct.public, unsigned.nonce, TRANSFER_FEE, payload, sig
    )


class _Sender(threading.Thread):
    """One node's load: its own event loop and keep-alive connection (in its netns)."""

    def __init__(
        self,
        node: TestnetNode,
        accounts: list[_Account],
        chain_id: int,
        rate: float | None,
        stop: threading.Event,
        enter: Callable[[], None] | None,
    ) -> None:
        super().__init__(name=f"sender-{node.index}", daemon=True)
        assert node.rpc is not None
        self.url = node.rpc.url
        self.token = node.rpc.token
        self.accounts = accounts
        self.chain_id = chain_id
        self.rate = rate
        self.stop_event = stop
        self.enter = enter
        self.stats = _SenderStats()
        self.rates: list[tuple[float, float]] = []
        self.pace = rate or START_RATE

    def run(self) -> None:
        if self.enter is not None:
            self.enter()
        try:
            asyncio.run(self._main())
        except Exception as e:  # reported in the record, never a silent thread death
            self.stats.errors.append(f"{type(e).__name__}: {e}")

    async def _main(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(headers=headers) as http:

            async def call(reqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
                async with http.post(self.url, data=json.dumps(reqs)) as resp:
                    out: list[dict[str, Any]] = await resp.json(content_type=None)
                    return out

            async def sync_nonces(accts: list[_Account]) -> None:
                reqs = [
                    {"jsonrpc": "2.0", "id": i, "method": "getaccount",
                     "params": [address_to_text(a.address)]}
                    for i, a in enumerate(accts)
                ]  # fmt: skip
                for r in await call(reqs):
                    a = accts[r["id"]]
                    a.nonce, a.resync = r["result"]["next_nonce"], False

            await sync_nonces(self.accounts)
            # Without a fixed rate the pace adapts: it grows while the node answers
            # a probe quickly, and backs off when the node's event loop lags or its
            # mempool holds more than MAX_BACKLOG transactions (self.pace, from START_RATE).
            # Lanes own disjoint accounts, so their requests may overlap in flight
            # (a node's answer takes a while under load) without reordering any
            # account's nonces.
            lanes = [a for a in (self.accounts[i::LANES] for i in range(LANES)) if a]
            work = [self._lane(call, sync_nonces, accts, len(lanes)) for accts in lanes]
            if self.rate is None:
                work.append(self._probe(call))
            await asyncio.gather(*work)

    async def _probe(self, call: Callable[[list[dict[str, Any]]], Any]) -> None:
        while not self.stop_event.is_set():
            await asyncio.sleep(PROBE_S)
            t0 = time.monotonic()
            info = await call([{"jsonrpc": "2.0", "id": 0, "method": "getinfo"}])
            lag = time.monotonic() - t0
            if lag > LAG_HIGH_S or info[0]["result"]["mempool"] > MAX_BACKLOG:
                self.pace = max(MIN_RATE, self.pace * 0.6)
            elif lag < LAG_LOW_S:
                self.pace *= 1.2
            self.rates.append((time.time(), self.pace))

    async def _lane(
        self,
        call: Callable[[list[dict[str, Any]]], Any],
        sync_nonces: Callable[[list[_Account]], Any],
        accounts: list[_Account],
        lanes: int,
    ) -> None:
        cursor = 0
        next_due = time.monotonic()
        while not self.stop_event.is_set():
            now = time.monotonic()
            if next_due > now:
                await asyncio.sleep(min(next_due - now, 0.05))
                continue
            rate = self.pace / lanes
            batch = max(1, min(BATCH, int(rate / REQUESTS_PER_S)))
            next_due = max(next_due, now - 0.1) + batch / rate
            stale = [a for a in accounts if a.resync]
            if stale:
                await sync_nonces(stale)
            txs = []
            for _ in range(batch):
                acct = accounts[cursor % len(accounts)]
                cursor += 1
                txs.append((acct, _sign(acct, self.chain_id)))
            req = {"jsonrpc": "2.0", "id": 0, "method": "sendtransactions",
                   "params": [[encode_tx(tx).hex() for _, tx in txs]]}  # fmt: skip
            t_send = time.time()
            reply = (await call([req]))[0]
            if "error" in reply:
                raise RuntimeError(f"sendtransactions: {reply['error']['message']}")
            for (acct, _tx), r in zip(txs, reply["result"], strict=True):
                if "txid" in r:
                    self.stats.sent[r["txid"]] = t_send
                else:
                    self.stats.rejected += 1
                    acct.resync = True
                    if len(self.stats.errors) < 5:
                        self.stats.errors.append(r["error"])


def _collect(node: TestnetNode, count: int) -> dict[str, Any]:
    return dict(node.call("getblocktimes", count, True))


def bench_consensus(
    nodes: int,
    duration: float,
    tx_rate: float | None = None,
    block_time: float | None = None,
    topology: str = "full",
    netns: Any = None,
    accounts: int = 256,
    plot_dir: str | None = None,
    root: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
    warmup: float = 0.0,
) -> dict[str, Any]:
    """Run the testnet under load for ``duration`` seconds; the JSON record.

    With ``warmup`` the load and the miners run that many seconds first and
    only what follows is measured: long enough (a few ASERT half-lives), the
    window sees blocks at the difficulty the loaded machine settles to,
    instead of one set for an idle machine.
    """
    say = on_progress or (lambda _m: None)
    if nodes < 1:
        raise ValueError(f"--nodes must be at least 1, got {nodes}")
    if not 2 <= accounts <= len(DEVNET.prefunded_labels):
        raise ValueError(f"--accounts must be 2..{len(DEVNET.prefunded_labels)}")
    if warmup < 0:
        raise ValueError(f"--warmup must be at least 0, got {warmup}")
    block_time_ms = int(block_time * 1000) if block_time else None
    params = with_block_time(DEVNET, block_time_ms) if block_time_ms else DEVNET
    root = root or Path(tempfile.mkdtemp(prefix="pouw-bench-consensus-"))
    net = Testnet(root, nodes, topology, block_time_ms=block_time_ms, netns=netns)
    stop = threading.Event()
    senders: list[_Sender] = []
    try:
        say(f"starting {nodes} nodes under {root}")
        net.start(on_progress=say)
        accts = _accounts(accounts)
        for node in net.nodes:
            enter = None
            if netns is not None:
                from node.devtools.netns import enter_netns

                ns = netns.node_ns(node.index)
                enter = lambda ns=ns: enter_netns(ns)  # noqa: E731
            mine = [a for i, a in enumerate(accts) if i % nodes == node.index]
            rate = tx_rate / nodes if tx_rate else None
            senders.append(_Sender(node, mine, params.chain_id, rate, stop, enter))
        for s in senders:
            s.start()
        if warmup:
            say(f"warming up for {warmup:.0f}s (load and miners running, not measured)")
            time.sleep(warmup)
        start_height = max(n.call("getinfo")["height"] for n in net.nodes)
        cpu0 = {n.index: cpu_seconds(n.proc.pid) for n in net.nodes if n.proc}
        t_start = time.time()
        say(f"load running for {duration:.0f}s")
        while time.time() - t_start < duration:
            time.sleep(min(1.0, max(0.0, duration - (time.time() - t_start))))
            heights = [n.call("getinfo")["height"] for n in net.nodes]
            sent = sum(len(s.stats.sent) for s in senders)
            say(f"{time.time() - t_start:5.1f}s heights {heights} sent {sent}")
        t_end = time.time()
        stop.set()
        for s in senders:
            s.join(30)
        cpu1 = {n.index: cpu_seconds(n.proc.pid) for n in net.nodes if n.proc}
        converged = _wait_converged(net, timeout=max(30.0, 10 * params.block_time_ms / 1000))
        infos = [n.call("getinfo") for n in net.nodes]
        count = max(i["height"] for i in infos) - start_height + 2
        views = [_collect(n, count) for n in net.nodes]
        record = _analyse(
            net, views, senders, start_height, t_start, t_end, params.block_time_ms, converged
        )
        record.update(
            nodes=nodes,
            topology=topology,
            duration_s=round(t_end - t_start, 2),
            warmup_s=warmup,
            tx_rate_target=tx_rate,
            accounts=accounts,
            block_time_s=params.block_time_ms / 1000,
            netns=netns is not None,
            netem=getattr(netns, "shaping", None),
            cpu_s_per_node=[round(cpu1[i] - cpu0[i], 2) for i in sorted(cpu0)],
            cpu_count=os.cpu_count(),
            heights=[i["height"] for i in infos],
            datadir=str(root),
        )
        if plot_dir:
            record["plots"] = plot_consensus(record.pop("_series"), plot_dir)
        else:
            record.pop("_series")
        return record
    finally:
        stop.set()
        net.stop()


def _wait_converged(net: Testnet, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tips = {n.call("getinfo")["tip"] for n in net.nodes}
        if len(tips) == 1:
            return True
        time.sleep(0.1)
    return False


def _analyse(
    net: Testnet,
    views: list[dict[str, Any]],
    senders: list[_Sender],
    start_height: int,
    t_start: float,
    t_end: float,
    block_time_ms: int,
    converged: bool,
) -> dict[str, Any]:
    miner_of = {address_to_text(miner_key(n.index).address): n.index for n in net.nodes}
    seen: dict[str, dict[int, float]] = {}  # block → node → first seen
    block_miner: dict[str, int] = {}
    for node, view in zip(net.nodes, views, strict=True):
        for b in view["active"] + view["side"]:
            if b["height"] <= start_height or b["first_seen"] is None:
                continue
            seen.setdefault(b["hash"], {})[node.index] = b["first_seen"]
            if b["miner"] in miner_of:
                block_miner[b["hash"]] = miner_of[b["miner"]]

    def mined_at(h: str) -> float:
        m = block_miner.get(h)
        return seen[h][m] if m is not None and m in seen[h] else min(seen[h].values())

    # The final chain: blocks active on every node.
    active_sets = [{b["hash"] for b in v["active"]} for v in views]
    common = set.intersection(*active_sets)
    chain0 = [b for b in views[0]["active"] if b["hash"] in common and b["height"] > start_height]
    ours = {txid for s in senders for txid in s.stats.sent}
    sent_in_window = sum(t_start <= t <= t_end for s in senders for t in s.stats.sent.values())
    in_window = [b for b in chain0 if t_start <= mined_at(b["hash"]) <= t_end]
    confirmed_tx_per_s = 0.0
    confirmed = 0
    if len(in_window) >= 2:
        span = mined_at(in_window[-1]["hash"]) - mined_at(in_window[0]["hash"])
        confirmed = sum(sum(1 for t in b["txids"] if t in ours) for b in in_window[1:])
        confirmed_tx_per_s = confirmed / span if span > 0 else 0.0

    # Latency, from the node each tx was sent to.
    latencies = []
    for s, view in zip(senders, views, strict=True):
        for b in view["active"]:
            if b["first_seen"] is None:
                continue
            for t in b["txids"]:
                sent = s.stats.sent.get(t)
                if sent is not None:
                    latencies.append(b["first_seen"] - sent)

    # Propagation: miner's node → every other node, for blocks of the window.
    delays = []
    for h, by_node in seen.items():
        m = block_miner.get(h)
        if m is None or m not in by_node or not t_start <= by_node[m] <= t_end:
            continue
        delays += [t - by_node[m] for j, t in by_node.items() if j != m]

    window_blocks = [h for h in seen if t_start <= mined_at(h) <= t_end]
    stale = [h for h in window_blocks if h not in common]
    series = {
        "propagation_s": delays,
        "blocks": [
            (mined_at(b["hash"]) - t_start, sum(1 for t in b["txids"] if t in ours)) for b in chain0
        ],
        "t_end": t_end - t_start,
    }
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    return {
        "confirmed_tx_per_s": round(confirmed_tx_per_s, 1),
        "confirmed_txs": confirmed,
        "sent_txs": sent_in_window,
        "sent_tx_per_s": round(sent_in_window / (t_end - t_start), 1),
        "rejected_txs": sum(s.stats.rejected for s in senders),
        "sender_errors": [e for s in senders for e in s.stats.errors][:5],
        "tx_latency_p50_ms": ms(percentile(latencies, 50)),
        "tx_latency_p95_ms": ms(percentile(latencies, 95)),
        "propagation_p50_ms": ms(percentile(delays, 50)),
        "propagation_p95_ms": ms(percentile(delays, 95)),
        "propagation_max_ms": ms(max(delays) if delays else None),
        "blocks": len(window_blocks),
        "blocks_in_chain": len(window_blocks) - len(stale),
        "stale_blocks": len(stale),
        "stale_rate": round(len(stale) / len(window_blocks), 4) if window_blocks else 0.0,
        "mean_block_interval_s": round(
            (mined_at(in_window[-1]["hash"]) - mined_at(in_window[0]["hash"]))
            / (len(in_window) - 1),
            3,
        )
        if len(in_window) >= 2
        else None,
        "converged": converged,
        "_series": series,
    }


def plot_consensus(series: dict[str, Any], plot_dir: str) -> list[str]:
    """Propagation CDF and confirmed throughput over time, as PNGs in ``plot_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(plot_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    delays = sorted(d * 1000 for d in series["propagation_s"])
    fig, ax = plt.subplots(figsize=(6, 4))
    if delays:
        ax.plot(delays, [(i + 1) / len(delays) for i in range(len(delays))], drawstyle="steps-post")
    ax.set_xlabel("block propagation delay (ms), miner → node")
    ax.set_ylabel("fraction of (block, node) pairs")
    ax.set_title("Block propagation CDF")
    ax.grid(alpha=0.3)
    path = out_dir / "propagation_cdf.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(str(path))

    blocks = series["blocks"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(blocks) >= 2:
        xs, ys = [], []
        for (t0, _), (t1, n) in itertools.pairwise(blocks):
            if t1 > t0:
                xs.append(t1)
                ys.append(n / (t1 - t0))
        ax.step(xs, ys, where="post", label="per block")
        cum_t = [t for t, _ in blocks]
        cum_n = []
        total = 0
        for _, n in blocks:
            total += n
            cum_n.append(total)
        ax2 = ax.twinx()
        ax2.plot(cum_t, cum_n, color="gray", alpha=0.6, label="cumulative")
        ax2.set_ylabel("confirmed transactions (cumulative)")
    ax.axvline(series["t_end"], color="red", linestyle=":", label="load stops")
    ax.set_xlabel("time since load start (s)")
    ax.set_ylabel("confirmed tx/s")
    ax.set_title("Confirmed throughput over time")
    ax.legend(loc="upper left")
    path = out_dir / "throughput.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    paths.append(str(path))
    return paths
