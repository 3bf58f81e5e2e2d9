"""`GET /metrics` of a real node: the families an operator looks for, their types, and
counters that move when blocks, transactions, jobs, dataset reads and RPC calls happen."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consensus.keys import PrivateKey, address_to_text
from consensus.params import DEVNET, with_block_time
from consensus.transactions import TransferPayload, encode_tx, signed_transaction
from node.client.datashare import DataClient
from node.client.market import MarketClient
from node.client.rpc import RpcClient
from tests.support.framework import NodeProcess, wait_until

pytestmark = pytest.mark.slow

BLOCK_MS = 300
PARAMS = with_block_time(DEVNET, BLOCK_MS)
PAYER = PrivateKey.from_label("devnet-5")
OWNER = PrivateKey.from_label("devnet-6")
READER = PrivateKey.from_label("devnet-7")

TYPES = {
    "pouw_height": "gauge",
    "pouw_blocks": "counter",
    "pouw_txs": "counter",
    "pouw_block_import_seconds": "histogram",
    "pouw_block_store_seconds": "histogram",
    "pouw_peers_by_direction": "gauge",
    "pouw_mempool_txs": "gauge",
    "pouw_mempool_bytes": "gauge",
    "pouw_sync_header_height": "gauge",
    "pouw_sync_block_height": "gauge",
    "pouw_tip_age_seconds": "gauge",
    "pouw_target": "gauge",
    "pouw_reorgs": "counter",
    "pouw_orphan_blocks": "gauge",
    "pouw_stale_blocks": "gauge",
    "pouw_p2p_messages": "counter",
    "pouw_p2p_bytes": "counter",
    "pouw_rpc_requests": "counter",
    "pouw_rpc_request_seconds": "histogram",
    "pouw_gc_pause_seconds": "counter",
    "pouw_db_bytes": "gauge",
    "pouw_blob_db_bytes": "gauge",
    "pouw_build_info": "gauge",
    "pouw_jobs": "gauge",
    "pouw_data_reads_served": "counter",
    "pouw_data_chunks_served": "counter",
    "pouw_blocks_mined": "counter",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
}


def scrape(node: NodeProcess) -> dict[str, Any]:
    """name → (type, {(sample name, labels as a sorted tuple): value})."""
    assert node.rpc is not None
    url = node.rpc.url.rsplit("/", 1)[0] + "/metrics"
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        out[family.name] = (family.type, samples)
    return out


def value(metrics: dict[str, Any], name: str, sample: str | None = None, **labels: str) -> float:
    """One sample of family ``name`` (the sample is the family's name unless given)."""
    return float(metrics[name][1].get((sample or name, tuple(sorted(labels.items()))), 0.0))


def test_metrics_have_their_types_and_move_with_blocks_txs_jobs_reads_and_calls(
    tmp_path: Path,
) -> None:
    common = ["--devnet-block-time-ms", str(BLOCK_MS), "--threads", "1"]
    miner = NodeProcess(tmp_path / "miner", [*common, "--mine"], "miner").start()
    other: NodeProcess | None = None
    try:
        wait_until(lambda: miner.height() >= 2, 60, "two blocks")
        first = scrape(miner)
        for name, kind in TYPES.items():
            assert name in first, f"no {name} family"
            assert first[name][0] == kind, f"{name} is a {first[name][0]}, not a {kind}"
        assert not [n for _, (_, s) in first.items() for (n, _) in s if n.endswith("_created")]
        # Alone, the miner accepted its blocks but relayed none.
        assert value(first, "pouw_blocks", "pouw_blocks_total", outcome="accepted") >= 2
        assert value(first, "pouw_blocks", "pouw_blocks_total", outcome="relayed") == 0
        assert value(first, "pouw_block_import_seconds", "pouw_block_import_seconds_count") >= 2
        assert value(first, "pouw_db_bytes") > 0
        assert value(first, "pouw_data_reads_served", "pouw_data_reads_served_total") == 0

        # A transfer, a job and RPC calls, then a peer.
        assert miner.rpc is not None
        nonce = miner.call("getaccount", address_to_text(PAYER.address))["next_nonce"]
        tx = signed_transaction(
            PAYER, chain_id=PARAMS.chain_id, nonce=nonce, fee=1_000,
            payload=TransferPayload(PrivateKey.from_label("metrics-to").address, 5),
        )  # fmt: skip
        miner.call("sendtransaction", encode_tx(tx).hex())
        client = MarketClient(RpcClient(miner.rpc.url, miner.rpc.token), PAYER, PARAMS)
        rng = np.random.default_rng(8)
        client.submit(
            rng.integers(-64, 64, (64, 64), dtype=np.int8),
            rng.integers(-64, 64, (64, 64), dtype=np.int8),
            reward=50_000,
        )
        # A dataset read the chain authorized: registered, granted, logged, then served.
        rpc = RpcClient(miner.rpc.url, miner.rpc.token)
        owner = DataClient(rpc, OWNER, PARAMS, tmp_path / "owner_keys")
        reader = DataClient(rpc, READER, PARAMS, tmp_path / "reader_keys")
        registered = owner.register(b"x,label\n" * 5000, "{}", 4096)
        owner.wait_confirmed(registered["txid"], 60)
        dataset = bytes.fromhex(registered["dataset_id"])
        owner.wait_confirmed(owner.grant(dataset, READER.public_key.data, 100)["txid"], 60)
        data, _ = reader.fetch(dataset, miner.p2p, 60)
        assert data == b"x,label\n" * 5000
        read = scrape(miner)
        assert value(read, "pouw_blob_db_bytes") > value(first, "pouw_blob_db_bytes")  # operands
        assert value(read, "pouw_data_reads_served", "pouw_data_reads_served_total") == 1
        chunks = value(read, "pouw_data_chunks_served", "pouw_data_chunks_served_total")
        assert chunks == registered["chunks"] > 1

        other = NodeProcess(tmp_path / "other", [*common, "--peer", miner.p2p], "other").start()
        wait_until(lambda: miner.call("getpeers"), 30, "the peer")

        def moved() -> dict[str, Any] | None:
            now = scrape(miner)
            jobs = sum(now["pouw_jobs"][1].values())
            relayed = value(now, "pouw_blocks", "pouw_blocks_total", outcome="relayed")
            return now if jobs >= 1 and relayed >= 1 else None

        later = wait_until(moved, 90, "the job on chain and a relayed block")
        assert value(later, "pouw_txs", "pouw_txs_total", outcome="accepted") >= 2
        assert value(later, "pouw_peers_by_direction", direction="in") == 1
        assert value(later, "pouw_peers_by_direction", direction="out") == 0
        sent = later["pouw_p2p_messages"][1]
        assert any(dict(labels).get("direction") == "out" for (_, labels) in sent)
        assert value(
            later, "pouw_rpc_requests", "pouw_rpc_requests_total", method="getinfo", outcome="ok"
        ) > value(
            first, "pouw_rpc_requests", "pouw_rpc_requests_total", method="getinfo", outcome="ok"
        )
        assert value(later, "pouw_blocks_mined", "pouw_blocks_mined_total") > value(
            first, "pouw_blocks_mined", "pouw_blocks_mined_total"
        )
        assert value(later, "process_cpu_seconds", "process_cpu_seconds_total") > 0
    finally:
        if other is not None:
            other.stop()
        assert miner.stop() == 0
