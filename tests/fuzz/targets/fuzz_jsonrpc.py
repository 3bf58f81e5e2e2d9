"""JSON-RPC request bodies, as a caller without the cookie token sends them to a real
node (node/rpc/server.py ``RpcServer.answer``: parsing, validation, batches, dispatch to
the node's registered methods, encoding the reply).

The node starts once per process, on a loop of its own, with its kernels already
loaded: the node's start loads them on a worker thread, which must not still be in
LLVM when libFuzzer ends the process (LLVM's static objects are destroyed under it).

A bug is: an exception out of ``answer``; a reply that is not JSON-RPC 2.0 (not strict
JSON, not one object or a non-empty array of response objects, ids not those of the
requests, in order); an internal error (-32603: some input reached a method's code
unchecked); an error message naming Python internals; a reply to nothing but
notifications, or silence to anything else.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kernels.attempt import warm_up
from node.app import Node
from node.config import NodeConfig
from node.rpc.server import MAX_BATCH
from tests.support.chainkit import MID

INTERNAL_ERROR = -32603
LEAKS = ("<locals>", "Traceback", "object at 0x", "positional argument", "NoneType")

_running: tuple[asyncio.AbstractEventLoop, Node, Path] | None = None


def _node() -> tuple[asyncio.AbstractEventLoop, Node]:
    global _running
    if _running is None:
        warm_up()
        loop = asyncio.new_event_loop()
        datadir = Path(tempfile.mkdtemp(prefix="fuzz-jsonrpc-"))
        node = Node(NodeConfig(params=MID, datadir=datadir / "node"))
        loop.run_until_complete(node.start())
        _running = (loop, node, datadir)
        atexit.register(close)
    return _running[0], _running[1]


def close() -> None:
    """Stop the node this target started, if any (also run at exit)."""
    global _running
    if _running is None:
        return
    loop, node, datadir = _running
    _running = None
    loop.run_until_complete(node.stop())
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()
    shutil.rmtree(datadir, ignore_errors=True)


def test_one_input(data: bytes) -> None:
    loop, node = _node()
    reply = loop.run_until_complete(node.rpc.answer(data, authorized=False))
    check(data, reply)


def check(body: bytes, reply: bytes | None) -> None:
    """Raise AssertionError if ``reply`` is not what JSON-RPC 2.0 asks for ``body``."""
    try:
        request: Any = _strict_json(body)
        parsed = True
    except (ValueError, RecursionError):
        parsed = False
    if reply is None:
        assert parsed and _only_notifications(request), f"no reply to {body[:200]!r}"
        return
    assert isinstance(reply, bytes), type(reply)
    assert not (parsed and _only_notifications(request)), f"a notification got {reply[:200]!r}"
    answer = _strict_json(reply)  # raises on a reply that is not strict JSON
    if not parsed or not isinstance(request, list) or not request or len(request) > MAX_BATCH:
        assert isinstance(answer, dict), f"one reply object expected, got {reply[:200]!r}"
        _check_response(answer)
        if not parsed:
            assert answer["error"]["code"] == -32700 and answer["id"] is None, answer
        elif isinstance(request, list) or _problem(request) is not None:
            assert answer["error"]["code"] == -32600, answer
        else:
            assert _same_id(answer["id"], request["id"]), (answer["id"], request["id"])
        return
    assert isinstance(answer, list) and answer, (
        f"a batch reply is a non-empty array: {reply[:200]!r}"
    )
    for response in answer:
        _check_response(response)
    expected = [_expected_id(item) for item in request if not _is_notification(item)]
    got = [r["id"] for r in answer]
    assert len(got) == len(expected) and all(map(_same_id, got, expected)), (got, expected)


def _check_response(response: Any) -> None:
    assert isinstance(response, dict) and response.get("jsonrpc") == "2.0", response
    assert set(response) in ({"jsonrpc", "id", "result"}, {"jsonrpc", "id", "error"}), response
    if "error" in response:
        error = response["error"]
        assert isinstance(error, dict) and type(error.get("code")) is int, error
        assert isinstance(error.get("message"), str), error
        assert error["code"] != INTERNAL_ERROR, f"internal error: {error}"
        assert not any(leak in error["message"] for leak in LEAKS), error


def _strict_json(raw: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(raw, parse_constant=refuse)


def _valid_id(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str) or type(value) is int


def _problem(item: Any) -> str | None:
    """The specification's Request object, checked independently of node/rpc/server.py."""
    if not isinstance(item, dict) or item.get("jsonrpc") != "2.0":
        return "not a request"
    if not isinstance(item.get("method"), str):
        return "no method"
    if "params" in item and not isinstance(item["params"], list | dict):
        return "bad params"
    if "id" in item and not _valid_id(item["id"]):
        return "bad id"
    return None


def _is_notification(item: Any) -> bool:
    return _problem(item) is None and "id" not in item


def _only_notifications(request: Any) -> bool:
    if isinstance(request, list):
        return 0 < len(request) <= MAX_BATCH and all(map(_is_notification, request))
    return _is_notification(request)


def _expected_id(item: Any) -> Any:
    if isinstance(item, dict) and _valid_id(item.get("id")):
        return item.get("id")
    return None


def _same_id(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def seeds() -> list[bytes]:
    """The JSON-RPC 2.0 specification's examples (section 7), on this node's methods."""
    calls: list[Any] = [
        {"jsonrpc": "2.0", "method": "getblockbyheight", "params": [0], "id": 1},
        {"jsonrpc": "2.0", "method": "getblockbyheight", "params": {"height": 0}, "id": 3},
        {"jsonrpc": "2.0", "method": "getheaders", "params": [0, 5]},
        {"jsonrpc": "2.0", "method": "foobar", "id": "1"},
        {"jsonrpc": "2.0", "method": 1, "params": "bar"},
        {"jsonrpc": "2.0", "method": "getblock", "params": [], "id": 7},
        {"jsonrpc": "2.0", "method": "getaccount", "params": ["pw" + "00" * 20], "id": 8},
        {"jsonrpc": "2.0", "method": "stop", "id": 9},
        [],
        [1],
        [1, 2, 3],
        [
            {"jsonrpc": "2.0", "method": "getinfo", "id": "1"},
            {"jsonrpc": "2.0", "method": "getheaders", "params": [7]},
            {"foo": "boo"},
            {"jsonrpc": "2.0", "method": "foo.get", "params": {"name": "myself"}, "id": "5"},
            {"jsonrpc": "2.0", "method": "getmininginfo", "id": "9"},
        ],
        [{"jsonrpc": "2.0", "method": "getinfo"}, {"jsonrpc": "2.0", "method": "getbans"}],
    ]
    return [json.dumps(c).encode() for c in calls] + [
        b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
        b'[{"jsonrpc": "2.0", "method": "getinfo", "id": "1"},{"jsonrpc": "2.0", "method"]',
    ]


def hostile_inputs() -> list[bytes]:
    """What broke the RPC before (issue 13): parse failures that escaped as HTTP 500,
    a batch that amplified 4 bytes into 120, ids and params of every wrong type."""
    return [
        b"9" * 5000,
        b"[" * 100_000 + b"]" * 100_000,
        b"[" * 100_000,
        b"[" + b"0," * 100_000 + b"0]",
        b'{"jsonrpc": "2.0", "method": "getinfo", "id": NaN}',
        b'{"jsonrpc": "2.0", "method": "getinfo", "id": 1e999}',
        b'{"jsonrpc": "2.0", "method": "getinfo", "id": {"a": 1}}',
        b'{"jsonrpc": "2.0", "method": "getheaders", "params": ["a", "b"], "id": 1}',
        b'{"jsonrpc": "2.0", "method": "getresult", "params": ["'
        + b"00" * 32
        + b'", 1e308], "id": 1}',
        b'{"jsonrpc": "2.0", "method": "getblocktimes", "params": {"count": -1}, "id": 1}',
        b'\xff{"jsonrpc": "2.0"}',
    ]
