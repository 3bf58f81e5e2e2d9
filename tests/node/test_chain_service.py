"""The chain service: what its listeners hear of a block, and in which order.

The order is the block flow's (docs/architecture.md): a new tip is pushed to peers
before the store write, the miner hears of it before the disk too, and the
chain-changed listeners and the announcement come after.
"""

from __future__ import annotations

import dataclasses

import pytest

from consensus.blocks import Block
from node.chain_service import ChainChange, ChainService
from node.metrics import Metrics
from node.store import Store
from tests.support.chainkit import ALICE, MID, new_chain, next_block


def _an_hour_after_genesis() -> int:
    return MID.genesis_timestamp_ms + 3_600_000


@dataclasses.dataclass
class _Sync:
    catching_up: bool = False

    def builds_on(self, block_hash: bytes) -> bool:
        return False


class _Recorder:
    """A chain service over a real store whose listeners write down what they hear."""

    def __init__(self, tmp_path, monkeypatch: pytest.MonkeyPatch, peers: int = 2) -> None:
        self.events: list[tuple[str, object]] = []
        self._writing = 0
        self.store = Store(tmp_path / "chain.sqlite", MID)
        self.sync = _Sync()
        self.metrics = Metrics()
        self.service = ChainService(
            self.store.load_chain(_an_hour_after_genesis), self.store, self.metrics
        )
        self.service.follow_download(self.sync)
        for name in ("record", "sync"):
            write = getattr(self.store, name)
            monkeypatch.setattr(self.store, name, self._logged(name, write))
        self.service.push_new_tips_with(lambda h, source: self._relay("push", h, peers))
        self.service.announce_blocks_with(lambda h, source: self._relay("announce", h, peers))
        self.service.on_tip_changed(lambda: self.events.append(("tip", None)))
        self.service.on_chain_changed(lambda change: self.events.append(("change", change)))

    def _logged(self, name, write):
        def logged(chain):
            if not self._writing:  # record writes through sync: one write, named once
                self.events.append((f"store.{name}", chain.tip.hash))
            self._writing += 1
            try:
                write(chain)
            finally:
                self._writing -= 1

        return logged

    def _relay(self, how: str, block_hash: bytes, peers: int) -> int:
        self.events.append((how, block_hash))
        return peers

    def relayed(self) -> float:
        """The ``pouw_blocks_total{outcome="relayed"}`` counter."""
        value = self.metrics.registry.get_sample_value("pouw_blocks_total", {"outcome": "relayed"})
        return value or 0.0


def _two_branches() -> tuple[list[Block], list[Block]]:
    """Two chains from genesis: one block, and two blocks by another miner."""
    chain, clock = new_chain()
    short = [next_block(chain, clock)]
    other, other_clock = new_chain()
    longer = []
    for _ in range(2):
        block = next_block(other, other_clock, miner=ALICE)
        other.add_block(block)
        longer.append(block)
    return short, longer


async def test_a_new_tip_is_pushed_and_the_miner_told_before_the_store_write(tmp_path, monkeypatch):
    rec = _Recorder(tmp_path, monkeypatch)
    (block,), _ = _two_branches()
    result = await rec.service.process_block(block, None)
    assert result is not None and result.status == "connected"
    assert [what for what, _ in rec.events] == ["push", "tip", "store.record", "change"]
    assert rec.events[0][1] == block.hash and rec.events[2][1] == block.hash
    assert rec.events[3][1] == ChainChange((block,), ())
    assert rec.relayed() == 1


async def test_side_block_is_announced_and_a_reorg_names_what_left(tmp_path, monkeypatch):
    rec = _Recorder(tmp_path, monkeypatch)
    (first,), (rival, next_rival) = _two_branches()
    await rec.service.process_block(first, None)
    rec.events.clear()
    side = await rec.service.process_block(rival, None)
    assert side is not None and side.status == "side"
    # Not on the active chain: no tip, no change; written down, then announced.
    assert [what for what, _ in rec.events] == ["store.record", "announce"]
    rec.events.clear()
    await rec.service.process_block(next_rival, None)
    assert [what for what, _ in rec.events] == ["push", "tip", "store.record", "change"]
    assert rec.events[3][1] == ChainChange((rival, next_rival), (first,))
    assert rec.service.chain.tip.hash == next_rival.hash


async def test_while_catching_up_blocks_are_batched_and_announced_not_pushed(tmp_path, monkeypatch):
    rec = _Recorder(tmp_path, monkeypatch)
    rec.sync.catching_up = True
    _, (first, second) = _two_branches()
    await rec.service.process_block(first, None)  # the first write of a batch is due at once
    await rec.service.process_block(second, None)  # the next waits for STORE_BATCH_S
    assert [what for what, _ in rec.events] == [
        *("tip", "store.sync", "change", "announce"),
        *("tip", "change", "announce"),
    ]
    rec.service.flush_store()
    assert rec.events[-1] == ("store.sync", second.hash)


async def test_a_refused_block_of_our_own_reaches_no_listener(tmp_path, monkeypatch):
    rec = _Recorder(tmp_path, monkeypatch)
    (block,), _ = _two_branches()
    forged = Block(dataclasses.replace(block.header, reward=block.header.reward + 1), ())
    assert await rec.service.process_block(forged, None) is None
    assert [what for what, _ in rec.events] == ["store.record"]  # what add_block marked
    assert rec.service.chain.height == 0 and rec.relayed() == 0


async def test_a_node_alone_relays_nothing(tmp_path, monkeypatch):
    rec = _Recorder(tmp_path, monkeypatch, peers=0)
    (block,), _ = _two_branches()
    await rec.service.process_block(block, None)
    assert rec.relayed() == 0
