"""`pouw testnet --topology ring` stays a ring: address exchange adds no links."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from node.devtools import testnet
from tests.support.framework import wait_until

pytestmark = pytest.mark.slow

NODES = 5
WATCH_S = 4.0
"""How long the ring is watched once nodes have heard of non-neighbours: four times
the nodes' 1 s connect interval, in which they would dial them."""


def test_a_ring_of_five_keeps_exactly_two_peers_per_node(tmp_path: Path) -> None:
    net = testnet.Testnet(tmp_path / "ring", NODES, topology="ring", mine=False)
    net.start(timeout=120)
    try:

        def peer_counts() -> list[int]:
            return [len(n.call("getpeers")) for n in net.nodes]

        wait_until(lambda: peer_counts() == [2] * NODES, 60, "every node to have its 2 peers")
        wait_until(
            lambda: sum(n.call("getinfo")["p2p"]["addrs_received"] for n in net.nodes) > 0,
            60,
            "nodes to hear of others than their neighbours",
        )
        watch_until = time.monotonic() + WATCH_S
        while time.monotonic() < watch_until:
            assert peer_counts() == [2] * NODES
            time.sleep(0.2)
        for i, node in enumerate(net.nodes):
            ids = {p["node_id"] for p in node.call("getpeers")}
            neighbours = [net.nodes[(i - 1) % NODES], net.nodes[(i + 1) % NODES]]
            assert ids == {n.call("getinfo")["node_id"] for n in neighbours}
    finally:
        net.stop()
