"""A devnet says at start what a new user needs: RPC, reward address, prefunded keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from consensus.keys import PrivateKey, address, address_to_text
from node.devtools.testnet import miner_key
from tests.support.framework import NodeProcess, wait_until

pytestmark = pytest.mark.slow


def test_a_devnet_node_prints_its_rpc_reward_address_and_prefunded_accounts(
    tmp_path: Path,
) -> None:
    node = NodeProcess(tmp_path / "n", [], "n").start()
    try:
        out = wait_until(
            lambda: "makes one your wallet" in node.log_tail(200) and node.log_tail(200),
            30,
            "the start banner",
        )
        info = json.loads((tmp_path / "n" / "node.json").read_text())
        reward = address_to_text(address(bytes.fromhex(info["node_id"])))
        assert f"RPC http://{info['rpc']}/rpc, mining rewards to {reward}" in out
        devnet0 = address_to_text(PrivateKey.from_label("devnet-0").address)
        assert f"devnet-0   {devnet0}  1000000.00000000" in out
        assert "`pouw wallet accounts` lists them all" in out
        assert node.call("getmininginfo")["miner_address"] == reward
    finally:
        assert node.stop() == 0


def test_a_testnet_prints_every_nodes_rpc_and_reward_address(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable, "-m", "node.cli", "testnet", "--nodes", "2", "--duration", "1",
            "--no-mine", "--datadir", str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for i in range(2):
        reward = address_to_text(miner_key(i).address)
        assert f"node-{i}: RPC http://127.0.0.1:" in run.stderr
        assert f"/rpc, mining rewards to {reward}" in run.stderr
    assert "256 prefunded accounts" in run.stderr
