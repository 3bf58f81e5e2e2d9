"""The address book: bounded, bucketed by source, evicting the least useful entry."""

from __future__ import annotations

from pathlib import Path

from node.net.addresses import (
    MAX_ADDRESS_BOOK,
    MAX_PER_SOURCE,
    TERRIBLE_FAILURES,
    AddressBook,
    address_group,
    source_group,
)

KEY = bytes(range(32))  # a fixed key: the same slots every run


def flood(book: AddressBook, group: str, first_octet: int, count: int = 5_000) -> int:
    """``count`` distinct public addresses from one source, as 5 ADDRs of 1,000; how many kept."""
    kept = 0
    for i in range(count):
        host = f"{first_octet}.{i // 250 % 256}.{i % 250}.{1 + i // 64_000}"
        kept += book.add(host, 9444, f"addr from {group}", group)
    return kept


def test_one_loopback_node_cannot_take_more_than_its_share() -> None:
    book = AddressBook(key=KEY)
    attacker = source_group("127.0.0.1", b"\x01" * 32)
    kept = flood(book, attacker, 44)
    assert kept <= MAX_PER_SOURCE < MAX_ADDRESS_BOOK // 8
    assert book.count_from(attacker) == kept

    # Honest nodes on the same loopback address, each its own source, are still heard.
    accepted = 0
    for n in range(100):
        honest = source_group("127.0.0.1", n.to_bytes(32, "big"))
        accepted += book.add("127.0.0.1", 20_000 + n, "addr from honest", honest)
    assert accepted >= 95  # the flood gives way; only honest ones may collide


def test_one_slash16_cannot_take_more_than_its_share_whatever_its_ips() -> None:
    book = AddressBook(key=KEY)
    # The attacker rotates through 5 IPs of one /16: still one source group.
    groups = {source_group(f"203.0.113.{i}", None) for i in range(5)}
    assert groups == {"203.0.0.0/16"}
    kept = flood(book, "203.0.0.0/16", 45)
    assert 0 < kept <= MAX_PER_SOURCE

    accepted = 0
    for n in range(100):
        peer_ip = f"{100 + n}.{n}.0.1"  # 100 honest peers in 100 /16s
        accepted += book.add(f"{n}.1.2.3", 9444, "addr", source_group(peer_ip, None))
    assert accepted >= 95


def test_the_book_stays_bounded_under_many_sources() -> None:
    book = AddressBook(key=KEY)
    for s in range(40):
        flood(book, f"10.{s}.0.0/16", 60 + s, count=1_000)
    assert len(book) <= MAX_ADDRESS_BOOK
    assert len(book.entries) == len(book)


def test_a_worthless_occupant_is_evicted_a_useful_one_is_not() -> None:
    book = AddressBook(key=KEY)
    group = "198.51.0.0/16"
    flood(book, group, 46, count=2_000)  # the source's buckets are full now
    refused = next(
        f"46.200.{i}.9" for i in range(250) if not book.add(f"46.200.{i}.9", 9444, "s", group)
    )
    # The refused address's slot holds an untried address: it is kept over the newcomer...
    assert (refused, 9444) not in book
    # ...until that occupant fails again and again, which makes it worthless.
    occupant = next(
        e for e in book.entries.values() if e.slot == book._new_slot(refused, 9444, group)
    )
    for _ in range(TERRIBLE_FAILURES):
        book.failed((occupant.host, occupant.port))
    assert book.add(refused, 9444, "s", group)
    assert (occupant.host, occupant.port) not in book


def test_a_connected_address_moves_to_tried_and_out_of_the_sources_share() -> None:
    book = AddressBook(key=KEY)
    group = source_group("127.0.0.1", b"\x02" * 32)
    assert book.add("127.0.0.1", 9000, "addr", group)
    book.connected(("127.0.0.1", 9000), b"\x03" * 32)
    assert book.count_from(group) == 0
    assert [e.port for e in book.good()] == [9000]
    # Known already: a second mention from anyone changes nothing.
    assert not book.add("127.0.0.1", 9000, "addr", "other")


def test_the_book_survives_a_restart(tmp_path: Path) -> None:
    book = AddressBook(key=KEY)
    flood(book, "192.0.0.0/16", 47, count=300)
    book.add("127.0.0.1", 9001, "bootstrap")
    book.connected(("127.0.0.1", 9001), b"\x04" * 32)
    book.add("127.0.0.1", 9002, "inbound")
    book.mark_self(("127.0.0.1", 9002))
    path = tmp_path / "peers.json"
    book.save(path)

    loaded = AddressBook.load(path)
    assert loaded.key == KEY
    assert set(loaded.entries) == set(book.entries) - {("127.0.0.1", 9002)}
    assert loaded.count_from("192.0.0.0/16") == book.count_from("192.0.0.0/16")
    (tried,) = loaded.good()
    assert (tried.port, tried.node_id, tried.tried) == (9001, b"\x04" * 32, True)


def test_an_unreadable_book_is_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    path.write_text('{"key": "zz", "entries": []}')
    assert len(AddressBook.load(path)) == 0
    assert len(AddressBook.load(tmp_path / "missing.json")) == 0


def test_address_groups() -> None:
    assert address_group("1.2.3.4", 1) == address_group("1.2.200.5", 2) == "1.2.0.0/16"
    assert address_group("2001:db8:1::1", 1) == "2001:db8::/32"
    assert address_group("::ffff:1.2.3.4", 1) == "1.2.0.0/16"
    assert address_group("127.0.0.1", 9444) != address_group("127.0.0.1", 9445)
    assert source_group("127.0.0.1", b"\x05" * 32) != source_group("127.0.0.1", b"\x06" * 32)
