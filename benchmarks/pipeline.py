"""`pouw bench pipeline`: a node's CPU per transaction, stage by stage, in one process.

`pouw bench consensus` measures a real testnet end to end, but on a shared
2-core machine it cannot say where a node's time goes, and its figures move
with the neighbours' load. This benchmark runs the real code of every stage a
transaction passes through in a node, on N signed transfers from 256
accounts, and reports microseconds per transaction per stage:

- ``rpc_in``: a ``sendtransactions`` request body parsed (JSON, hex) and
  decoded to transactions, and the reply encoded;
- ``inv_in`` / ``inv_out``: one announced txid decoded and noted as known to
  the peer / encoded into an INV for one peer;
- ``getdata_out`` / ``getdata_in``: a txid asked for / a GETDATA decoded and
  answered with the transaction in a TXS frame;
- ``txs_in``: a transaction decoded from a TXS frame, its txid noted;
- ``admit``: mempool admission (form, nonce, balance, signature), of which
  ``signature`` is the Ed25519 check alone;
- ``template``: growing a block template by the transaction (consensus.template);
- ``compact_in``: its txid in a compact block, decoded and looked up;
- ``connect``: the block applied (state, roots, undo), ``store``: written to
  SQLite, ``mempool_after_block``: the mempool following the new tip.

``node_us_per_tx`` weighs them as in a 4-node full mesh: a transaction reaches
a node by RPC a quarter of the time and by relay otherwise, and each node
receives and sends about three INV items per transaction (every peer that has
it announces it). It leaves out the event loop, sockets and HTTP framing, so
a real node spends more; what it shows is how the stages compare.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from benchmarks.chain import MINER_LABEL, _Clock, _senders, _transfer, bench_params
from consensus.blocks import Block
from consensus.chain import Chain
from consensus.keys import PrivateKey, verify_signature
from consensus.pow import mine, null_job
from consensus.template import build_template
from consensus.transactions import Transaction, decode_tx, encode_tx, signing_digest
from node.mempool import Mempool
from node.net.peer import PeerSession
from node.net.wire import (
    CompactBlock,
    GetData,
    Inv,
    InvItem,
    InvKind,
    TxsMsg,
    decode_message,
    encode_message,
)
from node.store import Store

ACCOUNTS = 256
PEERS = 3
RPC_BATCH = 250
INV_ITEMS_PER_TX = 3
"""In a 4-node full mesh each node hears a transaction announced by about
every peer that holds it before it does, and announces it to the others."""
RPC_SHARE = 0.25
"""The load arrives by RPC at one node of four; the other three relay it."""


def _transfers(params: Any, count: int) -> list[Transaction]:
    senders = _senders(params)
    nonces = [0] * len(senders)
    txs = []
    for c in range(count):
        s = c % len(senders)
        to = senders[(s + 1 + c // len(senders)) % len(senders)].address
        txs.append(_transfer(senders[s], to, nonces[s], params.chain_id))
        nonces[s] += 1
    return txs


def _per_tx(fn: Callable[[], Any], count: int, repeats: int = 3) -> tuple[float, Any]:
    """The best of ``repeats`` runs of ``fn`` in microseconds per transaction, and its result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best / count * 1e6, out


def _peer() -> PeerSession:
    """A session whose frames are only queued (never sent): its inventory bookkeeping is real."""
    return PeerSession(None, host="127.0.0.1", port=1, direction="out")


def bench_pipeline(count: int = 4_000) -> dict[str, Any]:
    """Time each stage on ``count`` transfers; the JSON record (see the module docstring)."""
    if count < RPC_BATCH:
        raise ValueError(f"--txs must be at least {RPC_BATCH}, got {count}")
    params = bench_params(ACCOUNTS)
    txs = _transfers(params, count)
    wire = [encode_tx(tx) for tx in txs]
    us: dict[str, float] = {}

    # RPC: request bodies as a load generator sends them, replies as the node answers.
    bodies = [
        json.dumps({"jsonrpc": "2.0", "id": 0, "method": "sendtransactions",
                    "params": [[w.hex() for w in wire[i : i + RPC_BATCH]]]})
        for i in range(0, count, RPC_BATCH)
    ]  # fmt: skip

    def rpc_in() -> list[Transaction]:
        out = []
        for body in bodies:
            request = json.loads(body)
            got = [decode_tx(bytes.fromhex(h)) for h in request["params"][0]]
            json.dumps({"jsonrpc": "2.0", "id": 0, "result": [{"txid": t.txid.hex()} for t in got]})
            out += got
        return out

    us["rpc_in"], _ = _per_tx(rpc_in, count)

    # Relay in: INV items, our GETDATA, the TXS frames that answer it.
    inv_frames = [
        encode_message(Inv(tuple(InvItem(InvKind.TX, t.txid) for t in txs[i : i + 1000])))
        for i in range(0, count, 1000)
    ]
    txs_frames = [encode_message(TxsMsg(tuple(txs[i : i + 1000]))) for i in range(0, count, 1000)]

    def inv_in() -> None:
        peer = _peer()
        for frame in inv_frames:
            peer.note_inventory(decode_message(frame))

    us["inv_in"], _ = _per_tx(inv_in, count)

    def getdata_out() -> None:
        peer = _peer()
        peer.request(InvItem(InvKind.TX, t.txid) for t in txs)

    us["getdata_out"], _ = _per_tx(getdata_out, count)

    def txs_in() -> list[Transaction]:
        peer = _peer()
        out: list[Transaction] = []
        for frame in txs_frames:
            msg = cast(TxsMsg, decode_message(frame))
            peer.note_inventory(msg)
            out += msg.txs
        return out

    us["txs_in"], received = _per_tx(txs_in, count)

    # Admission, on fresh objects as a peer's frames give them.
    us["signature"], _ = _per_tx(
        lambda: [verify_signature(t.sender, signing_digest(t), t.signature) for t in received],
        count,
    )
    clock = _Clock(params.genesis_timestamp_ms + 10**7)
    chain = Chain(params, clock)
    pools = [Mempool(params) for _ in range(3)]

    def admit() -> Mempool:
        mempool = pools.pop()
        for tx in received:
            mempool.add(tx, chain.state, chain.height)
        return mempool

    us["admit"], mempool = _per_tx(admit, count)
    chain.verified_txids = mempool.verified_txids

    # Relay out: announcing to each peer, serving a peer's GETDATA.
    def inv_out() -> None:
        for _ in range(PEERS):
            peer = _peer()
            for i in range(0, count, 1000):
                items = tuple(InvItem(InvKind.TX, t.txid) for t in txs[i : i + 1000])
                peer.send_frame(encode_message(Inv(items)), bulk=True)

    us["inv_out"], _ = _per_tx(inv_out, count * PEERS)
    getdata_frames = [
        encode_message(GetData(tuple(InvItem(InvKind.TX, t.txid) for t in txs[i : i + 1000])))
        for i in range(0, count, 1000)
    ]

    def getdata_in() -> None:
        for frame in getdata_frames:
            msg = cast(GetData, decode_message(frame))
            found = tuple(mempool.get(item.hash) for item in msg.items)
            encode_message(TxsMsg(found))

    us["getdata_in"], _ = _per_tx(getdata_in, count)

    # The template grows by a tenth of the transactions at a time, as a busy
    # node's does between blocks.
    miner = PrivateKey.from_label(MINER_LABEL).address
    job = null_job(chain.tip.hash, params)
    step = max(1, count // 10)
    t0 = time.perf_counter()
    body = None
    for start in range(0, count, step):
        if body is None:
            candidates = mempool.select(step, params.max_block_bytes // 2)
        else:
            candidates = mempool.admitted_since(start, step)
        template, body = build_template(
            chain.state,
            chain.header_context(chain.tip.hash),
            params,
            candidates,
            miner,
            job.spec,
            clock.now,
            verified=True,
            on_top_of=body,
        )
    us["template"] = (time.perf_counter() - t0) / count * 1e6
    assert body is not None and len(body.txs) == count

    # The block arrives as a compact block at a node that holds its transactions.
    mined = mine(template, job, params, max_attempts=4)
    if mined is None:
        raise RuntimeError("no tile won at a target where every tile should win")
    block = Block(mined.header, body.txs)
    compact = encode_message(CompactBlock(block.header, tuple(t.txid for t in block.txs)))

    def compact_in() -> Block:
        msg = cast(CompactBlock, decode_message(compact))
        found = tuple(mempool.get(h) for h in msg.txids)
        return Block(msg.header, found)

    us["compact_in"], rebuilt = _per_tx(compact_in, count)
    t0 = time.perf_counter()
    result = chain.add_block(rebuilt)
    us["connect"] = (time.perf_counter() - t0) / count * 1e6
    if result.status != "connected":
        raise RuntimeError(f"the block did not connect: {result.status}")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp), params)
        store.load_chain(clock)
        t0 = time.perf_counter()
        store.record(chain)
        us["store"] = (time.perf_counter() - t0) / count * 1e6
        store.close()
    t0 = time.perf_counter()
    mempool.on_reorg([], [rebuilt], chain.state, chain.height)
    us["mempool_after_block"] = (time.perf_counter() - t0) / count * 1e6

    relay = 1 - RPC_SHARE
    weights = {
        "rpc_in": RPC_SHARE,
        "inv_in": INV_ITEMS_PER_TX,
        "getdata_out": relay,
        "txs_in": relay,
        "admit": 1,
        "inv_out": INV_ITEMS_PER_TX,
        "getdata_in": relay,
        "template": 1,
        "compact_in": 1,
        "connect": 1,
        "store": 1,
        "mempool_after_block": 1,
    }
    total = sum(us[k] * w for k, w in weights.items())
    return {
        "txs": count,
        "accounts": ACCOUNTS,
        **{f"{k}_us": round(v, 2) for k, v in us.items()},
        "node_us_per_tx": round(total, 1),
        "signature_share": round(us["signature"] / total, 3),
    }
