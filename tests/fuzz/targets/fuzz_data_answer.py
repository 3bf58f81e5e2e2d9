"""What a data host answers a grantee's client (node/client/datashare.py ``read_dataset``).

The first byte picks the answer (even: the JSON challenge, or a refusal; odd: the
msgpack list of encrypted chunks). A hostile host may answer anything: the client
raises only ``DataShareError``.
"""

from __future__ import annotations

import json

import msgpack

from node.client.datashare import DataShareError, parse_challenge, parse_chunks, parse_host_reply

SELECTOR_BYTES = 1


def test_one_input(data: bytes) -> None:
    if not data:
        return
    body = data[1:]
    try:
        if data[0] % 2 == 0:
            challenge, host_id = parse_challenge(parse_host_reply(body))
            assert len(challenge) == len(host_id) == 32
        else:
            chunks = parse_chunks(body)
            assert all(type(c) is bytes for c in chunks)
    except DataShareError:
        pass


def seeds() -> list[bytes]:
    challenge = {"challenge": bytes(range(32)).hex(), "host_id": bytes(32).hex()}
    return [
        b"\x00" + json.dumps(challenge).encode(),
        b"\x00" + json.dumps({"error": "no such dataset on the chain"}).encode(),
        b"\x01" + msgpack.packb([b"\x00" * 40, b"chunk two"], use_bin_type=True),
    ]


def hostile_inputs() -> list[bytes]:
    return [
        b"\x00" + b"[" * 100_000,  # nested past the recursion limit
        b"\x00[1, 2]",
        b'\x00{"challenge": 5, "host_id": null}',
        b'\x00{"challenge": "zz", "host_id": "00"}',
        b"\x00\xff\xfe",
        b"\x01" + b"\x91" * 100_000 + b"\xc0",  # nested msgpack
        b"\x01\x92\xc4\x01x\xd6\xff\x00\x00\x00\x00",  # a timestamp among the chunks
        b"\x01\x81\xc4\x01k\x01",  # a map
    ]
