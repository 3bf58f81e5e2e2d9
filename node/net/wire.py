"""P2P messages and their frames (PROTOCOL §12).

A frame is one binary WebSocket message holding the msgpack array
``[type, payload]``: ``type`` is a ``MsgType`` (a positive fixint, one byte)
and ``payload`` is the canonical encoding of that type's record. Frames are
built by hand, ``0x92 ‖ type byte ‖ record bytes``, which is exactly what
msgpack would produce for the two-element array, and decoded strictly:
anything but that canonical form (an unknown type, a type in a longer
integer form, a malformed or non-canonical record, trailing bytes, a list
over its limit) raises ``ProtocolViolation`` naming the problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import ClassVar

from consensus.blocks import MAX_TXS_PER_BLOCK, Block, BlockHeader
from consensus.encoding import (
    U16,
    U32,
    U64,
    U256,
    Bytes,
    EnumOf,
    Field,
    ListOf,
    RecordOf,
    Schema,
    Str,
    decode_record,
    encode_record,
)
from consensus.errors import DecodeError, EncodeError
from consensus.hashing import tagged_hash
from consensus.transactions import MAX_DATASET_CHUNK_SIZE, Transaction
from node.net.errors import ProtocolViolation

PROTOCOL_VERSION = 4
"""Peers must speak exactly this version (the handshake refuses any other): version 4
added BLOB_GET_RANGE / BLOB_RANGE, so no peer is ever sent a message it cannot read."""
MAX_FRAME = 32 * 1024 * 1024
"""Largest frame a peer may send: a full block (16 MiB) fits with room."""
MAX_HANDSHAKE_FRAME = 1024
"""Largest frame before the peer has proved its node id: HELLO, AUTH and CLOSE are
at most ~300 bytes. A bigger one is refused before it is decoded: decoding 32 MiB of
nested empty arrays took ~5 s on the event loop and ~2.6 GB, from a peer that
(on loopback, without a node id) cannot even be banned."""
MAX_INV = 1000
"""Most items in one inv, getdata or notfound."""
MAX_HEADERS = 2000
"""Most headers in one headers reply."""
TXS_BATCH_BYTES = 1024 * 1024
"""A TXS frame is closed once its transactions reach this many bytes."""
MAX_HEADERS_BYTES = 2 * 1024 * 1024
"""A HEADERS reply also stops before this many bytes: a header carries its PoUW proof
(h rows of A and w columns of B, k bytes each, with branches), ~18 KiB on the devnet
and up to ~130 KiB. A peer's messages are handled one at a time, so while a reply's
proofs are checked its blocks wait behind it: ~110 devnet headers per reply let
blocks flow from the start of a sync (16 MiB replies held the first block back by
1.3 s, the time to check 907 proofs)."""
MAX_HEADERS_FRAME = MAX_HEADERS_BYTES + 64 * 1024
"""Largest HEADERS frame: a reply's headers add up to at most MAX_HEADERS_BYTES of
``header_size_bound``, which bounds each one's encoding. A bigger frame is refused
before it is decoded: 28 MiB HEADERS frames of valid form cost a core to decode and
left the node ~200 MB bigger."""
MAX_LOCATOR = 64
MAX_ADDRS = 1000
MAX_BLOB_CHUNK = MAX_DATASET_CHUNK_SIZE
"""A dataset chunk travels in one blob_chunk (transactions.MAX_DATASET_CHUNK_SIZE, 1 MiB)."""
MAX_BRANCH = 32
MAX_RANGE_CHUNKS = 4096
"""Most chunks in one blob_range reply (and counted against a blob_get_range's ``count``)."""
RANGE_BYTES = 1024 * 1024
"""A blob_range reply holds chunks of at most this many bytes together (unless it holds one
chunk): with two requests in flight, a peer has as long to send 2 MiB as it had with eight
256 KiB blob_chunks, and checking a reply holds the node up for milliseconds."""
MAX_RANGE_PROOF = 32
"""A range proof names at most two siblings per tree level: 16 levels below the root of a
65,536-chunk blob."""
MAX_HOST = 255
MAX_CLOSE_REASON = 256

TAG_P2P_AUTH = "p2p-auth"
"""Digest a node signs to prove it holds the key of the node_id in its Hello."""

HASH = Bytes(32)


class MsgType(IntEnum):
    """A frame's first element; every value fits a one-byte positive fixint."""

    HELLO = 1
    AUTH = 2
    PING = 3
    PONG = 4
    INV = 5
    GETDATA = 6
    NOTFOUND = 7
    TX = 8
    BLOCK = 9
    GETHEADERS = 10
    HEADERS = 11
    BLOB_GET = 12
    BLOB_CHUNK = 13
    GETADDR = 14
    ADDR = 15
    CLOSE = 16
    TXS = 17
    CMPCTBLOCK = 18
    GETBLOCKTXN = 19
    BLOCKTXN = 20
    BLOCKBODY = 21
    BLOB_GET_RANGE = 22
    BLOB_RANGE = 23


class InvKind(IntEnum):
    """What an inventory item names."""

    TX = 1
    BLOCK = 2
    CMPCT_BLOCK = 3
    """Only in a GETDATA: "send me this block as a CMPCTBLOCK" (never announced)."""
    BODY = 4
    """Only in a GETDATA: "send me this block's transactions" (BLOCKBODY): a node
    catching up holds every header already, proof checked."""


# ------------------------------------------------------------------ records


@dataclass(frozen=True)
class Hello:
    """First message both ways: who we are, which chain, and a challenge to sign."""

    version: int
    chain_id: int
    genesis_hash: bytes
    best_height: int
    best_work: int
    listen_port: int
    node_id: bytes
    challenge: bytes
    SCHEMA: ClassVar[Schema] = (
        Field("version", U32),
        Field("chain_id", U32),
        Field("genesis_hash", HASH),
        Field("best_height", U64),
        Field("best_work", U256),
        Field("listen_port", U16),
        Field("node_id", Bytes(32)),
        Field("challenge", Bytes(32)),
    )


@dataclass(frozen=True)
class Auth:
    """The node key's signature over ``auth_digest`` of the peer's challenge."""

    signature: bytes
    SCHEMA: ClassVar[Schema] = (Field("signature", Bytes(64)),)


@dataclass(frozen=True)
class Ping:
    nonce: int
    SCHEMA: ClassVar[Schema] = (Field("nonce", U64),)


@dataclass(frozen=True)
class Pong:
    nonce: int
    SCHEMA: ClassVar[Schema] = (Field("nonce", U64),)


@dataclass(frozen=True)
class InvItem:
    """One inventory entry; ``kind`` may be given as a plain int (1 = tx, 2 = block)."""

    kind: InvKind
    hash: bytes
    SCHEMA: ClassVar[Schema] = (Field("kind", EnumOf(InvKind)), Field("hash", HASH))

    def __post_init__(self) -> None:
        if type(self.kind) is not InvKind:
            object.__setattr__(self, "kind", InvKind(self.kind))  # ValueError if unknown

    # An item is announced to every peer and asked for, noted and matched several
    # times, a thousand to a frame: its key and its bytes are made once (frozen).
    @cached_property
    def key(self) -> tuple[int, bytes]:
        """The (kind, hash) pair used by PeerSession.known and .requested."""
        return (int(self.kind), self.hash)

    @cached_property
    def encoded(self) -> bytes:
        """Its canonical encoding; an INV or GETDATA is assembled from these."""
        return encode_record(self)


INV_ITEMS = ListOf(RecordOf(InvItem), max=MAX_INV)


@dataclass(frozen=True)
class Inv:
    items: tuple[InvItem, ...]
    SCHEMA: ClassVar[Schema] = (Field("items", INV_ITEMS),)


@dataclass(frozen=True)
class GetData:
    items: tuple[InvItem, ...]
    SCHEMA: ClassVar[Schema] = (Field("items", INV_ITEMS),)


@dataclass(frozen=True)
class NotFound:
    items: tuple[InvItem, ...]
    SCHEMA: ClassVar[Schema] = (Field("items", INV_ITEMS),)


@dataclass(frozen=True)
class TxMsg:
    tx: Transaction
    SCHEMA: ClassVar[Schema] = (Field("tx", RecordOf(Transaction)),)


@dataclass(frozen=True)
class TxsMsg:
    """Several requested transactions in one frame (a GETDATA's answer, in batches of
    at most MAX_INV and about TXS_BATCH_BYTES): one frame and one socket write for
    many transactions instead of one each."""

    txs: tuple[Transaction, ...]
    SCHEMA: ClassVar[Schema] = (Field("txs", ListOf(RecordOf(Transaction), max=MAX_INV)),)


@dataclass(frozen=True)
class BlockMsg:
    block: Block
    SCHEMA: ClassVar[Schema] = (Field("block", RecordOf(Block)),)


@dataclass(frozen=True)
class CompactBlock:
    """A block as its header and its transactions' ids, in order (BIP 152 in spirit).

    A peer that already holds the transactions (they were relayed before the
    block was found) rebuilds the block from them and asks with GETBLOCKTXN
    only for those it lacks, so a block's transactions cross each link once
    and are decoded and hashed once per node. Ids are whole txids: 32 bytes
    each, with no short-id collisions to resolve.
    """

    header: BlockHeader
    txids: tuple[bytes, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("header", RecordOf(BlockHeader)),
        Field("txids", ListOf(HASH, max=MAX_TXS_PER_BLOCK)),
    )


@dataclass(frozen=True)
class GetBlockTxn:
    """The transactions at ``indexes`` (ascending) of a block sent as a CMPCTBLOCK."""

    block_hash: bytes
    indexes: tuple[int, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("block_hash", HASH),
        Field("indexes", ListOf(U32, max=MAX_TXS_PER_BLOCK)),
    )


@dataclass(frozen=True)
class BlockTxn:
    """The answer to GETBLOCKTXN: the transactions asked for, in the order asked."""

    block_hash: bytes
    txs: tuple[Transaction, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("block_hash", HASH),
        Field("txs", ListOf(RecordOf(Transaction), max=MAX_TXS_PER_BLOCK)),
    )


@dataclass(frozen=True)
class BlockBody:
    """A block's transactions, for a node that holds its header (headers-first sync).

    A devnet header with its proof is ~18 KiB of ~300 hashes; sending it again
    with every block doubled what a syncing node decoded. The header's tx_root
    must commit to these transactions, or the block is refused.
    """

    block_hash: bytes
    txs: tuple[Transaction, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("block_hash", HASH),
        Field("txs", ListOf(RecordOf(Transaction), max=MAX_TXS_PER_BLOCK)),
    )


@dataclass(frozen=True)
class GetHeaders:
    """Headers after the first locator hash we know, up to ``stop`` (zeros = no stop)."""

    locator: tuple[bytes, ...]
    stop: bytes
    SCHEMA: ClassVar[Schema] = (
        Field("locator", ListOf(HASH, max=MAX_LOCATOR)),
        Field("stop", HASH),
    )


@dataclass(frozen=True)
class Headers:
    headers: tuple[BlockHeader, ...]
    SCHEMA: ClassVar[Schema] = (Field("headers", ListOf(RecordOf(BlockHeader), max=MAX_HEADERS)),)


@dataclass(frozen=True)
class BlobGet:
    root: bytes
    index: int
    SCHEMA: ClassVar[Schema] = (Field("root", HASH), Field("index", U32))


@dataclass(frozen=True)
class BlobChunk:
    """Chunk ``index`` of ``total`` of the blob committed by ``root``, with its branch."""

    root: bytes
    index: int
    total: int
    data: bytes
    branch: tuple[bytes, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("root", HASH),
        Field("index", U32),
        Field("total", U32),
        Field("data", Bytes(max=MAX_BLOB_CHUNK)),
        Field("branch", ListOf(HASH, max=MAX_BRANCH)),
    )


@dataclass(frozen=True)
class BlobGetRange:
    """Ask for up to ``count`` consecutive chunks of a blob, from chunk ``first`` on."""

    root: bytes
    first: int
    count: int
    SCHEMA: ClassVar[Schema] = (Field("root", HASH), Field("first", U32), Field("count", U32))


@dataclass(frozen=True)
class BlobRange:
    """Chunks ``first``, ``first + 1``, … of the ``total``-chunk blob ``root``, with a range
    proof: the sibling hashes that rebuild the root from the chunks' leaves (node.relay.blobs)."""

    root: bytes
    first: int
    total: int
    chunks: tuple[bytes, ...]
    proof: tuple[bytes, ...]
    SCHEMA: ClassVar[Schema] = (
        Field("root", HASH),
        Field("first", U32),
        Field("total", U32),
        Field("chunks", ListOf(Bytes(max=MAX_BLOB_CHUNK), max=MAX_RANGE_CHUNKS)),
        Field("proof", ListOf(HASH, max=MAX_RANGE_PROOF)),
    )


@dataclass(frozen=True)
class GetAddr:
    SCHEMA: ClassVar[Schema] = ()


@dataclass(frozen=True)
class NetAddr:
    host: str
    port: int
    SCHEMA: ClassVar[Schema] = (Field("host", Str(max=MAX_HOST)), Field("port", U16))


@dataclass(frozen=True)
class Addr:
    addrs: tuple[NetAddr, ...]
    SCHEMA: ClassVar[Schema] = (Field("addrs", ListOf(RecordOf(NetAddr), max=MAX_ADDRS)),)


@dataclass(frozen=True)
class Close:
    """Last message before closing: why (use ``Close.because`` to fit any reason)."""

    reason: str
    SCHEMA: ClassVar[Schema] = (Field("reason", Str(max=MAX_CLOSE_REASON)),)

    @classmethod
    def because(cls, reason: str) -> Close:
        """A Close whose reason is ``reason`` cut to the wire limit on a character boundary."""
        data = reason.encode("utf-8", "replace")[:MAX_CLOSE_REASON]
        return cls(data.decode("utf-8", "ignore"))


Message = (
    Hello
    | Auth
    | Ping
    | Pong
    | Inv
    | GetData
    | NotFound
    | TxMsg
    | BlockMsg
    | GetHeaders
    | Headers
    | BlobGet
    | BlobChunk
    | GetAddr
    | Addr
    | Close
    | TxsMsg
    | CompactBlock
    | GetBlockTxn
    | BlockTxn
    | BlockBody
    | BlobGetRange
    | BlobRange
)

MESSAGE_TYPES: dict[MsgType, type] = {
    MsgType.HELLO: Hello,
    MsgType.AUTH: Auth,
    MsgType.PING: Ping,
    MsgType.PONG: Pong,
    MsgType.INV: Inv,
    MsgType.GETDATA: GetData,
    MsgType.NOTFOUND: NotFound,
    MsgType.TX: TxMsg,
    MsgType.BLOCK: BlockMsg,
    MsgType.GETHEADERS: GetHeaders,
    MsgType.HEADERS: Headers,
    MsgType.BLOB_GET: BlobGet,
    MsgType.BLOB_CHUNK: BlobChunk,
    MsgType.GETADDR: GetAddr,
    MsgType.ADDR: Addr,
    MsgType.CLOSE: Close,
    MsgType.TXS: TxsMsg,
    MsgType.CMPCTBLOCK: CompactBlock,
    MsgType.GETBLOCKTXN: GetBlockTxn,
    MsgType.BLOCKTXN: BlockTxn,
    MsgType.BLOCKBODY: BlockBody,
    MsgType.BLOB_GET_RANGE: BlobGetRange,
    MsgType.BLOB_RANGE: BlobRange,
}
_TYPE_OF: dict[type, MsgType] = {cls: t for t, cls in MESSAGE_TYPES.items()}
_FRAME_ARRAY = 0x92  # fixarray of two elements
_ONE_FIELD = 0x91  # a one-field record (TxMsg) is a fixarray of one element


def header_size_bound(header: BlockHeader) -> int:
    """An upper bound on a header's encoded size, without encoding it."""
    proof = header.proof
    branches = sum(len(b) for b in proof.a_branches) + sum(len(b) for b in proof.b_branches)
    return 512 + len(proof.a_rows) + len(proof.b_cols) + 34 * branches


def headers_reply(headers: list[BlockHeader]) -> Headers:
    """A HEADERS message with the first of ``headers`` that fit MAX_HEADERS and
    MAX_HEADERS_BYTES (at least one)."""
    total = 0
    for n, header in enumerate(headers[:MAX_HEADERS]):
        total += header_size_bound(header)
        if total > MAX_HEADERS_BYTES and n:
            return Headers(tuple(headers[:n]))
    return Headers(tuple(headers[:MAX_HEADERS]))


def message_type(msg: object) -> MsgType:
    """The MsgType of a message record; TypeError for anything else."""
    try:
        return _TYPE_OF[type(msg)]
    except KeyError:
        raise TypeError(f"{type(msg).__name__} is not a P2P message") from None


def encode_message(msg: object) -> bytes:
    """The frame of a message record; its type follows the record's class.

    Raises TypeError for a non-message and EncodeError naming a bad field.
    """
    msg_type = message_type(msg)
    if msg_type is MsgType.TX:
        # The most frequent frames: reuse the transactions' cached canonical bytes.
        return bytes((_FRAME_ARRAY, msg_type, _ONE_FIELD)) + msg.tx.encoded  # type: ignore[attr-defined]
    if msg_type is MsgType.TXS and 0 < len(msg.txs) <= MAX_INV:  # type: ignore[attr-defined]
        txs = msg.txs  # type: ignore[attr-defined]
        n = len(txs)
        head = bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
        return b"".join(
            [bytes((_FRAME_ARRAY, msg_type, _ONE_FIELD)), head, *(t.encoded for t in txs)]
        )
    return bytes((_FRAME_ARRAY, msg_type)) + encode_record(msg)


def decode_message(data: bytes, max_size: int = MAX_FRAME) -> Message:
    """The message record in a frame; ProtocolViolation naming the problem otherwise."""
    if len(data) > max_size:
        raise ProtocolViolation(f"frame of {len(data)} bytes exceeds the limit of {max_size}")
    if len(data) < 3:
        raise ProtocolViolation(f"malformed frame: only {len(data)} bytes")
    if data[0] != _FRAME_ARRAY:
        raise ProtocolViolation("malformed frame: not a two-element msgpack array")
    raw_type = data[1]
    if raw_type > 0x7F:
        # A type in a longer integer form is non-canonical; anything else is garbage.
        what = "non-canonical" if raw_type in (0xCC, 0xCD, 0xCE, 0xCF) else "malformed"
        raise ProtocolViolation(f"{what} frame: message type is not a positive fixint")
    try:
        msg_type = MsgType(raw_type)
    except ValueError:
        raise ProtocolViolation(f"unknown message type {raw_type}") from None
    if msg_type is MsgType.HEADERS and len(data) > MAX_HEADERS_FRAME:
        raise ProtocolViolation(
            f"HEADERS frame of {len(data)} bytes exceeds its limit of {MAX_HEADERS_FRAME}"
        )
    cls = MESSAGE_TYPES[msg_type]
    try:
        if msg_type is MsgType.TX and data[2] == _ONE_FIELD:
            # Decoded as the transaction itself, so it keeps its wire bytes (txid).
            msg: Message = TxMsg(decode_record(Transaction, bytes(data[3:]), max_size))
        else:
            msg = decode_record(cls, bytes(data[2:]), max_size)
    except DecodeError as e:
        raise ProtocolViolation(f"bad {msg_type.name}: {e.reason}") from None
    except (ValueError, TypeError, EncodeError) as e:  # a record's own __post_init__ check
        raise ProtocolViolation(f"bad {msg_type.name}: {e}") from None
    return msg


def auth_digest(challenge: bytes, signer_id: bytes, verifier_id: bytes) -> bytes:
    """What ``signer_id`` signs to answer ``verifier_id``'s ``challenge``.

    Both node ids are bound in so a signature cannot be relayed to authenticate
    a different pair of nodes (a man in the middle cannot reuse it); the tag
    keeps it from ever being valid as a transaction signature.
    """
    return tagged_hash(TAG_P2P_AUTH, challenge, signer_id, verifier_id)
