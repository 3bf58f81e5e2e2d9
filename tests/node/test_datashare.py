"""Serving encrypted datasets only to readers the chain authorizes, with a real in-process
Node: the one good read decrypts to the original bytes; every other read is refused."""

from __future__ import annotations

import json
import os

import aiohttp
import pytest
from click.testing import CliRunner

from consensus.datashare import dataset_id_of
from consensus.errors import InvalidTransaction
from consensus.keys import PrivateKey
from consensus.transactions import (
    AccessGrantPayload,
    AccessLogPayload,
    AccessRevokePayload,
    DatasetRegisterPayload,
    signed_transaction,
)
from node.cli import cli
from node.config import NodeConfig
from node.datashare import (
    DataShareError,
    decrypt_dataset,
    encrypt_dataset,
    open_secret,
    read_dataset,
    read_digest,
    seal_secret,
)
from node.node import Node
from tests.consensus.chainkit import ALICE, BOB, CAROL, MID, new_chain, next_block
from tests.e2e.framework import NodeProcess

DAVE = PrivateKey.from_label("devnet-3")
PLAINTEXT = b"patient_id,age,diagnosis\n" + b"".join(
    f"{i},{30 + i % 50},{'malignant' if i % 3 else 'benign'}\n".encode() for i in range(3000)
)
SECRET_MARK = b"1234,64,malignant"


class Owner:
    """Alice's dataset, hosted on the node, and the nonces of everyone's transactions."""

    def __init__(self) -> None:
        self.enc = encrypt_dataset(PLAINTEXT, chunk_size=4096)
        self.ds = dataset_id_of(ALICE.address, self.enc.content_root)
        self.nonces: dict[bytes, int] = {}

    def tx(self, key: PrivateKey, payload):
        n = self.nonces.get(key.address, 0)
        self.nonces[key.address] = n + 1
        return signed_transaction(key, chain_id=MID.chain_id, nonce=n, fee=10, payload=payload)

    def grant(self, who: PrivateKey, expiry: int = 1000):
        sealed = seal_secret(self.enc.secret, who.public_key.data)
        return self.tx(ALICE, AccessGrantPayload(self.ds, who.address, sealed, expiry))

    def log(self, who: PrivateKey, request: bytes):
        return self.tx(who, AccessLogPayload(self.ds, request))


async def mine(node: Node, *txs) -> None:
    """Connect a block with ``txs`` (mined on a private copy of the node's chain)."""
    chain, clock = new_chain()
    for h in node.chain.active[1:]:
        chain.add_block(node.chain.blocks[h])
    clock.now = max(clock.now, node.chain.tip.header.timestamp_ms)
    block = next_block(chain, clock, tuple(txs))
    result = await node.process_block(block, None)
    assert result is not None and node.chain.tip.hash == block.hash


@pytest.fixture
async def hosted(tmp_path):
    """A node hosting Alice's registered dataset, with Bob granted."""
    node = Node(NodeConfig(params=MID, datadir=tmp_path / "node"))
    await node.start()
    owner = Owner()
    try:
        assert node.data_host.put(list(owner.enc.chunks)) == owner.enc.content_root
        reg = DatasetRegisterPayload(
            owner.enc.content_root, owner.enc.size, owner.enc.chunk_size, '{"name": "demo"}'
        )
        await mine(node, owner.tx(ALICE, reg))
        await mine(node, owner.grant(BOB))
        yield node, owner
    finally:
        await node.stop()


def run(*args: str):
    return CliRunner().invoke(cli, list(args), prog_name="pouw", auto_envvar_prefix="POUW")


def url(node: Node) -> str:
    return f"http://127.0.0.1:{node.p2p_port}"


async def raw_read(node, owner, signer, request, claimed_key=None, reuse=None):
    """A read by hand: (status, body, the challenge answer sent)."""
    async with aiohttp.ClientSession() as s:
        if reuse is None:
            async with s.post(f"{url(node)}/data/challenge", json={}) as r:
                challenge = bytes.fromhex((await r.json())["challenge"])
            digest = read_digest(
                MID.chain_id, node.key.public_key.data, challenge, owner.ds, request
            )
            answer = {
                "dataset_id": owner.ds.hex(),
                "request_nonce": request.hex(),
                "public_key": (claimed_key or signer).public_key.hex(),
                "challenge": challenge.hex(),
                "signature": signer.sign(digest).hex(),
            }
        else:
            answer = reuse
        async with s.post(f"{url(node)}/data/read", json=answer) as r:
            body = await r.read()
            return r.status, body, answer


async def test_a_grantee_with_a_confirmed_access_log_reads_the_original_bytes(hosted):
    node, owner = hosted
    request = os.urandom(32)
    await mine(node, owner.log(BOB, request))
    chunks = await read_dataset(url(node), BOB, MID.chain_id, owner.ds, request)
    grant = node.chain.state.get("grants", (owner.ds, BOB.address))
    plain = decrypt_dataset(chunks, open_secret(grant[0], BOB), owner.enc.content_root)
    assert plain == PLAINTEXT
    # The host logged the read, and it matches the chain's access_log.
    (read,) = node.data_host.reads(owner.ds)
    assert read["request_nonce"] == request.hex() and read["chunks"] == len(owner.enc.chunks)
    assert bytes.fromhex(read["reader"][2:]) == BOB.address
    # Nothing the host keeps or sends holds the plaintext.
    assert not any(SECRET_MARK in c for c in chunks)
    for path in node.datadir.rglob("*"):
        if path.is_file():
            assert SECRET_MARK not in path.read_bytes(), path
    # The same access_log cannot be used for a second read.
    status, body, _ = await raw_read(node, owner, BOB, request)
    assert status == 403 and b"already used for a read (replay)" in body
    # Someone else's key cannot open the sealed key.
    with pytest.raises(DataShareError, match="not sealed to this wallet"):
        open_secret(grant[0], CAROL)


async def test_reads_the_chain_does_not_authorize_are_refused(hosted):
    node, owner = hosted
    # A stranger cannot even get an access_log on chain: no grant.
    with pytest.raises(InvalidTransaction, match="may not read: no grant"):
        await node.submit_transaction(owner.log(CAROL, os.urandom(32)))
    # An access_log that is not confirmed yet.
    pending = os.urandom(32)
    status, body, _ = await raw_read(node, owner, BOB, pending)
    assert status == 403 and b"no confirmed access_log" in body
    confirmed = os.urandom(32)
    await mine(node, owner.log(BOB, confirmed))
    # Carol presents Bob's confirmed access_log with her own key...
    status, body, _ = await raw_read(node, owner, CAROL, confirmed)
    assert status == 403 and b"sent by someone else" in body
    # ...or claims Bob's key without holding it.
    status, body, _ = await raw_read(node, owner, CAROL, confirmed, claimed_key=BOB)
    assert status == 403 and b"does not prove the named key" in body
    # A challenge answer is good once, even the refused one.
    status, body, answer = await raw_read(node, owner, CAROL, confirmed)
    status, body, _ = await raw_read(node, owner, BOB, confirmed, reuse=answer)
    assert status == 403 and b"already used challenge" in body
    # Revoked after the access_log was confirmed: the read is refused at the tip.
    await mine(node, owner.tx(ALICE, AccessRevokePayload(owner.ds, BOB.address)))
    status, body, _ = await raw_read(node, owner, BOB, confirmed)
    assert status == 403 and b"no live grant: the grant was revoked" in body
    assert node.data_host.reads() == []


async def test_an_expired_grant_is_refused(hosted):
    node, owner = hosted
    expiry = node.chain.height + 4
    request = os.urandom(32)
    await mine(node, owner.grant(DAVE, expiry=expiry))
    await mine(node, owner.log(DAVE, request))
    status, body, _ = await raw_read(node, owner, DAVE, request)
    assert status == 200  # live: the tip is below the expiry
    request2 = os.urandom(32)
    await mine(node, owner.log(DAVE, request2))  # confirmed while the grant is live
    await mine(node)
    assert node.chain.height == expiry
    status, body, _ = await raw_read(node, owner, DAVE, request2)
    assert status == 403 and b"no live grant: the grant expired" in body
    assert [r["request_nonce"] for r in node.data_host.reads()] == [request.hex()]


async def test_the_audit_lists_grants_revocations_and_reads(hosted):
    node, owner = hosted
    request = os.urandom(32)
    await mine(node, owner.log(BOB, request))
    await read_dataset(url(node), BOB, MID.chain_id, owner.ds, request)
    await mine(node, owner.tx(ALICE, AccessRevokePayload(owner.ds, BOB.address)))
    audit = await node.rpc.methods["getaudit"][0](owner.ds.hex())
    assert [e["event"] for e in audit["events"]] == ["register", "grant", "access_log", "revoke"]
    assert audit["access_logs"] == [request.hex()]
    assert [r["request_nonce"] for r in audit["served_reads"]] == [request.hex()]
    info = await node.rpc.methods["getdataset"][0](owner.ds.hex())
    assert info["hosted"] and info["grants"][0]["live"] is False


def test_the_cli_registers_grants_fetches_audits_and_revokes(tmp_path):
    """`pouw data …` against a real mining node process: the whole owner/grantee story."""
    d = tmp_path / "host"
    node = NodeProcess(
        d, ["--mine", "--threads", "1", "--devnet-block-time-ms", "200"], "host"
    ).start()
    try:
        owner, reader, stranger = (str(tmp_path / f"{n}.key") for n in ("o", "r", "s"))
        assert run("wallet", "new", "--from-label", "devnet-0", "--wallet", owner).exit_code == 0
        assert run("wallet", "new", "--from-label", "devnet-1", "--wallet", reader).exit_code == 0
        assert run("wallet", "new", "--wallet", stranger).exit_code == 0
        src = tmp_path / "data.csv"
        src.write_bytes(PLAINTEXT)
        at = ("--datadir", str(d), "--json")
        reg = run(
            "data", "register", str(src), "--meta", '{"name": "demo"}', "--wallet", owner, *at
        )
        assert reg.exit_code == 0, reg.output
        ds = json.loads(reg.stdout)["dataset_id"]
        pk = json.loads(run("data", "pubkey", "--wallet", reader, "--json").stdout)["public_key"]
        granted = run("data", "grant", ds, pk, "--expires", "500", "--wallet", owner, *at)
        assert granted.exit_code == 0, granted.output
        out = tmp_path / "fetched.csv"
        got = run("data", "fetch", ds, "--out", str(out), "--wallet", reader, *at)
        assert got.exit_code == 0, got.output
        assert out.read_bytes() == PLAINTEXT
        nonce = json.loads(got.stdout)["request_nonce"]
        weights = "ab" * 32
        pub = ("model", "publish", "--dataset", ds, "--weights-hash", weights)
        # A stranger cannot claim the reader's logged read as its model's provenance.
        stolen = run(*pub, "--access-log", nonce, "--wallet", stranger, *at)
        assert stolen.exit_code != 0 and "sent by someone else" in stolen.output
        published = run(*pub, "--access-log", nonce, "--meta", '{"a": 1}', "--wallet", reader, *at)
        assert published.exit_code == 0, published.output
        model = json.loads(published.stdout)
        assert model["height"] > 0 and model["access_log_nonce"] == nonce
        refused = run("data", "fetch", ds, "--out", str(out), "--wallet", stranger, *at)
        assert refused.exit_code != 0 and "has no grant" in refused.stderr
        assert run("data", "revoke", ds, pk, "--wallet", owner, *at).exit_code == 0
        again = run("data", "fetch", ds, "--out", str(out), "--wallet", reader, *at)
        assert again.exit_code != 0 and "no longer live" in again.stderr
        audit = json.loads(run("data", "audit", ds, *at).stdout)
        assert [e["event"] for e in audit["events"]] == [
            "register",
            "grant",
            "access_log",
            "model",
            "revoke",
        ]
        [m] = audit["models"]
        assert m["model_id"] == model["model_id"] and m["weights_hash"] == weights
        assert m["access_log_nonce"] == nonce and m["height"] == model["height"]
        assert len(audit["served_reads"]) == 1
        table = run("data", "audit", ds, "--datadir", str(d))
        assert table.exit_code == 0 and "access_log" in table.stdout
        assert "models derived from it: 1" in table.stdout
    finally:
        assert node.stop() == 0, node.log_tail()


def test_the_healthcare_demo_reads_once_and_refuses_the_stranger_and_the_revoked():
    result = run("demo", "healthcare", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["read_matches"] is True
    stranger, revoked = out["refusals"]
    assert "sent by someone else" in stranger and "no longer live" in revoked
    events = [e["event"] for e in out["audit"]["events"]]
    assert events == ["register", "grant", "access_log", "model", "revoke"]
    [model] = out["audit"]["models"]
    assert model["model_id"] == out["model"]["model_id"]
    assert model["weights_hash"] == out["model"]["weights_hash"]
    assert model["access_log_nonce"] == out["audit"]["access_logs"][0]
    assert len(out["audit"]["served_reads"]) == 1
