"""A datadir keeps the node's address book and bans."""

from __future__ import annotations

from pathlib import Path

from node.config import NodeConfig
from node.node import Node
from tests.consensus.chainkit import MID


async def test_the_address_book_and_bans_survive_a_restart(tmp_path: Path) -> None:
    datadir = tmp_path / "node"
    node = Node(NodeConfig(params=MID, datadir=datadir))
    await node.start()
    try:
        node.p2p.ban(b"\x07" * 32, "sent garbage", seconds=3_600)
        assert node.p2p.add_address("192.0.2.1", 9444, source="manual")
    finally:
        await node.stop()

    restarted = Node(NodeConfig(params=MID, datadir=datadir))
    await restarted.start()
    try:
        assert [(b["who"], b["reason"]) for b in restarted.p2p.bans()] == [
            ("node:" + "07" * 32, "sent garbage")
        ]
        assert restarted.p2p.is_banned("127.0.0.1", b"\x07" * 32)
        assert ("192.0.2.1", 9444) in restarted.p2p.addresses
    finally:
        await restarted.stop()
