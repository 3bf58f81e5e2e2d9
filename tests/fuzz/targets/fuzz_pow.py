"""The PoUW proof (consensus/pow.py): a header a peer sends, checked as a node checks it.

Every header that decodes goes through ``verify_pow`` on the devnet's mining
parameters; it must return a ticket or raise ``InvalidBlock``, whatever the job
shape, tile indexes, operand bytes or branches claim.
"""

from __future__ import annotations

from consensus.blocks import decode_header
from consensus.errors import DecodeError, InvalidBlock
from consensus.pow import verify_pow
from tests.support.chainkit import MID


def test_one_input(data: bytes) -> None:
    try:
        header = decode_header(data)
    except DecodeError:
        return
    try:
        ticket = verify_pow(header, MID)
    except InvalidBlock:
        return
    assert type(ticket) is int and ticket >= 0


def seeds() -> list[bytes]:
    from tests.support.corpus import headers

    return [h.encoded for h in headers()]
