"""The data-sharing RPC methods: datasets, grants, access logs and published models, and
uploads to this node's data host (node/services/data_host.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from consensus.datashare import (
    access_log_record,
    dataset_record,
    grant_refusal,
    iter_access_logs,
    iter_dataset_models,
    iter_grants,
)
from consensus.keys import address_to_text
from consensus.transactions import (
    AccessGrantPayload,
    AccessLogPayload,
    AccessRevokePayload,
    DatasetRegisterPayload,
    ModelPublishPayload,
)
from node.rpc.server import INVALID_PARAMS, REJECTED, RpcError, RpcServer, parse_hash

if TYPE_CHECKING:
    from consensus.chain import Chain
    from node.services.data_host import DataHost

log = logging.getLogger("pouw.data")


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


def register_data_methods(rpc: RpcServer, chain: Chain, data_host: DataHost) -> None:
    """The data-sharing methods: on-chain records read off ``chain``, uploads kept and
    reads counted by ``data_host``."""

    def _dataset(dataset_id: str) -> tuple[bytes, dict[str, Any]]:
        ds_id = parse_hash(dataset_id, "dataset id")
        rec = dataset_record(chain.state, ds_id)
        if rec is None:
            raise RpcError(REJECTED, f"unknown dataset {dataset_id}")
        return ds_id, rec

    def _chunks(chunks_hex: list[str]) -> list[bytes]:
        try:
            return [bytes.fromhex(c) for c in chunks_hex]
        except (TypeError, ValueError) as e:
            raise RpcError(INVALID_PARAMS, f"not a list of hex chunks: {e}") from None

    # Staging touches the disk off the event loop, one call at a time.
    staging_lock = asyncio.Lock()

    async def putdataset(chunks_hex: list[str]) -> str:
        """Host a dataset's encrypted chunks, all in this call; returns their content root."""
        chunks = _chunks(chunks_hex)
        try:
            root: bytes = await asyncio.to_thread(data_host.put, chunks)
        except ValueError as e:
            raise RpcError(INVALID_PARAMS, str(e)) from None
        return root.hex()

    async def putdatasetchunks(
        content_root: str, total_chunks: int, start_index: int, chunks_hex: list[str]
    ) -> dict[str, Any]:
        """Stage chunks start_index.. of an upload of total_chunks encrypted chunks; once all
        are in and their root is content_root the dataset is hosted ({"complete": true})."""
        root = parse_hash(content_root, "content root")
        if not isinstance(total_chunks, int) or not isinstance(start_index, int):
            raise RpcError(INVALID_PARAMS, "total_chunks and start_index are integers")
        chunks = _chunks(chunks_hex)
        async with staging_lock:
            try:
                reply: dict[str, Any] = await asyncio.to_thread(
                    data_host.stage, root, total_chunks, start_index, chunks
                )
            except ValueError as e:
                raise RpcError(REJECTED, str(e)) from None
        if reply["complete"]:
            log.info("hosting dataset %s (%d chunks)", content_root[:16], total_chunks)
        return reply

    async def getdataset(dataset_id: str) -> dict[str, Any]:
        """A dataset's on-chain record and grants, and whether this node hosts it."""
        ds_id, rec = _dataset(dataset_id)
        height = chain.height
        return {
            "dataset_id": ds_id.hex(),
            "owner": address_to_text(rec["owner"]),
            "content_root": rec["content_root"].hex(),
            "size": rec["size"],
            "chunk_size": rec["chunk_size"],
            "metadata": rec["metadata"],
            "height": rec["height"],
            "hosted": data_host.hosts(rec["content_root"]),
            "grants": [_grant_json(g, v, height) for g, v in iter_grants(chain.state, ds_id)],
        }

    async def getaccesslog(dataset_id: str, request_nonce: str) -> dict[str, Any] | None:
        """A confirmed access_log, or null while it is not on the active chain."""
        rec = access_log_record(
            chain.state,
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
            "served_reads": data_host.reads(ds_id),
        }

    rpc.method("putdataset", putdataset, mutating=True)
    rpc.method("putdatasetchunks", putdatasetchunks, mutating=True)
    rpc.method("getdataset", getdataset)
    rpc.method("getaccesslog", getaccesslog)
    rpc.method("getaudit", getaudit)
