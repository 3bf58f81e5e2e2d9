"""Network faults with Linux network namespaces (node/devtools/netns.py).

The partition test runs real nodes, each in its own namespace: two groups
mine two different chains while split, converge on one after the heal, and no
transaction confirmed on either side is lost (the losing side's transactions
go back to the mempool and are mined again).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from consensus.keys import PrivateKey, address_to_text
from consensus.params import DEVNET, with_block_time
from consensus.transactions import TransferPayload, encode_tx, signed_transaction
from node.devtools import testnet as local_testnet
from node.devtools.netns import NetnsLab, NetnsUnavailable, check_available, parse_groups
from tests.support.framework import wait_until

BLOCK_TIME_MS = 500


def _netns_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: network namespaces, veth pairs and tc netem"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip and tc)"
    try:
        check_available()
    except NetnsUnavailable as e:
        return str(e)
    return None


def test_parse_groups() -> None:
    assert parse_groups("0,1/2,3", 4) == [[0, 1], [2, 3]]
    assert parse_groups("0/1,2", 4) == [[0], [1, 2]]
    for bad in ("0,1", "0,1/1,2", "0/7", "a/b"):
        with pytest.raises(ValueError):
            parse_groups(bad, 4)


def test_lab_names_fit_the_kernel_interface_limit() -> None:
    lab = NetnsLab(64, tag="pw99999")
    assert len(lab._veth(63)) <= 15
    assert lab.address(0) == "10.77.0.1" and lab.address(63) == "10.77.0.64"
    assert lab.wrap(2, ["pouw"]) == ["ip", "netns", "exec", "pw99999-n2", "pouw"]


def _send(node: local_testnet.TestnetNode, label: str) -> str:
    key = PrivateKey.from_label(label)
    params = with_block_time(DEVNET, BLOCK_TIME_MS)
    nonce = node.call("getaccount", address_to_text(key.address))["next_nonce"]
    tx = signed_transaction(
        key,
        chain_id=params.chain_id,
        nonce=nonce,
        fee=1_000,
        payload=TransferPayload(PrivateKey.from_label("devnet-200").address, 7),
    )
    return str(node.call("sendtransaction", encode_tx(tx).hex()))


def _confirmed(node: local_testnet.TestnetNode, txid: str) -> bool:
    return int(node.call("gettransaction", txid)["confirmations"]) >= 1


def _where_they_stand(nodes: list[local_testnet.TestnetNode], txids: tuple[str, ...]) -> str:
    """Each node's height, tip, peers and which of ``txids`` it holds confirmed."""
    lines = []
    for i, node in enumerate(nodes):
        try:
            info = node.call("getinfo")
            peers = len(node.call("getpeers"))
        except Exception as e:  # a node that cannot answer is news too
            lines.append(f"node {i}: {e!r}")
            continue
        held = []
        for t in txids:
            try:
                held.append(str(node.call("gettransaction", t)["confirmations"]))
            except Exception as e:  # unknown to this node
                held.append(type(e).__name__)
        lines.append(
            f"node {i}: height {info['height']} tip {info['tip'][:16]} peers {peers} "
            f"confirmations {', '.join(held)}"
        )
    return "\n".join(lines)


@pytest.mark.slow
def test_partition_makes_two_tips_and_heal_converges_without_losing_txs(tmp_path: Path) -> None:
    reason = _netns_reason()
    if reason:
        pytest.skip(reason)
    lab = NetnsLab(4)
    net = local_testnet.Testnet(tmp_path / "net", 4, "full", block_time_ms=BLOCK_TIME_MS, netns=lab)
    net.start()
    try:
        n = net.nodes
        tips = lambda: {x.call("getinfo")["tip"] for x in n}  # noqa: E731
        wait_until(lambda: min(x.call("getinfo")["height"] for x in n) >= 1, 60, "blocks")
        before = _send(n[0], "devnet-0")
        wait_until(lambda: all(_confirmed(x, before) for x in n), 60, "tx before the split")

        lab.partition([[0, 1], [2, 3]])
        split_height = max(x.call("getinfo")["height"] for x in n)
        left, right = _send(n[0], "devnet-1"), _send(n[2], "devnet-2")

        def split_sides() -> bool:
            a, b = n[0].call("getinfo"), n[2].call("getinfo")
            return (
                a["tip"] != b["tip"]
                and min(a["height"], b["height"]) >= split_height + 2
                and _confirmed(n[1], left)
                and _confirmed(n[3], right)
            )

        wait_until(split_sides, 60, "each side to confirm its own transaction on its own tip")
        assert len(tips()) >= 2

        lab.heal()
        heal_time = time.monotonic()
        try:
            wait_until(
                lambda: (
                    len(tips()) == 1
                    and all(_confirmed(x, t) for x in n for t in (before, left, right))
                ),
                60,
                "one tip with every confirmed transaction after the heal",
            )
        except AssertionError as e:  # say where each node stands: a stall is rare here
            raise AssertionError(f"{e}\n{_where_they_stand(n, (before, left, right))}") from None
        print(f"converged {time.monotonic() - heal_time:.1f}s after the heal")
    finally:
        net.stop()
    assert not lab.created
    assert (
        not any(lab.node_ns(i) in os.listdir("/var/run/netns") for i in range(4))
        if os.path.isdir("/var/run/netns")
        else True
    )
