"""The address book: peers a node may dial, with exponential backoff per address."""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass

MAX_ADDRESS_BOOK = 4096
_HOSTNAME = re.compile(r"^[A-Za-z0-9.:\-]+$")


@dataclass
class AddrEntry:
    host: str
    port: int
    source: str
    node_id: bytes | None = None
    failures: int = 0
    next_try: float = 0.0
    last_success: float = 0.0
    is_self: bool = False


class AddressBook:
    """Addresses we may dial, with exponential backoff per address."""

    def __init__(self, base_backoff: float = 1.0, max_backoff: float = 300.0) -> None:
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.entries: dict[tuple[str, int], AddrEntry] = {}

    def add(self, host: str, port: int, source: str) -> bool:
        """Remember an address; False if known already or the book is full."""
        if (host, port) in self.entries or len(self.entries) >= MAX_ADDRESS_BOOK:
            return False
        self.entries[(host, port)] = AddrEntry(host, port, source)
        return True

    def _backoff(self, entry: AddrEntry) -> None:
        delay = min(self.base_backoff * 2 ** max(entry.failures - 1, 0), self.max_backoff)
        entry.next_try = time.monotonic() + delay * random.uniform(1.0, 1.25)

    def failed(self, addr: tuple[str, int]) -> None:
        entry = self.entries.get(addr)
        if entry is not None:
            entry.failures += 1
            self._backoff(entry)

    def connected(self, addr: tuple[str, int], node_id: bytes) -> None:
        entry = self.entries.get(addr)
        if entry is not None:
            entry.node_id = node_id
            entry.last_success = time.time()

    def disconnected(self, addr: tuple[str, int], lasted_s: float) -> None:
        """A ready connection ended: retry soon if it lasted, back off if it keeps dropping."""
        entry = self.entries.get(addr)
        if entry is not None:
            entry.failures = 1 if lasted_s > 60 else entry.failures + 1
            self._backoff(entry)

    def mark_self(self, addr: tuple[str, int]) -> None:
        entry = self.entries.get(addr)
        if entry is not None:
            entry.is_self = True

    def candidates(self, busy: set[tuple[str, int]], connected: set[bytes]) -> list[AddrEntry]:
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


def dialable(host: str, port: int) -> bool:
    """Whether (host, port) looks like an address we could dial (not a wildcard, no junk)."""
    return (
        0 < port < 65536
        and bool(host)
        and host not in ("0.0.0.0", "::", "[::]")
        and _HOSTNAME.match(host) is not None
    )
