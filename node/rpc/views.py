"""JSON views of protocol objects for RPC and the CLI (hex for bytes)."""

from __future__ import annotations

import dataclasses
from typing import Any

from consensus.blocks import Block, BlockHeader
from consensus.keys import address_to_text
from consensus.transactions import (
    AccessGrantPayload,
    AccessLogPayload,
    AccessRevokePayload,
    DatasetRegisterPayload,
    FraudProofPayload,
    JobCancelPayload,
    JobPostPayload,
    JobResultPayload,
    ModelPublishPayload,
    ModelRecordPayload,
    Transaction,
    TransferPayload,
)


def header_json(h: BlockHeader) -> dict[str, Any]:
    return {
        "hash": h.hash.hex(),
        "height": h.height,
        "prev_hash": h.prev_hash.hex(),
        "timestamp_ms": h.timestamp_ms,
        "target": hex(h.target),
        "tx_root": h.tx_root.hex(),
        "state_root": h.state_root.hex(),
        "job": {
            "poster": address_to_text(h.job.poster),
            "m": h.job.m,
            "k": h.job.k,
            "n": h.job.n,
            "root_a": h.job.root_a.hex(),
            "root_b": h.job.root_b.hex(),
        },
        "miner": address_to_text(h.miner),
        "reward": h.reward,
        "extra_nonce": h.extra_nonce,
        "result_root": h.result_root.hex(),
        "proof_tile": [h.proof.tile_i, h.proof.tile_j],
    }


def payload_json(tx: Transaction) -> dict[str, Any]:
    p = tx.payload
    if isinstance(p, TransferPayload):
        return {"to": address_to_text(p.to), "amount": p.amount}
    if isinstance(p, JobPostPayload):
        return {
            "m": p.m,
            "k": p.k,
            "n": p.n,
            "root_a": p.root_a.hex(),
            "root_b": p.root_b.hex(),
            "fee": p.fee,
            "expiry_height": p.expiry_height,
        }
    if isinstance(p, JobCancelPayload):
        return {"job_id": p.job_id.hex()}
    if isinstance(p, JobResultPayload):
        return {
            "claims": [
                {"job_id": c.job_id.hex(), "result_root": c.result_root.hex()} for c in p.claims
            ]
        }
    if isinstance(p, FraudProofPayload):
        return {"claim_id": p.claim_id.hex(), "job_id": p.job_id.hex(), "entry": [p.i, p.j]}
    if isinstance(p, DatasetRegisterPayload):
        return {"content_root": p.content_root.hex(), "size": p.size, "metadata": p.metadata}
    if isinstance(p, AccessGrantPayload | AccessRevokePayload):
        return {"dataset_id": p.dataset_id.hex(), "grantee": address_to_text(p.grantee)}
    if isinstance(p, ModelRecordPayload):
        return {
            "model_id": p.model_id.hex(),
            "step": p.step,
            "job_ids": [j.hex() for j in p.job_ids],
            "weights_hash": p.weights_hash.hex(),
            "parent_hash": p.parent_hash.hex(),
            "dataset": p.dataset,
        }
    if isinstance(p, AccessLogPayload):
        return {"dataset_id": p.dataset_id.hex()}
    if isinstance(p, ModelPublishPayload):
        return {
            "model_id": p.model_id.hex(),
            "weights_hash": p.weights_hash.hex(),
            "dataset_id": p.dataset_id.hex(),
            "content_root": p.content_root.hex(),
            "access_log_nonce": p.access_log_nonce.hex(),
            "metadata": p.metadata,
        }
    return _fields_json(p)


def _fields_json(payload: Any) -> dict[str, Any]:
    """A payload kind without a view of its own, field by field (bytes as hex), so a
    new kind shows in the RPC and the explorer before anyone writes one."""
    if not dataclasses.is_dataclass(payload):
        return {}
    return {f.name: _plain(getattr(payload, f.name)) for f in dataclasses.fields(payload)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _fields_json(value)
    if isinstance(value, bytes):
        return address_to_text(value) if len(value) == 20 else value.hex()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def tx_json(tx: Transaction) -> dict[str, Any]:
    return {
        "txid": tx.txid.hex(),
        "kind": tx.kind.name.lower(),
        "sender": address_to_text(tx.sender_address),
        "nonce": tx.nonce,
        "fee": tx.fee,
        "payload": payload_json(tx),
    }


def block_json(block: Block, with_txs: bool = True) -> dict[str, Any]:
    out = header_json(block.header)
    out["tx_count"] = len(block.txs)
    if with_txs:
        out["txs"] = [tx_json(tx) for tx in block.txs]
    return out
