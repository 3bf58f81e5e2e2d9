"""A target with a planted bug, so that tests/fuzz/test_fuzz.py can show the harness
reports a crash and keeps the input that caused it."""

from __future__ import annotations

from node.net.wire import MsgType


def test_one_input(data: bytes) -> None:
    if data[:2] == bytes((0x92, MsgType.PING)):
        raise KeyError("a decoder that lets KeyError escape")


def seeds() -> list[bytes]:
    return [bytes((0x92, MsgType.PING, 0x91, 0x07))]
