"""Typed consensus errors.

Every rule in consensus/ that can fail raises one of these with a reason a
person can read: ``str(err)`` is the reason, e.g. ``"payload.amount: 0 is not
a valid transfer amount"``. The node maps them to peer penalties and RPC error
messages, so the type says *what* failed and the reason says *why*.
"""

from __future__ import annotations


class ConsensusError(Exception):
    """Base class: something does not follow the protocol rules."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class DecodeError(ConsensusError):
    """Bytes are not the canonical encoding of a well-formed protocol object.

    Raised for malformed msgpack, wrong types, out-of-range values, oversize
    input, unknown or missing fields and non-canonical encodings alike: a peer
    that sends any of these is misbehaving.
    """


class EncodeError(ConsensusError):
    """A Python object cannot be encoded: a field has the wrong type or range.

    This is a local programming or input error (nothing on the wire can cause
    it); it exists so that building a bad transaction fails loudly with the
    field's name instead of producing bytes no peer would accept.
    """


class InvalidTransaction(ConsensusError):
    """A well-formed transaction breaks a validity rule (signature, chain, limits)."""


class InvalidBlock(ConsensusError):
    """A well-formed block breaks a validity rule."""


class DuplicateProofOfWork(InvalidBlock):
    """A second block with the proof of work (header_seed) of a block already held."""
