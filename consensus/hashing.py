"""BLAKE3 hashing with unambiguous framing and domain separation.

``H(a, b)`` hashes each part prefixed by its length (u64 little-endian), so
``H(b"ab", b"c") != H(b"a", b"bc")``: a hash of several fields can never be
re-read as a hash of differently split fields.

``tagged_hash(tag, ...)`` is the same framing in BLAKE3's derive-key mode
with the context ``"pouwnet v1 <tag>"``. Every use of a hash in the protocol
has its own tag, so a value hashed for one purpose (say a Merkle leaf) can
never be presented as a hash made for another (a Merkle node, a txid, a
signing digest). Ordinary BLAKE3 and keyed BLAKE3 (tickets) use different
mode flags, so they cannot collide with tagged hashes either.
"""

from __future__ import annotations

from functools import cache

import blake3

Hash32 = bytes
"""A 32-byte BLAKE3 digest."""

HASH_SIZE = 32
CONTEXT_PREFIX = "pouwnet v1 "

TAG_TXID = "txid"
"""Transaction id: tagged over the full canonical encoding, signature included."""
TAG_TX_SIGN = "tx-sign"
"""Digest that a transaction's Ed25519 signature covers."""
TAG_MERKLE_LEAF = "merkle-leaf"
TAG_MERKLE_NODE = "merkle-node"
TAG_MERKLE_EMPTY = "merkle-empty"
TAG_DEVNET_KEY = "devnet-key"
"""Seed of a devnet key derived from a public label (never for real funds)."""


def u32_bytes(value: int) -> bytes:
    """``value`` as 4 little-endian bytes, for hashing integers (job shapes, indices)."""
    return value.to_bytes(4, "little")


def u64_bytes(value: int) -> bytes:
    """``value`` as 8 little-endian bytes, for hashing integers (heights, indices)."""
    return value.to_bytes(8, "little")


def _update_framed(hasher: blake3.blake3, parts: tuple[bytes, ...]) -> None:
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)


def H(*parts: bytes) -> Hash32:
    """BLAKE3-256 of the length-prefixed parts (plain hash mode)."""
    hasher = blake3.blake3()
    _update_framed(hasher, parts)
    return hasher.digest()


@cache
def _tag_template(tag: str) -> blake3.blake3:
    if not tag:
        raise ValueError("a hash tag must not be empty")
    return blake3.blake3(derive_key_context=CONTEXT_PREFIX + tag)


def tagged_hasher(tag: str) -> blake3.blake3:
    """A fresh hasher for ``tag``; feed it the framed parts yourself (fast paths only)."""
    return _tag_template(tag).copy()


def tagged_hash(tag: str, *parts: bytes) -> Hash32:
    """BLAKE3-256 of the length-prefixed parts under the domain ``"pouwnet v1 <tag>"``."""
    hasher = _tag_template(tag).copy()
    # One update of the framed message: the same bytes as feeding the parts one by one.
    framed = []
    for part in parts:
        framed.append(len(part).to_bytes(8, "little"))
        framed.append(part)
    hasher.update(b"".join(framed))
    return hasher.digest()
