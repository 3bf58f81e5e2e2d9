"""Hosting encrypted datasets behind on-chain authorization, and the data RPC methods.

``DataHost`` keeps datasets' encrypted chunks (never a key, never plaintext)
and serves them on the node's public P2P HTTP server:

* ``POST /data/challenge`` ``{"dataset_id"}`` → a fresh random challenge,
  usable once, for a minute.
* ``POST /data/read`` ``{"dataset_id", "request_nonce", "public_key",
  "challenge", "signature"}`` → the encrypted chunks (msgpack list), only if
  the signature by ``public_key`` covers this challenge (so the caller holds
  the key it names), the access_log ``(dataset, request_nonce)`` is confirmed
  on the active chain and was sent by that key's address, this host has not
  served that access_log before, and the grant is live at the tip.

Every served read is appended to ``<datadir>/datasets/reads.jsonl`` (who,
dataset, access_log, chunk count, tip height), so the host's log and the
chain's access_logs can be compared read for read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
from aiohttp import web

from consensus.datashare import (
    access_log_record,
    dataset_record,
    grant_record,
    grant_refusal,
    iter_access_logs,
    iter_dataset_models,
    iter_grants,
)
from consensus.keys import address, address_to_text, verify_signature
from consensus.merkle import merkle_root
from consensus.transactions import (
    MAX_DATASET_CHUNK_SIZE,
    AccessGrantPayload,
    AccessLogPayload,
    AccessRevokePayload,
    DatasetRegisterPayload,
    ModelPublishPayload,
)
from node.datashare import read_digest
from node.rpc import INVALID_PARAMS, REJECTED, RpcError, RpcServer
from node.rpc_methods import parse_hash

if TYPE_CHECKING:
    from node.node import Node

log = logging.getLogger("pouw.data")

CHALLENGE_TTL_S = 60.0
MAX_CHALLENGES = 10_000
MAX_HOSTED_CHUNKS = 4096


class ReadRefused(Exception):
    """A read the host will not serve; the message says why."""


class DataHost:
    """One node's hosted datasets and the rules for serving them."""

    def __init__(self, node: Node, directory: Path) -> None:
        self.node = node
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "reads.jsonl"
        self._challenges: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self.served_nonces: set[tuple[bytes, bytes]] = set()
        for entry in self.reads():
            self.served_nonces.add(
                (bytes.fromhex(entry["dataset_id"]), bytes.fromhex(entry["request_nonce"]))
            )

    # ------------------------------------------------------------ storage

    def _path(self, content_root: bytes) -> Path:
        return self.directory / f"{content_root.hex()}.chunks"

    def put(self, chunks: list[bytes]) -> bytes:
        """Host these encrypted chunks; returns their content root."""
        if not chunks or len(chunks) > MAX_HOSTED_CHUNKS:
            raise ValueError(f"a hosted dataset has 1..{MAX_HOSTED_CHUNKS} chunks")
        if any(not c or len(c) > MAX_DATASET_CHUNK_SIZE + 16 for c in chunks):
            raise ValueError("a chunk is empty or larger than 1 MiB + its MAC")
        root = merkle_root(chunks)
        tmp = self._path(root).with_suffix(".tmp")
        tmp.write_bytes(msgpack.packb(chunks, use_bin_type=True))
        os.replace(tmp, self._path(root))
        return root

    def hosts(self, content_root: bytes) -> bool:
        return self._path(content_root).exists()

    def chunks(self, content_root: bytes) -> list[bytes]:
        chunks: list[bytes] = msgpack.unpackb(self._path(content_root).read_bytes(), raw=False)
        return chunks

    def reads(self, dataset_id: bytes | None = None) -> list[dict[str, Any]]:
        """The reads this host served (of one dataset, or all), oldest first."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text().splitlines():
            entry = json.loads(line)
            if dataset_id is None or entry["dataset_id"] == dataset_id.hex():
                out.append(entry)
        return out

    # ------------------------------------------------------------ serving

    def new_challenge(self) -> bytes:
        now = time.monotonic()
        while self._challenges and (
            len(self._challenges) >= MAX_CHALLENGES
            or next(iter(self._challenges.values()))[1] < now
        ):
            self._challenges.popitem(last=False)
        challenge = os.urandom(32)
        self._challenges[challenge] = (challenge, now + CHALLENGE_TTL_S)
        return challenge

    def authorize(self, req: dict[str, Any]) -> tuple[bytes, bytes, bytes, list[bytes]]:
        """(dataset id, request nonce, reader address, chunks) or ReadRefused with the reason."""
        try:
            dataset_id = bytes.fromhex(req["dataset_id"])
            nonce = bytes.fromhex(req["request_nonce"])
            public_key = bytes.fromhex(req["public_key"])
            challenge = bytes.fromhex(req["challenge"])
            signature = bytes.fromhex(req["signature"])
        except (KeyError, TypeError, ValueError):
            raise ReadRefused("malformed read request") from None
        if len(public_key) != 32 or len(dataset_id) != 32 or len(nonce) != 32:
            raise ReadRefused("malformed read request")
        # The challenge is spent by any attempt, so an answer is good once.
        entry = self._challenges.pop(challenge, None)
        if entry is None or entry[1] < time.monotonic():
            raise ReadRefused("unknown, expired or already used challenge")
        digest = read_digest(
            self.node.params.chain_id, self.node.key.public_key.data, challenge, dataset_id, nonce
        )
        if not verify_signature(public_key, digest, signature):
            raise ReadRefused("the signature does not prove the named key")
        reader = address(public_key)
        state = self.node.chain.state
        dataset = dataset_record(state, dataset_id)
        if dataset is None:
            raise ReadRefused("no such dataset on the chain")
        if not self.hosts(dataset["content_root"]):
            raise ReadRefused("this node does not host that dataset")
        logged = access_log_record(state, dataset_id, nonce)
        if logged is None:
            raise ReadRefused("no confirmed access_log with that request nonce")
        if logged["grantee"] != reader:
            raise ReadRefused("that access_log was sent by someone else")
        if (dataset_id, nonce) in self.served_nonces:
            raise ReadRefused("that access_log was already used for a read (replay)")
        why = grant_refusal(grant_record(state, dataset_id, reader), self.node.chain.height)
        if why is not None:
            raise ReadRefused(f"no live grant: {why}")
        return dataset_id, nonce, reader, self.chunks(dataset["content_root"])

    def record_read(self, dataset_id: bytes, nonce: bytes, reader: bytes, count: int) -> None:
        self.served_nonces.add((dataset_id, nonce))
        entry = {
            "time": round(time.time(), 3),
            "reader": address_to_text(reader),
            "dataset_id": dataset_id.hex(),
            "request_nonce": nonce.hex(),
            "chunks": count,
            "tip_height": self.node.chain.height,
        }
        with self.log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        log.info("served %d chunks of %s to %s", count, dataset_id.hex()[:16], entry["reader"])

    async def handle_challenge(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"challenge": self.new_challenge().hex(), "host_id": self.node.key.public_key.hex()}
        )

    async def handle_read(self, request: web.Request) -> web.Response:
        try:
            req = await request.json()
            if not isinstance(req, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"error": "malformed read request"}, status=400)
        try:
            dataset_id, nonce, reader, chunks = self.authorize(req)
        except ReadRefused as e:
            return web.json_response({"error": str(e)}, status=403)
        self.record_read(dataset_id, nonce, reader, len(chunks))
        body = await asyncio.to_thread(msgpack.packb, chunks, use_bin_type=True)
        return web.Response(body=body, content_type="application/msgpack")

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/data/challenge", self.handle_challenge)
        app.router.add_post("/data/read", self.handle_read)


# ------------------------------------------------------------------ RPC


def _grant_json(grantee: bytes, g: dict[str, Any], height: int) -> dict[str, Any]:
    return {
        "grantee": address_to_text(grantee),
        "sealed_key": g["sealed_key"].hex(),
        "expiry": g["expiry"],
        "revoked_height": g["revoked_height"],
        "granted_height": g["granted_height"],
        "live": grant_refusal(g, height) is None,
    }


_DATA_PAYLOADS = {
    DatasetRegisterPayload: "register",
    AccessGrantPayload: "grant",
    AccessRevokePayload: "revoke",
    AccessLogPayload: "access_log",
    ModelPublishPayload: "model",
}


def register_data_methods(rpc: RpcServer, node: Node) -> None:
    def _dataset(dataset_id: str) -> tuple[bytes, dict[str, Any]]:
        ds_id = parse_hash(dataset_id, "dataset id")
        rec = dataset_record(node.chain.state, ds_id)
        if rec is None:
            raise RpcError(REJECTED, f"unknown dataset {dataset_id}")
        return ds_id, rec

    async def putdataset(chunks_hex: list[str]) -> str:
        """Host a dataset's encrypted chunks; returns their content root."""
        try:
            chunks = [bytes.fromhex(c) for c in chunks_hex]
            return node.data_host.put(chunks).hex()
        except (TypeError, ValueError) as e:
            raise RpcError(INVALID_PARAMS, f"not a list of hex chunks: {e}") from None

    async def getdataset(dataset_id: str) -> dict[str, Any]:
        """A dataset's on-chain record and grants, and whether this node hosts it."""
        ds_id, rec = _dataset(dataset_id)
        height = node.chain.height
        return {
            "dataset_id": ds_id.hex(),
            "owner": address_to_text(rec["owner"]),
            "content_root": rec["content_root"].hex(),
            "size": rec["size"],
            "chunk_size": rec["chunk_size"],
            "metadata": rec["metadata"],
            "height": rec["height"],
            "hosted": node.data_host.hosts(rec["content_root"]),
            "grants": [_grant_json(g, v, height) for g, v in iter_grants(node.chain.state, ds_id)],
        }

    async def getaccesslog(dataset_id: str, request_nonce: str) -> dict[str, Any] | None:
        """A confirmed access_log, or null while it is not on the active chain."""
        rec = access_log_record(
            node.chain.state,
            parse_hash(dataset_id, "dataset id"),
            parse_hash(request_nonce, "nonce"),
        )
        if rec is None:
            return None
        return {"grantee": address_to_text(rec["grantee"]), "height": rec["height"]}

    async def getaudit(dataset_id: str) -> dict[str, Any]:
        """Every register/grant/revoke/access_log/model publish of a dataset on the active
        chain, in order, the models derived from it, and this host's served reads."""
        ds_id, rec = _dataset(dataset_id)
        chain = node.chain
        events = []
        for height in range(rec["height"], chain.height + 1):
            block = chain.block_at(height)
            for tx in block.txs:
                kind = _DATA_PAYLOADS.get(type(tx.payload))
                if kind is None:
                    continue
                p = tx.payload
                if kind == "register":
                    if height != rec["height"] or tx.sender_address != rec["owner"]:
                        continue
                elif getattr(p, "dataset_id", None) != ds_id:
                    continue
                event: dict[str, Any] = {
                    "event": kind,
                    "by": address_to_text(tx.sender_address),
                    "height": height,
                    "block": block.hash.hex(),
                    "txid": tx.txid.hex(),
                    "time_ms": block.header.timestamp_ms,
                }
                if isinstance(p, AccessGrantPayload | AccessRevokePayload):
                    event["grantee"] = address_to_text(p.grantee)
                if isinstance(p, AccessGrantPayload):
                    event["expiry"] = p.expiry_height
                if isinstance(p, AccessLogPayload):
                    event["request_nonce"] = p.request_nonce.hex()
                if isinstance(p, ModelPublishPayload):
                    event["model_id"] = p.model_id.hex()
                    event["request_nonce"] = p.access_log_nonce.hex()
                events.append(event)
        logs = [n.hex() for n, _ in iter_access_logs(chain.state, ds_id)]
        return {
            "dataset_id": ds_id.hex(),
            "owner": address_to_text(rec["owner"]),
            "events": events,
            "access_logs": logs,
            "models": [
                {
                    "model_id": model_id.hex(),
                    "publisher": address_to_text(m["publisher"]),
                    "weights_hash": m["weights_hash"].hex(),
                    "access_log_nonce": m["access_log_nonce"].hex(),
                    "metadata": m["metadata"],
                    "height": m["height"],
                }
                for model_id, m in iter_dataset_models(chain.state, ds_id)
            ],
            "served_reads": node.data_host.reads(ds_id),
        }

    rpc.method("putdataset", putdataset, mutating=True)
    rpc.method("getdataset", getdataset)
    rpc.method("getaccesslog", getaccesslog)
    rpc.method("getaudit", getaudit)
