"""Ed25519 keys, addresses and their text form."""

from __future__ import annotations

import blake3
import pytest

from consensus.keys import (
    PrivateKey,
    PublicKey,
    address,
    address_to_text,
    parse_address,
    verify_many,
    verify_signature,
)

# Order of the Ed25519 base point: adding it to S gives a second encoding of S.
ED25519_L = 2**252 + 27742317777372353535851937790883648493


def test_from_label_is_deterministic_and_label_specific() -> None:
    assert PrivateKey.from_label("alice") == PrivateKey.from_label("alice")
    assert PrivateKey.from_label("alice").public_key == PrivateKey.from_label("alice").public_key
    assert PrivateKey.from_label("alice").seed != PrivateKey.from_label("bob").seed
    assert PrivateKey.from_seed(PrivateKey.from_label("alice").seed) == PrivateKey.from_label(
        "alice"
    )


def test_generated_keys_differ() -> None:
    assert PrivateKey.generate().seed != PrivateKey.generate().seed


def test_sign_and_verify() -> None:
    key = PrivateKey.from_label("alice")
    signature = key.sign(b"hello")
    assert len(signature) == 64
    assert key.public_key.verify(b"hello", signature)
    assert not key.public_key.verify(b"hellO", signature)
    assert not PrivateKey.from_label("bob").public_key.verify(b"hello", signature)


@pytest.mark.parametrize(
    ("message", "signature"),
    [
        (b"hello", b""),
        (b"hello", b"\x00" * 64),
        (b"hello", b"\xff" * 64),
        (b"hello", b"x" * 63),
        (b"hello", "not bytes"),
        ("not bytes", b"\x00" * 64),
        (12, b"\x00" * 64),
        (None, None),
    ],
)
def test_verify_returns_false_on_garbage(message: object, signature: object) -> None:
    public = PrivateKey.from_label("alice").public_key
    assert public.verify(message, signature) is False  # type: ignore[arg-type]


def test_verify_refuses_a_second_encoding_of_the_same_signature() -> None:
    key = PrivateKey.from_label("alice")
    signature = key.sign(b"m")
    s = int.from_bytes(signature[32:], "little")
    malleated = signature[:32] + (s + ED25519_L).to_bytes(32, "little")
    assert key.public_key.verify(b"m", signature)
    assert not key.public_key.verify(b"m", malleated)


def test_verify_with_raw_keys_never_raises() -> None:
    key = PrivateKey.from_label("alice")
    signature = key.sign(b"m")
    assert verify_signature(key.public_key.data, b"m", signature)
    assert not verify_signature(b"\x00" * 31, b"m", signature)
    assert not verify_signature(b"\x00" * 32, b"m", signature)  # small-order point
    assert not verify_signature("nope", b"m", signature)  # type: ignore[arg-type]


def test_verify_many_reports_each_item() -> None:
    alice, bob = PrivateKey.from_label("alice"), PrivateKey.from_label("bob")
    items = [
        (alice.public_key, b"a", alice.sign(b"a")),
        (bob.public_key.data, b"b", alice.sign(b"b")),
        (bob.public_key, b"b", bob.sign(b"b")),
    ]
    assert verify_many(items) == [True, False, True]


def test_address_is_first_20_bytes_of_blake3_of_the_public_key() -> None:
    public = PrivateKey.from_label("alice").public_key
    assert address(public) == blake3.blake3(public.data).digest()[:20]
    assert public.address == address(public.data) == PrivateKey.from_label("alice").address
    with pytest.raises(ValueError):
        address(b"\x00" * 20)


def test_address_text_round_trips() -> None:
    addr = PrivateKey.from_label("alice").address
    text = address_to_text(addr)
    assert text.startswith("pw") and len(text) == 42
    assert parse_address(text) == addr
    assert parse_address(addr.hex()) == addr
    assert parse_address(text.upper().replace("PW", "pw")) == addr


@pytest.mark.parametrize("text", ["pw", "pw" + "00" * 19, "pw" + "zz" * 20, "00" * 21, ""])
def test_parse_address_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_private_key_repr_hides_the_seed() -> None:
    key = PrivateKey.from_label("alice")
    assert key.seed.hex() not in repr(key)


def test_keys_refuse_wrong_sizes() -> None:
    with pytest.raises(ValueError):
        PrivateKey.from_seed(b"short")
    with pytest.raises(ValueError):
        PublicKey(b"\x00" * 33)
