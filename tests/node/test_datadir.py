"""A datadir belongs to one node at a time, and keeps its address book and bans."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from node.app import Node
from node.config import NodeConfig
from node.datadir import DatadirInUse
from tests.support.chainkit import MID


async def test_a_second_node_on_a_datadir_is_refused_and_touches_nothing(tmp_path: Path) -> None:
    datadir = tmp_path / "node"
    first = Node(NodeConfig(params=MID, datadir=datadir))
    await first.start()
    try:
        info = json.loads((datadir / "node.json").read_text())
        second = Node(NodeConfig(params=MID, datadir=datadir))
        with pytest.raises(DatadirInUse) as refused:
            await second.start()
        assert str(refused.value) == (
            f"datadir {datadir} is in use by another node (pid {os.getpid()})"
        )
        await second.stop()  # what a caller's cleanup does: it must not undo the first node
        assert json.loads((datadir / "node.json").read_text()) == info
    finally:
        await first.stop()
    assert not (datadir / "node.json").exists()  # the holder does clean up
    # The lock went with the first node: the datadir can be used again.
    again = Node(NodeConfig(params=MID, datadir=datadir))
    await again.start()
    await again.stop()


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
