"""Dataset encryption and the grantee's side of a read (PROTOCOL §10).

A dataset is cut into chunks and each chunk is sealed with XChaCha20-Poly1305
under a random 32-byte data key. Chunk i's nonce is a random per-dataset
prefix followed by i (u64), and its associated data binds i and the chunk
count, so a host can neither reorder nor truncate chunks unnoticed. The
dataset's ``content_root`` is the Merkle root over the *encrypted* chunks, so
hosts verify chunks without the key.

The key, the nonce prefix and the BLAKE3 hash of the plaintext travel
together as the "sealed key" of an access_grant: a libsodium sealed box to
the grantee's X25519 key, converted from its Ed25519 account key. The hash of
the plaintext is inside the box and not in the public metadata, so nobody
without a grant can test a guess of a low-entropy dataset against it.

A read (``read_dataset``): the grantee asks the host for a fresh challenge,
signs (challenge, dataset, request nonce, host) with its account key and
sends it with the nonce of its confirmed access_log; the host answers with
the encrypted chunks only if the chain says so (node.services.data_host.DataHost).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import msgpack
import nacl.bindings as sodium
import nacl.exceptions
import nacl.public

from consensus.datashare import dataset_id_of, owned_id
from consensus.hashing import tagged_hash, u32_bytes, u64_bytes
from consensus.keys import PrivateKey, address, address_to_text
from consensus.merkle import merkle_root
from consensus.params import NetworkParams
from consensus.transactions import (
    AccessGrantPayload,
    AccessLogPayload,
    AccessRevokePayload,
    DatasetRegisterPayload,
    ModelPublishPayload,
    Payload,
    encode_tx,
    signed_transaction,
)
from node.amounts import format_amount
from node.client.rpc import RpcClient

KEY_SIZE = 32
PREFIX_SIZE = 16  # + 8 bytes of chunk index = the 24-byte XChaCha20 nonce
HASH_SIZE = 32
SECRET_SIZE = KEY_SIZE + PREFIX_SIZE + HASH_SIZE  # sealed: 80 + 48 = 128 bytes
DEFAULT_CHUNK_SIZE = 64 * 1024
TAG_DATA_READ = "data-read"
"""Domain of the signed answer to a host's read challenge."""
MAC_SIZE = 16
MAX_DATASET_CHUNKS = 4096
"""A hosted dataset has at most this many chunks (so 256 MiB at the default chunk size)."""
MAX_DATASET_BYTES = 256 * 1024 * 1024
"""A dataset's plaintext is at most 256 MiB: a read sends it all in one answer."""
MAX_READ_BYTES = MAX_DATASET_BYTES + MAX_DATASET_CHUNKS * (MAC_SIZE + 16) + 16
"""The largest answer to a read: every chunk's MAC and msgpack header on top of the data."""
UPLOAD_BATCH_BYTES = 1024 * 1024
"""Ciphertext per putdatasetchunks call: its hex stays well under the RPC's 4 MiB body limit."""


class DataShareError(ValueError):
    """A dataset cannot be sealed, opened or read; the message says why."""


class TransactionDropped(RuntimeError):
    """Our transaction left the node's mempool without a block holding it."""


@dataclass(frozen=True)
class DataSecret:
    """What a grantee needs to read a dataset: the data key, nonce prefix, plaintext hash."""

    key: bytes
    prefix: bytes
    plain_hash: bytes

    def encode(self) -> bytes:
        return self.key + self.prefix + self.plain_hash

    @classmethod
    def decode(cls, data: bytes) -> DataSecret:
        if len(data) != SECRET_SIZE:
            raise DataShareError(f"a dataset secret is {SECRET_SIZE} bytes, got {len(data)}")
        return cls(data[:KEY_SIZE], data[KEY_SIZE:-HASH_SIZE], data[-HASH_SIZE:])


@dataclass(frozen=True)
class EncryptedDataset:
    """A dataset ready to register and host: its encrypted chunks and their root."""

    secret: DataSecret
    chunks: tuple[bytes, ...]
    content_root: bytes
    size: int
    chunk_size: int


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + u64_bytes(index)


def _aad(index: int, total: int) -> bytes:
    return u32_bytes(index) + u32_bytes(total)


def plaintext_hash(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


def encrypt_dataset(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> EncryptedDataset:
    """Encrypt ``data`` under a fresh random key, chunk by chunk."""
    if not data:
        raise DataShareError("a dataset cannot be empty")
    if not 1 <= chunk_size <= 1 << 20:
        raise DataShareError(f"chunk size {chunk_size} is not in [1, 1 MiB]")
    secret = DataSecret(os.urandom(KEY_SIZE), os.urandom(PREFIX_SIZE), plaintext_hash(data))
    plain = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
    total = len(plain)
    chunks = tuple(
        sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            p, _aad(i, total), _nonce(secret.prefix, i), secret.key
        )
        for i, p in enumerate(plain)
    )
    return EncryptedDataset(secret, chunks, merkle_root(chunks), len(data), chunk_size)


def check_dataset_size(size: int, chunk_size: int) -> None:
    """ValueError, saying what to change, if a dataset of ``size`` bytes cannot be hosted."""
    if size > MAX_DATASET_BYTES:
        raise DataShareError(
            f"the dataset is {size} bytes; a dataset holds at most {MAX_DATASET_BYTES} "
            f"bytes ({MAX_DATASET_BYTES >> 20} MiB)"
        )
    chunks = -(-size // chunk_size)
    if chunks > MAX_DATASET_CHUNKS:
        least = -(-size // MAX_DATASET_CHUNKS)
        raise DataShareError(
            f"{size} bytes in chunks of {chunk_size} is {chunks} chunks, more than the "
            f"{MAX_DATASET_CHUNKS} a dataset may have: use a chunk size of at least {least}"
        )


def upload_batches(chunks: tuple[bytes, ...] | list[bytes]) -> list[list[bytes]]:
    """``chunks`` in order, cut into runs of at most UPLOAD_BATCH_BYTES (at least one chunk)."""
    batches: list[list[bytes]] = []
    size = 0
    for c in chunks:
        if not batches or size + len(c) > UPLOAD_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(c)
        size += len(c)
    return batches


def decrypt_dataset(
    chunks: list[bytes] | tuple[bytes, ...], secret: DataSecret, content_root: bytes
) -> bytes:
    """The plaintext of verified encrypted chunks; DataShareError if anything does not match."""
    if not chunks or merkle_root(chunks) != content_root:
        raise DataShareError("the chunks do not match the dataset's registered content root")
    total = len(chunks)
    try:
        plain = b"".join(
            sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                c, _aad(i, total), _nonce(secret.prefix, i), secret.key
            )
            for i, c in enumerate(chunks)
        )
    except nacl.exceptions.CryptoError:
        raise DataShareError("a chunk does not decrypt under the granted key") from None
    if plaintext_hash(plain) != secret.plain_hash:
        raise DataShareError("the decrypted data does not match the owner's plaintext hash")
    return plain


def seal_secret(secret: DataSecret, grantee_public_key: bytes) -> bytes:
    """The secret sealed to the X25519 key of the grantee's Ed25519 public key."""
    try:
        curve = sodium.crypto_sign_ed25519_pk_to_curve25519(grantee_public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise DataShareError("not an Ed25519 public key") from None
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(curve)).encrypt(secret.encode()))


def open_secret(sealed: bytes, key: PrivateKey) -> DataSecret:
    """Open a sealed secret with the grantee's account key."""
    ed_secret = key.seed + key.public_key.data  # libsodium's 64-byte Ed25519 secret key
    curve = sodium.crypto_sign_ed25519_sk_to_curve25519(ed_secret)
    try:
        data = nacl.public.SealedBox(nacl.public.PrivateKey(curve)).decrypt(sealed)
    except nacl.exceptions.CryptoError:
        raise DataShareError("the sealed key was not sealed to this wallet") from None
    return DataSecret.decode(data)


def read_digest(
    chain_id: int, host_id: bytes, challenge: bytes, dataset_id: bytes, request_nonce: bytes
) -> bytes:
    """What a grantee signs to prove to one host, once, that it is the access_log's sender."""
    return tagged_hash(
        TAG_DATA_READ, u32_bytes(chain_id), host_id, challenge, dataset_id, request_nonce
    )


async def read_dataset(
    host_url: str,
    key: PrivateKey,
    chain_id: int,
    dataset_id: bytes,
    request_nonce: bytes,
    timeout: float = 60.0,
) -> list[bytes]:
    """The encrypted chunks of a dataset from the host at ``host_url`` (its P2P address).

    Raises DataShareError with the host's reason if it refuses.
    """
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        async with session.post(
            f"{host_url}/data/challenge", json={"dataset_id": dataset_id.hex()}
        ) as r:
            body = parse_host_reply(await r.content.read(MAX_HOST_REPLY))
            if r.status != 200:
                raise DataShareError(f"the host refused: {body.get('error', r.status)}")
        challenge, host_id = parse_challenge(body)
        digest = read_digest(chain_id, host_id, challenge, dataset_id, request_nonce)
        request = {
            "dataset_id": dataset_id.hex(),
            "request_nonce": request_nonce.hex(),
            "public_key": key.public_key.hex(),
            "challenge": challenge.hex(),
            "signature": key.sign(digest).hex(),
        }
        async with session.post(f"{host_url}/data/read", json=request) as r:
            if r.status != 200:
                body = parse_host_reply(await r.content.read(MAX_HOST_REPLY))
                raise DataShareError(f"the host refused: {body.get('error', r.status)}")
            parts, received = [], 0
            async for part in r.content.iter_chunked(1 << 16):
                received += len(part)
                if received > MAX_READ_BYTES:
                    raise DataShareError("the host sent more than a dataset may hold")
                parts.append(part)
    return parse_chunks(b"".join(parts))


MAX_HOST_REPLY = 64 * 1024
"""Longest JSON answer read from a host (a challenge or a refusal is under 200 bytes)."""


def parse_host_reply(raw: bytes) -> dict[str, Any]:
    """A host's JSON answer (a challenge, or why it refused) as an object.

    Raises DataShareError for anything else: a hostile host must not crash its client.
    """
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested past the stack
        raise DataShareError("the host's answer is not JSON") from None
    if not isinstance(body, dict):
        raise DataShareError("the host's answer is not a JSON object")
    return body


def parse_challenge(body: dict[str, Any]) -> tuple[bytes, bytes]:
    """(challenge, host node id) from a host's answer; DataShareError if malformed."""
    try:
        challenge = bytes.fromhex(body["challenge"])
        host_id = bytes.fromhex(body["host_id"])
    except (KeyError, TypeError, ValueError):
        raise DataShareError("the host's challenge is malformed") from None
    if len(challenge) != 32 or len(host_id) != 32:
        raise DataShareError("the host's challenge or node id is not 32 bytes")
    return challenge, host_id


def parse_chunks(raw: bytes) -> list[bytes]:
    """The encrypted chunks in a host's read answer (a msgpack list of bytes)."""
    try:
        chunks = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException):
        raise DataShareError("the host's answer is not a msgpack list of chunks") from None
    if not isinstance(chunks, list) or not all(isinstance(c, bytes) for c in chunks):
        raise DataShareError("the host's answer is not a list of chunks")
    return chunks


DEFAULT_FEE = 1_000
TAG_MODEL_ID = "published-model-id"


class DataClient:
    """One wallet's view of data sharing through its node's RPC."""

    def __init__(
        self, rpc: RpcClient, key: PrivateKey, params: NetworkParams, keys_dir: Path
    ) -> None:
        self.rpc = rpc
        self.key = key
        self.params = params
        self.keys_dir = keys_dir

    def check_can_pay(self, fee: int = DEFAULT_FEE) -> dict[str, Any]:
        """This wallet's account; ValueError if it cannot pay ``fee`` (a grantee pays for
        its access_log too)."""
        me = address_to_text(self.key.address)
        account: dict[str, Any] = self.rpc.call("getaccount", me)
        if account["balance"] < fee:
            raise ValueError(
                f"this wallet ({me}) holds {format_amount(account['balance'])} coins and a "
                f"transaction's fee is {format_amount(fee)}: every party to data sharing, a "
                "grantee too, needs coins (`pouw wallet send` them from a funded wallet)"
            )
        return account

    def send(self, payload: Payload, fee: int = DEFAULT_FEE) -> str:
        """Sign and send one transaction of ours; ValueError, nothing sent, if this wallet
        cannot pay its fee."""
        account = self.check_can_pay(fee)
        tx = signed_transaction(
            self.key,
            chain_id=self.params.chain_id,
            nonce=account["next_nonce"],
            fee=fee,
            payload=payload,
        )
        txid: str = self.rpc.call("sendtransaction", encode_tx(tx).hex())
        return txid

    def wait_confirmed(self, txid: str, timeout: float) -> int:
        """The height of the block that holds ``txid``, a transaction our node admitted
        (``send``); TimeoutError after ``timeout`` s, TransactionDropped as soon as the
        node no longer knows it (neither in a block nor in its mempool)."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.rpc.transaction(txid)
            if info is None:
                raise TransactionDropped(
                    f"transaction {txid[:16]} left the node's mempool before a block held "
                    "it: it no longer applies (a reorg undid what it relies on, or an "
                    "earlier transaction of this wallet was dropped) or it expired; nothing "
                    "was confirmed: send it again"
                )
            if info.get("height") is not None:
                return int(info["height"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"transaction {txid[:16]} not confirmed in {timeout:.0f} s")
            time.sleep(0.2)

    # ------------------------------------------------------------ owner

    def _secret_path(self, dataset_id: bytes) -> Path:
        return self.keys_dir / f"{dataset_id.hex()}.key"

    def register(
        self,
        data: bytes,
        metadata: str,
        chunk_size: int,
        on_upload: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Encrypt ``data``, upload its chunks to the node, keep the key, send the register.

        ``on_upload(done, total)`` reports the chunks uploaded so far.
        """
        check_dataset_size(len(data), chunk_size)
        self.check_can_pay()  # before the upload, not after it
        enc = encrypt_dataset(data, chunk_size)
        self.upload(enc.chunks, enc.content_root, on_upload)
        dataset_id = dataset_id_of(self.key.address, enc.content_root)
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        path = self._secret_path(dataset_id)
        path.write_text(enc.secret.encode().hex())
        path.chmod(0o600)
        payload = DatasetRegisterPayload(enc.content_root, enc.size, enc.chunk_size, metadata)
        return {
            "dataset_id": dataset_id.hex(),
            "content_root": enc.content_root.hex(),
            "size": enc.size,
            "chunks": len(enc.chunks),
            "txid": self.send(payload),
        }

    def upload(
        self,
        chunks: tuple[bytes, ...],
        content_root: bytes,
        on_upload: Callable[[int, int], None] | None = None,
    ) -> None:
        """Have the node host ``chunks``, in calls of at most ~UPLOAD_BATCH_BYTES each; the
        node checks the whole against ``content_root`` before it hosts anything."""
        start = 0
        reply: dict[str, Any] = {"complete": False}
        for batch in upload_batches(chunks):
            reply = self.rpc.call(
                "putdatasetchunks",
                content_root.hex(),
                len(chunks),
                start,
                [c.hex() for c in batch],
            )
            start += len(batch)
            if on_upload is not None:
                on_upload(start, len(chunks))
        if not reply["complete"] or reply["content_root"] != content_root.hex():
            raise RuntimeError(
                f"the node did not finish hosting the upload: {reply} after {start} chunks"
            )

    def secret(self, dataset_id: bytes) -> DataSecret:
        try:
            return DataSecret.decode(bytes.fromhex(self._secret_path(dataset_id).read_text()))
        except FileNotFoundError:
            raise ValueError(
                f"no data key for {dataset_id.hex()[:16]} in {self.keys_dir}: "
                "only the owner who registered it can grant access"
            ) from None

    def grant(self, dataset_id: bytes, public_key: bytes, expires: int) -> dict[str, Any]:
        sealed = seal_secret(self.secret(dataset_id), public_key)
        expiry = self.rpc.call("getinfo")["height"] + expires
        grantee = address(public_key)
        txid = self.send(AccessGrantPayload(dataset_id, grantee, sealed, expiry))
        return {"grantee": address_to_text(grantee), "expiry_height": expiry, "txid": txid}

    def revoke(self, dataset_id: bytes, grantee: bytes) -> dict[str, Any]:
        txid = self.send(AccessRevokePayload(dataset_id, grantee))
        return {"grantee": address_to_text(grantee), "txid": txid}

    # ------------------------------------------------------------ grantee

    def fetch(
        self, dataset_id: bytes, host: str | None, timeout: float
    ) -> tuple[bytes, dict[str, Any]]:
        """Log the read on chain, wait for it, read, verify and decrypt the dataset."""
        info = self.rpc.call("getdataset", dataset_id.hex())
        me = address_to_text(self.key.address)
        grant = next((g for g in info["grants"] if g["grantee"] == me), None)
        if grant is None:
            raise DataShareError(f"{me} has no grant on dataset {dataset_id.hex()[:16]}")
        if not grant["live"]:
            raise DataShareError(f"the grant of {me} is no longer live (revoked or expired)")
        secret = open_secret(bytes.fromhex(grant["sealed_key"]), self.key)
        request_nonce = owned_id(self.key.address, os.urandom(32))  # consensus asks it
        txid = self.send(AccessLogPayload(dataset_id, request_nonce))
        height = self.wait_confirmed(txid, timeout)
        if host is None:
            host = f"127.0.0.1:{self.rpc.call('getinfo')['p2p_port']}"
        chunks = asyncio.run(
            read_dataset(
                f"http://{host}", self.key, self.params.chain_id, dataset_id, request_nonce, timeout
            )
        )
        data = decrypt_dataset(chunks, secret, bytes.fromhex(info["content_root"]))
        return data, {
            "access_log_txid": txid,
            "request_nonce": request_nonce.hex(),
            "height": height,
            "bytes": len(data),
        }

    def publish_model(
        self,
        dataset_id: bytes,
        weights_hash: bytes,
        access_log_nonce: bytes,
        model_id: bytes | None = None,
        metadata: str = "{}",
    ) -> dict[str, Any]:
        """Publish a model trained on this wallet's logged read ``access_log_nonce``.

        Without ``model_id`` the id is derived from the publisher, the weights
        and the read, so publishing the same thing twice is refused as a duplicate. A
        model id begins with its publisher's address (consensus: nobody can take another's).
        """
        info = self.rpc.call("getdataset", dataset_id.hex())
        content_root = bytes.fromhex(info["content_root"])
        if model_id is None:
            model_id = owned_id(
                self.key.address,
                tagged_hash(
                    TAG_MODEL_ID, self.key.address, weights_hash, dataset_id, access_log_nonce
                ),
            )
        payload = ModelPublishPayload(
            model_id, weights_hash, dataset_id, content_root, access_log_nonce, metadata
        )
        return {
            "model_id": model_id.hex(),
            "weights_hash": weights_hash.hex(),
            "dataset_id": dataset_id.hex(),
            "content_root": content_root.hex(),
            "access_log_nonce": access_log_nonce.hex(),
            "txid": self.send(payload),
        }
