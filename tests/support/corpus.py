"""Seed inputs for the fuzz targets, built from real records, and hand-made hostile ones.

Seeds are valid encodings of real records (a chain mined with the devnet keys, one
transaction of every kind, one message of every type), so a fuzzer starts from
valid structure instead of discovering msgpack. ``hostile(seed)`` derives, without
randomness, what a hostile peer would try on each seed: every truncation point
(sampled on long inputs), flipped bits, a trailing byte, each value swapped for one
of another type, and each value re-encoded in a longer msgpack form than the
shortest (non-canonical).
"""

from __future__ import annotations

import dataclasses
import hashlib
from functools import cache
from typing import Any

import msgpack
import numpy as np

from consensus.blocks import Block, BlockHeader
from consensus.keys import PrivateKey
from consensus.market import build_fraud_proof, build_result_rows
from consensus.merkle import matrix_cols_root, matrix_rows_root
from consensus.transactions import (
    AccessGrantPayload,
    AccessLogPayload,
    AccessRevokePayload,
    DatasetRegisterPayload,
    FraudProofPayload,
    JobCancelPayload,
    JobClaim,
    JobPostPayload,
    JobResultPayload,
    ModelPublishPayload,
    ModelRecordPayload,
    Payload,
    ResultChallengePayload,
    Transaction,
    TransferPayload,
    signed_transaction,
)
from node.net.wire import (
    PROTOCOL_VERSION,
    Addr,
    Auth,
    BlobChunk,
    BlobGet,
    BlobGetRange,
    BlobRange,
    BlockBody,
    BlockMsg,
    BlockTxn,
    Close,
    CompactBlock,
    GetAddr,
    GetBlockTxn,
    GetData,
    GetHeaders,
    Headers,
    Hello,
    Inv,
    InvItem,
    InvKind,
    NetAddr,
    NotFound,
    Ping,
    Pong,
    TxMsg,
    TxsMsg,
)
from tests.support.chainkit import ALICE, BOB, CAROL, MID, extend, new_chain, next_block

MAX_TRUNCATIONS = 48
"""Truncation points tried per seed (all of them on short seeds, spread out on long ones)."""
MAX_VALUE_EDITS = 48
"""Values per seed that are swapped for another type or widened (spread out on long seeds)."""


def _h(label: str) -> bytes:
    return hashlib.blake2b(label.encode(), digest_size=32).digest()


# ----------------------------------------------------------------- real records


def payload_examples() -> list[Payload]:
    """One well-formed payload of every transaction kind."""
    return [
        TransferPayload(BOB.address, 12_345),
        JobPostPayload(64, 64, 64, _h("root a"), _h("root b"), 50_000, 1_000),
        JobCancelPayload(_h("job")),
        fraud_case()[1],
        DatasetRegisterPayload(_h("content"), 70_000, 65_536, '{"kind": "anonymized"}'),
        AccessGrantPayload(_h("dataset"), CAROL.address, bytes(range(80)), 500),
        AccessRevokePayload(_h("dataset"), CAROL.address),
        AccessLogPayload(_h("dataset"), _h("nonce")),
        ModelRecordPayload(_h("model"), 1, (_h("j1"), _h("j2")), _h("w1"), _h("w0"), "digits"),
        ModelPublishPayload(_h("m"), _h("w"), _h("d"), _h("c"), _h("n"), "éü 模型"),
        JobResultPayload((JobClaim(_h("job"), _h("result")), JobClaim(_h("job 2"), _h("r2")))),
        ResultChallengePayload(_h("claim"), _h("job"), (0, 3, 9)),
        build_result_rows(_h("claim"), _h("job"), _result_rows_matrix(), (1, 6)),
    ]


def _result_rows_matrix() -> np.ndarray:
    """A small claimed C whose rows a result_rows payload opens."""
    return np.arange(8 * 5, dtype=np.int32).reshape(8, 5) * np.int32(-977)


@cache
def transactions() -> tuple[Transaction, ...]:
    """A signed transaction of every kind (well-formed; not all would apply to a state)."""
    return tuple(
        signed_transaction(ALICE, chain_id=MID.chain_id, nonce=i, fee=1_000 + i, payload=p)
        for i, p in enumerate(payload_examples())
    )


@cache
def blocks() -> tuple[Block, ...]:
    """Real blocks mined on a devnet chain: an empty one, then one with two transfers."""
    chain, clock = new_chain()
    (empty,) = extend(chain, clock, 1)
    txs = tuple(
        signed_transaction(
            key, chain_id=MID.chain_id, nonce=0, fee=100, payload=TransferPayload(to.address, 7)
        )
        for key, to in ((ALICE, BOB), (BOB, CAROL))
    )
    full = next_block(chain, clock, txs)
    chain.add_block(full)
    return empty, full


def headers() -> tuple[BlockHeader, ...]:
    return tuple(b.header for b in blocks())


@cache
def fraud_case() -> tuple[dict[str, Any], FraudProofPayload]:
    """A posted job with a wrong claimed result, and a genuine fraud proof against it."""
    rng = np.random.default_rng(13)
    m, k, n = 16, 32, 8
    a = rng.integers(-64, 64, size=(m, k), dtype=np.int8)
    b = rng.integers(-64, 64, size=(k, n), dtype=np.int8)
    c = a.astype(np.int32) @ b.astype(np.int32)
    c[3, 5] += 1  # the miner's lie
    job = {
        "m": m,
        "k": k,
        "n": n,
        "root_a": matrix_rows_root(a),
        "root_b": matrix_cols_root(b),
        "result_root": matrix_rows_root(c),
    }
    proof = build_fraud_proof(_h("block"), _h("job"), a, b, c, 3, 5)
    return job, proof


def messages() -> list[object]:
    """One message of every P2P message type (some types several times)."""
    empty, full = blocks()
    txs = transactions()
    items = (InvItem(InvKind.TX, txs[0].txid), InvItem(InvKind.BLOCK, full.hash))
    key = PrivateKey.from_label("fuzz-node")
    return [
        Hello(
            PROTOCOL_VERSION,
            MID.chain_id,
            _h("genesis"),
            7,
            2**200 + 5,
            9444,
            key.public_key.data,
            _h("c"),
        ),
        Auth(key.sign(_h("digest"))),
        Ping(2**63 + 1),
        Pong(3),
        Inv(items),
        GetData(
            (*items, InvItem(InvKind.CMPCT_BLOCK, full.hash), InvItem(InvKind.BODY, full.hash))
        ),
        NotFound(items[:1]),
        TxMsg(txs[0]),
        *(TxMsg(tx) for tx in txs[1:]),
        BlockMsg(empty),
        BlockMsg(full),
        GetHeaders((full.hash, empty.hash), bytes(32)),
        Headers((empty.header, full.header)),
        BlobGet(_h("blob"), 3),
        BlobChunk(_h("blob"), 1, 4, b"chunk bytes", (_h("s0"), _h("s1"))),
        BlobChunk(_h("blob"), 0, 0, b"", ()),
        BlobGetRange(_h("blob"), 2, 4096),
        BlobRange(_h("blob"), 1, 9, (b"row one", b"row two", b"row 3"), (_h("r0"), _h("r1"))),
        BlobRange(_h("blob"), 0, 0, (), ()),
        GetAddr(),
        Addr((NetAddr("127.0.0.1", 9444), NetAddr("::1", 1), NetAddr("example.org", 65535))),
        Close("banned: bad frame"),
        TxsMsg(txs[:4]),
        CompactBlock(full.header, tuple(tx.txid for tx in full.txs)),
        GetBlockTxn(full.hash, (0, 1)),
        BlockTxn(full.hash, full.txs),
        BlockBody(full.hash, full.txs),
    ]


def replace_field(record: Any, **changes: Any) -> Any:
    """A copy of a frozen record with some fields changed (for invalid-but-well-formed inputs)."""
    return dataclasses.replace(record, **changes)


# --------------------------------------------------------------- hostile inputs


def _spread(count: int, limit: int) -> list[int]:
    if count <= limit:
        return list(range(count))
    return sorted({i * count // limit for i in range(limit)})


def truncations(data: bytes) -> list[bytes]:
    """Prefixes of ``data`` (every one if short, MAX_TRUNCATIONS spread out otherwise)."""
    return [data[:n] for n in _spread(len(data), MAX_TRUNCATIONS)]


def bit_flips(data: bytes) -> list[bytes]:
    """``data`` with one bit flipped, at positions spread over it."""
    out = []
    for i in _spread(len(data), MAX_TRUNCATIONS):
        flipped = bytearray(data)
        flipped[i] ^= 1 << (i % 8)
        out.append(bytes(flipped))
    return out


def _unpack(data: bytes) -> object | None:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return None


def pack_wide(value: object) -> bytes:
    """The longest msgpack form of a scalar or container header (never the canonical one
    unless there is no longer form)."""
    if isinstance(value, bool) or value is None:
        return msgpack.packb(value)
    if isinstance(value, int):
        if value >= 0:
            return b"\xcf" + value.to_bytes(8, "big")
        return b"\xd3" + value.to_bytes(8, "big", signed=True)
    if isinstance(value, bytes):
        return b"\xc6" + len(value).to_bytes(4, "big") + value
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        return b"\xdb" + len(raw).to_bytes(4, "big") + raw
    if isinstance(value, list):
        return b"\xdd" + len(value).to_bytes(4, "big") + b"".join(map(pack, value))
    raise TypeError(type(value).__name__)


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def other_type(value: object) -> object:
    """A value of another msgpack type standing in for ``value``."""
    if isinstance(value, bool):
        return 1
    if isinstance(value, int):
        return -1 if value >= 0 else b"\x00"
    if isinstance(value, bytes):
        return value + b"\x00" if value else 0  # one byte too long, or not bytes at all
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, list):
        return [*value, 0] if value else {}  # an extra field, or a map
    return []


def _edit_paths(value: object, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    paths = [path]
    if isinstance(value, list):
        for i, v in enumerate(value):
            paths += _edit_paths(v, (*path, i))
    return paths


def pack_with(value: object, path: tuple[int, ...], edit: Any) -> bytes:
    """``value`` packed canonically except the value at ``path``, which ``edit`` packs."""
    if not path:
        return edit(value)
    assert isinstance(value, list)
    i = path[0]
    parts = [pack(v) if j != i else pack_with(v, path[1:], edit) for j, v in enumerate(value)]
    return _array_head(len(value)) + b"".join(parts)


def _array_head(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def value_edits(data: bytes) -> list[bytes]:
    """``data`` (msgpack) with one value swapped for another type or widened to a longer form."""
    value = _unpack(data)
    if value is None:
        return []
    paths = _edit_paths(value)
    out = []
    for i in _spread(len(paths), MAX_VALUE_EDITS):
        path = paths[i]
        out.append(pack_with(value, path, lambda v: pack(other_type(v))))
        out.append(pack_with(value, path, pack_wide))
    return [d for d in out if d != data]


def hostile(seed: bytes, prefix: bytes = b"") -> list[bytes]:
    """What a hostile peer would send instead of ``prefix + seed`` (``seed`` is msgpack)."""
    variants = truncations(seed) + bit_flips(seed) + [seed + b"\x00", seed + seed]
    variants += value_edits(seed)
    return [prefix + v for v in variants]
