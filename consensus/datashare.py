"""Secure data sharing: datasets, access grants, revocations, access logs (PROTOCOL §10).

The chain holds no data, only who may read what and who did:

* ``dataset_register`` records an owner's encrypted dataset by the Merkle root
  of its *encrypted* chunks, so any host can check a chunk without the key.
* ``access_grant`` gives one grantee the data key, sealed to the grantee's
  X25519 key, until an expiry height. A later grant replaces the earlier one.
* ``access_revoke`` ends a live grant: it stops future reads (nobody can
  unsee a read that already happened).
* ``access_log`` is the grantee's signed request to read, and hosts serve
  data only against a confirmed one: so every read is on the chain before any
  data flows. Its ``request_nonce`` is unique per dataset, so one logged read
  cannot be replayed as another, and begins with the grantee's address, so no other
  grantee can take it first (:func:`check_owned`).
* ``model_publish`` publishes a model trained on a logged read, with its
  provenance: weights hash, dataset, content root and the publisher's own
  access_log. So a dataset's audit lists its reads and the models made from them.

Every write goes through ``State.set``, so a reorg undoes each rule exactly,
and a revocation reorged away and included again is simply applied again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from consensus.errors import InvalidTransaction
from consensus.hashing import Hash32, tagged_hash
from consensus.keys import ADDRESS_SIZE, address_to_text
from consensus.state import (
    ACCESS_LOGS,
    DATASET_MODELS,
    DATASETS,
    GRANTS,
    MODELS_PUBLISHED,
    State,
    check_spendable,
)
from consensus.transactions import (
    AccessGrantPayload,
    AccessLogPayload,
    AccessRevokePayload,
    DatasetRegisterPayload,
    ModelPublishPayload,
    Transaction,
)

TAG_DATASET_ID = "dataset-id"

DATASET_FIELDS = ("owner", "content_root", "size", "chunk_size", "metadata", "height")
"""DATASETS: dataset id → these fields, in order."""
GRANT_FIELDS = ("sealed_key", "expiry", "revoked_height", "granted_height")
"""GRANTS: (dataset id, grantee) → these fields; revoked_height is 0 while not revoked."""
ACCESS_LOG_FIELDS = ("grantee", "height")
"""ACCESS_LOGS: (dataset id, request nonce) → these fields."""
MODEL_FIELDS = (
    "publisher",
    "weights_hash",
    "dataset_id",
    "content_root",
    "access_log_nonce",
    "metadata",
    "height",
)
"""MODELS_PUBLISHED: model id → these fields, in order."""


def dataset_id_of(owner: bytes, content_root: bytes) -> Hash32:
    """A dataset's id: its owner's address and the root of its encrypted chunks.

    Both are bound so that nobody can register someone else's ciphertext
    under the same id; re-registering the same content by the same owner is
    a duplicate and is refused.
    """
    return tagged_hash(TAG_DATASET_ID, owner, content_root)


def owned_id(owner: bytes, digest: bytes) -> bytes:
    """A 32-byte id of ``owner``'s: its 20-byte address, then the first 12 bytes of
    ``digest`` (what the owner derives it from: a training run's settings and randomness,
    a published model's weights and read, a read's randomness)."""
    return owner + digest[: 32 - ADDRESS_SIZE]


def check_owned(field: str, value: bytes, sender: bytes) -> None:
    """Ids that the first sender of a transaction naming them comes to own (a model's
    lineage and publication, a read's request nonce) begin with that sender's address,
    so that nobody can take another's from a transaction waiting in a mempool."""
    if value[:ADDRESS_SIZE] != sender:
        raise InvalidTransaction(
            f"payload.{field}: must begin with its sender's address "
            f"({address_to_text(sender)}, 20 bytes), then 12 of the sender's choice"
        )


def dataset_record(state: State, dataset_id: bytes) -> dict[str, Any] | None:
    """A readable view of a dataset's state entry, or None."""
    rec = state.get(DATASETS, dataset_id)
    return None if rec is None else dict(zip(DATASET_FIELDS, rec, strict=True))


def grant_record(state: State, dataset_id: bytes, grantee: bytes) -> dict[str, Any] | None:
    """A readable view of the grant of ``dataset_id`` to ``grantee``, or None."""
    rec = state.get(GRANTS, (dataset_id, grantee))
    return None if rec is None else dict(zip(GRANT_FIELDS, rec, strict=True))


def access_log_record(state: State, dataset_id: bytes, nonce: bytes) -> dict[str, Any] | None:
    """A readable view of a confirmed access_log, or None."""
    rec = state.get(ACCESS_LOGS, (dataset_id, nonce))
    return None if rec is None else dict(zip(ACCESS_LOG_FIELDS, rec, strict=True))


def grant_refusal(grant: dict[str, Any] | None, height: int) -> str | None:
    """Why a grant does not allow a read at ``height`` (None if it does)."""
    if grant is None:
        return "no grant"
    if grant["revoked_height"]:
        return f"the grant was revoked at height {grant['revoked_height']}"
    if height >= grant["expiry"]:
        return f"the grant expired at height {grant['expiry']}"
    return None


def iter_grants(state: State, dataset_id: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(grantee, grant) of every grant of a dataset, ordered by grantee."""
    for (ds, grantee), rec in sorted(state.tables[GRANTS].items()):
        if ds == dataset_id:
            yield grantee, dict(zip(GRANT_FIELDS, rec, strict=True))


def iter_access_logs(state: State, dataset_id: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(request nonce, log) of every confirmed read request of a dataset, by height."""
    rows = [
        (nonce, dict(zip(ACCESS_LOG_FIELDS, rec, strict=True)))
        for (ds, nonce), rec in state.tables[ACCESS_LOGS].items()
        if ds == dataset_id
    ]
    yield from sorted(rows, key=lambda r: (r[1]["height"], r[0]))


def published_model_record(state: State, model_id: bytes) -> dict[str, Any] | None:
    """A readable view of a published model, or None."""
    rec = state.get(MODELS_PUBLISHED, model_id)
    return None if rec is None else dict(zip(MODEL_FIELDS, rec, strict=True))


def iter_dataset_models(state: State, dataset_id: bytes) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(model id, published model) of every model derived from a dataset, by height."""
    rows = []
    for (ds, model_id), height in state.tables[DATASET_MODELS].items():
        if ds == dataset_id:
            rec = published_model_record(state, model_id)
            assert rec is not None, "dataset_models and models_published disagree"
            rows.append((height, model_id, rec))
    for _, model_id, rec in sorted(rows, key=lambda r: (r[0], r[1])):
        yield model_id, rec


def _pay_fee(state: State, tx: Transaction) -> None:
    sender = tx.sender_address
    check_spendable(state, sender, tx.fee)
    balance, nonce = state.account(sender)
    state.set_account(sender, balance - tx.fee, nonce + 1)


def _owned_dataset(state: State, tx: Transaction, dataset_id: bytes) -> dict[str, Any]:
    dataset = dataset_record(state, dataset_id)
    if dataset is None:
        raise InvalidTransaction(f"payload.dataset_id: no such dataset {dataset_id.hex()[:16]}")
    if dataset["owner"] != tx.sender_address:
        raise InvalidTransaction("payload.dataset_id: only the dataset's owner may do this")
    return dataset


def apply_dataset_register(
    state: State, tx: Transaction, p: DatasetRegisterPayload, height: int
) -> None:
    """Record a new dataset owned by the sender."""
    dataset_id = dataset_id_of(tx.sender_address, p.content_root)
    if state.get(DATASETS, dataset_id) is not None:
        raise InvalidTransaction("payload.content_root: this dataset is already registered")
    _pay_fee(state, tx)
    state.set(
        DATASETS,
        dataset_id,
        (tx.sender_address, p.content_root, p.size, p.chunk_size, p.metadata, height),
    )


def apply_access_grant(state: State, tx: Transaction, p: AccessGrantPayload, height: int) -> None:
    """Give (or give again, replacing the earlier grant) the grantee the sealed key."""
    _owned_dataset(state, tx, p.dataset_id)
    if p.expiry_height <= height:
        # A grant that is dead on arrival would only bloat the state.
        raise InvalidTransaction(f"payload.expiry_height: {p.expiry_height} is not after {height}")
    if p.grantee == tx.sender_address:
        raise InvalidTransaction("payload.grantee: the owner needs no grant")
    _pay_fee(state, tx)
    state.set(GRANTS, (p.dataset_id, p.grantee), (p.sealed_key, p.expiry_height, 0, height))


def apply_access_revoke(state: State, tx: Transaction, p: AccessRevokePayload, height: int) -> None:
    """End a live grant from this block on."""
    _owned_dataset(state, tx, p.dataset_id)
    grant = grant_record(state, p.dataset_id, p.grantee)
    why = grant_refusal(grant, height)
    if why is not None:
        raise InvalidTransaction(f"payload.grantee: nothing to revoke: {why}")
    assert grant is not None
    _pay_fee(state, tx)
    state.set(
        GRANTS,
        (p.dataset_id, p.grantee),
        (grant["sealed_key"], grant["expiry"], height, grant["granted_height"]),
    )


def apply_access_log(state: State, tx: Transaction, p: AccessLogPayload, height: int) -> None:
    """Record the grantee's request to read, if its grant is live in this block."""
    if state.get(DATASETS, p.dataset_id) is None:
        raise InvalidTransaction(f"payload.dataset_id: no such dataset {p.dataset_id.hex()[:16]}")
    why = grant_refusal(grant_record(state, p.dataset_id, tx.sender_address), height)
    if why is not None:
        raise InvalidTransaction(f"payload.dataset_id: the sender may not read: {why}")
    check_owned("request_nonce", p.request_nonce, tx.sender_address)
    if state.get(ACCESS_LOGS, (p.dataset_id, p.request_nonce)) is not None:
        raise InvalidTransaction("payload.request_nonce: already used for this dataset (replay)")
    _pay_fee(state, tx)
    state.set(ACCESS_LOGS, (p.dataset_id, p.request_nonce), (tx.sender_address, height))


def apply_model_publish(state: State, tx: Transaction, p: ModelPublishPayload, height: int) -> None:
    """Record a model trained on the sender's own logged read of a dataset."""
    dataset = dataset_record(state, p.dataset_id)
    if dataset is None:
        raise InvalidTransaction(f"payload.dataset_id: no such dataset {p.dataset_id.hex()[:16]}")
    if dataset["content_root"] != p.content_root:
        raise InvalidTransaction("payload.content_root: not the dataset's content root")
    read = access_log_record(state, p.dataset_id, p.access_log_nonce)
    if read is None:
        raise InvalidTransaction("payload.access_log_nonce: no such access_log for this dataset")
    if read["grantee"] != tx.sender_address:
        raise InvalidTransaction(
            "payload.access_log_nonce: that access_log was sent by someone else"
        )
    if state.get(MODELS_PUBLISHED, p.model_id) is not None:
        raise InvalidTransaction("payload.model_id: this model is already published")
    check_owned("model_id", p.model_id, tx.sender_address)
    _pay_fee(state, tx)
    state.set(
        MODELS_PUBLISHED,
        p.model_id,
        (
            tx.sender_address,
            p.weights_hash,
            p.dataset_id,
            p.content_root,
            p.access_log_nonce,
            p.metadata,
            height,
        ),
    )
    state.set(DATASET_MODELS, (p.dataset_id, p.model_id), height)
