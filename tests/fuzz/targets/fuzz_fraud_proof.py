"""Fraud proofs (consensus/market.py), the market record whose checking does the most
with what a sender chose: openings of A, B and C against a job's roots.

A FraudProofPayload that decodes (``DecodeError`` otherwise, and canonical) is
checked against a real job whose claimed result is wrong in one entry;
``check_fraud`` must accept it or raise ``InvalidTransaction``.
"""

from __future__ import annotations

import contextlib

from consensus.encoding import decode_record, encode_record
from consensus.errors import DecodeError, InvalidTransaction
from consensus.market import check_fraud
from consensus.transactions import MAX_TX_SIZE, FraudProofPayload
from tests.support.corpus import fraud_case


def test_one_input(data: bytes) -> None:
    try:
        proof = decode_record(FraudProofPayload, data, MAX_TX_SIZE)
    except DecodeError:
        return
    if encode_record(proof) != data:
        raise AssertionError("fraud proof accepted in a non-canonical encoding")
    job, _ = fraud_case()
    with contextlib.suppress(InvalidTransaction):
        check_fraud(job, proof)


def seeds() -> list[bytes]:
    return [encode_record(fraud_case()[1])]
