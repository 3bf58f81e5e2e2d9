"""`pouw bench consensus` as a user runs it: real nodes, real load, a record that adds up."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_bench_consensus_measures_a_loaded_testnet_after_its_warmup() -> None:
    rate, duration = 40.0, 8.0
    run = subprocess.run(
        [
            sys.executable, "-m", "node.cli", "bench", "consensus", "--nodes", "2",
            "--duration", str(duration), "--warmup", "3", "--tx-rate", str(rate),
            "--block-time", "0.5", "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record["converged"] and record["sender_errors"] == []
    assert record["warmup_s"] == 3 and record["nodes"] == 2
    # What was sent in the window, at about the asked rate (the warmup's sends excluded).
    assert 0.6 * rate * duration <= record["sent_txs"] <= 1.2 * rate * duration
    assert record["blocks"] >= 3 and 0 <= record["stale_rate"] <= 1
    assert record["confirmed_txs"] > 0 and record["confirmed_tx_per_s"] > 0.3 * rate
    assert record["propagation_p50_ms"] is not None
    assert len(record["cpu_s_per_node"]) == 2 and all(c > 0 for c in record["cpu_s_per_node"])


def test_bench_consensus_refuses_a_negative_warmup_in_one_line() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "node.cli", "bench", "consensus", "--warmup", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "--warmup" in run.stderr
    assert "Traceback" not in run.stderr


MARKET_KEYS = {
    "useful_mac_share", "duplicate_mac_share", "useful_macs_per_s", "network_macs_per_s",
    "jobs_per_s", "latency_p50_s", "latency_p95_s", "block_interval_s", "fraud_caught",
    "offered_over_network", "jobs_posted", "jobs_verified", "macs_per_job", "nodes",
    "mac_breakdown",
}  # fmt: skip


def test_bench_market_measures_the_share_of_useful_work_and_plots_it(tmp_path) -> None:
    plot = tmp_path / "market.png"
    run = subprocess.run(
        [
            # A small backlog (0.25x the network's rate): this checks the measurement,
            # not the target, and posting 2x takes minutes on 2 cores.
            sys.executable, "-m", "node.cli", "bench", "market", "--warmup", "2",
            "--duration", "4", "--offered-ratio", "0.25", "--plot", str(plot), "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    record = json.loads(run.stdout)
    assert record.keys() >= MARKET_KEYS
    assert record["nodes"] == 3 and record["macs_per_job"] >= 512 * 256 * 512  # the defaults
    assert record["jobs_posted"] > 0 and record["network_macs_per_s"] > 0
    assert 0 <= record["jobs_verified"] <= record["jobs_posted"]
    assert 0 <= record["useful_mac_share"] <= 1
    useful = record["jobs_verified"] * record["macs_per_job"]
    assert record["useful_macs"] == useful
    # Every MAC the nodes mined in the window has one fate, the useful ones among them.
    breakdown = record["mac_breakdown"]
    assert breakdown.keys() == {
        "useful", "duplicate", "repeated", "unverified", "unclaimed", "null", "unattributed",
    }  # fmt: skip
    assert sum(breakdown.values()) == record["network_macs"] > 0
    assert breakdown["unattributed"] == 0 and min(breakdown.values()) >= 0
    assert breakdown["useful"] == useful and breakdown["useful"] % record["macs_per_job"] == 0
    assert record["duplicate_mac_share"] == round(
        breakdown["duplicate"] / record["network_macs"], 4
    )
    # Latency is the stream's (post → verified while the window runs); the backlog's
    # jobs, posted before it, report how long they waited instead.
    verified = record["stream_jobs_verified"] + record["backlog_jobs_verified"]
    assert verified == record["jobs_verified"]
    if record["stream_jobs_verified"]:
        assert 0 < record["latency_p50_s"] <= record["latency_p95_s"]
    if record["backlog_jobs_verified"]:
        assert record["backlog_wait_p50_s"] > 0
    assert record["fraud_caught"] == 0  # honest miners
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_bench_market_refuses_a_job_below_the_minimum_in_one_line() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "node.cli", "bench", "market", "--shape", "64x64x64"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert "--shape" in run.stderr and "below the minimum" in run.stderr
