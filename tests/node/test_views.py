"""JSON views of transactions: every kind shows what a reader needs, a new kind too."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from consensus.keys import address_to_text
from consensus.transactions import FraudProofPayload
from node.views import payload_json


def _tx(payload: Any) -> Any:
    return SimpleNamespace(payload=payload)


def test_a_fraud_proof_shows_which_block_job_and_entry_it_disputes():
    p = FraudProofPayload(
        block_hash=b"\x01" * 32,
        job_id=b"\x02" * 32,
        i=3,
        j=5,
        a_row=b"\x00" * 256,
        a_branch=(b"\x03" * 32,),
        b_col=b"\x00" * 256,
        b_branch=(b"\x04" * 32,),
        c_row=b"\x00" * 2048,
        c_branch=(b"\x05" * 32,),
    )
    assert payload_json(_tx(p)) == {
        "block_hash": "01" * 32,
        "job_id": "02" * 32,
        "i": 3,
        "j": 5,
    }


@dataclass(frozen=True)
class FutureClaimPayload:
    """A kind this module has no view for yet (say the market's job_result)."""

    job_id: bytes
    miner: bytes
    height: int
    roots: tuple[bytes, ...]


def test_a_kind_without_a_view_of_its_own_shows_every_field():
    p = FutureClaimPayload(b"\x07" * 32, b"\x08" * 20, 12, (b"\x09" * 32,))
    assert payload_json(_tx(p)) == {
        "job_id": "07" * 32,
        "miner": address_to_text(b"\x08" * 20),
        "height": 12,
        "roots": ["09" * 32],
    }
