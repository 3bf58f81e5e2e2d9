"""Bans: who a node refuses to talk to, and until when.

Keys say what identifies the culprit (see node.p2p for the policy):
"node:<hex>" (a proven node id), "ip:<host>", or "node:<hex>@<host>" (a
claimed node id from one address). Bans expire by themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Ban:
    who: str
    reason: str
    until: float


class BanList:
    """Bans keyed by "node:<hex>", "ip:<host>" or "node:<hex>@<host>", expiring by themselves."""

    def __init__(self) -> None:
        self._bans: dict[str, Ban] = {}

    def add(self, who: str, reason: str, seconds: float) -> None:
        self._bans[who] = Ban(who, reason, time.time() + seconds)

    def find(self, host: str | None = None, node_id: bytes | None = None) -> Ban | None:
        """The ban that applies to this host and/or node_id, if any."""
        now = time.time()
        for who, ban in list(self._bans.items()):
            if ban.until <= now:
                del self._bans[who]
        keys = []
        if host is not None:
            keys.append(f"ip:{host}")
        if node_id is not None:
            keys.append(f"node:{node_id.hex()}")
            if host is not None:
                keys.append(f"node:{node_id.hex()}@{host}")
        for key in keys:
            if key in self._bans:
                return self._bans[key]
        return None

    def all(self) -> list[Ban]:
        self.find()  # drop the expired
        return list(self._bans.values())
