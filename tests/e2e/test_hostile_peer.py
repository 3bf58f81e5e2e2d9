"""A hostile peer against a real node while an honest peer keeps mining with it.

Two `pouw node` processes mine the devnet, connected to each other. A scripted peer
speaking the real handshake connects to one of them, again and again with a fresh
node key, and each time sends one hostile frame: for every message type a truncated,
a wrongly typed, a non-canonical, an oversize and a trailing-garbage frame, then
well-formed but invalid data (a transaction with a bad signature that the node asked
for, blocks and headers with a bad proof, data nobody asked for, messages out of
turn). Each session must end with the node closing it and banning that key; the
node must never crash or log an internal error, the honest peer must stay connected
throughout, and the two honest nodes must keep one tip that keeps advancing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgpack
import pytest

from consensus.blocks import MAX_TXS_PER_BLOCK
from consensus.keys import PrivateKey
from consensus.params import DEVNET
from consensus.transactions import TransferPayload, signed_transaction
from node.net.wire import (
    MAX_ADDRS,
    MAX_BLOB_CHUNK,
    MAX_CLOSE_REASON,
    MAX_FRAME,
    MAX_HEADERS,
    MAX_INV,
    MAX_LOCATOR,
    MAX_RANGE_CHUNKS,
    Auth,
    BlobChunk,
    BlobGetRange,
    BlobRange,
    BlockBody,
    BlockMsg,
    BlockTxn,
    CompactBlock,
    GetBlockTxn,
    GetData,
    Headers,
    Hello,
    Inv,
    InvItem,
    InvKind,
    MsgType,
    Ping,
    TxMsg,
    TxsMsg,
    auth_digest,
    encode_message,
)
from tests.support.corpus import blocks, messages, pack, pack_wide, pack_with
from tests.support.framework import NodeProcess, sync_tips, wait_until
from tests.support.p2p_testkit import TestPeer

pytestmark = pytest.mark.slow

SENDER = PrivateKey.from_label("devnet-7")
BOB = PrivateKey.from_label("devnet-1")
SESSION_TIMEOUT = 10.0


# ------------------------------------------------------------------ malformed frames


def _frame(msg_type: MsgType, wire: object) -> bytes:
    return bytes((0x92, msg_type)) + pack(wire)


def _nils(n: int) -> list[None]:
    return [None] * n


def oversize_frames() -> dict[MsgType, bytes]:
    """For every type, a frame with one field over its limit: a list one item too long
    (its items are never read), bytes or text one byte too long, or one field too many."""
    header = msgpack.unpackb(blocks()[0].header.encoded)
    t = MsgType
    return {
        t.HELLO: _frame(t.HELLO, [3, 1, bytes(32), 0, bytes(32), 0, bytes(33), bytes(32)]),
        t.AUTH: _frame(t.AUTH, [bytes(65)]),
        t.PING: _frame(t.PING, [bytes(9)]),
        t.PONG: _frame(t.PONG, [bytes(9)]),
        t.INV: _frame(t.INV, [_nils(MAX_INV + 1)]),
        t.GETDATA: _frame(t.GETDATA, [_nils(MAX_INV + 1)]),
        t.NOTFOUND: _frame(t.NOTFOUND, [_nils(MAX_INV + 1)]),
        t.TX: _frame(t.TX, [[0, 0, bytes(32), 0, 0, [bytes(20), 1], bytes(65)]]),
        t.BLOCK: _frame(t.BLOCK, [[header, _nils(MAX_TXS_PER_BLOCK + 1)]]),
        t.GETHEADERS: _frame(t.GETHEADERS, [_nils(MAX_LOCATOR + 1), bytes(32)]),
        t.HEADERS: _frame(t.HEADERS, [_nils(MAX_HEADERS + 1)]),
        t.BLOB_GET: _frame(t.BLOB_GET, [bytes(33), 0]),
        t.BLOB_CHUNK: _frame(t.BLOB_CHUNK, [bytes(32), 0, 1, bytes(MAX_BLOB_CHUNK + 1), []]),
        t.GETADDR: _frame(t.GETADDR, [bytes(1024)]),
        t.ADDR: _frame(t.ADDR, [_nils(MAX_ADDRS + 1)]),
        t.CLOSE: _frame(t.CLOSE, ["x" * (MAX_CLOSE_REASON + 1)]),
        t.TXS: _frame(t.TXS, [_nils(MAX_INV + 1)]),
        t.CMPCTBLOCK: _frame(t.CMPCTBLOCK, [header, _nils(MAX_TXS_PER_BLOCK + 1)]),
        t.GETBLOCKTXN: _frame(t.GETBLOCKTXN, [bytes(32), [0] * (MAX_TXS_PER_BLOCK + 1)]),
        t.BLOCKTXN: _frame(t.BLOCKTXN, [bytes(32), _nils(MAX_TXS_PER_BLOCK + 1)]),
        t.BLOCKBODY: _frame(t.BLOCKBODY, [bytes(32), _nils(MAX_TXS_PER_BLOCK + 1)]),
        t.BLOB_GET_RANGE: _frame(t.BLOB_GET_RANGE, [bytes(33), 0, 1]),
        t.BLOB_RANGE: _frame(t.BLOB_RANGE, [bytes(32), 0, 1, _nils(MAX_RANGE_CHUNKS + 1), []]),
    }


def _not_its_type(value: object) -> bytes:
    return pack(0 if isinstance(value, str) else "a value of the wrong type")


def malformed_frames() -> list[tuple[str, bytes, str]]:
    """For every message type: truncated, wrongly typed, non-canonical, oversize and
    trailing-garbage frames, each made from a valid frame of that type."""
    examples: dict[MsgType, bytes] = {}
    for msg in messages():
        frame = encode_message(msg)
        examples.setdefault(MsgType(frame[1]), frame)
    oversize = oversize_frames()
    assert set(examples) == set(MsgType) == set(oversize), "a message type has no example"
    out = []
    for msg_type, frame in sorted(examples.items()):
        value = msgpack.unpackb(frame)
        first_field = (1, 0) if value[1] else (1,)
        name = msg_type.name
        bad = f"bad {name}: "
        cut = frame[: max(2, len(frame) // 2)]
        variants = [
            (f"{name} truncated", cut, bad if len(cut) >= 3 else "malformed frame"),
            (f"{name} wrong type", pack_with(value, first_field, _not_its_type), bad),
            (f"{name} non-canonical record", pack_with(value, (1,), pack_wide), bad),
            (f"{name} non-canonical field", pack_with(value, first_field, pack_wide), bad),
            (f"{name} non-canonical type", b"\x92\xcc" + frame[1:], "non-canonical frame"),
            (f"{name} oversize", oversize[msg_type], bad),
            (f"{name} trailing byte", frame + b"\xc0", bad),
        ]
        seen = {frame}
        for what, f, because in variants:
            if f not in seen:  # a field with no longer form widens to itself
                seen.add(f)
                out.append((what, f, because))
    return out


# ------------------------------------------------------------------ the hostile peer


@dataclasses.dataclass
class Attack:
    """One hostile session with a fresh key: ``frame`` may first send valid traffic (an
    announcement, a Hello) and returns the hostile frame; the ban must say ``because``."""

    name: str
    frame: Callable[[TestPeer], Awaitable[bytes]]
    because: str
    handshake: bool = True
    says_why: bool = True


class Hostile:
    def __init__(self, target: NodeProcess, honest: NodeProcess) -> None:
        self.target = target
        self.honest_id = json.loads((honest.datadir / "node.json").read_text())["node_id"]
        info = target.call("getinfo")
        self.genesis = bytes.fromhex(info["genesis"])
        self.port = int(target.p2p.rsplit(":", 1)[1])
        self.frames_sent = 0
        self.sessions = 0
        self.last_key: PrivateKey | None = None

    def peer(self, **kw: object) -> TestPeer:
        return TestPeer(self.port, chain_id=DEVNET.chain_id, genesis_hash=self.genesis, **kw)

    async def fetch_real_block(self) -> BlockMsg:
        """The node's tip block, asked for as an honest peer would (to mutate it)."""
        peer = await self.peer().connect()
        try:
            await peer.handshake()
            tip = bytes.fromhex(self.target.call("getinfo")["tip"])
            await peer.send(GetData((InvItem(InvKind.BLOCK, tip),)))
            await peer.wait_for(lambda: peer.of_type(BlockMsg), SESSION_TIMEOUT)
            return peer.of_type(BlockMsg)[0]
        finally:
            await peer.close()

    async def run(self, attack: Attack) -> None:
        peer = await self.peer().connect()
        try:
            if attack.handshake:
                await peer.handshake()
            frame = await attack.frame(peer)
            self.frames_sent += 1
            # The node may cut us off while a long frame is still going out.
            await asyncio.gather(peer.send_raw(frame), return_exceptions=True)
            reason = await peer.wait_for_close(SESSION_TIMEOUT)
        finally:
            await peer.close()
        self.sessions += 1
        self.last_key = peer.key
        # A frame over the limit is cut off by the WebSocket layer, which leaves no room
        # for a Close message: only the ban tells.
        if attack.says_why:
            assert (reason or "").startswith("banned: "), f"{attack.name}: {reason!r}"
        me = f"node:{peer.node_id.hex()}"
        bans = await asyncio.to_thread(self.target.call, "getbans")
        mine = [b["reason"] for b in bans if b["who"].startswith(me)]
        assert mine, f"{attack.name}: not banned"
        assert attack.because in mine[0], f"{attack.name}: banned for {mine[0]!r}"
        assert self.target.proc is not None and self.target.proc.poll() is None, attack.name

    def honest_peer_connected_s(self) -> float:
        for p in self.target.call("getpeers"):
            if p["node_id"] == self.honest_id:
                return float(p["connected_s"])
        raise AssertionError("the honest peer is no longer connected")


def _raw(frame: bytes) -> Callable[[TestPeer], Awaitable[bytes]]:
    async def make(peer: TestPeer) -> bytes:
        return frame

    return make


def invalid_attacks(real: BlockMsg, tip: bytes) -> list[Attack]:
    """Well-formed frames that are invalid where they arrive."""
    block = real.block
    proof = block.header.proof
    bad_rows = bytes([proof.a_rows[0] ^ 1]) + proof.a_rows[1:]  # still int7, wrong branch
    bad_header = dataclasses.replace(
        block.header, proof=dataclasses.replace(proof, a_rows=bad_rows)
    )
    # The sender's next nonce, so that the signature is what the node refuses.
    transfer = signed_transaction(
        SENDER,
        chain_id=DEVNET.chain_id,
        nonce=0,
        fee=1_000,
        payload=TransferPayload(BOB.address, 1),
    )
    forged = dataclasses.replace(
        transfer, signature=bytes([transfer.signature[0] ^ 1]) + transfer.signature[1:]
    )

    async def bad_signature_tx(peer: TestPeer) -> bytes:
        # Announce it, wait until the node asks for it: then it is not unrequested.
        await peer.send(Inv((InvItem(InvKind.TX, forged.txid),)))
        await peer.wait_for(
            lambda: any(forged.txid in {i.hash for i in m.items} for m in peer.of_type(GetData)),
            SESSION_TIMEOUT,
        )
        return encode_message(TxMsg(forged))

    async def ping_instead_of_auth(peer: TestPeer) -> bytes:
        await peer.send_hello()
        await peer.wait_for_message(Hello)
        return encode_message(Ping(1))

    async def bad_auth(peer: TestPeer) -> bytes:
        await peer.send_hello()
        hello = await peer.wait_for_message(Hello)
        digest = auth_digest(hello.challenge, peer.node_id, hello.node_id)
        return encode_message(Auth(PrivateKey.generate().sign(digest)))  # not its key

    def message(msg: object) -> Callable[[TestPeer], Awaitable[bytes]]:
        return _raw(encode_message(msg))

    key = PrivateKey.generate()
    hello = Hello(3, DEVNET.chain_id, bytes(32), 0, 0, 0, key.public_key.data, bytes(32))
    return [
        Attack("TX with a bad signature, asked for", bad_signature_tx, "signature"),
        Attack("TX unrequested", message(TxMsg(transfer)), "unrequested transaction"),
        Attack("TXS unrequested", message(TxsMsg((transfer,))), "unrequested transaction"),
        Attack("BLOCK unrequested", message(real), "unrequested block"),
        Attack(
            "CMPCTBLOCK with a bad proof",
            message(CompactBlock(bad_header, ())),
            "compact block: proof: Merkle branch",
        ),
        Attack(
            "HEADERS with a bad proof",
            message(Headers((bad_header,))),
            "headers: proof: Merkle branch",
        ),
        Attack(
            "BLOCKTXN unrequested",
            message(BlockTxn(block.hash, block.txs)),
            "unrequested blocktxn",
        ),
        Attack(
            "BLOCKBODY unrequested",
            message(BlockBody(block.hash, block.txs)),
            "unrequested block body",
        ),
        Attack(
            "BLOB_CHUNK unrequested",
            message(BlobChunk(bytes(32), 0, 1, b"x", ())),
            "unrequested blob chunk",
        ),
        Attack(
            "BLOB_RANGE unrequested",
            message(BlobRange(bytes(32), 0, 1, (b"x",), ())),
            "unrequested blob range",
        ),
        Attack(
            "BLOB_GET_RANGE of no chunks",
            message(BlobGetRange(bytes(32), 0, 0)),
            "asks for no chunks",
        ),
        Attack(
            "GETBLOCKTXN not ascending",
            message(GetBlockTxn(tip, (1, 0))),
            "indexes are not ascending",
        ),
        Attack(
            "INV of a CMPCT_BLOCK",
            message(Inv((InvItem(InvKind.CMPCT_BLOCK, tip),))),
            "never announced",
        ),
        Attack("HELLO after the handshake", message(hello), "unsolicited Hello"),
        Attack("AUTH after the handshake", message(Auth(bytes(64))), "unsolicited Auth"),
        Attack("PING instead of AUTH", ping_instead_of_auth, "expected Auth", handshake=False),
        Attack("AUTH with a bad signature", bad_auth, "bad auth signature", handshake=False),
    ]


def test_hostile_peer_is_banned_while_honest_peer_stays_in_sync(tmp_path: Path) -> None:
    nodes: list[NodeProcess] = []
    try:
        a = NodeProcess(tmp_path / "a", ["--mine", "--threads", "1"], "a").start()
        nodes.append(a)
        b = NodeProcess(tmp_path / "b", ["--peer", a.p2p, "--mine", "--threads", "1"], "b")
        nodes.append(b.start())
        wait_until(lambda: len(a.call("getpeers")) == 1, 30, "a and b to connect")
        sync_tips(nodes, timeout=60, min_height=1)
        hostile = Hostile(a, b)
        height_before = a.height()
        started = time.monotonic()

        async def attack() -> None:
            real = await hostile.fetch_real_block()
            tip = real.block.hash
            attacks = [Attack(n, _raw(f), because) for n, f, because in malformed_frames()]
            too_big = bytes((0x92, MsgType.BLOCK)) + bytes(MAX_FRAME)
            attacks.append(
                Attack("frame over MAX_FRAME", _raw(too_big), "exceeds the limit", says_why=False)
            )
            attacks += invalid_attacks(real, tip)
            for i, one in enumerate(attacks):
                await hostile.run(one)
                if i % 10 == 0:
                    hostile.honest_peer_connected_s()
            # A banned key that comes back is turned away at the handshake.
            assert hostile.last_key is not None
            again = await hostile.peer(key=hostile.last_key).connect()
            try:
                await again.send_hello()
                reason = await again.wait_for_close(SESSION_TIMEOUT)
            finally:
                await again.close()
            assert (reason or "").startswith("banned: "), reason

        asyncio.run(attack())
        attacked_for = time.monotonic() - started
        # The honest peer's connection is older than the whole attack: it never dropped.
        assert hostile.honest_peer_connected_s() >= attacked_for - 1.0
        assert a.proc is not None and a.proc.poll() is None
        # One tip on both honest nodes, still advancing.
        sync_tips(nodes, timeout=60, min_height=max(height_before, a.height()) + 2)
        for n in nodes:
            log = (n.datadir / "node.log").read_text(errors="replace")
            assert " ERROR " not in log and "Traceback" not in log, log[-4000:]
        stats = a.call("getinfo")["p2p"]
        assert stats["bans"] >= hostile.sessions
        print(
            json.dumps(
                {
                    "hostile_frames": hostile.frames_sent,
                    "hostile_sessions": hostile.sessions,
                    "message_types": len(MsgType),
                    "bans": stats["bans"],
                    "attack_seconds": round(attacked_for, 1),
                    "height_before": height_before,
                    "height_after": a.height(),
                }
            )
        )
    finally:
        for n in nodes:
            n.kill()
