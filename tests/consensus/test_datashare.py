"""The data-sharing rules with real mined blocks: register, grant, revoke, access_log,
every refusal with its reason, and exact undo on a reorg."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.blocks import Block, tx_root
from consensus.chain import Chain
from consensus.datashare import (
    access_log_record,
    dataset_id_of,
    dataset_record,
    grant_record,
    iter_access_logs,
    iter_dataset_models,
    owned_id,
    published_model_record,
)
from consensus.errors import InvalidBlock, InvalidTransaction
from consensus.pow import null_job
from consensus.transactions import (
    AccessGrantPayload,
    AccessLogPayload,
    AccessRevokePayload,
    DatasetRegisterPayload,
    ModelPublishPayload,
    Transaction,
    TxKind,
    check_tx_stateless,
    decode_tx,
    encode_tx,
    signed_transaction,
)
from consensus.validation import apply_body
from tests.support.chainkit import ALICE, BOB, CAROL, MID, MINER, Clock, new_chain, next_block

ROOT = bytes(range(32))
REGISTER = DatasetRegisterPayload(ROOT, 1000, 256, '{"name": "cancer"}')
DS = dataset_id_of(ALICE.address, ROOT)
SEALED = bytes(80)


def tx(key, nonce, payload, fee=10) -> Transaction:
    return signed_transaction(key, chain_id=MID.chain_id, nonce=nonce, fee=fee, payload=payload)


def add(chain: Chain, clock: Clock, txs=()) -> Block:
    b = next_block(chain, clock, tuple(txs))
    chain.add_block(b)
    return b


def refused(chain: Chain, t: Transaction, reason: str) -> None:
    """A block carrying ``t`` is invalid for ``reason`` and leaves the state unchanged."""
    snap = (chain.state.snapshot(), chain.state.root)
    header, _ = chain.build_template((), MINER.address, null_job(chain.tip.hash, MID).spec)
    block = Block(dataclasses.replace(header, tx_root=tx_root([t])), (t,))
    with pytest.raises(InvalidBlock, match=reason):
        apply_body(chain.state, block, MID, None, chain.tip.header)
    assert (chain.state.snapshot(), chain.state.root) == snap


def grant(expiry=50, grantee=BOB, nonce=1) -> Transaction:
    return tx(ALICE, nonce, AccessGrantPayload(DS, grantee.address, SEALED, expiry))


READ = owned_id(BOB.address, b"\x01" * 32)
"""Bob's request nonce of his read of DS (``log``'s default)."""


def log(key, nonce, request=b"\x01" * 32, ds=DS) -> Transaction:
    """``key``'s access_log of ``ds``; its request nonce begins with ``key``'s address."""
    return tx(key, nonce, AccessLogPayload(ds, owned_id(key.address, request)))


@pytest.fixture
def granted() -> tuple[Chain, Clock]:
    """Alice registered DS and granted Bob until height 50."""
    chain, clock = new_chain()
    add(chain, clock, [tx(ALICE, 0, REGISTER)])
    add(chain, clock, [grant()])
    return chain, clock


def test_register_grant_and_log_are_recorded(granted):
    chain, clock = granted
    ds = dataset_record(chain.state, DS)
    assert ds is not None and ds["owner"] == ALICE.address and ds["content_root"] == ROOT
    assert ds["size"] == 1000 and ds["metadata"] == REGISTER.metadata and ds["height"] == 1
    g = grant_record(chain.state, DS, BOB.address)
    assert g == {"sealed_key": SEALED, "expiry": 50, "revoked_height": 0, "granted_height": 2}
    bob_before = chain.state.balance(BOB.address)
    add(chain, clock, [log(BOB, 0)])
    assert access_log_record(chain.state, DS, READ) == {
        "grantee": BOB.address,
        "height": 3,
    }
    assert chain.state.balance(BOB.address) == bob_before - 10
    assert [n for n, _ in iter_access_logs(chain.state, DS)] == [READ]


def test_register_refuses_a_duplicate(granted):
    chain, _ = granted
    refused(chain, tx(ALICE, 2, REGISTER), "already registered")


def test_grant_refusals(granted):
    chain, _ = granted
    refused(chain, tx(BOB, 0, AccessGrantPayload(DS, CAROL.address, SEALED, 50)), "only the")
    refused(chain, grant(expiry=chain.height + 1, nonce=2), "is not after")
    refused(chain, grant(grantee=ALICE, nonce=2), "owner needs no grant")
    unknown = AccessGrantPayload(bytes(32), BOB.address, SEALED, 50)
    refused(chain, tx(ALICE, 2, unknown), "no such dataset")


def test_access_log_refusals(granted):
    chain, clock = granted
    refused(chain, log(CAROL, 0), "may not read: no grant")
    refused(chain, log(BOB, 0, ds=bytes(32)), "no such dataset")
    # A request nonce begins with its grantee's address: another grantee cannot take
    # Bob's from his access_log waiting in a mempool (and so refuse his read).
    others = AccessLogPayload(DS, owned_id(CAROL.address, b"\x01" * 32))
    refused(chain, tx(BOB, 0, others), "request_nonce: must begin with its sender's address")
    add(chain, clock, [log(BOB, 0)])
    refused(chain, log(BOB, 1), r"already used for this dataset \(replay\)")


def test_expired_grant_refuses_reads_and_revocation(granted):
    chain, clock = granted
    add(chain, clock, [grant(expiry=chain.height + 2, nonce=2)])  # replaces the first grant
    assert grant_record(chain.state, DS, BOB.address)["expiry"] == chain.height + 1
    add(chain, clock)
    refused(chain, log(BOB, 0), "may not read: the grant expired at height 4")
    refused(chain, tx(ALICE, 3, AccessRevokePayload(DS, BOB.address)), "nothing to revoke")


def test_revoke_stops_reads_and_a_new_grant_restores_them(granted):
    chain, clock = granted
    refused(chain, tx(BOB, 0, AccessRevokePayload(DS, BOB.address)), "only the")
    refused(chain, tx(ALICE, 2, AccessRevokePayload(DS, CAROL.address)), "nothing to revoke")
    add(chain, clock, [tx(ALICE, 2, AccessRevokePayload(DS, BOB.address))])
    assert grant_record(chain.state, DS, BOB.address)["revoked_height"] == 3
    refused(chain, log(BOB, 0), "may not read: the grant was revoked at height 3")
    refused(chain, tx(ALICE, 3, AccessRevokePayload(DS, BOB.address)), "revoked at height 3")
    add(chain, clock, [grant(nonce=3)])
    add(chain, clock, [log(BOB, 0)])
    assert access_log_record(chain.state, DS, READ)["height"] == 5


def test_datashare_blocks_undo_exactly(granted):
    chain, clock = granted
    snap = (chain.state.snapshot(), chain.state.root)
    add(chain, clock, [log(BOB, 0)])
    add(chain, clock, [tx(ALICE, 2, AccessRevokePayload(DS, BOB.address))])
    add(chain, clock, [grant(nonce=3), log(BOB, 1, request=b"\x02" * 32)])
    chain._disconnect_to(chain.height - 3)
    assert (chain.state.snapshot(), chain.state.root) == snap


def test_a_revocation_reorged_away_and_included_again_is_applied_again(granted):
    chain, clock = granted
    fork_height = chain.height
    revoke = tx(ALICE, 2, AccessRevokePayload(DS, BOB.address))
    add(chain, clock, [revoke])
    assert grant_record(chain.state, DS, BOB.address)["revoked_height"] == fork_height + 1
    # A competing branch without the revocation, one block longer, takes over.
    side, side_clock = new_chain()
    for h in chain.active[1 : fork_height + 1]:
        side.add_block(chain.blocks[h])
    side_clock.now = clock.now - MID.block_time_ms + 1
    branch = [add(side, side_clock) for _ in range(2)]
    for b in branch:
        chain.add_block(b)
    assert chain.tip.hash == branch[-1].hash
    assert grant_record(chain.state, DS, BOB.address)["revoked_height"] == 0
    # The revocation returns in a later block, and Bob is cut off again.
    add(chain, clock, [revoke])
    assert grant_record(chain.state, DS, BOB.address)["revoked_height"] == chain.height
    refused(chain, log(BOB, 0), "the grant was revoked")


# ------------------------------------------------------------ model_publish

MODEL = owned_id(BOB.address, b"\x4d" * 32)  # BOB publishes it
WEIGHTS = b"\x57" * 32


def publish(key, nonce, model=MODEL, ds=DS, root=ROOT, read=READ) -> Transaction:
    payload = ModelPublishPayload(model, WEIGHTS, ds, root, read, '{"epochs": 3}')
    return tx(key, nonce, payload)


@pytest.fixture
def read(granted) -> tuple[Chain, Clock]:
    """Bob's read of DS (request nonce READ) is confirmed."""
    chain, clock = granted
    add(chain, clock, [log(BOB, 0)])
    return chain, clock


def test_model_publish_is_recorded_and_listed_by_dataset(read):
    chain, clock = read
    bob_before = chain.state.balance(BOB.address)
    add(chain, clock, [publish(BOB, 1)])
    assert published_model_record(chain.state, MODEL) == {
        "publisher": BOB.address,
        "weights_hash": WEIGHTS,
        "dataset_id": DS,
        "content_root": ROOT,
        "access_log_nonce": READ,
        "metadata": '{"epochs": 3}',
        "height": 4,
    }
    assert chain.state.balance(BOB.address) == bob_before - 10
    assert [m for m, _ in iter_dataset_models(chain.state, DS)] == [MODEL]
    assert list(iter_dataset_models(chain.state, bytes(32))) == []


def test_model_publish_refusals(read):
    chain, clock = read
    refused(chain, publish(BOB, 1, ds=b"\x09" * 32), "no such dataset")
    refused(chain, publish(BOB, 1, root=b"\x09" * 32), "not the dataset's content root")
    refused(chain, publish(BOB, 1, read=b"\x09" * 32), "no such access_log")
    # Carol cannot claim Bob's logged read as the provenance of her model.
    refused(chain, publish(CAROL, 0), "sent by someone else")
    # Nor publish under an id that is not his own (one seen in a mempool, say).
    theirs = owned_id(CAROL.address, MODEL)
    refused(chain, publish(BOB, 1, model=theirs), "must begin with its sender's address")
    add(chain, clock, [publish(BOB, 1)])
    refused(chain, publish(BOB, 2), "already published")


def test_model_publish_stateless_checks():
    for field in ("model_id", "weights_hash", "dataset_id", "content_root", "access_log_nonce"):
        p = dataclasses.replace(publish(BOB, 0).payload, **{field: bytes(32)})
        with pytest.raises(InvalidTransaction, match=f"payload.{field}: must not be all zeros"):
            check_tx_stateless(tx(BOB, 0, p), MID.chain_id)
    check_tx_stateless(publish(BOB, 0), MID.chain_id)


def test_model_publish_round_trips_on_the_wire():
    t = publish(BOB, 3)
    assert decode_tx(encode_tx(t)) == t
    assert t.kind == TxKind.MODEL_PUBLISH == 9


def test_model_publish_undoes_exactly(read):
    chain, clock = read
    snap = (chain.state.snapshot(), chain.state.root)
    add(chain, clock, [publish(BOB, 1)])
    add(chain, clock, [publish(BOB, 2, model=owned_id(BOB.address, b"\x4e" * 32))])
    assert len(list(iter_dataset_models(chain.state, DS))) == 2
    chain._disconnect_to(chain.height - 2)
    assert (chain.state.snapshot(), chain.state.root) == snap
    assert list(iter_dataset_models(chain.state, DS)) == []
