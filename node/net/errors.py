"""Typed errors of the node's peer-to-peer layer.

A peer that breaks the wire protocol raises ``ProtocolViolation`` with a
reason a person can read; the peer manager logs it, tells the peer why in a
Close message, disconnects it and (if ``ban``) bans it for a while.
"""

from __future__ import annotations

from consensus.errors import InvalidBlock


class ProtocolViolation(Exception):
    """A peer sent something the protocol does not allow.

    ``ban`` says whether the peer is banned for it (most violations: an honest
    node never sends malformed or unsolicited data); ``score`` is how bad it
    is, for a future scoring policy (100 = ban at once).
    """

    def __init__(self, reason: str, *, ban: bool = True, score: int = 100) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ban = ban
        self.score = score

    def __str__(self) -> str:
        return self.reason


class HandshakeRefused(ProtocolViolation):
    """The peer is honest but cannot talk to us: another chain, genesis or version,
    ourselves, a duplicate, or no room. We close politely and do not ban."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, ban=False, score=0)


def header_violation(where: str, error: InvalidBlock) -> ProtocolViolation:
    """A peer sent a block or header that breaks a rule: banned, unless the only fault
    is a timestamp ahead of our clock (which may be the one that is behind)."""
    ban = "too far in the future" not in str(error)
    return ProtocolViolation(f"{where}: {error}", ban=ban)
