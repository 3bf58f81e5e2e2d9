"""Whole blocks (consensus/blocks.py), as BLOCK carries them.

Decoding raises only ``DecodeError``; what decodes re-encodes to the same bytes,
and its body root (the tx_root its transactions give) can be computed.
"""

from __future__ import annotations

from consensus.blocks import Block, decode_block, encode_block
from consensus.errors import DecodeError
from tests.fuzz.targets import check_as_careful


def test_one_input(data: bytes) -> None:
    try:
        block = decode_block(data)
    except DecodeError:
        return
    if encode_block(block) != data:
        raise AssertionError("block accepted in a non-canonical encoding")
    check_as_careful(Block, data, block)
    assert len(block.body_root) == 32 and len(block.hash) == 32


def seeds() -> list[bytes]:
    from tests.support.corpus import blocks

    return [encode_block(b) for b in blocks()]
