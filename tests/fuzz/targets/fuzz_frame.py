"""Every P2P frame a peer can send, through the one frame decoder (node/net/wire.py).

A frame either decodes to a message whose encoding is exactly the frame (the
encoding is canonical: one message, one frame), or is refused with
``ProtocolViolation``. Anything else that escapes is a bug.
"""

from __future__ import annotations

from consensus.transactions import Transaction
from node.net.errors import ProtocolViolation
from node.net.wire import MAX_FRAME, TxMsg, decode_message, encode_message
from tests.fuzz.targets import check_as_careful


def test_one_input(data: bytes) -> None:
    try:
        msg = decode_message(data, MAX_FRAME)
    except ProtocolViolation:
        return
    if encode_message(msg) != data:
        raise AssertionError(f"{type(msg).__name__} accepted in a non-canonical frame")
    # What the whole-buffer decoder accepts, the field-by-field one accepts as the same
    # record (DecodeError escapes otherwise): a check the fast decoder and the fast
    # encoder share would let a value past its limit through the test above.
    if type(msg) is TxMsg and data[2] == 0x91:
        check_as_careful(Transaction, data[3:], msg.tx)
    else:
        check_as_careful(type(msg), data[2:], msg)


def seeds() -> list[bytes]:
    from tests.support.corpus import messages

    return [encode_message(m) for m in messages()]


def hostile_inputs() -> list[bytes]:
    """Besides the mutations of every seed: frames that break the framing itself."""
    from tests.support.corpus import transactions

    tx = transactions()[0].encoded
    return [
        b"",
        b"\x92",
        b"\x92\x08",
        b"\x93\x08\x91" + tx,  # three elements
        b"\x92\xcc\x08\x91" + tx,  # the type in a longer integer form
        b"\x92\x00\x90",  # type 0
        b"\x92\x7f\x90",  # an unknown type
        b"\x92\x08\x91" + tx + b"\x00",  # trailing byte
        b"\x92\x08\x92" + tx + tx,  # a TX record of two fields
        b"\x92\x0e\xc0",  # GETADDR with nil for its record
        b"\x92\x0e" + b"\x91" * 5000 + b"\x90",  # deep nesting
        b"\x92\x05\x91\xdd\xff\xff\xff\xff",  # an INV claiming 2^32 - 1 items
        bytes(MAX_FRAME + 1),  # oversize
    ]
