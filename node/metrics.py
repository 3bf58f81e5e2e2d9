"""What `GET /metrics` shows beyond the event counters: state read at scrape time.

Gauges a node can compute from what it holds (peers by direction, mempool bytes,
sync progress, tip age, target, orphans, side blocks, database size, the market and
data-sharing tables) and counters it keeps anyway (P2P messages and bytes by type,
collector pauses, reads served) are produced when Prometheus asks, so the hot paths
pay nothing for them.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consensus.market import job_record
from node import collector
from node.net.wire import MsgType

if TYPE_CHECKING:
    from pathlib import Path

    from consensus.chain import Chain
    from node.mempool import Mempool
    from node.net.p2p import PeerManager
    from node.relay.sync_progress import SyncProgress


def _type_name(msg_type: int) -> str:
    try:
        return MsgType(msg_type).name.lower()
    except ValueError:
        return "malformed"


class MetricsSource(Protocol):
    """What the collector reads off the node."""

    @property
    def chain(self) -> Chain: ...

    @property
    def mempool(self) -> Mempool: ...

    @property
    def p2p(self) -> PeerManager: ...

    @property
    def sync_progress(self) -> SyncProgress: ...

    @property
    def datadir(self) -> Path: ...


class NodeCollector(Collector):
    """Reads the node's state when /metrics is scraped."""

    def __init__(self, node: MetricsSource) -> None:
        self.node = node

    def describe(self) -> list[Metric]:
        """Nothing up front: the node is not fully built when this is registered."""
        return []

    def collect(self) -> Iterator[Metric]:
        node = self.node
        chain = node.chain
        peers = GaugeMetricFamily(
            "pouw_peers_by_direction", "Connected peers", labels=["direction"]
        )
        directions = Tally(p.direction for p in node.p2p.peers)
        for direction in ("in", "out"):
            peers.add_metric([direction], directions[direction])
        yield peers
        yield GaugeMetricFamily(
            "pouw_mempool_bytes",
            "Encoded size of the mempool's transactions",
            node.mempool.size_bytes,
        )
        sync = node.sync_progress.state()
        yield GaugeMetricFamily(
            "pouw_sync_header_height",
            "Best header height known (from peers)",
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
        for (direction, msg_type), (count, size) in sorted(node.p2p.stats.by_type.items()):
            msgs.add_metric([direction, _type_name(msg_type)], count)
            sizes.add_metric([direction, _type_name(msg_type)], size)
        yield msgs
        yield sizes
        yield CounterMetricFamily(
            "pouw_gc_pause_seconds",
            "Seconds spent in cyclic garbage collection",
            collector.pause_seconds(),
        )
        db = 0
        for suffix in ("", "-wal"):
            path = node.datadir / f"chain.sqlite{suffix}"
            db += path.stat().st_size if path.exists() else 0
        yield GaugeMetricFamily("pouw_db_bytes", "Size of chain.sqlite and its WAL", db)
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
