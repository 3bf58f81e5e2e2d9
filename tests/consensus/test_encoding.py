"""The canonical encoder: records round-trip, and everything non-canonical is refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.encoding import (
    BOOL,
    I64,
    U8,
    U16,
    U64,
    U256,
    Bytes,
    Field,
    ListOf,
    OptionalOf,
    RecordOf,
    Schema,
    Str,
    _careful_decode,
    decode,
    decode_record,
    encode,
    encode_record,
)
from consensus.errors import DecodeError, EncodeError
from consensus.transactions import Transaction

TX_RECORD = RecordOf(Transaction)


@dataclass(frozen=True)
class Inner:
    tag: int
    data: bytes
    SCHEMA: ClassVar[Schema] = (Field("tag", U8), Field("data", Bytes(max=8)))


@dataclass(frozen=True)
class Sample:
    small: int
    signed: int
    work: int
    flag: bool
    key: bytes
    name: str
    items: tuple[Inner, ...]
    maybe: int | None
    SCHEMA: ClassVar[Schema] = (
        Field("small", U16),
        Field("signed", I64),
        Field("work", U256),
        Field("flag", BOOL),
        Field("key", Bytes(4)),
        Field("name", Str(max=16)),
        Field("items", ListOf(RecordOf(Inner), max=3)),
        Field("maybe", OptionalOf(U64)),
    )


inners = st.builds(Inner, st.integers(0, 255), st.binary(max_size=8))
samples = st.builds(
    Sample,
    small=st.integers(0, 2**16 - 1),
    signed=st.integers(-(2**63), 2**63 - 1),
    work=st.integers(0, 2**256 - 1),
    flag=st.booleans(),
    key=st.binary(min_size=4, max_size=4),
    name=st.text(max_size=16).filter(lambda s: len(s.encode()) <= 16),
    items=st.lists(inners, max_size=3).map(tuple),
    maybe=st.none() | st.integers(0, 2**64 - 1),
)

VALID = Sample(1, -1, 2**200, True, b"abcd", "hé", (Inner(7, b"x"),), None)


@dataclass(frozen=True)
class Pieces:
    """Lists of byte strings, capped and sized: a blob range's chunks, a header's hashes."""

    parts: tuple[bytes, ...]
    hashes: tuple[bytes, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("parts", ListOf(Bytes(max=8), max=4)),
        Field("hashes", ListOf(Bytes(4), max=3)),
    )


pieces = st.builds(
    Pieces,
    st.lists(st.binary(max_size=8), max_size=4).map(tuple),
    st.lists(st.binary(min_size=4, max_size=4), max_size=3).map(tuple),
)


def p(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def array(*items: bytes) -> bytes:
    """A fixarray of already packed items, so single items can be hand-crafted."""
    return bytes([0x90 | len(items)]) + b"".join(items)


FIELDS = [
    p(1),
    p(-1),
    p((2**200).to_bytes(32, "big")),
    p(True),
    p(b"abcd"),
    p("hé"),
    p([[7, b"x"]]),
    p(None),
]


def with_field(index: int, packed: bytes) -> bytes:
    fields = list(FIELDS)
    fields[index] = packed
    return array(*fields)


@given(samples)
def test_records_round_trip_and_reencode_identically(sample: Sample) -> None:
    data = encode_record(sample)
    decoded = decode_record(Sample, data, max_size=10_000)
    assert decoded == sample
    assert encode_record(decoded) == data


def test_hand_built_bytes_are_the_canonical_encoding() -> None:
    assert encode_record(VALID) == array(*FIELDS)
    assert decode_record(Sample, array(*FIELDS), 1000) == VALID


def test_u256_travels_as_32_big_endian_bytes() -> None:
    wire = msgpack.unpackb(encode_record(VALID))
    assert wire[2] == (2**200).to_bytes(32, "big")


REJECTIONS = [
    ("non-canonical int", with_field(0, b"\xcd\x00\x01"), "small: non-canonical"),
    ("positive int as signed", with_field(0, b"\xd0\x01"), "small: non-canonical"),
    ("float", with_field(1, p(1.5)), "signed: expected i64, got float"),
    ("map instead of array", p({"small": 1}), "expected array, got map"),
    ("nested map", with_field(6, p([{"tag": 7}])), "items[0]: expected array, got map"),
    ("extra field", array(*FIELDS, p(0)), "unknown extra field"),
    ("missing field", array(*FIELDS[:-1]), "missing field"),
    ("wrong type", with_field(4, p("abcd")), "key: expected bytes, got str"),
    ("bool for int", with_field(0, p(True)), "small: expected u16, got bool"),
    ("int for bool", with_field(3, p(1)), "flag: expected bool, got int"),
    ("out of range", with_field(0, p(70_000)), "small: 70000 out of range for u16"),
    ("negative unsigned", with_field(0, p(-1)), "small: -1 out of range"),
    ("fixed bytes too long", with_field(4, p(b"abcde")), "key: expected 4 bytes, got 5"),
    ("bytes over cap", with_field(6, p([[7, b"123456789"]])), "items[0].data: 9 bytes exceeds"),
    ("str over cap", with_field(5, p("x" * 17)), "name: 17 UTF-8 bytes exceeds"),
    ("invalid utf-8", with_field(5, b"\xa2\xff\xfe"), "name: malformed msgpack"),
    ("too many items", with_field(6, p([[1, b""]] * 4)), "items: 4 items exceeds"),
    ("u256 short", with_field(2, p(b"\x01" * 31)), "work: expected 32 bytes"),
    ("ext type", with_field(7, b"\xd4\x05\x00"), "maybe: ext types are not allowed"),
    ("timestamp ext", with_field(7, b"\xd6\xff\x00\x00\x00\x01"), "ext types are not allowed"),
    ("wide array header", b"\xdc\x00\x08" + b"".join(FIELDS), "non-canonical array header"),
    ("wide str header", with_field(5, b"\xd9\x03h\xc3\xa9"), "name: non-canonical"),
    ("truncated", array(*FIELDS)[:-3], "truncated"),
    ("empty input", b"", "truncated"),
    ("trailing garbage", array(*FIELDS) + b"\x00", "1 trailing bytes"),
    ("reserved byte", with_field(0, b"\xc1"), "small: malformed msgpack"),
    ("not an array", p(5), "Sample: expected array, got int"),
]


@pytest.mark.parametrize(
    ("data", "reason"), [(d, r) for _, d, r in REJECTIONS], ids=[n for n, _, _ in REJECTIONS]
)
def test_decode_rejects_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        decode_record(Sample, data, max_size=10_000)
    assert reason in str(err.value)


def test_oversize_input_is_refused_before_parsing() -> None:
    data = array(*FIELDS)
    with pytest.raises(DecodeError, match="exceeds the limit of 10"):
        decode_record(Sample, data, max_size=10)


def test_huge_declared_length_does_not_allocate() -> None:
    # A bin32 header that claims 4 GiB in a 10-byte message.
    data = with_field(4, b"\xc6\xff\xff\xff\xff")
    with pytest.raises(DecodeError):
        decode_record(Sample, data, max_size=10_000)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (Sample(2**16, 0, 0, True, b"abcd", "", (), None), "small: 65536 out of range"),
        (Sample(0, 0, 2**256, True, b"abcd", "", (), None), "work: expected u256"),
        (Sample(0, 0, 0, True, b"abc", "", (), None), "key: expected 4 bytes"),
        (Sample(0, 0, 0, True, b"abcd", "", [Inner(1, b"")], None), "items: expected tuple"),  # type: ignore[arg-type]
        (Sample(0, 0, 0, True, b"abcd", "\ud800", (), None), "name: not encodable"),
    ],
)
def test_encode_refuses_bad_values_naming_the_field(value: Sample, reason: str) -> None:
    with pytest.raises(EncodeError) as err:
        encode_record(value)
    assert reason in str(err.value)


def test_omit_drops_a_top_level_field() -> None:
    data = encode_record(VALID, omit=frozenset({"maybe"}))
    assert data == array(*FIELDS[:-1])


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.binary(max_size=20)
        | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=12,
    )
)
def test_plain_values_round_trip(value: object) -> None:
    data = encode(value)
    assert decode(data, max_size=10_000) == value
    assert encode(decode(data, max_size=10_000)) == data


def test_plain_values_reject_non_canonical_and_foreign_types() -> None:
    assert encode([1, b"x"]) == b"\x92\x01\xc4\x01x"
    with pytest.raises(DecodeError, match="non-canonical"):
        decode(b"\x92\xcd\x00\x01\xc4\x01x", 100)
    with pytest.raises(DecodeError, match="float is not allowed"):
        decode(p([1.0]), 100)
    with pytest.raises(DecodeError, match="map is not allowed"):
        decode(p({"a": 1}), 100)
    with pytest.raises(DecodeError, match="trailing"):
        decode(b"\x01\x01", 100)
    with pytest.raises(EncodeError, match="64 bits"):
        encode(2**64)
    with pytest.raises(EncodeError, match="cannot encode float"):
        encode(1.0)


def test_records_inside_plain_values_encode_as_arrays() -> None:
    assert encode([VALID]) == b"\x91" + encode_record(VALID)


@given(st.data())
def test_mutated_bytes_never_raise_anything_but_decode_error(data: st.DataObject) -> None:
    valid = bytearray(encode_record(data.draw(samples)))
    position = data.draw(st.integers(0, len(valid) - 1))
    valid[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(valid)))
    mutated = bytes(valid[:cut])
    try:
        decoded = decode_record(Sample, mutated, max_size=10_000)
    except DecodeError:
        return
    assert encode_record(decoded) == mutated


@pytest.mark.parametrize(("cls", "records"), [(Sample, samples), (Pieces, pieces)])
@given(st.data())
def test_the_fast_decoder_agrees_with_the_field_by_field_one(
    cls: type, records: st.SearchStrategy[object], data: st.DataObject
) -> None:
    """decode_record first tries a whole-buffer decode; on any input, valid or
    mutated, it must give exactly what the checked field-by-field decoder gives
    (the same record, or a DecodeError with the same reason). Pieces: lists of byte
    strings, whose types and lengths the whole-buffer decoder checks at C speed."""
    valid = bytearray(encode_record(data.draw(records)))
    for _ in range(data.draw(st.integers(0, 3))):
        position = data.draw(st.integers(0, len(valid) - 1))
        valid[position] = data.draw(st.integers(0, 255))
    mutated = bytes(valid[: data.draw(st.integers(0, len(valid)))])
    try:
        careful: object = _careful_decode(cls, mutated)
    except DecodeError as e:
        careful = e.reason
    try:
        fast: object = decode_record(cls, mutated, max_size=10_000)
    except DecodeError as e:
        fast = e.reason
    assert fast == careful


def test_a_decoded_transaction_keeps_its_wire_bytes() -> None:
    from consensus.keys import PrivateKey
    from consensus.transactions import Transaction, TransferPayload, kind_of

    key = PrivateKey.from_label("devnet-0")
    payload = TransferPayload(bytes(20), 5)
    tx = Transaction(1, kind_of(payload), key.public_key.data, 0, 10, payload, bytes(64))
    tx = tx.sign(key)
    wire = encode_record(tx)
    decoded = decode_record(Transaction, wire, max_size=10_000)
    assert decoded == tx
    assert decoded.__dict__["encoded"] == wire  # txid needs no re-encoding
    assert decoded.txid == tx.txid


@dataclass(frozen=True)
class _Batch:
    """A record holding a list of transactions (as a block or a TXS message does)."""

    note: int
    txs: tuple[Any, ...]
    SCHEMA: ClassVar[Schema] = (Field("note", U16), Field("txs", ListOf(TX_RECORD, max=70_000)))


@dataclass(frozen=True)
class _Holder:
    batch: _Batch
    SCHEMA: ClassVar[Schema] = (Field("batch", RecordOf(_Batch)),)


def _unsigned_transfers(count: int) -> list[Any]:
    from consensus.transactions import UNSIGNED, Transaction, TransferPayload, TxKind

    return [
        Transaction(1, TxKind.TRANSFER, bytes(32), n, 10, TransferPayload(bytes(20), 1), UNSIGNED)
        for n in range(count)
    ]


@pytest.mark.parametrize("count", [0, 1, 15, 16, 300, 65_535, 65_536])
def test_lists_of_transactions_are_assembled_from_their_cached_bytes(count: int) -> None:
    """A list of transactions is encoded from each one's cached canonical bytes;
    the result must be exactly what the field-by-field encoder gives (every
    array header width included), and decoding must leave each transaction
    holding its own slice of the input."""
    from consensus.encoding import _pack, _record_to_wire

    txs = _unsigned_transfers(count)
    holder = _Holder(_Batch(7, tuple(txs)))
    wire = encode_record(holder)
    assert wire == _pack(_record_to_wire(holder, ""))
    decoded = decode_record(_Holder, wire, max_size=len(wire))
    assert decoded == holder
    for got, sent in zip(decoded.batch.txs, txs, strict=True):
        assert got.__dict__["encoded"] == sent.encoded  # cached: its txid needs no encoding


def test_a_malformed_transaction_in_a_list_is_named() -> None:
    import dataclasses as dc

    txs = _unsigned_transfers(3)
    txs[1] = dc.replace(txs[1], fee=-1)
    with pytest.raises(EncodeError, match=r"batch\.txs\[1\]\.fee"):
        encode_record(_Holder(_Batch(0, tuple(txs))))


def _nested_empty_arrays(n: int) -> bytes:
    """One msgpack array of ``n`` empty arrays: n + 5 bytes that unpack to n lists."""
    return b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n


@pytest.mark.parametrize("where", ["a scalar field", "the record itself, over the lean limit"])
def test_nested_empty_arrays_are_refused_without_being_built(where):
    """An attacker's frame of millions of empty arrays (1 byte each, ~70 bytes each as
    Python lists) is refused in milliseconds with little memory: where a scalar is
    expected the array is skipped, not built, and input over LEAN_DECODE_MAX never
    takes the unpack-everything-first path."""
    import time
    import tracemalloc

    from consensus.encoding import LEAN_DECODE_MAX

    n = 4 * LEAN_DECODE_MAX
    # Inner(tag=<the bomb>, data=7), or a record of n fields instead of 2.
    bomb = _nested_empty_arrays(n)
    data = b"\x92" + bomb + msgpack.packb(7) if where == "a scalar field" else bomb
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DecodeError) as refused:
            decode_record(Inner, data, 64 << 20)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ("got array" if where == "a scalar field" else "fields") in str(refused.value)
    assert elapsed < 2.0
    assert peak < 4 * len(data), f"{peak / 2**20:.0f} MiB for {len(data) / 2**20:.0f} MiB"


@pytest.mark.parametrize(
    ("value", "wire", "reason"),
    [
        (Pieces((b"", b"123456789"), ()), [[b"", b"123456789"], []], "parts[1]: 9 bytes exceeds"),
        (Pieces((b"ok", 5), ()), [[b"ok", 5], []], "parts[1]: expected bytes, got int"),  # type: ignore[arg-type]
        (Pieces((), (b"abc",)), [[], [b"abc"]], "hashes[0]: expected 4 bytes, got 3"),
        (Pieces((b"",) * 5, ()), [[b""] * 5, []], "parts: 5 items exceeds"),
    ],
)
def test_a_wrong_byte_string_in_a_list_is_named(value: Pieces, wire: object, reason: str) -> None:
    with pytest.raises(EncodeError) as err:
        encode_record(value)
    assert reason in str(err.value)
    with pytest.raises(DecodeError) as derr:
        decode_record(Pieces, p(wire), max_size=10_000)
    assert reason in str(derr.value)
    ok = Pieces((b"", b"12345678"), (b"abcd",))
    assert decode_record(Pieces, encode_record(ok), max_size=10_000) == ok
