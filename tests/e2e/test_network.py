"""Real nodes on loopback: they connect, mine, converge, relay transactions,
sync a late joiner and survive SIGKILL."""

from __future__ import annotations

from pathlib import Path

import pytest

from consensus.keys import PrivateKey, address_to_text
from consensus.params import DEVNET
from consensus.transactions import TransferPayload, encode_tx, signed_transaction
from tests.support.framework import NodeProcess, sync_tips, wait_until

pytestmark = pytest.mark.slow

ALICE = PrivateKey.from_label("devnet-0")
BOB = PrivateKey.from_label("devnet-1")


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory):
    root: Path = tmp_path_factory.mktemp("net")
    nodes: list[NodeProcess] = []
    try:
        miner = NodeProcess(root / "a", ["--mine", "--threads", "1"], "a").start()
        nodes.append(miner)
        for name in ("b", "c"):
            nodes.append(NodeProcess(root / name, ["--peer", miner.p2p], name).start())
        yield root, nodes
    finally:
        for n in nodes:
            n.kill()
        for n in nodes:
            if n.proc and n.proc.returncode not in (0, -9):
                print(n.name, n.log_tail())


def test_nodes_connect_mine_and_converge(network):
    _, nodes = network
    a, b, _c = nodes
    wait_until(lambda: len(a.call("getpeers")) == 2, 30, "a to see both peers")
    sync_tips(nodes, timeout=120, min_height=3)
    info = a.call("getmininginfo")
    assert info["mining"] and info["hashrate_macs"] > 0
    assert b.call("getmininginfo")["mining"] is False
    # The miner runs off the event loop: the mining node answers pings promptly. One
    # sample may hold a one-off pause (a thread loading compiled kernels holds the
    # GIL), so the pings are followed until a round of them is prompt, for 30 s.
    seen: list[list[float]] = []

    def prompt() -> bool:
        lat = [p["latency_ms"] for p in a.call("getpeers") if p["latency_ms"] is not None]
        seen.append(lat)
        return len(lat) == 2 and max(lat) < 50

    assert wait_until(prompt, 30, "a round of prompt pings while mining"), seen[-5:]


def test_transaction_sent_to_one_node_is_mined_on_all(network):
    _, nodes = network
    _a, b, c = nodes
    tx = signed_transaction(
        ALICE,
        chain_id=DEVNET.chain_id,
        nonce=b.call("getaccount", address_to_text(ALICE.address))["next_nonce"],
        fee=1_000,
        payload=TransferPayload(BOB.address, 12_345),
    )
    before = c.call("getbalance", address_to_text(BOB.address))
    txid = b.call("sendtransaction", encode_tx(tx).hex())
    for n in nodes:
        wait_until(
            lambda n=n: n.call("gettransaction", txid)["confirmations"] >= 1,
            120,
            f"{n.name} to confirm the transaction",
        )
    sync_tips(nodes, timeout=60)
    assert c.call("getbalance", address_to_text(BOB.address)) == before + 12_345


def test_late_node_syncs_the_whole_chain(network):
    root, nodes = network
    a = nodes[0]
    late = NodeProcess(root / "late", ["--peer", a.p2p], "late").start()
    try:
        height = a.height()
        wait_until(lambda: late.height() >= height, 120, "the late node to catch up")
        assert (
            late.call("getblockbyheight", height)["hash"]
            == a.call("getblockbyheight", height)["hash"]
        )
    finally:
        assert late.stop() == 0


def test_node_restarted_after_sigkill_rejoins(network):
    _, nodes = network
    a, b, _ = nodes
    sync_tips(nodes, timeout=60)
    height_before = b.height()
    b.kill()
    b.start()
    assert b.height() >= height_before  # what it had committed survived the kill
    wait_until(lambda: len(b.call("getpeers")) >= 1, 30, "b to reconnect")
    target = a.height() + 1
    wait_until(lambda: b.height() >= target, 120, "b to follow new blocks")
    sync_tips(nodes, timeout=60)


def test_mining_syncing_node_killed_repeatedly_restarts_consistent(network):
    root, nodes = network
    a = nodes[0]
    victim = NodeProcess(root / "victim", ["--peer", a.p2p, "--mine", "--threads", "1"], "victim")
    victim.start()
    try:
        for _ in range(3):
            start = victim.height()
            wait_until(lambda s=start: victim.height() > s, 120, "the victim to make progress")
            victim.kill()  # SIGKILL: no shutdown code runs
            victim.start()  # the store checks its invariants when it opens
            info = victim.call("getinfo")
            block = victim.call("getblockbyheight", info["height"], False)
            assert block["hash"] == info["tip"]
        sync_tips([a, victim], timeout=120, min_height=a.height())
    finally:
        victim.kill()
