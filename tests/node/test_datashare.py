"""Serving encrypted datasets only to readers the chain authorizes, with a real in-process
Node: the one good read decrypts to the original bytes; every other read is refused."""

from __future__ import annotations

import asyncio
import json
import os
import random

import aiohttp
import pytest
from click.testing import CliRunner

from consensus.datashare import dataset_id_of, owned_id
from consensus.errors import InvalidTransaction
from consensus.keys import PrivateKey
from consensus.transactions import (
    AccessGrantPayload,
    AccessLogPayload,
    AccessRevokePayload,
    DatasetRegisterPayload,
    signed_transaction,
)
from node.app import Node
from node.apps.data_train import parse_csv, train_on_csv
from node.cli.data import breast_cancer_csv
from node.cli.main import cli
from node.client.datashare import (
    UPLOAD_BATCH_BYTES,
    DataClient,
    DataShareError,
    TransactionDropped,
    decrypt_dataset,
    encrypt_dataset,
    open_secret,
    read_dataset,
    read_digest,
    seal_secret,
    upload_batches,
)
from node.client.rpc import RpcClient
from node.config import NodeConfig
from node.rpc.server import RpcError
from node.services import data_host
from tests.support.chainkit import ALICE, BOB, CAROL, MID, new_chain, next_block
from tests.support.framework import NodeProcess

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
    request = owned_id(BOB.address, os.urandom(32))
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


async def test_an_access_log_a_reorg_makes_invalid_is_reported_dropped_at_once(hosted, tmp_path):
    """A reorg takes the block holding Bob's grant away: his pending access_log no longer
    applies and the node drops it. Waiting for it says so at once (nothing was read),
    instead of waiting out its timeout."""
    node, owner = hosted
    rpc = RpcClient(f"http://127.0.0.1:{node.rpc_port}/rpc", node.token)
    client = DataClient(rpc, BOB, MID, tmp_path / "keys")
    txid = await asyncio.to_thread(
        client.send, AccessLogPayload(owner.ds, owned_id(BOB.address, os.urandom(32)))
    )
    chain, clock = new_chain()  # the node's chain without its last block (the grant)
    for h in node.chain.active[1:-1]:
        chain.add_block(node.chain.blocks[h])
    clock.now = max(clock.now, node.chain.tip.header.timestamp_ms)
    for _ in range(2):
        block = next_block(chain, clock)
        chain.add_block(block)
        await node.process_block(block, None)
    assert node.chain.tip.hash == block.hash
    assert node.chain.state.get("grants", (owner.ds, BOB.address)) is None
    with pytest.raises(TransactionDropped, match="left the node's mempool before a block"):
        await asyncio.to_thread(client.wait_confirmed, txid, 20)


async def test_reads_the_chain_does_not_authorize_are_refused(hosted):
    node, owner = hosted
    # A stranger cannot even get an access_log on chain: no grant.
    with pytest.raises(InvalidTransaction, match="may not read: no grant"):
        await node.submit_transaction(owner.log(CAROL, os.urandom(32)))
    # An access_log that is not confirmed yet.
    pending = os.urandom(32)
    status, body, _ = await raw_read(node, owner, BOB, pending)
    assert status == 403 and b"no confirmed access_log" in body
    confirmed = owned_id(BOB.address, os.urandom(32))
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
    request = owned_id(DAVE.address, os.urandom(32))
    await mine(node, owner.grant(DAVE, expiry=expiry))
    await mine(node, owner.log(DAVE, request))
    status, body, _ = await raw_read(node, owner, DAVE, request)
    assert status == 200  # live: the tip is below the expiry
    request2 = owned_id(DAVE.address, os.urandom(32))
    await mine(node, owner.log(DAVE, request2))  # confirmed while the grant is live
    await mine(node)
    assert node.chain.height == expiry
    status, body, _ = await raw_read(node, owner, DAVE, request2)
    assert status == 403 and b"no live grant: the grant expired" in body
    assert [r["request_nonce"] for r in node.data_host.reads()] == [request.hex()]


async def test_the_audit_lists_grants_revocations_and_reads(hosted):
    node, owner = hosted
    request = owned_id(BOB.address, os.urandom(32))
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
        # A funded stranger: what stops it is the provenance rule, not an empty wallet.
        assert run("wallet", "new", "--from-label", "devnet-2", "--wallet", stranger).exit_code == 0
        src = tmp_path / "data.csv"
        src.write_bytes(PLAINTEXT)
        at = ("--datadir", str(d), "--json")
        reg = run(
            "data",
            "register",
            str(src),
            "--meta",
            '{"name": "demo"}',
            "--wallet",
            owner,
            "--no-check",
            *at,  # its diagnosis column is text: not a training CSV
        )
        assert reg.exit_code == 0, reg.output
        ds = json.loads(reg.stdout)["dataset_id"]
        ident = json.loads(run("data", "pubkey", "--wallet", reader, "--json").stdout)
        pk = ident["public_key"]
        # By address, the node must find the key in a transaction: the reader sent none.
        unknown = run("data", "grant", ds, ident["address"], "--wallet", owner, *at)
        assert unknown.exit_code != 0 and "has not sent a transaction" in unknown.stderr
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
        # Now the reader's key is on chain: a grant by address finds it.
        regrant = run("data", "grant", ds, ident["address"], "--wallet", owner, *at)
        assert regrant.exit_code == 0, regrant.output
        assert json.loads(regrant.stdout)["grantee"] == ident["address"]
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
            "grant",
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


async def test_a_staged_upload_is_hosted_only_when_its_root_is_the_one_announced(tmp_path):
    """putdatasetchunks: a wrong content root discards the upload and hosts nothing; the
    right one, batch by batch, hosts it; uploads in progress at once are bounded."""
    node = Node(NodeConfig(params=MID, datadir=tmp_path / "node"))
    await node.start()
    try:
        stage = node.rpc.methods["putdatasetchunks"][0]
        enc = encrypt_dataset(os.urandom(2_500_000), chunk_size=65536)
        batches = upload_batches(enc.chunks)
        assert len(batches) == 3 and all(sum(map(len, b)) <= UPLOAD_BATCH_BYTES for b in batches)
        other_root = encrypt_dataset(b"something else").content_root

        async def send(root: bytes, total: int = len(enc.chunks)) -> list[dict]:
            replies, start = [], 0
            for batch in batches:
                replies.append(await stage(root.hex(), total, start, [c.hex() for c in batch]))
                start += len(batch)
            return replies

        with pytest.raises(RpcError, match="the upload was discarded and nothing is hosted"):
            await send(other_root)
        hosted_dir = node.datadir / "datasets"
        assert not node.data_host.hosts(other_root) and not node.data_host.hosts(enc.content_root)
        assert list(hosted_dir.glob("*.chunks")) == []
        assert list((hosted_dir / "staging").iterdir()) == []
        # The same chunks under their own root: staged batch by batch, then hosted.
        replies = await send(enc.content_root)
        assert [r["complete"] for r in replies] == [False] * (len(batches) - 1) + [True]
        assert node.data_host.chunks(enc.content_root) == list(enc.chunks)
        # A chunk outside the announced count is refused.
        with pytest.raises(RpcError, match=r"chunks 2\.\.3 are not within 0\.\.2"):
            await stage(other_root.hex(), 3, 2, ["aa", "bb"])
        # At most MAX_STAGINGS uploads in progress.
        for i in range(data_host.MAX_STAGINGS):
            reply = await stage(bytes([i]).hex() * 32, 2, 0, ["aa"])
            assert reply["complete"] is False
        with pytest.raises(RpcError, match="uploads are already in progress"):
            await stage(other_root.hex(), 2, 0, ["aa"])
    finally:
        await node.stop()


def test_a_csv_that_is_not_numeric_with_an_integer_label_is_refused_clearly():
    with pytest.raises(ValueError, match="line 3, column 2: 'x' is not a finite number"):
        parse_csv(b"a,b,label\n1,2,0\n3,x,1\n")
    with pytest.raises(ValueError, match=r"line 2: the label \(last column\) 'benign' is not"):
        parse_csv(b"a,label\n1,benign\n")
    with pytest.raises(ValueError, match="line 2 has 2 columns, the header 3"):
        parse_csv(b"a,b,label\n1,0\n")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        parse_csv(b"\xff\xfe\x00garbage")
    assert parse_csv(b"a,b,label\n1.5,-2,0\n3,4e2,7\n") == ([[1.5, -2.0], [3.0, 400.0]], [0, 7])


@pytest.fixture(scope="module")
def data_node(tmp_path_factory):
    """A mining node process, an owner (devnet-0) and a reader (devnet-1) wallet, and the
    reader's public key."""
    d = tmp_path_factory.mktemp("data-host")
    node = NodeProcess(
        d, ["--mine", "--threads", "1", "--devnet-block-time-ms", "200"], "data-host"
    ).start()
    try:
        owner, reader = str(d / "owner.key"), str(d / "reader.key")
        assert run("wallet", "new", "--from-label", "devnet-0", "--wallet", owner).exit_code == 0
        assert run("wallet", "new", "--from-label", "devnet-1", "--wallet", reader).exit_code == 0
        pk = json.loads(run("data", "pubkey", "--wallet", reader, "--json").stdout)["public_key"]
        yield node, owner, reader, pk
    finally:
        assert node.stop() == 0, node.log_tail()


def share(node: NodeProcess, owner: str, pk: str, path) -> str:
    """Register the file at ``path`` as the owner and grant the reader; the dataset id."""
    at = ("--datadir", str(node.datadir), "--json")
    reg = run("data", "register", str(path), "--wallet", owner, *at)
    assert reg.exit_code == 0, reg.output
    ds = json.loads(reg.stdout)["dataset_id"]
    granted = run("data", "grant", ds, pk, "--wallet", owner, *at)
    assert granted.exit_code == 0, granted.output
    return ds


def test_a_6_mib_dataset_is_uploaded_in_batches_and_read_back_bit_identical(data_node, tmp_path):
    node, owner, reader, pk = data_node
    big = random.Random(7).randbytes(6 << 20)  # 12 MiB as hex: three times the RPC body limit
    src = tmp_path / "scan.bin"
    src.write_bytes(big)
    ds = share(node, owner, pk, src)
    info = node.call("getdataset", ds)
    assert info["size"] == len(big) and info["hosted"] is True
    out = tmp_path / "fetched.bin"
    at = ("--datadir", str(node.datadir), "--json")
    got = run("data", "fetch", ds, "--out", str(out), "--wallet", reader, *at)
    assert got.exit_code == 0, got.output
    assert out.read_bytes() == big
    assert list((node.datadir / "datasets" / "staging").iterdir()) == []
    # It is not a table: `pouw train` says so in one line (the read is logged all the same).
    bad = run("train", "--dataset", ds, "--quick", "--wallet", reader, *at)
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert bad.stderr.strip() == "error: the dataset is not UTF-8 text, so not a CSV"
    assert len(node.call("getaudit", ds)["access_logs"]) == 2


def test_train_on_a_granted_dataset_reads_trains_locally_and_publishes_its_provenance(
    data_node, tmp_path
):
    node, owner, reader, pk = data_node
    table = breast_cancer_csv()
    src = tmp_path / "records.csv"
    src.write_bytes(table)
    ds = share(node, owner, pk, src)
    at = ("--datadir", str(node.datadir))
    trained = run(
        "train", "--dataset", ds, "--quick", "--max-steps", "3", "--wallet", reader, *at, "--json"
    )
    assert trained.exit_code == 0, trained.output
    out = json.loads(trained.stdout)
    local = train_on_csv(table, quick=True, max_steps=3)  # anyone with the bytes reproduces it
    assert out["weights_hash"] == local.weights_hash.hex()
    assert out["rows"] == 569 and out["steps"] == 3 and out["dataset_id"] == ds
    assert out["test_accuracy"] == local.test_accuracy
    assert out["publish_height"] > out["access_log_height"] > 0
    audit = node.call("getaudit", ds)
    assert audit["access_logs"] == [out["request_nonce"]]
    [model] = audit["models"]
    assert model["model_id"] == out["model_id"] and model["weights_hash"] == out["weights_hash"]
    assert model["access_log_nonce"] == out["request_nonce"]
    assert model["height"] == out["publish_height"]
    # --no-publish: a second logged read, the same weights, no second model.
    plain = run(
        "train",
        "--dataset",
        ds,
        "--quick",
        "--max-steps",
        "3",
        "--no-publish",
        "--wallet",
        reader,
        *at,
    )
    assert plain.exit_code == 0, plain.output
    assert f"weights {out['weights_hash']}" in plain.stdout
    assert "not published (--no-publish)" in plain.stdout
    audit = node.call("getaudit", ds)
    assert len(audit["access_logs"]) == 2 and len(audit["models"]) == 1
    unknown = run("train", "--dataset", "ab" * 32, "--wallet", reader, *at)
    assert unknown.exit_code != 0 and f"unknown dataset {'ab' * 32}" in unknown.stderr


async def test_a_flood_of_challenges_does_not_push_out_a_readers_challenge(hosted, monkeypatch):
    """Challenges cost the host nothing to issue (their expiry travels under its MAC):
    more than MAX_CHALLENGES requested after a reader's leave the reader's good, and a
    made-up or expired one is refused."""
    node, owner = hosted
    monkeypatch.setattr(data_host, "MAX_CHALLENGES", 50)
    request = owned_id(BOB.address, os.urandom(32))
    await mine(node, owner.log(BOB, request))
    host = node.data_host
    early = host.new_challenge()
    for _ in range(200):
        host.new_challenge()
    digest = read_digest(MID.chain_id, node.key.public_key.data, early, owner.ds, request)
    answer = {
        "dataset_id": owner.ds.hex(),
        "request_nonce": request.hex(),
        "public_key": BOB.public_key.hex(),
        "challenge": early.hex(),
        "signature": BOB.sign(digest).hex(),
    }
    assert host.authorize(answer)[2] == BOB.address
    with pytest.raises(data_host.ReadRefused, match="already used challenge"):
        host.authorize(answer)
    for bad in (os.urandom(32), early[:16] + bytes(16), early[:31]):
        with pytest.raises(data_host.ReadRefused, match="unknown, expired"):
            host.authorize({**answer, "challenge": bad.hex()})
    monkeypatch.setattr(data_host, "CHALLENGE_TTL_S", -1.0)
    stale = host.new_challenge()
    with pytest.raises(data_host.ReadRefused, match="unknown, expired"):
        host.authorize({**answer, "challenge": stale.hex()})
