"""Ed25519 keys and addresses (PROTOCOL §9).

An address is the first 20 bytes of BLAKE3(public key) (plain BLAKE3, no
framing: the input is always exactly 32 bytes). Its text form is ``"pw"``
followed by 40 lowercase hex digits, e.g. ``pw3f1c...``; ``parse_address``
also accepts the 40 hex digits alone. The prefix makes an address
recognisable next to the 64-hex-digit hashes and public keys the CLI prints.
There is no checksum in the text form: wallets must show the full address.

Signing is PyNaCl (libsodium). libsodium's verify rejects non-canonical
signatures (S ≥ L) and small-order keys, so a valid signature cannot be
rewritten into another valid one: txids that cover the signature stay unique.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import blake3
import nacl.bindings
import nacl.exceptions
import nacl.signing

from consensus.hashing import TAG_DEVNET_KEY, tagged_hash

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
SEED_SIZE = 32
ADDRESS_SIZE = 20
ADDRESS_PREFIX = "pw"


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key (32 bytes)."""

    data: bytes

    def __post_init__(self) -> None:
        if type(self.data) is not bytes or len(self.data) != PUBLIC_KEY_SIZE:
            raise ValueError("an Ed25519 public key is exactly 32 bytes")

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True iff ``signature`` is this key's signature of ``message``; never raises."""
        return _verify(self.data, message, signature)

    @property
    def address(self) -> bytes:
        """This key's 20-byte account address."""
        return address(self.data)

    def hex(self) -> str:
        return self.data.hex()


@dataclass(frozen=True)
class PrivateKey:
    """An Ed25519 signing key, kept as its 32-byte seed. repr() never shows the seed."""

    seed: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if type(self.seed) is not bytes or len(self.seed) != SEED_SIZE:
            raise ValueError("an Ed25519 seed is exactly 32 bytes")

    @classmethod
    def generate(cls) -> PrivateKey:
        """A fresh random key from the OS's CSPRNG."""
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @classmethod
    def from_seed(cls, seed: bytes) -> PrivateKey:
        """The key whose 32-byte Ed25519 seed is ``seed``."""
        return cls(seed)

    @classmethod
    def from_label(cls, label: str) -> PrivateKey:
        """A deterministic devnet key: seed = tagged BLAKE3 of the label.

        Anyone who knows the label knows the key, which is the point for
        prefunded devnet accounts ("alice", "miner-0") and tests. Never use
        it for anything of value.
        """
        return cls(tagged_hash(TAG_DEVNET_KEY, label.encode("utf-8")))

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(bytes(nacl.signing.SigningKey(self.seed).verify_key))

    @property
    def address(self) -> bytes:
        return self.public_key.address

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return nacl.signing.SigningKey(self.seed).sign(bytes(message)).signature


def address(public_key: PublicKey | bytes) -> bytes:
    """Account address: the first 20 bytes of BLAKE3(public key bytes)."""
    data = public_key.data if isinstance(public_key, PublicKey) else public_key
    if type(data) is not bytes or len(data) != PUBLIC_KEY_SIZE:
        raise ValueError("an Ed25519 public key is exactly 32 bytes")
    return blake3.blake3(data).digest()[:ADDRESS_SIZE]


def address_to_text(addr: bytes) -> str:
    """``"pw"`` + 40 lowercase hex digits."""
    if type(addr) is not bytes or len(addr) != ADDRESS_SIZE:
        raise ValueError("an address is exactly 20 bytes")
    return ADDRESS_PREFIX + addr.hex()


def parse_address(text: str) -> bytes:
    """Inverse of ``address_to_text``; also accepts bare hex. ValueError with a reason."""
    body = text.strip()
    if body.lower().startswith(ADDRESS_PREFIX):
        body = body[len(ADDRESS_PREFIX) :]
    if len(body) != 2 * ADDRESS_SIZE:
        raise ValueError(f"an address has 40 hex digits, got {len(body)}: {text!r}")
    try:
        return bytes.fromhex(body)
    except ValueError:
        raise ValueError(f"an address is hex digits: {text!r}") from None


def _verify(public_key: bytes, message: object, signature: object) -> bool:
    """Ed25519 verification of a well-formed 32-byte key; False on any bad input."""
    if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
        return False
    if not isinstance(message, bytes | bytearray | memoryview):
        return False
    # What VerifyKey(key).verify(message, signature) does, without building a
    # VerifyKey per call: libsodium's crypto_sign_open on signature ‖ message.
    try:
        nacl.bindings.crypto_sign_open(signature + bytes(message), public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Verify with a raw 32-byte public key; False (never an exception) on any bad input."""
    if type(public_key) is not bytes or len(public_key) != PUBLIC_KEY_SIZE:
        return False
    return _verify(public_key, message, signature)


SignedItem = tuple[PublicKey | bytes, bytes, bytes]
"""(public key, message, signature)."""

VerifyBatch = Callable[[Sequence[SignedItem]], list[bool]]
"""A function with ``verify_many``'s verdicts (a node's may use several threads)."""


def verify_many(items: Iterable[SignedItem]) -> list[bool]:
    """Verify (public key, message, signature) triples; one result each, in order."""
    return [
        verify_signature(key.data if isinstance(key, PublicKey) else key, message, signature)
        for key, message, signature in items
    ]
