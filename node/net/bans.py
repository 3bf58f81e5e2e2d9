"""Bans: who a node refuses to talk to, and until when.

Keys say what identifies the culprit (see node.net.p2p for the policy):
"node:<hex>" (a proven node id), "ip:<host>", or "node:<hex>@<host>" (a
claimed node id from one address). Bans expire by themselves.

The list is bounded: throwaway node keys cost nothing, so beyond ``MAX_BANS``
the ban that would expire soonest goes first. A lookup is a dict lookup;
expired bans leave through a heap ordered by expiry, never by a scan.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

MAX_BANS = 10_000

log = logging.getLogger("pouw.p2p")


@dataclass
class Ban:
    who: str
    reason: str
    until: float


class BanList:
    """Bans keyed by "node:<hex>", "ip:<host>" or "node:<hex>@<host>", expiring by themselves."""

    def __init__(self, max_bans: int = MAX_BANS) -> None:
        self.max_bans = max_bans
        self._bans: dict[str, Ban] = {}
        # (until, who) for every ban; an entry whose ban was replaced is stale
        # and skipped when it reaches the top.
        self._expiry: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._bans)

    def add(self, who: str, reason: str, seconds: float) -> None:
        """Ban ``who`` for ``seconds`` (a ban already longer is kept as it is)."""
        until = time.time() + seconds
        current = self._bans.get(who)
        if current is not None and current.until >= until:
            return
        self._insert(Ban(who, reason, until))

    def _insert(self, ban: Ban) -> None:
        self._bans[ban.who] = ban
        heapq.heappush(self._expiry, (ban.until, ban.who))
        self._purge(time.time())
        while len(self._bans) > self.max_bans:
            self._pop_soonest()
        if len(self._expiry) > 2 * len(self._bans) + 64:  # too many stale entries
            self._expiry = [(b.until, b.who) for b in self._bans.values()]
            heapq.heapify(self._expiry)

    def _pop_soonest(self) -> None:
        until, who = heapq.heappop(self._expiry)
        ban = self._bans.get(who)
        if ban is not None and ban.until == until:
            del self._bans[who]

    def _purge(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            self._pop_soonest()

    def find(self, host: str | None = None, node_id: bytes | None = None) -> Ban | None:
        """The ban that applies to this host and/or node_id, if any."""
        now = time.time()
        self._purge(now)
        keys = []
        if host is not None:
            keys.append(f"ip:{host}")
        if node_id is not None:
            keys.append(f"node:{node_id.hex()}")
            if host is not None:
                keys.append(f"node:{node_id.hex()}@{host}")
        for key in keys:
            ban = self._bans.get(key)
            if ban is not None and ban.until > now:
                return ban
        return None

    def all(self) -> list[Ban]:
        """The bans in force, soonest to expire first."""
        self._purge(time.time())
        return sorted(self._bans.values(), key=lambda b: b.until)

    # -------------------------------------------------------- persistence

    def save(self, path: Path) -> None:
        """Write the bans in force to ``path`` (atomically: a crash leaves the old file)."""
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps([asdict(b) for b in self.all()]))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, max_bans: int = MAX_BANS) -> BanList:
        """The bans saved at ``path`` that are still in force; an empty list if none
        or if the file is unreadable (logged: losing bans is safer than not starting)."""
        bans = cls(max_bans)
        try:
            records = json.loads(path.read_text())
            loaded = [Ban(str(r["who"]), str(r["reason"]), float(r["until"])) for r in records]
        except FileNotFoundError:
            return bans
        except (OSError, ValueError, TypeError, KeyError) as e:
            log.warning("ignoring the ban list %s: %s", path, e)
            return bans
        now = time.time()
        for ban in loaded:
            current = bans._bans.get(ban.who)
            if ban.until > now and (current is None or current.until < ban.until):
                bans._insert(ban)
        return bans
