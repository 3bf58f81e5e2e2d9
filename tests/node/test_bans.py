"""The ban list: bounded, soonest-to-expire evicted first, expired bans gone, kept on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.net import bans as bans_module
from node.net.bans import MAX_BANS, BanList


class Clock:
    """A settable time.time for node.bans (bans expire on the wall clock)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(bans_module.time, "time", c)
    return c


def node_id(i: int) -> bytes:
    return i.to_bytes(32, "big")


def test_a_hundred_thousand_throwaway_keys_stay_under_the_cap(clock: Clock) -> None:
    bans = BanList()
    # An attacker misbehaves under 100,000 fresh node keys; each ban lasts a bit longer.
    for i in range(100_000):
        clock.now += 0.001
        bans.add(f"node:{node_id(i).hex()}", "bad auth", 600)
    assert len(bans) == MAX_BANS == len(bans.all())
    # The newest bans are kept (they expire last); the oldest made room.
    assert bans.find(node_id=node_id(99_999)) is not None
    assert bans.find(node_id=node_id(100_000 - MAX_BANS)) is not None
    assert bans.find(node_id=node_id(100_000 - MAX_BANS - 1)) is None
    assert bans.find(node_id=node_id(0)) is None


def test_the_soonest_to_expire_is_evicted_not_the_longest(clock: Clock) -> None:
    bans = BanList(max_bans=3)
    bans.add("ip:10.0.0.1", "flood", 10_000)  # a long ban from a real attack
    bans.add("ip:10.0.0.2", "x", 50)
    bans.add("ip:10.0.0.3", "x", 100)
    bans.add("ip:10.0.0.4", "x", 200)
    assert [b.who for b in bans.all()] == ["ip:10.0.0.3", "ip:10.0.0.4", "ip:10.0.0.1"]
    assert bans.find("10.0.0.1") is not None and bans.find("10.0.0.2") is None


def test_expired_bans_are_purged(clock: Clock) -> None:
    bans = BanList()
    for i in range(1_000):
        bans.add(f"ip:10.0.{i // 256}.{i % 256}", "x", 60)
    bans.add("ip:192.0.2.1", "longer", 3_600)
    clock.now += 61
    assert bans.find("10.0.0.1") is None
    assert len(bans) == 1 and bans.find("192.0.2.1") is not None


def test_a_ban_matches_by_ip_node_id_or_claimed_id_at_an_ip(clock: Clock) -> None:
    bans = BanList()
    bans.add("ip:192.0.2.7", "a", 60)
    bans.add(f"node:{node_id(1).hex()}", "b", 60)
    bans.add(f"node:{node_id(2).hex()}@192.0.2.8", "c", 60)
    assert bans.find("192.0.2.7").reason == "a"  # type: ignore[union-attr]
    assert bans.find("127.0.0.1", node_id(1)).reason == "b"  # type: ignore[union-attr]
    assert bans.find("192.0.2.8", node_id(2)).reason == "c"  # type: ignore[union-attr]
    assert bans.find("192.0.2.9", node_id(2)) is None  # the claim binds to its IP only
    # Banning again for less time does not shorten a ban.
    bans.add("ip:192.0.2.7", "a again", 1)
    clock.now += 30
    assert bans.find("192.0.2.7") is not None


def test_bans_survive_a_restart_and_expire_on_schedule(clock: Clock, tmp_path: Path) -> None:
    bans = BanList()
    bans.add("ip:192.0.2.1", "short", 10)
    bans.add(f"node:{node_id(3).hex()}", "long", 1_000)
    path = tmp_path / "bans.json"
    bans.save(path)

    clock.now += 20  # the node was down for 20 s: the short ban ran out meanwhile
    loaded = BanList.load(path)
    assert [(b.who, b.reason) for b in loaded.all()] == [(f"node:{node_id(3).hex()}", "long")]
    assert loaded.find(node_id=node_id(3)) is not None


def test_a_saved_list_over_the_cap_is_cut_on_load(clock: Clock, tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    records = [
        {"who": f"ip:10.0.0.{i}", "reason": "x", "until": clock.now + i} for i in range(1, 9)
    ]
    path.write_text(json.dumps(records))
    loaded = BanList.load(path, max_bans=3)
    assert [b.who for b in loaded.all()] == ["ip:10.0.0.6", "ip:10.0.0.7", "ip:10.0.0.8"]


def test_an_unreadable_list_is_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    path.write_text("{not json")
    assert len(BanList.load(path)) == 0
    assert len(BanList.load(tmp_path / "missing.json")) == 0
