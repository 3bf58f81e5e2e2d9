"""Block headers (consensus/blocks.py), as HEADERS and CMPCTBLOCK carry them.

Decoding raises only ``DecodeError``; what decodes re-encodes to the same bytes
and has a hash and a header seed.
"""

from __future__ import annotations

from consensus.blocks import BlockHeader, decode_header, encode_record
from consensus.errors import DecodeError
from tests.fuzz.targets import check_as_careful


def test_one_input(data: bytes) -> None:
    try:
        header = decode_header(data)
    except DecodeError:
        return
    if encode_record(header) != data:
        raise AssertionError("header accepted in a non-canonical encoding")
    check_as_careful(BlockHeader, data, header)
    assert len(header.hash) == 32 and len(header.header_seed) == 32


def seeds() -> list[bytes]:
    from tests.support.corpus import headers

    return [h.encoded for h in headers()]
