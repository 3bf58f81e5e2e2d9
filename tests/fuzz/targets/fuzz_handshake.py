"""The handshake records (node/net/wire.py Hello and Auth) and the checks made on them.

The first byte picks the record (even: Hello, odd: Auth); the rest is its encoding.
A Hello that decodes is then taken through what the handshake does with a peer's
Hello and Auth: the signature check on its claimed node_id must answer True or
False for any bytes, never raise.
"""

from __future__ import annotations

from consensus.encoding import decode_record, encode_record
from consensus.errors import DecodeError
from consensus.keys import verify_signature
from node.net.wire import MAX_FRAME, Auth, Hello, auth_digest

_OUR_ID = bytes(range(32))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    cls = Hello if data[0] % 2 == 0 else Auth
    body = data[1:]
    try:
        record = decode_record(cls, body, MAX_FRAME)
    except DecodeError:
        return
    if encode_record(record) != body:
        raise AssertionError(f"{cls.__name__} accepted in a non-canonical encoding")
    if isinstance(record, Hello):
        digest = auth_digest(record.challenge, record.node_id, _OUR_ID)
        # A peer's Auth answer is 64 bytes of its choosing: here, its own Hello's.
        answer = record.challenge + record.genesis_hash
        if verify_signature(record.node_id, digest, answer) not in (True, False):
            raise AssertionError("verify_signature answered neither True nor False")


def seeds() -> list[bytes]:
    from tests.support.corpus import messages

    return [
        (b"\x00" if type(m) is Hello else b"\x01") + encode_record(m)
        for m in messages()
        if type(m) in (Hello, Auth)
    ]
