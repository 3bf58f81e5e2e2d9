"""Hosting encrypted datasets behind on-chain authorization (the data RPC methods are in
node/rpc/data.py).

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

An owner uploads a dataset with ``putdatasetchunks`` in batches that each fit
the RPC's body limit: they are staged on disk under ``datasets/staging/`` and
the dataset is hosted only once every chunk is there and their Merkle root is
the one the owner announced (``putdataset`` still takes a small set in one call).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
from aiohttp import web

from consensus.datashare import (
    access_log_record,
    dataset_record,
    grant_record,
    grant_refusal,
)
from consensus.keys import address, address_to_text, verify_signature
from consensus.merkle import merkle_root
from consensus.transactions import MAX_DATASET_CHUNK_SIZE
from node.client.datashare import MAC_SIZE, MAX_DATASET_BYTES, MAX_DATASET_CHUNKS, read_digest

if TYPE_CHECKING:
    from consensus.chain import Chain
    from consensus.keys import PublicKey
    from node.metrics import Metrics

log = logging.getLogger("pouw.data")

CHALLENGE_TTL_S = 60.0
MAX_CHALLENGES = 10_000
MAX_HOSTED_CHUNKS = MAX_DATASET_CHUNKS
MAX_CHUNK_BYTES = MAX_DATASET_CHUNK_SIZE + MAC_SIZE
MAX_STAGINGS = 4
"""Uploads in progress at once: a bound on an RPC caller's mistakes, not on an attacker."""
MAX_STAGED_BYTES = 4 * MAX_DATASET_BYTES
STAGING_IDLE_S = 600.0
"""An upload untouched this long gives its place to a new one."""


class ReadRefused(Exception):
    """A read the host will not serve; the message says why."""


@dataclass
class Staging:
    """An upload in progress: which chunks of ``total`` are on disk, and their sizes."""

    total: int
    sizes: dict[int, int] = field(default_factory=dict)
    touched: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return sum(self.sizes.values())


class DataHost:
    """One node's hosted datasets and the rules for serving them."""

    def __init__(
        self, chain: Chain, chain_id: int, host_id: PublicKey, metrics: Metrics, directory: Path
    ) -> None:
        """``host_id``: the node's P2P key, which a reader's signature covers with the
        challenge (so an answer is good at this host only)."""
        self.chain = chain
        self.chain_id = chain_id
        self.host_id = host_id
        self.metrics = metrics
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "reads.jsonl"
        # An upload does not survive a restart: the owner sends it again.
        self.staging_dir = directory / "staging"
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self._stagings: dict[bytes, Staging] = {}
        # Challenges carry their expiry under a MAC of this process's secret, so issuing
        # one keeps nothing: a flood of requests for them cannot push out a reader's
        # (10,000 in 3 s did, when they were kept). Only the answered ones are.
        self._secret = os.urandom(32)
        self._spent: OrderedDict[bytes, float] = OrderedDict()
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
        if any(not c or len(c) > MAX_CHUNK_BYTES for c in chunks):
            raise ValueError("a chunk is empty or larger than 1 MiB + its MAC")
        if sum(len(c) for c in chunks) > MAX_DATASET_BYTES + MAC_SIZE * len(chunks):
            raise ValueError(f"a hosted dataset holds at most {MAX_DATASET_BYTES >> 20} MiB")
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

    def stage(
        self, content_root: bytes, total: int, start: int, chunks: list[bytes]
    ) -> dict[str, Any]:
        """Stage chunks ``start..`` of an upload of ``total`` chunks whose root should be
        ``content_root``; the last one in hosts the dataset, or discards it all (ValueError)
        if the chunks' root is another. Sending a batch again is harmless."""
        root_hex = content_root.hex()
        if self.hosts(content_root):
            return {"complete": True, "content_root": root_hex, "received": total}
        if not 1 <= total <= MAX_HOSTED_CHUNKS:
            raise ValueError(f"total_chunks {total} is not in [1, {MAX_HOSTED_CHUNKS}]")
        if not chunks or start < 0 or start + len(chunks) > total:
            raise ValueError(
                f"chunks {start}..{start + len(chunks) - 1} are not within 0..{total - 1}"
            )
        if any(not c or len(c) > MAX_CHUNK_BYTES for c in chunks):
            raise ValueError("a chunk is empty or larger than 1 MiB + its MAC")
        staging = self._stagings.get(content_root)
        if staging is None:
            staging = self._new_staging(content_root, total)
        if staging.total != total:
            raise ValueError(
                f"the upload of {root_hex[:16]} was started with {staging.total} chunks, "
                f"not {total}"
            )
        replaced = sum(staging.sizes.get(i, 0) for i in range(start, start + len(chunks)))
        added = sum(len(c) for c in chunks) - replaced
        if staging.size + added > MAX_DATASET_BYTES + MAC_SIZE * total:
            self.discard(content_root)
            raise ValueError(
                f"the upload of {root_hex[:16]} exceeds {MAX_DATASET_BYTES >> 20} MiB; "
                "it was discarded"
            )
        if self.staged_bytes() + added > MAX_STAGED_BYTES:
            raise ValueError(
                f"uploads in progress already hold {self.staged_bytes()} bytes "
                f"(at most {MAX_STAGED_BYTES}); try again when they are done"
            )
        where = self.staging_dir / root_hex
        for i, c in enumerate(chunks, start):
            (where / f"{i}.chunk").write_bytes(c)
            staging.sizes[i] = len(c)
        staging.touched = time.monotonic()
        if len(staging.sizes) < total:
            return {"complete": False, "content_root": root_hex, "received": len(staging.sizes)}
        staged = [(where / f"{i}.chunk").read_bytes() for i in range(total)]
        self.discard(content_root)
        got = merkle_root(staged)
        if got != content_root:
            raise ValueError(
                f"the uploaded chunks' content root is {got.hex()}, not {root_hex}: "
                "the upload was discarded and nothing is hosted"
            )
        self.put(staged)
        return {"complete": True, "content_root": root_hex, "received": total}

    def _new_staging(self, content_root: bytes, total: int) -> Staging:
        now = time.monotonic()
        for root, s in list(self._stagings.items()):
            if now - s.touched > STAGING_IDLE_S:
                self.discard(root)
        if len(self._stagings) >= MAX_STAGINGS:
            raise ValueError(
                f"{len(self._stagings)} uploads are already in progress (at most "
                f"{MAX_STAGINGS}); finish one or wait {STAGING_IDLE_S:.0f} s for one to lapse"
            )
        (self.staging_dir / content_root.hex()).mkdir(parents=True, exist_ok=True)
        staging = self._stagings[content_root] = Staging(total)
        return staging

    def discard(self, content_root: bytes) -> None:
        """Forget an upload in progress and delete its staged chunks."""
        self._stagings.pop(content_root, None)
        shutil.rmtree(self.staging_dir / content_root.hex(), ignore_errors=True)

    def staged_bytes(self) -> int:
        return sum(s.size for s in self._stagings.values())

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
        """32 bytes: an expiry (ms of the monotonic clock), 8 random bytes and a MAC of
        both under this host's secret (good here, until then, once)."""
        expiry = int((time.monotonic() + CHALLENGE_TTL_S) * 1000).to_bytes(8, "big")
        body = expiry + os.urandom(8)
        return body + self._challenge_mac(body)

    def _challenge_mac(self, body: bytes) -> bytes:
        return hmac.new(self._secret, body, hashlib.sha256).digest()[:16]

    def _live_challenge(self, challenge: bytes) -> float | None:
        """The expiry (s) of a challenge this host issued that has not expired, or None."""
        if len(challenge) != 32:
            return None
        body, mac = challenge[:16], challenge[16:]
        if not hmac.compare_digest(mac, self._challenge_mac(body)):
            return None
        expiry = int.from_bytes(body[:8], "big") / 1000
        return expiry if expiry >= time.monotonic() else None

    def _spend(self, challenge: bytes, expiry: float) -> None:
        """Remember an answered challenge until it expires (MAX_CHALLENGES at most)."""
        now = time.monotonic()
        spent = self._spent
        while spent and (len(spent) >= MAX_CHALLENGES or next(iter(spent.values())) < now):
            spent.popitem(last=False)
        spent[challenge] = expiry

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
        expiry = self._live_challenge(challenge)
        if expiry is None or challenge in self._spent:
            raise ReadRefused("unknown, expired or already used challenge")
        digest = read_digest(self.chain_id, self.host_id.data, challenge, dataset_id, nonce)
        if not verify_signature(public_key, digest, signature):
            raise ReadRefused("the signature does not prove the named key")
        # Spent by any signed answer, so an answer is good once, even a refused one.
        self._spend(challenge, expiry)
        reader = address(public_key)
        state = self.chain.state
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
        why = grant_refusal(grant_record(state, dataset_id, reader), self.chain.height)
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
            "tip_height": self.chain.height,
        }
        with self.log_path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        self.metrics.reads_served.inc()
        self.metrics.chunks_served.inc(count)
        log.info("served %d chunks of %s to %s", count, dataset_id.hex()[:16], entry["reader"])

    async def handle_challenge(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"challenge": self.new_challenge().hex(), "host_id": self.host_id.hex()}
        )

    async def handle_read(self, request: web.Request) -> web.Response:
        try:
            req = await request.json()
            if not isinstance(req, dict):
                raise ValueError
        except (ValueError, RecursionError):  # not UTF-8 or JSON, or nested past the stack
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
