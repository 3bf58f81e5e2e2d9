"""The one canonical encoding of protocol data (PROTOCOL §9, §12).

Wire format: msgpack. A *record* (a frozen dataclass with a ``SCHEMA``) is a
msgpack array of its field values in declared order: no field names, no
version prefix. Nested records are nested arrays. Integers use msgpack's
shortest form, byte strings use bin, text uses str (UTF-8). Integers wider
than 64 bits (256-bit targets and chain work) travel as fixed 32-byte
big-endian bin, never as msgpack integers.

Why canonical: a transaction id and a block hash are hashes of these bytes.
If two encodings of one object were accepted, one signed transaction would
have two ids (malleability), and peers could disagree on hashes of "the same"
block. So decoding accepts exactly the bytes ``encode_record`` would produce
and nothing else: every field is type-, length- and range-checked, each value
must be in its shortest msgpack form, array lengths must match the schema,
and nothing may follow the object.

Declaring a record::

    @dataclass(frozen=True)
    class TransferPayload:
        to: bytes
        amount: int
        SCHEMA: ClassVar[Schema] = (Field("to", Bytes(20)), Field("amount", U64))
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import Any, TypeVar

import msgpack

from consensus.errors import DecodeError, EncodeError

T = TypeVar("T")

U64_MAX = 2**64 - 1
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
U256_MAX = 2**256 - 1


_packers = threading.local()  # a Packer is reused (cheaper than packb) but not shared


def _pack(wire: object) -> bytes:
    # strict_types: a tuple or an int subclass reaching the packer is a bug in
    # to_wire, not something to serialise silently.
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(
            use_bin_type=True, strict_types=True, datetime=False
        )
    packed: bytes = packer.pack(wire)  # resets its buffer after success and failure alike
    return packed


class _ExtRefused(ValueError):
    pass


def _refuse_ext(code: int, data: bytes) -> object:
    raise _ExtRefused(f"ext type {code}")


def _type_name(value: object) -> str:
    names = {dict: "map", list: "array", float: "float", str: "str", bytes: "bytes"}
    names.update({bool: "bool", int: "int", type(None): "nil"})
    return names.get(type(value), "ext")


class _Reader:
    """A cursor over one input buffer that reads msgpack values and checks their form."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._unpacker = msgpack.Unpacker(
            raw=False,
            strict_map_key=True,
            ext_hook=_refuse_ext,
            use_list=True,
            max_buffer_size=max(len(data), 1),
        )
        self._unpacker.feed(data)

    def _fail(self, path: str, err: Exception) -> DecodeError:
        if isinstance(err, msgpack.OutOfData):
            return DecodeError(f"{path}: truncated input")
        if isinstance(err, _ExtRefused):
            return DecodeError(f"{path}: ext types are not allowed")
        return DecodeError(f"{path}: malformed msgpack ({err})")

    def value(self, path: str, containers: bool = False) -> tuple[object, int, int]:
        """Read one whole value; return it with its byte span for a canonical check.

        Where a scalar is expected (``containers`` false) an array or a map is skipped
        without being built and comes back empty, for the caller to refuse by its type:
        32 MiB of nested empty arrays would otherwise become ~2.6 GB of Python lists."""
        start = self._unpacker.tell()
        marker = self.data[start] if start < len(self.data) else 0xC1
        if not containers and (0x80 <= marker <= 0x9F or 0xDC <= marker <= 0xDF):
            try:
                self._unpacker.skip()
            except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as e:
                raise self._fail(path, e) from None
            is_map = marker <= 0x8F or marker >= 0xDE  # fixmap, map16, map32
            return ({} if is_map else []), start, self._unpacker.tell()
        try:
            value = self._unpacker.unpack()
        except (ValueError, TypeError, OverflowError, RecursionError, msgpack.UnpackException) as e:
            raise self._fail(path, e) from None
        if isinstance(value, msgpack.Timestamp):
            raise DecodeError(f"{path}: ext types are not allowed")
        return value, start, self._unpacker.tell()

    def check_canonical(self, wire: object, start: int, end: int, path: str) -> None:
        """Reject a value whose shortest encoding is not the bytes we were given."""
        if _pack(wire) != self.data[start:end]:
            raise DecodeError(f"{path}: non-canonical encoding (use the shortest msgpack form)")

    def array_header(self, path: str) -> int:
        """Read an array header; reject any other type and over-wide headers."""
        start = self._unpacker.tell()
        if start >= len(self.data):
            raise DecodeError(f"{path}: truncated input")
        marker = self.data[start]
        if not (0x90 <= marker <= 0x9F or marker in (0xDC, 0xDD)):
            value, _, _ = self.value(path)
            raise DecodeError(f"{path}: expected array, got {_type_name(value)}")
        try:
            n: int = self._unpacker.read_array_header()
        except (ValueError, msgpack.UnpackException) as e:
            raise self._fail(path, e) from None
        width = self._unpacker.tell() - start
        if width != (1 if n < 16 else 3 if n < 2**16 else 5):
            raise DecodeError(f"{path}: non-canonical array header")
        return n

    def next_is_nil(self) -> bool:
        pos = self._unpacker.tell()
        return pos < len(self.data) and self.data[pos] == 0xC0

    def finish(self, what: str) -> None:
        extra = len(self.data) - self._unpacker.tell()
        if extra:
            raise DecodeError(f"{what}: {extra} trailing bytes after the object")


# ---------------------------------------------------------------- field kinds


class Kind:
    """How one field is typed on the wire. Subclasses check both directions."""

    def to_wire(self, value: object, path: str) -> object:
        """Check a Python value (EncodeError if wrong) and return its msgpack form."""
        raise NotImplementedError

    def read(self, reader: _Reader, path: str) -> object:
        """Read, check (DecodeError if wrong) and return one value from the wire."""
        raise NotImplementedError


class _Primitive(Kind):
    """A kind whose Python value is its msgpack value; subclasses only say what is valid."""

    def check(self, value: object, path: str, err: type[Exception]) -> None:
        raise NotImplementedError

    def to_wire(self, value: object, path: str) -> object:
        self.check(value, path, EncodeError)
        return value

    def read(self, reader: _Reader, path: str) -> object:
        value, start, end = reader.value(path)
        self.check(value, path, DecodeError)
        reader.check_canonical(value, start, end, path)
        return value


@dataclass(frozen=True)
class UInt(_Primitive):
    """Unsigned integer of ``bits`` bits (u8, u16, u32, u64)."""

    bits: int

    def check(self, value: object, path: str, err: type[Exception]) -> None:
        if type(value) is not int:
            raise err(f"{path}: expected u{self.bits}, got {_type_name(value)}")
        if not 0 <= value < 2**self.bits:
            raise err(f"{path}: {value} out of range for u{self.bits}")


U8, U16, U32, U64 = UInt(8), UInt(16), UInt(32), UInt(64)


@dataclass(frozen=True)
class _I64(_Primitive):
    def check(self, value: object, path: str, err: type[Exception]) -> None:
        if type(value) is not int:
            raise err(f"{path}: expected i64, got {_type_name(value)}")
        if not I64_MIN <= value <= I64_MAX:
            raise err(f"{path}: {value} out of range for i64")


I64 = _I64()


@dataclass(frozen=True)
class _Bool(_Primitive):
    def check(self, value: object, path: str, err: type[Exception]) -> None:
        if type(value) is not bool:
            raise err(f"{path}: expected bool, got {_type_name(value)}")


BOOL = _Bool()


@dataclass(frozen=True)
class Bytes(_Primitive):
    """Byte string: ``Bytes(32)`` is exactly 32 bytes, ``Bytes(max=128)`` at most 128."""

    size: int | None = None
    max: int | None = None

    def __post_init__(self) -> None:
        if (self.size is None) == (self.max is None):
            raise ValueError("Bytes needs exactly one of size or max")

    def check(self, value: object, path: str, err: type[Exception]) -> None:
        if type(value) is not bytes:
            raise err(f"{path}: expected bytes, got {_type_name(value)}")
        if self.size is not None and len(value) != self.size:
            raise err(f"{path}: expected {self.size} bytes, got {len(value)}")
        if self.max is not None and len(value) > self.max:
            raise err(f"{path}: {len(value)} bytes exceeds the limit of {self.max}")


@dataclass(frozen=True)
class Str(_Primitive):
    """UTF-8 text of at most ``max`` *bytes* once encoded."""

    max: int

    def check(self, value: object, path: str, err: type[Exception]) -> None:
        if type(value) is not str:
            raise err(f"{path}: expected str, got {_type_name(value)}")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise err(f"{path}: not encodable as UTF-8") from None
        if size > self.max:
            raise err(f"{path}: {size} UTF-8 bytes exceeds the limit of {self.max}")


@dataclass(frozen=True)
class _U256(Kind):
    """A Python int in [0, 2^256) that travels as 32-byte big-endian bin."""

    def to_wire(self, value: object, path: str) -> object:
        if type(value) is not int or not 0 <= value <= U256_MAX:
            raise EncodeError(f"{path}: expected u256, got {value!r}")
        return value.to_bytes(32, "big")

    def read(self, reader: _Reader, path: str) -> object:
        raw = Bytes(32).read(reader, path)
        assert isinstance(raw, bytes)
        return int.from_bytes(raw, "big")


U256 = _U256()


@dataclass(frozen=True)
class EnumOf(Kind):
    """An IntEnum member that travels as an unsigned integer; unknown values are refused."""

    enum: type[IntEnum]
    bits: int = 8

    def to_wire(self, value: object, path: str) -> object:
        if not isinstance(value, self.enum):
            raise EncodeError(f"{path}: expected {self.enum.__name__}, got {value!r}")
        return int(value)

    def read(self, reader: _Reader, path: str) -> object:
        raw = UInt(self.bits).read(reader, path)
        assert type(raw) is int
        try:
            return self.enum(raw)
        except ValueError:
            raise DecodeError(f"{path}: unknown {self.enum.__name__} {raw}") from None


@dataclass(frozen=True)
class ListOf(Kind):
    """A tuple of at most ``max`` items of one kind (decoded as a tuple: records are frozen)."""

    item: Kind
    max: int

    def to_wire(self, value: object, path: str) -> object:
        if type(value) is not tuple:
            raise EncodeError(f"{path}: expected tuple, got {type(value).__name__}")
        if len(value) > self.max:
            raise EncodeError(f"{path}: {len(value)} items exceeds the limit of {self.max}")
        return [self.item.to_wire(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def read(self, reader: _Reader, path: str) -> object:
        n = reader.array_header(path)
        if n > self.max:
            raise DecodeError(f"{path}: {n} items exceeds the limit of {self.max}")
        return tuple(self.item.read(reader, f"{path}[{i}]") for i in range(n))


@dataclass(frozen=True)
class OptionalOf(Kind):
    """Either nil (None) or a value of ``item``."""

    item: Kind

    def to_wire(self, value: object, path: str) -> object:
        return None if value is None else self.item.to_wire(value, path)

    def read(self, reader: _Reader, path: str) -> object:
        if reader.next_is_nil():
            reader.value(path)
            return None
        return self.item.read(reader, path)


@dataclass(frozen=True)
class RecordOf(Kind):
    """A nested record of exactly type ``record``."""

    record: type

    def to_wire(self, value: object, path: str) -> object:
        if type(value) is not self.record:
            raise EncodeError(
                f"{path}: expected {self.record.__name__}, got {type(value).__name__}"
            )
        return _record_to_wire(value, path)

    def read(self, reader: _Reader, path: str) -> object:
        return _read_record(self.record, reader, path)


@dataclass(frozen=True)
class Variant(Kind):
    """A record whose type is chosen by an earlier field (``selector``) of the same record.

    Used for a transaction's payload, whose type follows its ``kind``: the
    payload is decoded as the type that ``kind`` names, so a mismatch shows
    up as a wrong shape and is refused.
    """

    selector: str
    options: Mapping[Any, type]

    def choose(self, selected: object, path: str, err: type[Exception]) -> RecordOf:
        if selected not in self.options:
            raise err(f"{path}: no payload type for {self.selector} {selected!r}")
        return RecordOf(self.options[selected])


@dataclass(frozen=True)
class Field:
    """One declared field: its dataclass attribute name and its wire kind."""

    name: str
    kind: Kind


Schema = tuple[Field, ...]
_checked_schemas: dict[type, Schema] = {}


def schema_of(cls: type) -> Schema:
    """The record's schema, checked once against its dataclass fields (same names, same order)."""
    cached = _checked_schemas.get(cls)
    if cached is not None:
        return cached
    schema: Schema | None = getattr(cls, "SCHEMA", None)
    if schema is None or not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a record (a dataclass with a SCHEMA)")
    names = [f.name for f in dataclasses.fields(cls)]
    if names != [f.name for f in schema]:
        raise TypeError(f"{cls.__name__}.SCHEMA does not list its fields in order: {names}")
    _checked_schemas[cls] = schema
    return schema


def is_record(value: object) -> bool:
    """True for an instance of a dataclass that declares a SCHEMA."""
    return dataclasses.is_dataclass(value) and hasattr(type(value), "SCHEMA")


def _record_to_wire(obj: object, path: str, omit: frozenset[str] = frozenset()) -> list[object]:
    wire: list[object] = []
    for field in schema_of(type(obj)):
        if field.name in omit:
            continue
        kind = field.kind
        here = f"{path}.{field.name}" if path else field.name
        if isinstance(kind, Variant):
            kind = kind.choose(getattr(obj, kind.selector), here, EncodeError)
        wire.append(kind.to_wire(getattr(obj, field.name), here))
    return wire


def _read_record(cls: type[T], reader: _Reader, path: str) -> T:
    schema = schema_of(cls)
    n = reader.array_header(path or cls.__name__)
    if n != len(schema):
        what = "unknown extra field(s)" if n > len(schema) else "missing field(s)"
        raise DecodeError(
            f"{path or cls.__name__}: {what}: {cls.__name__} has {len(schema)} fields, got {n}"
        )
    values: dict[str, object] = {}
    for field in schema:
        kind = field.kind
        here = f"{path}.{field.name}" if path else field.name
        if isinstance(kind, Variant):
            kind = kind.choose(values[kind.selector], here, DecodeError)
        values[field.name] = kind.read(reader, here)
    return cls(**values)


# ---------------------------------------------------------------- lean encoder
#
# _record_to_wire builds a field path and makes two method calls per field so
# that an error can name its field. Valid records are by far the common case
# (every txid, signing digest, block hash and block size), so encode_record
# first runs a lean encoder over the same schema that gives up on anything
# unusual; the generic encoder then runs again from scratch and either gives
# the same wire or raises the EncodeError that names the field at fault. The
# lean encoder only accepts what the generic one accepts, with the same wire.


class _GiveUp(Exception):
    """The lean encoder met a value it does not accept: the generic encoder decides."""


_NO_OMIT: frozenset[str] = frozenset()

# How the lean encoder treats a field, decided once per record type.
_UINT, _BYTES, _BYTES_UP_TO, _RECORD, _VARIANT, _OTHER = range(6)
_plans: dict[type, tuple[tuple[str, int, Any], ...]] = {}


def _plan_of(cls: type) -> tuple[tuple[str, int, Any], ...]:
    plan = _plans.get(cls)
    if plan is None:
        steps: list[tuple[str, int, Any]] = []
        for field in schema_of(cls):
            kind = field.kind
            if type(kind) is UInt:
                steps.append((field.name, _UINT, 1 << kind.bits))
            elif type(kind) is Bytes and kind.size is not None:
                steps.append((field.name, _BYTES, kind.size))
            elif type(kind) is Bytes:
                steps.append((field.name, _BYTES_UP_TO, kind.max))
            elif type(kind) is RecordOf:
                steps.append((field.name, _RECORD, kind.record))
            elif type(kind) is Variant:
                steps.append((field.name, _VARIANT, kind))
            else:
                steps.append((field.name, _OTHER, kind))
        plan = _plans[cls] = tuple(steps)
    return plan


def _lean_record(obj: object, omit: frozenset[str]) -> list[object]:
    wire: list[object] = []
    for name, step, arg in _plan_of(type(obj)):
        if omit and name in omit:
            continue
        value = getattr(obj, name)
        if step == _UINT:
            if type(value) is not int or not 0 <= value < arg:
                raise _GiveUp
        elif step == _BYTES:
            if type(value) is not bytes or len(value) != arg:
                raise _GiveUp
        elif step == _BYTES_UP_TO:
            if type(value) is not bytes or len(value) > arg:
                raise _GiveUp
        elif step == _RECORD:
            if type(value) is not arg:
                raise _GiveUp
            value = _lean_record(value, _NO_OMIT)
        elif step == _VARIANT:
            if type(value) is not arg.options.get(getattr(obj, arg.selector)):
                raise _GiveUp
            value = _lean_record(value, _NO_OMIT)
        else:
            value = _lean_value(arg, value)
        wire.append(value)
    return wire


_BYTES_TYPE = {bytes}


def _lean_value(kind: Kind, value: Any) -> object:
    """One value of a kind that _lean_record does not handle inline."""
    tk = type(kind)
    if tk is ListOf:
        if type(value) is tuple and len(value) <= kind.max:  # type: ignore[attr-defined]
            item = kind.item  # type: ignore[attr-defined]
            if type(item) is Bytes:
                # Types and lengths collected at C speed: a header carries ~300 hashes, a
                # blob range up to 1,024 chunks.
                size, cap = item.size, item.max  # exactly one of them is set
                if set(map(type, value)) <= _BYTES_TYPE and (
                    set(map(len, value)) <= {size}
                    if cap is None
                    else max(map(len, value), default=0) <= cap
                ):
                    return list(value)
                raise _GiveUp
            return [_lean_value(item, v) for v in value]
    elif tk is RecordOf:
        if type(value) is kind.record:  # type: ignore[attr-defined]
            return _lean_record(value, _NO_OMIT)
    elif tk is EnumOf:
        if type(value) is kind.enum:  # type: ignore[attr-defined]
            return int(value)
    elif tk is _U256:
        if type(value) is int and 0 <= value <= U256_MAX:
            return value.to_bytes(32, "big")
    elif tk is OptionalOf:
        return None if value is None else _lean_value(kind.item, value)  # type: ignore[attr-defined]
    elif isinstance(kind, _Primitive):
        return kind.to_wire(value, "")  # its own check; on failure the generic path words it
    raise _GiveUp


# ------------------------------------------- records that hold self-encoding records
#
# A record that caches its canonical bytes (a transaction's ``encoded``: its
# txid, signing digest and size are all computed from them; a block header's)
# is held by the thousand in a list (a block's transactions, a TXS message) or
# inside another record (a block's header). A msgpack
# array is its header followed by its items' encodings, so such a list is
# assembled from the cached bytes instead of encoding every item again. It
# also pays on decoding: the canonical check (encode the decoded record and
# compare) encodes each transaction once and leaves its ``encoded`` set, so
# its txid costs one hash and no second encoding.


def _caches_encoding(cls: type) -> bool:
    return type(getattr(cls, "encoded", None)) is cached_property


_assemblies: dict[type, frozenset[str] | None] = {}


def _assembly_of(cls: type) -> frozenset[str] | None:
    """The fields of ``cls`` assembled from cached encodings (lists of records that cache
    theirs, or records that have such fields), or None if it has none."""
    if cls in _assemblies:
        return _assemblies[cls]
    names = set()
    for name, step, arg in _plan_of(cls):
        holder = step == _RECORD and (_caches_encoding(arg) or _assembly_of(arg) is not None)
        items = (
            step == _OTHER
            and type(arg) is ListOf
            and type(arg.item) is RecordOf
            and _caches_encoding(arg.item.record)
        )
        if holder or items:
            names.add(name)
    assembled = frozenset(names) or None
    _assemblies[cls] = assembled
    return assembled


def _array_head(n: int) -> bytes:
    """The shortest msgpack array header for ``n`` items (what msgpack writes)."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def _assemble(obj: object, assembled: frozenset[str]) -> bytes:
    """The lean encoding of ``obj``, its ``assembled`` fields from cached item bytes."""
    plan = _plan_of(type(obj))
    others = iter(_lean_record(obj, assembled))  # the other fields' wire values, in order
    parts = [_array_head(len(plan))]
    for name, step, arg in plan:
        if name not in assembled:
            parts.append(_pack(next(others)))
            continue
        value = getattr(obj, name)
        if step == _RECORD:
            if type(value) is not arg:
                raise _GiveUp
            if _caches_encoding(arg):
                parts.append(value.encoded)  # EncodeError if malformed: the generic path words it
            else:
                parts.append(_assemble(value, _assemblies[arg]))  # type: ignore[arg-type]
            continue
        item = arg.item.record
        if type(value) is not tuple or len(value) > arg.max:
            raise _GiveUp
        parts.append(_array_head(len(value)))
        for v in value:
            if type(v) is not item:
                raise _GiveUp
            parts.append(v.encoded)  # EncodeError for a malformed item: the generic path words it
    return b"".join(parts)


def encode_record(obj: object, *, omit: frozenset[str] = frozenset()) -> bytes:
    """Canonical bytes of a record; ``omit`` drops top-level fields (e.g. a signature).

    Raises EncodeError naming the field if any value has the wrong type or range.
    """
    try:
        assembled = None if omit else _assembly_of(type(obj))
        if assembled is not None:
            return _assemble(obj, assembled)
        wire = _lean_record(obj, omit)
    except Exception:
        # Whatever stopped the lean encoder, the generic one gives the verdict
        # (and the error) it always has.
        wire = _record_to_wire(obj, "", omit)
    return _pack(wire)


def decode_record(cls: type[T], data: bytes, max_size: int) -> T:
    """Decode the canonical encoding of a ``cls`` record, refusing anything else.

    Raises DecodeError("<field path>: <what is wrong>") for oversize input,
    malformed msgpack, wrong types or ranges, wrong array lengths, non-shortest
    forms and trailing bytes.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{cls.__name__}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise DecodeError(f"{cls.__name__}: {len(data)} bytes exceeds the limit of {max_size}")
    obj = _lean_decode(cls, data) if len(data) <= LEAN_DECODE_MAX else None
    if obj is None:
        obj = _careful_decode(cls, data)
    if type(getattr(cls, "encoded", None)) is cached_property:
        # A record that caches its canonical bytes (a transaction) has them already.
        obj.__dict__["encoded"] = data
    return obj


def _careful_decode(cls: type[T], data: bytes) -> T:
    """Value by value, each checked for type, range and shortest form as it is read,
    so that an error names the field at fault."""
    reader = _Reader(data)
    obj = _read_record(cls, reader, "")
    reader.finish(cls.__name__)
    # Belt and braces: every field was checked above, so this cannot fail
    # unless a Kind forgets a check; then we refuse rather than accept.
    if encode_record(obj) != data:
        raise DecodeError(f"{cls.__name__}: non-canonical encoding")
    return obj


# ---------------------------------------------------------------- lean decoder
#
# The careful decoder above reads one msgpack value at a time and re-packs each
# to check its form: exact errors, but slow. Valid input is the common case
# (every relayed transaction and block), so decode_record first unpacks the whole
# input at C speed, builds the record with no checks of its own, and accepts it
# only if encoding the record gives back exactly the input. That comparison is
# the whole proof: the lean encoder refuses any value of the wrong type or range,
# and equal bytes mean equal canonical form. Anything else (including input that
# is merely malformed) goes to the careful decoder, which gives the verdict and
# the error it always has.


LEAN_DECODE_MAX = 3 * 1024 * 1024
"""Input up to this size is unpacked whole first (the lean path); bigger input, where
that could build ~70 bytes of Python objects per input byte of nested empty arrays
(~200 MB and ~0.4 s at this size, once per offending peer, which is then banned),
goes straight to the careful decoder, which reads no value its schema does not ask for
but is ~2x slower on valid input (~16 ms for 1,000 transactions, against ~9). A full
headers reply (2 MiB, node.net.wire.MAX_HEADERS_BYTES) still takes the lean path:
with 1 MiB here, sync ran 12-16 % slower."""


def _lean_decode(cls: type[T], data: bytes) -> T | None:
    try:
        wire = msgpack.unpackb(
            data, raw=False, strict_map_key=True, ext_hook=_refuse_ext, use_list=True
        )
        obj: T = _lean_build(cls, wire)
        if encode_record(obj) == data:
            return obj
    except Exception:  # whatever it was, the careful decoder decides and words it
        pass
    return None


def _lean_build(cls: type[T], wire: Any) -> T:
    plan = _plan_of(cls)
    if type(wire) is not list or len(wire) != len(plan):
        raise _GiveUp
    values: dict[str, object] = {}
    for (name, step, arg), value in zip(plan, wire, strict=True):
        if step == _RECORD:
            value = _lean_build(arg, value)
        elif step == _VARIANT:
            value = _lean_build(arg.options[values[arg.selector]], value)
        elif step == _OTHER:
            value = _lean_from_wire(arg, value)
        values[name] = value
    return cls(**values)


def _lean_from_wire(kind: Kind, value: Any) -> object:
    tk = type(kind)
    if tk is ListOf:
        if type(value) is not list:
            raise _GiveUp
        item = kind.item  # type: ignore[attr-defined]
        if isinstance(item, _Primitive):
            return tuple(value)
        return tuple(_lean_from_wire(item, v) for v in value)
    if tk is RecordOf:
        return _lean_build(kind.record, value)  # type: ignore[attr-defined]
    if tk is EnumOf:
        return kind.enum(value)  # type: ignore[attr-defined]
    if tk is _U256:
        if type(value) is not bytes or len(value) != 32:
            raise _GiveUp
        return int.from_bytes(value, "big")
    if tk is OptionalOf:
        return None if value is None else _lean_from_wire(kind.item, value)  # type: ignore[attr-defined]
    if isinstance(kind, _Primitive):
        return value
    raise _GiveUp


# ------------------------------------------------- schema-less plain values


_ANY_STR = Str(max=U64_MAX)


def _plain_to_wire(value: object, path: str) -> object:
    if value is None or type(value) in (bool, bytes):
        return value
    if type(value) is str:
        return _ANY_STR.to_wire(value, path)
    if isinstance(value, int):  # int and IntEnum members
        if not I64_MIN <= value <= U64_MAX:
            raise EncodeError(f"{path}: {value} does not fit in 64 bits (use U256 bytes)")
        return int(value)
    if isinstance(value, list | tuple):
        return [_plain_to_wire(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if is_record(value):
        return _record_to_wire(value, path)
    raise EncodeError(f"{path}: cannot encode {type(value).__name__}")


def _lean_plain(value: Any) -> object:
    """_plain_to_wire for valid values, without paths (the state root encodes thousands)."""
    t = type(value)
    if t is int:
        if I64_MIN <= value <= U64_MAX:
            return value
        raise _GiveUp
    if t is bytes or t is bool or value is None:
        return value
    if t is list or t is tuple:
        out = []
        for v in value:  # scalars inline: the state root encodes thousands of short lists
            tv = type(v)
            if tv is int:
                if not I64_MIN <= v <= U64_MAX:
                    raise _GiveUp
            elif tv is str:
                v.encode("utf-8")  # UnicodeEncodeError: the generic path words it
            elif not (tv is bytes or tv is bool or v is None):
                v = _lean_plain(v)
            out.append(v)
        return out
    if t is str:
        value.encode("utf-8")  # UnicodeEncodeError: the generic path words it
        return value
    if is_record(value):
        return _lean_record(value, _NO_OMIT)
    raise _GiveUp


def encode(value: object) -> bytes:
    """Canonical bytes of a plain value: int (i64..u64), bytes, str, bool, None, list, record."""
    try:
        wire = _lean_plain(value)
    except Exception:
        wire = _plain_to_wire(value, "value")  # the verdict and the error, as always
    return _pack(wire)


def _check_plain(value: object, path: str) -> None:
    if isinstance(value, list):
        for i, v in enumerate(value):
            _check_plain(v, f"{path}[{i}]")
    elif value is not None and type(value) not in (bool, int, bytes, str):
        raise DecodeError(f"{path}: {_type_name(value)} is not allowed")


def decode(data: bytes, max_size: int) -> object:
    """Decode a plain value (lists come back as lists, records as arrays), canonically."""
    if len(data) > max_size:
        raise DecodeError(f"value: {len(data)} bytes exceeds the limit of {max_size}")
    reader = _Reader(bytes(data))
    value, start, end = reader.value("value", containers=True)
    _check_plain(value, "value")
    reader.check_canonical(value, start, end, "value")
    reader.finish("value")
    return value
