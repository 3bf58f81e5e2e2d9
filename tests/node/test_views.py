"""JSON views of transactions: every kind shows what a reader needs, a new kind too."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from consensus.keys import address_to_text
from node.rpc.views import payload_json


def _tx(payload: Any) -> Any:
    return SimpleNamespace(payload=payload)


@dataclass(frozen=True)
class FutureClaim:
    job_id: bytes
    result_root: bytes


@dataclass(frozen=True)
class FutureClaimPayload:
    """A kind this module has no view for yet."""

    claimant: bytes
    height: int
    claims: tuple[FutureClaim, ...]


def test_a_kind_without_a_view_of_its_own_shows_every_field():
    p = FutureClaimPayload(b"\x08" * 20, 12, (FutureClaim(b"\x07" * 32, b"\x09" * 32),))
    assert payload_json(_tx(p)) == {
        "claimant": address_to_text(b"\x08" * 20),
        "height": 12,
        "claims": [{"job_id": "07" * 32, "result_root": "09" * 32}],
    }
