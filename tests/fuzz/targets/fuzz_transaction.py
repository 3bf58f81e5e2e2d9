"""Transactions of every kind (consensus/transactions.py), as a peer or an RPC client
sends them, and the stateless checks every received transaction goes through.

Decoding raises only ``DecodeError``; what decodes re-encodes to the same bytes;
``check_tx_stateless`` then raises only ``InvalidTransaction``.
"""

from __future__ import annotations

import contextlib

from consensus.errors import DecodeError, InvalidTransaction
from consensus.params import DEVNET
from consensus.transactions import (
    Transaction,
    check_tx_stateless,
    decode_tx,
    encode_record,
    signing_digest,
)
from tests.fuzz.targets import check_as_careful


def test_one_input(data: bytes) -> None:
    try:
        tx = decode_tx(data)
    except DecodeError:
        return
    if encode_record(tx) != data or tx.encoded != data:
        raise AssertionError("transaction accepted in a non-canonical encoding")
    check_as_careful(Transaction, data, tx)
    assert len(tx.txid) == 32 and len(signing_digest(tx)) == 32
    for chain_id in (DEVNET.chain_id, tx.chain_id):
        with contextlib.suppress(InvalidTransaction):
            check_tx_stateless(tx, chain_id)


def seeds() -> list[bytes]:
    from tests.support.corpus import blocks, transactions

    return [tx.encoded for tx in transactions()] + [tx.encoded for tx in blocks()[1].txs]
