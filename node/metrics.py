"""What `GET /metrics` shows beyond the event counters: state read at scrape time.

Gauges a node can compute from what it holds (peers by direction, mempool bytes,
sync progress, tip age, target, orphans, side blocks, database size, the market and
data-sharing tables) and counters it keeps anyway (P2P messages and bytes by type,
collector pauses, reads served) are produced when Prometheus asks, so the hot paths
pay nothing for them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consensus.market import job_record
from node import collector
from node.net.wire import MsgType
from node.store import FILENAME, blob_dir, blob_file

if TYPE_CHECKING:
    from pathlib import Path

    from consensus.chain import Chain
    from node.mempool import Mempool
    from node.net.p2p import PeerManager


SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def _version() -> str:
    try:
        return importlib.metadata.version("pouwnet")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _files_bytes(directory: Path) -> int:
    """The bytes of the files in ``directory`` (0 if there is none)."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                total += entry.stat().st_size
    return total


class Metrics:
    """Prometheus metrics of one node (its own registry: several nodes may share a process).

    Event counters live here; what is read from the node's state at scrape time is
    ``NodeCollector``'s."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series beside every counter: clutter
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("pouw_height", "Height of the active chain tip", registry=r)
        self.peers = Gauge("pouw_peers", "Connected peers", registry=r)
        self.mempool = Gauge("pouw_mempool_txs", "Transactions in the mempool", registry=r)
        self.hashrate = Gauge("pouw_hashrate_macs", "Miner speed in MAC/s", registry=r)
        self.blocks = Counter("pouw_blocks", "Blocks by outcome", ["outcome"], registry=r)
        self.txs = Counter("pouw_txs", "Transactions by outcome", ["outcome"], registry=r)
        # Counted per transaction: the labelled children are looked up once.
        self.txs_accepted = self.txs.labels("accepted")
        self.txs_rejected = self.txs.labels("rejected")
        self.bans = Counter("pouw_bans", "Peers banned", registry=r)
        self.mined = Counter("pouw_blocks_mined", "Blocks mined by this node", registry=r)
        self.block_import = Histogram(
            "pouw_block_import_seconds",
            "Time to validate and connect (or keep) a block",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.block_store = Histogram(
            "pouw_block_store_seconds",
            "Time to write a block's changes to the store",
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.reorgs = Counter("pouw_reorgs", "Chain reorganisations", registry=r)
        self.reorg_blocks = Counter("pouw_reorg_blocks", "Blocks replaced by reorgs", registry=r)
        self.rpc_requests = Counter(
            "pouw_rpc_requests",
            "RPC calls by method and outcome",
            ["method", "outcome"],
            registry=r,
        )
        self.rpc_seconds = Histogram(
            "pouw_rpc_request_seconds",
            "RPC call latency by method",
            ["method"],
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.reads_served = Counter("pouw_data_reads_served", "Dataset reads served", registry=r)
        self.chunks_served = Counter(
            "pouw_data_chunks_served", "Encrypted dataset chunks served", registry=r
        )
        Info("pouw_build", "The node's version", registry=r).info(
            {"version": _version(), "python": platform.python_version()}
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, memory, open fds


def _type_name(msg_type: int) -> str:
    try:
        return MsgType(msg_type).name.lower()
    except ValueError:
        return "malformed"


class SyncState(Protocol):
    """How far a sync has come (the node's ``SyncProgress``)."""

    def state(self) -> dict[str, Any]:
        """Whether it is syncing, its height and target, and blocks per second."""
        ...


class NodeCollector(Collector):
    """Reads the node's state when /metrics is scraped."""

    def __init__(
        self, chain: Chain, mempool: Mempool, p2p: PeerManager, sync: SyncState, datadir: Path
    ) -> None:
        self.chain = chain
        self.mempool = mempool
        self.p2p = p2p
        self.sync = sync
        self.datadir = datadir

    def describe(self) -> list[Metric]:
        """Nothing up front: registering the collector reads no state."""
        return []

    def collect(self) -> Iterator[Metric]:
        chain = self.chain
        peers = GaugeMetricFamily(
            "pouw_peers_by_direction", "Connected peers", labels=["direction"]
        )
        directions = Tally(p.direction for p in self.p2p.peers)
        for direction in ("in", "out"):
            peers.add_metric([direction], directions[direction])
        yield peers
        yield GaugeMetricFamily(
            "pouw_mempool_bytes",
            "Encoded size of the mempool's transactions",
            self.mempool.size_bytes,
        )
        sync = self.sync.state()
        yield GaugeMetricFamily(
            "pouw_sync_header_height",
            "Highest verified header queued for download (or the chain height)",
            max(sync["target"], chain.height),
        )
        yield GaugeMetricFamily(
            "pouw_sync_block_height", "Height of the connected chain", chain.height
        )
        tip = chain.tip.header
        yield GaugeMetricFamily(
            "pouw_tip_age_seconds",
            "Seconds since the tip's timestamp",
            max(0.0, time.time() - tip.timestamp_ms / 1000),
        )
        yield GaugeMetricFamily(
            "pouw_target",
            "The tip's proof-of-work target per MAC (higher is easier)",
            float(tip.target),
        )
        yield GaugeMetricFamily(
            "pouw_orphan_blocks", "Blocks held whose parent is unknown", len(chain.orphans)
        )
        yield GaugeMetricFamily(
            "pouw_stale_blocks",
            "Known valid blocks off the active chain",
            len(chain.blocks) - chain.height - 1,
        )
        msgs = CounterMetricFamily(
            "pouw_p2p_messages", "P2P messages by direction and type", labels=["direction", "type"]
        )
        sizes = CounterMetricFamily(
            "pouw_p2p_bytes", "P2P frame bytes by direction and type", labels=["direction", "type"]
        )
        for (direction, msg_type), (count, size) in sorted(self.p2p.stats.by_type.items()):
            msgs.add_metric([direction, _type_name(msg_type)], count)
            sizes.add_metric([direction, _type_name(msg_type)], size)
        yield msgs
        yield sizes
        yield CounterMetricFamily(
            "pouw_gc_pause_seconds",
            "Seconds spent in cyclic garbage collection",
            collector.pause_seconds(),
        )
        chain_file = self.datadir / FILENAME
        blobs = blob_dir(chain_file)
        for name, file, what in (
            ("pouw_db_bytes", chain_file, " and its WAL"),
            (
                "pouw_blob_db_bytes",
                blob_file(chain_file),
                f" and its WAL, and of the files in {blobs.name}/ (job operands, results)",
            ),
        ):
            size = 0
            for path in (file, file.with_name(file.name + "-wal")):
                size += path.stat().st_size if path.exists() else 0
            if name == "pouw_blob_db_bytes":
                size += _files_bytes(blobs)
            yield GaugeMetricFamily(name, f"Size of {file.name}{what}", size)
        jobs = GaugeMetricFamily(
            "pouw_jobs",
            "Market jobs on chain by status (mined: claimed, paid, refunded…)",
            labels=["status"],
        )
        statuses: Tally[str] = Tally()
        for job_id in chain.state.tables["jobs"]:
            rec = job_record(chain.state, job_id)
            if rec is not None:
                statuses[rec["status"]] += 1
        for status in ("open", "mined", "paid", "refunded", "cancelled"):
            jobs.add_metric([status], statuses[status])
        yield jobs
