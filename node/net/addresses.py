"""The address book: peers a node may dial, with exponential backoff per address.

After Bitcoin Core's addrman, simplified. Addresses live in fixed slots of two
tables, so the book is bounded and no peer can fill it:

* **new** (``NEW_BUCKETS`` buckets of ``BUCKET_SIZE`` slots): addresses heard
  of. The bucket is a keyed hash of the *source group* (who told us) and the
  address's group, drawn from only ``NEW_BUCKETS_PER_SOURCE`` buckets per
  source group: one source can hold at most ``MAX_PER_SOURCE`` addresses
  however many it sends, and it competes only for its own buckets.
* **tried** (``TRIED_BUCKETS`` × ``BUCKET_SIZE``): addresses we completed a
  handshake with, bucketed by the address's group alone.

An address has exactly one slot in its table (a keyed hash of bucket and
address). When that slot is taken, the less valuable entry goes. In new, the
occupant goes if it is worthless (our own address, or failed
``TERRIBLE_FAILURES`` times without a success) or if its source holds more
of the table than the newcomer's (so the addresses of a flood give way to those
of a quiet source); otherwise the newcomer is refused. In tried, the one
connected least recently moves back to new.

The hash key is secret and random per book (and kept with it), so a peer
cannot aim its addresses at somebody else's buckets.

A source group off loopback is the /16 (IPv4) or /32 (IPv6) of the peer's IP;
on loopback, where every node of a local testnet is 127.0.0.1, it is the
peer's node id, and an address's group is its port.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.net.peer import is_loopback

NEW_BUCKETS = 64
TRIED_BUCKETS = 16
BUCKET_SIZE = 64
NEW_BUCKETS_PER_SOURCE = 8
TRIED_BUCKETS_PER_GROUP = 4
MAX_PER_SOURCE = NEW_BUCKETS_PER_SOURCE * BUCKET_SIZE
"""The most addresses one source group can have in the new table (512)."""
MAX_ADDRESS_BOOK = (NEW_BUCKETS + TRIED_BUCKETS) * BUCKET_SIZE
TERRIBLE_FAILURES = 3
_HOSTNAME = re.compile(r"^[A-Za-z0-9.:\-]+$")

log = logging.getLogger("pouw.p2p")

Addr = tuple[str, int]
Slot = tuple[int, int]


@dataclass
class AddrEntry:
    host: str
    port: int
    source: str
    """Who told us, for people ("bootstrap", "addr from 1.2.3.4:9444", ...)."""
    group: str = ""
    """The source group the entry is bucketed by (see the module docstring)."""
    node_id: bytes | None = None
    failures: int = 0
    next_try: float = 0.0
    last_success: float = 0.0
    is_self: bool = False
    tried: bool = False
    slot: Slot = (0, 0)

    @property
    def terrible(self) -> bool:
        """Worth less than any address we have not tried yet."""
        return self.is_self or (not self.last_success and self.failures >= TERRIBLE_FAILURES)


def address_group(host: str, port: int) -> str:
    """The network an address belongs to: /16 of IPv4, /32 of IPv6, the port on loopback."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "loopback:" + str(port) if is_loopback(host) else "name:" + host.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return f"loopback:{port}"
    prefix = 16 if ip.version == 4 else 32
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def source_group(host: str, node_id: bytes | None) -> str:
    """Whom addresses heard from the peer at ``host`` are charged to (module docstring)."""
    if is_loopback(host):
        return "node:" + node_id.hex() if node_id is not None else "loopback"
    return address_group(host, 0)


class AddressBook:
    """Addresses we may dial, with exponential backoff per address (module docstring)."""

    def __init__(
        self, base_backoff: float = 1.0, max_backoff: float = 300.0, key: bytes | None = None
    ) -> None:
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.key = key if key is not None else os.urandom(32)
        self.entries: dict[Addr, AddrEntry] = {}
        self._new: dict[Slot, AddrEntry] = {}
        self._tried: dict[Slot, AddrEntry] = {}
        self._new_from: Counter[str] = Counter()  # entries in new per source group

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, addr: object) -> bool:
        return addr in self.entries

    # ------------------------------------------------------------- slots

    def _hash(self, *parts: object) -> int:
        text = "\x00".join(str(p) for p in parts).encode()
        return int.from_bytes(hashlib.blake2b(text, key=self.key, digest_size=8).digest(), "big")

    def _new_slot(self, host: str, port: int, group: str) -> Slot:
        pick = self._hash("new-pick", group, address_group(host, port)) % NEW_BUCKETS_PER_SOURCE
        bucket = self._hash("new-bucket", group, pick) % NEW_BUCKETS
        return bucket, self._hash("new-slot", bucket, host, port) % BUCKET_SIZE

    def _tried_slot(self, host: str, port: int) -> Slot:
        pick = self._hash("tried-pick", host, port) % TRIED_BUCKETS_PER_GROUP
        bucket = self._hash("tried-bucket", address_group(host, port), pick) % TRIED_BUCKETS
        return bucket, self._hash("tried-slot", bucket, host, port) % BUCKET_SIZE

    def _remove(self, entry: AddrEntry) -> None:
        if entry.tried:
            del self._tried[entry.slot]
        else:
            del self._new[entry.slot]
            self._new_from[entry.group] -= 1
            if not self._new_from[entry.group]:
                del self._new_from[entry.group]
        del self.entries[(entry.host, entry.port)]

    def _yields_to(self, occupant: AddrEntry, group: str) -> bool:
        """Whether a new-table occupant is worth less than a newcomer from ``group``."""
        if occupant.terrible:
            return True
        # +1: the newcomer's source counts itself, and two equal sources do not
        # keep evicting each other's addresses.
        return self._new_from[occupant.group] > self._new_from[group] + 1

    def _place_new(self, entry: AddrEntry) -> bool:
        slot = self._new_slot(entry.host, entry.port, entry.group)
        occupant = self._new.get(slot)
        if occupant is not None:
            if not self._yields_to(occupant, entry.group):
                return False
            self._remove(occupant)
        entry.tried, entry.slot = False, slot
        self._new[slot] = entry
        self._new_from[entry.group] += 1
        self.entries[(entry.host, entry.port)] = entry
        return True

    def _place_tried(self, entry: AddrEntry) -> None:
        slot = self._tried_slot(entry.host, entry.port)
        occupant = self._tried.get(slot)
        if occupant is not None:
            if occupant.last_success > entry.last_success:
                # The occupant is the fresher proven address: the entry stays in new.
                if (entry.host, entry.port) not in self.entries:
                    self._place_new(entry)
                return
            self._remove(occupant)
            self._place_new(occupant)  # dropped if its new slot is held by a useful entry
        if (entry.host, entry.port) in self.entries:
            self._remove(entry)
        entry.tried, entry.slot = True, slot
        self._tried[slot] = entry
        self.entries[(entry.host, entry.port)] = entry

    # ---------------------------------------------------------------- API

    def add(self, host: str, port: int, source: str, group: str | None = None) -> bool:
        """Remember an address heard from ``source`` (bucketed by ``group``, default the
        source itself); False if known already or its slot holds a more useful entry."""
        if (host, port) in self.entries:
            return False
        return self._place_new(AddrEntry(host, port, source, group or source))

    def count_from(self, group: str) -> int:
        """How many addresses of the new table came from source group ``group``."""
        return self._new_from[group]

    def _backoff(self, entry: AddrEntry) -> None:
        delay = min(self.base_backoff * 2 ** max(entry.failures - 1, 0), self.max_backoff)
        entry.next_try = time.monotonic() + delay * random.uniform(1.0, 1.25)

    def failed(self, addr: Addr) -> None:
        entry = self.entries.get(addr)
        if entry is not None:
            entry.failures += 1
            self._backoff(entry)

    def connected(self, addr: Addr, node_id: bytes) -> None:
        """A handshake with ``addr`` completed: it moves to the tried table."""
        entry = self.entries.get(addr)
        if entry is not None:
            entry.node_id = node_id
            entry.last_success = time.time()
            if not entry.tried:
                self._place_tried(entry)

    def disconnected(self, addr: Addr, lasted_s: float) -> None:
        """A ready connection ended: retry soon if it lasted, back off if it keeps dropping."""
        entry = self.entries.get(addr)
        if entry is not None:
            entry.failures = 1 if lasted_s > 60 else entry.failures + 1
            self._backoff(entry)

    def mark_self(self, addr: Addr) -> None:
        entry = self.entries.get(addr)
        if entry is not None:
            entry.is_self = True

    def candidates(self, busy: set[Addr], connected: set[bytes]) -> list[AddrEntry]:
        """Addresses worth dialing now, fewest failures first."""
        now = time.monotonic()
        found = [
            e
            for key, e in self.entries.items()
            if not e.is_self
            and key not in busy
            and e.next_try <= now
            and (e.node_id is None or e.node_id not in connected)
        ]
        random.shuffle(found)
        found.sort(key=lambda e: e.failures)
        return found

    def good(self) -> list[AddrEntry]:
        """Addresses we have completed a handshake with."""
        return [e for e in self.entries.values() if e.last_success and not e.is_self]

    # -------------------------------------------------------- persistence

    def save(self, path: Path) -> None:
        """Write the book (its key too, so slots stay where they are) to ``path`` atomically."""
        records: list[dict[str, Any]] = [
            {
                "host": e.host,
                "port": e.port,
                "source": e.source,
                "group": e.group,
                "node_id": e.node_id.hex() if e.node_id else None,
                "failures": e.failures,
                "last_success": e.last_success,
                "tried": e.tried,
            }
            for e in self.entries.values()
            if not e.is_self  # our own port may differ next time
        ]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"key": self.key.hex(), "entries": records}))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, base_backoff: float = 1.0, max_backoff: float = 300.0) -> AddressBook:
        """The book saved at ``path``; an empty one if there is none or it is unreadable
        (logged: the node relearns addresses from its peers)."""
        try:
            saved = json.loads(path.read_text())
            key = bytes.fromhex(saved["key"])
            records = [
                AddrEntry(
                    str(r["host"]),
                    int(r["port"]),
                    str(r["source"]),
                    str(r["group"]),
                    bytes.fromhex(r["node_id"]) if r["node_id"] else None,
                    int(r["failures"]),
                    last_success=float(r["last_success"]),
                    tried=bool(r["tried"]),
                )
                for r in saved["entries"]
            ]
        except FileNotFoundError:
            return cls(base_backoff, max_backoff)
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("ignoring the address book %s: %s", path, e)
            return cls(base_backoff, max_backoff)
        book = cls(base_backoff, max_backoff, key)
        for entry in sorted(records, key=lambda e: not e.tried):  # tried ones first
            if not dialable(entry.host, entry.port) or (entry.host, entry.port) in book.entries:
                continue
            if entry.tried:
                book._place_tried(entry)
            else:
                book._place_new(entry)
        return book


def dialable(host: str, port: int) -> bool:
    """Whether (host, port) looks like an address we could dial (not a wildcard, no junk)."""
    return (
        0 < port < 65536
        and bool(host)
        and host not in ("0.0.0.0", "::", "[::]")
        and _HOSTNAME.match(host) is not None
    )
