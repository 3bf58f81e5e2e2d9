"""Transactions: every kind round-trips; malformed bytes and invalid transactions are refused."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.encoding import (
    Bytes,
    EnumOf,
    Kind,
    ListOf,
    RecordOf,
    Str,
    UInt,
    schema_of,
)
from consensus.errors import DecodeError, InvalidTransaction
from consensus.keys import PrivateKey
from consensus.transactions import (
    MAX_JOB_DIM,
    MAX_TX_SIZE,
    PAYLOAD_TYPES,
    AccessGrantPayload,
    DatasetRegisterPayload,
    FraudProofPayload,
    JobPostPayload,
    Transaction,
    TransferPayload,
    TxKind,
    check_tx_stateless,
    decode_tx,
    encode_tx,
    kind_of,
    signed_transaction,
    signing_bytes,
    signing_digest,
)
from kernels.params import MAX_K

CHAIN = 1337
ALICE = PrivateKey.from_label("alice")
BOB = PrivateKey.from_label("bob")
CAROL = PrivateKey.from_label("carol")


def strategy_for(kind: Kind) -> st.SearchStrategy[Any]:
    """Values of a schema kind, small enough to keep the tests fast."""
    if isinstance(kind, UInt):
        return st.integers(0, 2**kind.bits - 1)
    if isinstance(kind, EnumOf):
        return st.sampled_from(list(kind.enum))
    if isinstance(kind, Bytes):
        if kind.size is not None:
            return st.binary(min_size=kind.size, max_size=kind.size)
        assert kind.max is not None
        return st.binary(max_size=min(kind.max, 64))
    if isinstance(kind, Str):
        return st.text(max_size=40)
    if isinstance(kind, ListOf):
        return st.lists(strategy_for(kind.item), max_size=min(kind.max, 4)).map(tuple)
    if isinstance(kind, RecordOf):
        return record_strategy(kind.record)
    raise AssertionError(f"no strategy for {kind}")


def record_strategy(cls: type) -> st.SearchStrategy[Any]:
    return st.builds(cls, **{f.name: strategy_for(f.kind) for f in schema_of(cls)})


payloads = st.sampled_from(list(PAYLOAD_TYPES.values())).flatmap(record_strategy)
transactions = payloads.flatmap(
    lambda payload: st.builds(
        Transaction,
        chain_id=st.integers(0, 2**32 - 1),
        kind=st.just(next(k for k, t in PAYLOAD_TYPES.items() if t is type(payload))),
        sender=st.binary(min_size=32, max_size=32),
        nonce=st.integers(0, 2**64 - 1),
        fee=st.integers(0, 2**64 - 1),
        payload=st.just(payload),
        signature=st.binary(min_size=64, max_size=64),
    )
)


@given(transactions)
def test_every_kind_round_trips_and_reencodes_identically(tx: Transaction) -> None:
    data = encode_tx(tx)
    decoded = decode_tx(data)
    assert decoded == tx
    assert encode_tx(decoded) == data
    assert decoded.txid == tx.txid


@settings(max_examples=30)
@given(payloads, st.integers(0, 2**32 - 1))
def test_signed_transactions_of_every_kind_verify(payload: Any, nonce: int) -> None:
    tx = signed_transaction(ALICE, chain_id=CHAIN, nonce=nonce, fee=5, payload=payload)
    assert tx.kind is next(k for k, t in PAYLOAD_TYPES.items() if t is type(payload))
    decoded = decode_tx(encode_tx(tx))
    assert decoded.signature == tx.signature
    assert ALICE.public_key.verify(signing_digest(decoded), tx.signature)


def transfer(**changes: Any) -> Transaction:
    tx = signed_transaction(
        ALICE, chain_id=CHAIN, nonce=3, fee=2, payload=TransferPayload(BOB.address, 10)
    )
    return dataclasses.replace(tx, **changes)


VALID = transfer()


def p(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def array(*items: bytes) -> bytes:
    return bytes([0x90 | len(items)]) + b"".join(items)


PARTS = [p(CHAIN), p(0), p(VALID.sender), p(3), p(2), p([BOB.address, 10]), p(VALID.signature)]


def with_part(index: int, packed: bytes) -> bytes:
    parts = list(PARTS)
    parts[index] = packed
    return array(*parts)


def test_hand_built_bytes_are_the_canonical_encoding() -> None:
    assert encode_tx(VALID) == array(*PARTS)
    assert signing_bytes(VALID) == array(*PARTS[:-1])


DECODE_REJECTIONS = [
    ("non-canonical int", with_part(3, b"\xcd\x00\x03"), "nonce: non-canonical"),
    ("float", with_part(4, p(2.0)), "fee: expected u64, got float"),
    ("map instead of array", with_part(5, p({"to": BOB.address})), "payload: expected array"),
    ("tx as a map", p({"chain_id": CHAIN}), "Transaction: expected array, got map"),
    ("unknown extra field", array(*PARTS, p(0)), "unknown extra field"),
    ("extra payload field", with_part(5, p([BOB.address, 10, 1])), "payload: unknown extra"),
    ("missing field", array(*PARTS[:-1]), "missing field"),
    ("missing payload field", with_part(5, p([BOB.address])), "payload: missing field"),
    ("wrong type", with_part(2, p(VALID.sender.hex()[:32])), "sender: expected bytes, got str"),
    ("nil for bytes", with_part(6, p(None)), "signature: expected bytes, got nil"),
    ("oversize bytes", with_part(5, p([b"\x01" * 21, 10])), "payload.to: expected 20 bytes"),
    ("truncated bytes", array(*PARTS)[:-10], "signature: truncated"),
    ("trailing garbage", array(*PARTS) + b"\xc0", "trailing bytes"),
    ("bad kind id", with_part(1, p(99)), "kind: unknown TxKind 99"),
    ("kind out of u8", with_part(1, p(256)), "kind: 256 out of range for u8"),
    ("payload/kind mismatch", with_part(1, p(1)), "payload: missing field(s): JobPostPayload"),
    ("negative amount", with_part(5, p([BOB.address, -10])), "payload.amount: -10 out of range"),
    ("oversize tx", array(*PARTS) + b"\x00" * MAX_TX_SIZE, "exceeds the limit"),
]


@pytest.mark.parametrize(
    ("data", "reason"),
    [(d, r) for _, d, r in DECODE_REJECTIONS],
    ids=[n for n, _, _ in DECODE_REJECTIONS],
)
def test_decode_rejects_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_tx(data)
    assert reason in str(err.value)


def test_mismatched_payload_cannot_be_encoded() -> None:
    tx = dataclasses.replace(VALID, kind=TxKind.JOB_CANCEL)
    with pytest.raises(InvalidTransaction, match="payload: expected JobCancelPayload"):
        check_tx_stateless(tx, CHAIN)


def signed(payload: Any, fee: int = 2) -> Transaction:
    return signed_transaction(ALICE, chain_id=CHAIN, nonce=0, fee=fee, payload=payload)


def unsignable(payload: Any) -> Transaction:
    """A transaction whose payload breaks an encoding limit (so it cannot even be signed)."""
    tx = signed(TransferPayload(BOB.address, 1))
    return dataclasses.replace(tx, kind=kind_of(payload), payload=payload)


def job(**changes: Any) -> JobPostPayload:
    return dataclasses.replace(
        JobPostPayload(64, 128, 64, b"a" * 32, b"b" * 32, 100, 50), **changes
    )


def fraud(**changes: Any) -> FraudProofPayload:
    base = FraudProofPayload(
        b"h" * 32, b"j" * 32, 0, 1, b"\x01" * 8, (), b"\x02" * 8, (), b"\x00" * 16, ()
    )
    return dataclasses.replace(base, **changes)


def dataset(**changes: Any) -> DatasetRegisterPayload:
    return dataclasses.replace(DatasetRegisterPayload(b"r" * 32, 1000, 256, "{}"), **changes)


def grant(**changes: Any) -> AccessGrantPayload:
    return dataclasses.replace(AccessGrantPayload(b"d" * 32, BOB.address, b"k" * 80, 9), **changes)


STATELESS_REJECTIONS: list[tuple[str, Transaction, str]] = [
    ("wrong chain_id (replay)", transfer(chain_id=CHAIN + 1), "replay"),
    ("bad signature", transfer(signature=b"\x07" * 64), "signature"),
    ("tampered fee after signing", transfer(fee=1), "signature"),
    ("tampered payload after signing", transfer(payload=TransferPayload(BOB.address, 99)), "sig"),
    ("signed by someone else", transfer(sender=CAROL.public_key.data), "signature"),
    ("zero transfer", signed(TransferPayload(BOB.address, 0)), "positive amount"),
    ("amount + fee overflow", signed(TransferPayload(BOB.address, 2**64 - 2)), "overflows"),
    ("self-transfer", signed(TransferPayload(ALICE.address, 5)), "sender itself"),
    ("value out of range", transfer(nonce=2**64), "nonce: 18446744073709551616 out of range"),
    ("job k = 0", signed(job(k=0)), "payload.k"),
    ("job k > MAX_K", signed(job(k=MAX_K + 1)), "payload.k"),
    ("job m too big", signed(job(m=MAX_JOB_DIM + 1)), "payload.m"),
    ("job without reward", signed(job(fee=0)), "positive reward"),
    ("job reward overflow", signed(job(fee=2**64 - 1)), "overflows"),
    ("job expiring at genesis", signed(job(expiry_height=0)), "expiry_height"),
    ("fraud proof k mismatch", signed(fraud(b_col=b"\x02" * 9)), "differ in length"),
    ("fraud proof empty rows", signed(fraud(a_row=b"", b_col=b"")), "empty row"),
    ("fraud proof ragged c_row", signed(fraud(c_row=b"\x00" * 15)), "int32"),
    ("fraud proof j outside row", signed(fraud(j=4)), "payload.j"),
    ("empty dataset", signed(dataset(size=0)), "payload.size"),
    ("zero chunk size", signed(dataset(chunk_size=0)), "payload.chunk_size"),
    ("metadata too long", unsignable(dataset(metadata="x" * 4097)), "payload.metadata: 4097"),
    ("sealed key too short", signed(grant(sealed_key=b"k" * 48)), "sealed_key"),
    ("sealed key too long", unsignable(grant(sealed_key=b"k" * 129)), "sealed_key: 129 bytes"),
]


@pytest.mark.parametrize(
    ("tx", "reason"),
    [(t, r) for _, t, r in STATELESS_REJECTIONS],
    ids=[n for n, _, _ in STATELESS_REJECTIONS],
)
def test_stateless_rules_reject_with_a_reason(tx: Transaction, reason: str) -> None:
    with pytest.raises(InvalidTransaction) as err:
        check_tx_stateless(tx, CHAIN)
    assert reason in str(err.value)


@pytest.mark.parametrize(
    "payload",
    [TransferPayload(BOB.address, 1), job(), fraud(), dataset(), grant()],
    ids=lambda p: type(p).__name__,
)
def test_valid_transactions_pass(payload: Any) -> None:
    check_tx_stateless(signed(payload), CHAIN)


def test_largest_fraud_proof_fits_the_size_limit() -> None:
    branch = tuple(bytes([i]) * 32 for i in range(17))
    proof = fraud(
        a_row=b"\x01" * MAX_K,
        b_col=b"\x02" * MAX_K,
        c_row=b"\x00" * 4 * MAX_JOB_DIM,
        a_branch=branch,
        b_branch=branch,
        c_branch=branch,
    )
    tx = signed(proof)
    check_tx_stateless(tx, CHAIN)
    assert decode_tx(encode_tx(tx)) == tx
    assert len(encode_tx(tx)) <= MAX_TX_SIZE


def test_txid_covers_the_signature_and_sign_checks_the_key() -> None:
    assert VALID.txid != transfer(signature=b"\x00" * 64).txid
    assert VALID.sender_address == ALICE.address
    with pytest.raises(ValueError, match="does not match"):
        VALID.sign(BOB)


def test_signing_bytes_include_chain_id() -> None:
    assert signing_bytes(VALID) != signing_bytes(transfer(chain_id=CHAIN + 1))
