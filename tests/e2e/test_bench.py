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
