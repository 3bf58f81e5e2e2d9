"""The node's HTTP surface as a stranger meets it: JSON-RPC 2.0 conformance, malformed
bodies, batch bounds, Host and Origin checks, and what bad requests cost in the log.

Every test talks to a real in-process node over its real listeners.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import threading
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.chain import Chain
from consensus.keys import address_to_text
from consensus.market import build_result_rows
from consensus.merkle import matrix_cols_root, matrix_rows_root, verify_branch
from consensus.transactions import ResultChallengePayload
from node import store as store_module
from node.app import Node
from node.chain_service import ChainChange
from node.cli.main import cli
from node.client.rpc import RpcCallError, RpcClient
from node.config import NodeConfig
from node.relay.blobs import BlobError, decode_matrix, encode_matrix
from node.rpc.market import max_operand_body
from node.rpc.server import MAX_BATCH, MAX_BATCH_REPLY_BYTES
from node.txindex import TxIndex
from tests.support import claimkit
from tests.support.chainkit import ALICE, BOB, MID, Clock, extend, new_chain

NOT_A_KEY = "bad"


async def _start(tmp_path: Any, **config: Any) -> Node:
    node = Node(NodeConfig(params=MID, datadir=tmp_path / "node", **config))
    await node.start()
    return node


@pytest.fixture
async def node(tmp_path):
    n = await _start(tmp_path)
    try:
        yield n
    finally:
        await n.stop()


async def _post(
    node: Node, body: bytes | str, *, token: bool = False, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """POST a raw body to /rpc: (HTTP status, reply body)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {node.token}"
    data = body.encode() if isinstance(body, str) else body
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{node.rpc_port}/rpc", data=data, headers=sent) as r,
    ):
        return r.status, await r.read()


async def _call(node: Node, body: Any, **kw: Any) -> Any:
    status, reply = await _post(node, json.dumps(body), **kw)
    assert status == 200, (status, reply[:200])
    return json.loads(reply)


def _error_code(reply: dict[str, Any]) -> int:
    assert set(reply) == {"jsonrpc", "id", "error"} and reply["jsonrpc"] == "2.0", reply
    code: int = reply["error"]["code"]
    return code


# ------------------------------------------------------------------ D10: the specification


def _req(method: Any, params: Any = None, id: Any = "absent") -> dict[str, Any]:
    out: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        out["params"] = params
    if id != "absent":
        out["id"] = id
    return out


async def test_every_example_of_the_json_rpc_2_specification(node):
    """Section 7 of jsonrpc.org/specification, with this node's methods standing in
    for subtract, sum, update, notify_hello and get_data."""
    genesis = node.chain.genesis.hash.hex()

    # rpc call with positional parameters, then with named parameters (in both orders)
    for params in ([0], [0, False], {"height": 0}, {"verbose": False, "height": 0}):
        reply = await _call(node, _req("getblockbyheight", params, id=1))
        assert reply["id"] == 1 and reply["result"]["hash"] == genesis, reply

    # notifications: no reply at all, whether the method exists or not
    for note in (_req("getheaders", [1, 2]), _req("foobar")):
        assert await _post(node, json.dumps(note)) == (204, b"")

    # a non-existent method
    reply = await _call(node, _req("foobar", id="1"))
    assert _error_code(reply) == -32601 and reply["id"] == "1"

    # invalid JSON; a batch that is invalid JSON
    for body in (
        '{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]',
        '[{"jsonrpc": "2.0", "method": "getinfo", "params": [], "id": "1"},'
        '{"jsonrpc": "2.0", "method"]',
    ):
        status, raw = await _post(node, body)
        reply = json.loads(raw)
        assert status == 200 and _error_code(reply) == -32700 and reply["id"] is None

    # an invalid request object; an empty batch
    not_requests: list[Any] = [{"jsonrpc": "2.0", "method": 1, "params": "bar"}, []]
    for invalid in not_requests:
        reply = await _call(node, invalid)
        assert _error_code(reply) == -32600 and reply["id"] is None

    # invalid batches that are not empty: one reply per element
    for batch in ([1], [1, 2, 3]):
        replies = await _call(node, batch)
        assert [(_error_code(r), r["id"]) for r in replies] == [(-32600, None)] * len(batch)

    # a mixed batch: results, errors and notifications (which get nothing), in order
    mixed = [
        _req("getblockbyheight", [0], id="1"),
        _req("getheaders", [7]),
        _req("getheaders", [0, 1], id="2"),
        {"foo": "boo"},
        _req("foo.get", {"name": "myself"}, id="5"),
        _req("getinfo", id="9"),
    ]
    replies = await _call(node, mixed)
    assert [r["id"] for r in replies] == ["1", "2", None, "5", "9"]
    assert replies[0]["result"]["hash"] == genesis
    assert [h["hash"] for h in replies[1]["result"]] == [genesis]
    assert _error_code(replies[2]) == -32600 and _error_code(replies[3]) == -32601
    assert replies[4]["result"]["height"] == 0

    # a batch of notifications only: no body at all
    assert await _post(node, json.dumps([_req("getheaders", [1, 2]), _req("getinfo")])) == (
        204,
        b"",
    )


async def test_invalid_requests_and_params_get_the_right_code_and_no_internal_names(node):
    invalid = [
        {"method": 1},
        {"jsonrpc": "2.0", "method": "getinfo", "id": {"an": "object"}},
        {"jsonrpc": "2.0", "method": "getinfo", "id": [1]},
        {"jsonrpc": "2.0", "method": "getinfo", "id": True},
        {"jsonrpc": "2.0", "method": "getinfo", "params": "bar", "id": 1},
        {"jsonrpc": "2.0", "method": "getinfo", "params": None, "id": 1},
        {"jsonrpc": "1.0", "method": "getinfo", "id": 1},
        {"jsonrpc": "2.0", "id": 1},
    ]
    for request in invalid:
        assert _error_code(await _call(node, request)) == -32600, request

    bad_params: list[tuple[Any, str]] = [
        ([], "getblock needs 'block_hash'"),
        ({"verbose": True}, "getblock needs 'block_hash'"),
        ([1, 2, 3], "at most 2"),
        ({"hash": "00"}, "no param 'hash'"),
        ([["not", "a", "hash"]], "hex string"),
    ]
    for params, says in bad_params:
        reply = await _call(node, _req("getblock", params, id=1))
        message = reply["error"]["message"]
        assert _error_code(reply) == -32602 and says in message, message
        assert "<locals>" not in message and "positional" not in message, message
    reply = await _call(node, _req("getheaders", ["zero", "ten"], id=1))
    assert _error_code(reply) == -32602 and "<locals>" not in reply["error"]["message"]

    # A notification to a mutating method without the token is refused quietly.
    assert await _post(node, json.dumps(_req("stop"))) == (204, b"")
    assert not node._stopping.is_set()


def test_wallet_send_of_an_amount_no_transaction_can_hold_is_a_one_line_error(tmp_path):
    wallet = str(tmp_path / "w.key")
    runner = CliRunner()
    assert runner.invoke(cli, ["wallet", "new", "--wallet", wallet]).exit_code == 0
    to = address_to_text(BOB.address)
    result = runner.invoke(cli, ["wallet", "send", to, "1" + "0" * 21, "--wallet", wallet])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: amount"), result.stderr


# ------------------------------------------------------------------ D3: malformed bodies

MALFORMED = {
    "an integer of 5,000 digits": b"9" * 5000,
    "100,000 nested arrays": b"[" * 100_000 + b"]" * 100_000,
    "100,000 unclosed arrays": b"[" * 100_000,
    "a huge integer in a batch": b"[" + b"1" * 5000 + b"]",
    "NaN": b'{"jsonrpc": "2.0", "method": "getinfo", "id": NaN}',
    "not UTF-8": b'{"jsonrpc": "2.0", "method": "\xff\xfe", "id": 1}',
    "nothing": b"",
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_body_gets_a_parse_error_and_no_traceback(node, body, caplog):
    status, raw = await _post(node, body)
    assert status == 200, raw[:200]
    reply = json.loads(raw)
    assert _error_code(reply) == -32700 and reply["id"] is None
    assert not [r for r in caplog.records if r.exc_info], caplog.text


async def test_an_infinite_id_is_an_invalid_request(node):
    status, raw = await _post(node, b'{"jsonrpc": "2.0", "method": "getinfo", "id": 1e999}')
    assert status == 200 and _error_code(json.loads(raw)) == -32600


# ------------------------------------------------------------------ D4: batch amplification


async def _getinfo_latencies(node: Node, until: asyncio.Future[Any]) -> list[float]:
    """Call getinfo back to back until ``until`` is done; each call's seconds."""
    out: list[float] = []
    while not until.done() or not out:
        t0 = time.monotonic()
        reply = await _call(node, _req("getinfo", id=1))
        assert reply["result"]["height"] >= 0
        out.append(time.monotonic() - t0)
    return out


async def test_a_huge_batch_is_refused_at_once_and_others_are_answered_meanwhile(node):
    zeros = b"[" + b"0," * (2**21 - 2) + b"0]"  # 2,097,151 zeros: just under 4 MiB
    assert len(zeros) < 4 * 1024 * 1024
    for token in (False, True):
        started = time.monotonic()
        big = asyncio.ensure_future(_post(node, zeros, token=token))
        latencies = await _getinfo_latencies(node, big)
        status, raw = await big
        assert time.monotonic() - started < 5
        assert max(latencies) < 1.0, latencies
        assert len(raw) < 1000, len(raw)
        reply = json.loads(raw)
        assert _error_code(reply) == -32600 and reply["id"] is None
        assert status == (200 if token else 413), status

    too_many = [_req("getinfo", id=i) for i in range(MAX_BATCH + 1)]
    reply = await _call(node, too_many)
    assert _error_code(reply) == -32600 and f"at most {MAX_BATCH}" in reply["error"]["message"]

    status, raw = await _post(node, json.dumps([0] * MAX_BATCH))
    assert status == 200 and len(raw) < 120 * MAX_BATCH
    assert [_error_code(r) for r in json.loads(raw)] == [-32600] * MAX_BATCH


async def test_a_batch_s_replies_stop_growing_at_the_limit_while_others_are_answered(node):
    chain, clock = new_chain()
    clock.now = node.chain.tip.header.timestamp_ms
    for block in extend(chain, clock, 12, step_ms=1):
        await node.process_block(block, source=None)
    assert node.chain.height == 12
    one = len(json.dumps(await _call(node, _req("getheaders", [0, 2000], id=0))))
    assert one * MAX_BATCH > MAX_BATCH_REPLY_BYTES  # so the limit is reached
    batch = [_req("getheaders", [0, 2000], id=i) for i in range(MAX_BATCH)]

    big = asyncio.ensure_future(_post(node, json.dumps(batch), token=True))
    latencies = await _getinfo_latencies(node, big)
    status, raw = await big
    assert status == 200 and max(latencies) < 1.0, latencies
    assert len(raw) <= MAX_BATCH_REPLY_BYTES + 200 * MAX_BATCH
    replies = json.loads(raw)
    assert [r["id"] for r in replies] == list(range(MAX_BATCH))
    answered = [r for r in replies if "result" in r]
    refused = [r for r in replies if "error" in r]
    assert answered and replies[: len(answered)] == answered
    assert {_error_code(r) for r in refused} == {-32003}


# ------------------------------------------------------------------ D6: bad upgrades in the log

BAD_UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {NOT_A_KEY}\r\n\r\n"
)
JUNK = b"\x00junk\xff" * 50


async def _send_raw(port: int, data: bytes) -> bytes:
    """Send bytes on a fresh connection; everything the server answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_bad_websocket_upgrades_cost_at_most_a_short_rate_limited_log_line(node, caplog):
    caplog.set_level(logging.DEBUG, logger="pouw")
    caplog.set_level(logging.INFO, logger="aiohttp")
    before = len(caplog.records)
    targets = [(node.p2p_port, "/p2p"), (node.rpc_port, "/ws")]
    replies = await asyncio.gather(
        *(
            _send_raw(port, BAD_UPGRADE.format(path=path).encode() + JUNK)
            for _ in range(30)
            for port, path in targets
        )
    )
    assert all(r.startswith(b"HTTP/1.1 400 ") for r in replies), replies[0][:200]
    # Garbage pipelined behind a good request is the same stranger's noise.
    for port in (node.p2p_port, node.rpc_port):
        reply = await _send_raw(port, b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + JUNK)
        assert b" 400 " in reply or b" 404 " in reply or b" 200 " in reply
    records = caplog.records[before:]
    assert not [r for r in records if r.exc_info or r.levelno >= logging.WARNING], caplog.text
    assert "Traceback" not in caplog.text
    lines = [r.getMessage() for r in records if r.levelno >= logging.INFO]
    assert len(lines) <= 4, lines  # one per listener and kind, not one per connection
    assert all("\n" not in line and len(line) < 200 for line in lines), lines


# ------------------------------------------------------------------ D7: Host and Origin


async def test_a_foreign_host_or_origin_is_refused_everywhere(node):
    port = node.rpc_port
    getinfo = json.dumps(_req("getinfo", id=1))
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::2]"):
        status, text = await _post(node, getinfo, headers={"Host": host})
        assert status == 403 and b"Host" in text and len(text) < 200, (host, status, text)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        status, _ = await _post(node, getinfo, headers={"Host": host})
        assert status == 200, host

    foreign = (
        "http://evil.example",
        f"http://evil.example:{port}",
        "null",
        "http://localhost:3000",
    )
    async with aiohttp.ClientSession() as s:
        for origin in foreign:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await s.ws_connect(f"http://127.0.0.1:{port}/ws", origin=origin)
            assert refused.value.status == 403, origin
            async with s.get(f"http://127.0.0.1:{port}/metrics", headers={"Origin": origin}) as r:
                assert r.status == 403 and "Origin" in await r.text()
            status, _ = await _post(node, getinfo, headers={"Origin": origin})
            assert status == 403
        # The node's own pages may call it.
        async with s.ws_connect(
            f"http://127.0.0.1:{port}/ws", origin=f"http://127.0.0.1:{port}"
        ) as ws:
            await ws.send_str("ping")
            assert json.loads((await ws.receive(timeout=5)).data)["event"] == "pong"
        status, _ = await _post(node, getinfo, headers={"Origin": f"http://127.0.0.1:{port}"})
        assert status == 200
        # The P2P listener serves no pages: a web page may not open a peer connection.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await s.ws_connect(
                f"http://127.0.0.1:{node.p2p_port}/p2p", origin="http://evil.example"
            )
        assert refused.value.status == 403


async def test_rpc_allow_host_adds_a_name_the_node_answers_to(tmp_path):
    node = await _start(tmp_path, rpc_allow_hosts=("node.lan",))
    try:
        getinfo = json.dumps(_req("getinfo", id=1))
        for host, expected in (("node.lan:8080", 200), ("NODE.LAN", 200), ("other.lan", 403)):
            status, _ = await _post(node, getinfo, headers={"Host": host})
            assert status == expected, host
        origin = {"Host": "node.lan", "Origin": "https://node.lan"}  # behind a TLS proxy
        assert (await _post(node, getinfo, headers=origin))[0] == 200
    finally:
        await node.stop()


# ------------------------------------------------------------------ the fuzz target


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
method_names = st.sampled_from(
    [
        "getinfo",
        "getblock",
        "getheaders",
        "getblockbyheight",
        "getaccount",
        "getresult",
        "stop",
        "x",
    ]
)
param_names = st.sampled_from(["height", "block_hash", "start", "count", "verbose", "timeout"])
request_objects = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "1.0"])},
    optional={
        "method": method_names | json_values,
        "params": st.lists(json_values, max_size=3)
        | st.dictionaries(param_names, json_values)
        | json_values,
        "id": st.integers() | st.text(max_size=5) | json_values,
    },
)
bodies = (request_objects | st.lists(request_objects | json_values, max_size=6)).map(
    lambda value: json.dumps(value).encode()
)


def test_the_json_rpc_fuzz_target_holds_on_its_seeds_attacks_and_generated_requests():
    """The fuzz target's own checks, over its seeds and hostile inputs and a few hundred
    generated requests (the fuzz runner goes on from there)."""
    from tests.fuzz.targets import fuzz_jsonrpc

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(bodies)
    def generated(body: bytes) -> None:
        fuzz_jsonrpc.test_one_input(body)

    try:
        for body in fuzz_jsonrpc.seeds() + fuzz_jsonrpc.hostile_inputs():
            fuzz_jsonrpc.test_one_input(body)
        generated()
    finally:
        fuzz_jsonrpc.close()


async def test_a_malformed_read_request_on_the_p2p_listener_is_a_400_not_a_traceback(node, caplog):
    url = f"http://127.0.0.1:{node.p2p_port}/data/read"
    async with aiohttp.ClientSession() as s:
        for body in (MALFORMED["100,000 nested arrays"], MALFORMED["an integer of 5,000 digits"]):
            async with s.post(url, data=body) as r:
                assert r.status == 400 and "malformed" in await r.text()
    assert not [r for r in caplog.records if r.exc_info], caplog.text


def test_a_bad_rpc_allow_host_is_a_one_line_error(tmp_path):
    for bad in ("http://node.lan/", "node.lan:port", ""):
        args = ["node", "--datadir", str(tmp_path / "d"), "--rpc-allow-host", bad]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code != 0 and "Traceback" not in result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--rpc-allow-host" in lines[0], result.stderr
    assert not (tmp_path / "d").exists()


async def test_the_rpc_client_reports_an_http_refusal_as_the_node_s_reason(node):
    client = RpcClient(f"http://127.0.0.1:{node.rpc_port}/rpc")  # no token: 256 KiB at most
    with pytest.raises(RpcCallError) as refused:
        await asyncio.to_thread(client.call, "getblock", "00" * 150_000)
    assert refused.value.code == 413 and "request too large" in str(refused.value)


async def test_the_node_answers_while_an_uploaded_operand_is_stored(node, monkeypatch):
    """Storing a job's operand (megabytes to decode, hash and write) does not hold up
    the node: another caller is answered meanwhile."""
    answered = threading.Event()
    answered_while_storing: list[bool] = []
    real_put = node.blobs.put_matrix

    def slow_put(rows: Any) -> bytes:
        answered_while_storing.append(answered.wait(5))
        return real_put(rows)

    monkeypatch.setattr(node.blobs, "put_matrix", slow_put)
    a = np.random.default_rng(3).integers(-64, 64, (64, 32), dtype=np.int8)
    upload = asyncio.create_task(
        _call(node, _req("putoperand", [encode_matrix(a).hex(), "rows"], id=1), token=True)
    )
    info = await asyncio.wait_for(_call(node, _req("getinfo", id=2)), 10)
    assert info["result"]["height"] == 0
    answered.set()
    reply = await asyncio.wait_for(upload, 10)
    assert reply["result"] == matrix_rows_root(a).hex()
    assert answered_while_storing == [True]


# ------------------------------------------------------------------ binary operand and result


def _operand(rows: int = 64, cols: int = 32, seed: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(-64, 64, (rows, cols), dtype=np.int8)


async def _request(
    node: Node,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """An HTTP request to the RPC listener: (status, reply body)."""
    sent = {"Content-Type": "application/octet-stream", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    url = f"http://127.0.0.1:{node.rpc_port}{path}"
    async with aiohttp.ClientSession() as s, s.request(method, url, data=body, headers=sent) as r:
        return r.status, await r.read()


def _refusal(status: int, reply: bytes) -> tuple[int, str]:
    """(HTTP status, message) of a binary route's JSON refusal."""
    error = json.loads(reply)["error"]
    assert set(error) == {"code", "message"} and len(error["message"]) < 300, error
    return status, error["message"]


@pytest.fixture
def stored_blobs(node, monkeypatch) -> list[bytes]:
    """The roots of the blobs the node stores from now on."""
    roots: list[bytes] = []
    real_put = node.store.put_blob

    def put_blob(root: bytes, data: bytes, chunk_size: int, *kept_for: bytes | None) -> None:
        roots.append(root)
        real_put(root, data, chunk_size, *kept_for)

    monkeypatch.setattr(node.store, "put_blob", put_blob)
    return roots


async def test_a_full_disk_gets_a_clear_answer_stores_nothing_and_passes(node, monkeypatch):
    """A disk that would be left with less than the margin a blob must leave (here the
    margin raised past the disk's free space, as a full disk would leave it): POST
    /operand answers 507 and putoperand a JSON-RPC error, each naming the full disk;
    nothing is stored, the node keeps answering, and uploads work again once there is
    room."""
    a = _operand(rows=256, cols=256)
    store = node.store
    free = shutil.disk_usage(store.blob_dir).free
    monkeypatch.setattr(store_module, "MIN_FREE_BYTES", free + (1 << 30))
    status, reply = await _request(node, "POST", "/operand", encode_matrix(a), token=node.token)
    assert status == 507, reply
    error = json.loads(reply)["error"]
    assert error["code"] == -32004 and "disk is full" in error["message"], error
    rpc = await _call(node, _req("putoperand", [encode_matrix(a).hex()], id=1), token=True)
    assert rpc["error"]["code"] == -32004 and "disk is full" in rpc["error"]["message"], rpc
    assert not store.has_blob(matrix_rows_root(a))
    assert (await _call(node, _req("getinfo", id=2)))["result"]["height"] == 0
    monkeypatch.setattr(store_module, "MIN_FREE_BYTES", 0)
    status, reply = await _request(node, "POST", "/operand", encode_matrix(a), token=node.token)
    assert status == 200 and json.loads(reply)["root"] == matrix_rows_root(a).hex(), reply
    assert store.has_blob(matrix_rows_root(a))


async def test_an_operand_uploaded_as_bytes_gets_the_root_putoperand_gives(node, stored_blobs):
    a = _operand()
    for layout, root_of in (("rows", matrix_rows_root), ("cols", matrix_cols_root)):
        status, reply = await _request(
            node, "POST", f"/operand?layout={layout}", encode_matrix(a), token=node.token
        )
        assert status == 200, reply
        root = json.loads(reply)["root"]
        rpc = await _call(
            node, _req("putoperand", [encode_matrix(a).hex(), layout], id=1), token=True
        )
        assert root == rpc["result"] == root_of(a).hex()
        assert node.store.has_blob(bytes.fromhex(root))
    client = RpcClient(f"http://127.0.0.1:{node.rpc_port}/rpc", node.token)
    b = _operand(seed=5)
    assert await asyncio.to_thread(client.put_operand, encode_matrix(b), "cols") == (
        matrix_cols_root(b)
    )
    assert matrix_cols_root(b) in stored_blobs
    _, metrics = await _request(node, "GET", "/metrics")
    assert 'pouw_rpc_requests_total{method="POST /operand",outcome="ok"} 3.0' in metrics.decode()


async def test_a_hostile_operand_upload_is_refused_clearly_and_stores_nothing(node, stored_blobs):
    blob = encode_matrix(_operand())
    token = node.token
    wide = encode_matrix(np.full((4, 4), 64, dtype=np.int8))
    refused = {
        "no token": (401, "/operand", blob, None, {}),
        "a wrong token": (401, "/operand", blob, "x" + token[1:], {}),
        "a foreign Host": (403, "/operand", blob, token, {"Host": "evil.example"}),
        "a foreign Origin": (403, "/operand", blob, token, {"Origin": "http://evil.example"}),
        "a bad layout": (400, "/operand?layout=diag", blob, token, {}),
        "an empty body": (400, "/operand", b"", token, {}),
        "a truncated blob": (400, "/operand", blob[:-1], token, {}),
        "a blob with a byte more": (400, "/operand", blob + b"\0", token, {}),
        "garbage": (400, "/operand", b"\x00junk\xff" * 50, token, {}),
        "hex": (400, "/operand", blob.hex().encode(), token, {}),
        "int32 entries": (400, "/operand", encode_matrix(np.ones((4, 4), np.int32)), token, {}),
        "values outside int7": (400, "/operand", wide, token, {}),
    }
    for what, (expected, path, body, sent_token, headers) in refused.items():
        status, reply = await _request(node, "POST", path, body, token=sent_token, headers=headers)
        assert status == expected, (what, status, reply[:200])
        if status != 403:  # the listener's guard answers in one short line of text
            _, message = _refusal(status, reply)
            if status == 400:
                assert any(
                    word in message for word in ("layout", "encoded matrix", "int8", "[-64, 63]")
                ), (what, message)
            else:
                assert "needs the cookie token" in message, (what, message)
    assert stored_blobs == []
    _, metrics = await _request(node, "GET", "/metrics")
    assert 'pouw_rpc_requests_total{method="POST /operand",outcome="error"} 10.0' in (
        metrics.decode()
    )


async def _raw_status(node: Node, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection to the RPC listener: the status line it gets."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.rpc_port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


def _upload_head(node: Node, length_header: str) -> bytes:
    return (
        f"POST /operand HTTP/1.1\r\nHost: 127.0.0.1:{node.rpc_port}\r\n"
        f"Authorization: Bearer {node.token}\r\n{length_header}\r\n\r\n"
    ).encode()


async def test_an_operand_over_the_cap_is_refused_and_never_read_whole(node, stored_blobs):
    """The cap is the largest operand a job may have (devnet 4096x4096 int8): one byte
    more is a 413 saying so; a body declared bigger is answered before it comes, and
    one sent in chunks without a length is cut off at the cap."""
    limit = max_operand_body(node.params)
    assert limit == 14 + 4096 * 4096
    client = RpcClient(f"http://127.0.0.1:{node.rpc_port}/rpc", node.token)
    with pytest.raises(RpcCallError) as refused:
        await asyncio.to_thread(client.put_operand, bytes(limit + 1), "cols")
    assert refused.value.code == 413
    assert f"operand too large: at most {limit} bytes" in str(refused.value)

    declared = _upload_head(node, f"Content-Length: {1 << 30}") + b"PWMX"
    assert (await _raw_status(node, declared)).split()[1] == b"413"

    chunk = bytes(1 << 20)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(limit // len(chunk) + 1))
    streamed = _upload_head(node, "Transfer-Encoding: chunked") + chunks  # no end: it never ends
    assert (await _raw_status(node, streamed)).split()[1] == b"413"
    assert stored_blobs == []


async def _claimed_job(node: Node) -> tuple[Chain, Clock]:
    """Blocks on the node: JOB posted and claimed (its C stored here), JOB2 posted and
    claimed (its C nowhere), and a third job posted and left open; the chain they were
    built on and its clock, to build more."""
    chain, clock = new_chain()
    _, _, _, open_post, _, _ = claimkit.new_job(expiry=40)
    blocks = [
        claimkit.add(
            chain,
            clock,
            [claimkit.tx(ALICE, 0, claimkit.POST), claimkit.tx(ALICE, 1, claimkit.POST2)],
        ),
        claimkit.add(chain, clock, [claimkit.tx(ALICE, 2, open_post)]),
        claimkit.add(
            chain,
            clock,
            [
                claimkit.claim(
                    BOB, 0, (claimkit.JOB_ID, claimkit.C), (claimkit.JOB2_ID, claimkit.C2)
                )
            ],
        ),
    ]
    for block in blocks:
        await node.process_block(block, source=None)
    node.blobs.put_matrix(claimkit.C)
    return chain, clock


async def test_a_result_fetched_as_bytes_is_what_getresult_gives(node):
    await _claimed_job(node)
    job = claimkit.JOB_ID.hex()
    status, blob = await _request(node, "GET", f"/result/{job}?timeout=1")
    assert status == 200, blob[:200]
    rpc = await _call(node, _req("getresult", [job], id=1))
    assert blob == bytes.fromhex(rpc["result"])
    assert np.array_equal(decode_matrix(blob), claimkit.C)
    client = RpcClient(f"http://127.0.0.1:{node.rpc_port}/rpc")  # read-only: no token
    assert await asyncio.to_thread(client.get_result, claimkit.JOB_ID, 1) == blob


async def test_a_bad_result_request_gets_a_clear_error(node):
    await _claimed_job(node)
    open_job = next(
        j for j in node.chain.state.tables["jobs"] if j not in (claimkit.JOB_ID, claimkit.JOB2_ID)
    )
    job = claimkit.JOB_ID.hex()
    refused = {
        "an id not hex": (400, "/result/zz", "job id is not hex"),
        "a short id": (400, f"/result/{job[:-2]}", "job id must be 32 bytes"),
        "an unknown job": (404, f"/result/{'ab' * 32}", "unknown job"),
        "an open job": (409, f"/result/{open_job.hex()}", "has no result yet: it is open"),
        "a result no peer has": (
            503,
            f"/result/{claimkit.JOB2_ID.hex()}?timeout=0",
            "the result is not available",
        ),
        "a negative timeout": (400, f"/result/{job}?timeout=-1", "timeout must be"),
        "a timeout too long": (400, f"/result/{job}?timeout=601", "timeout must be"),
        "a timeout not a number": (400, f"/result/{job}?timeout=nan", "timeout must be"),
    }
    for what, (expected, path, reason) in refused.items():
        status, message = _refusal(*await _request(node, "GET", path))
        assert status == expected and reason in message, (what, status, message)
    status, _ = await _request(node, "GET", f"/result/{job}", headers={"Host": "evil.example"})
    assert status == 403
    client = RpcClient(f"http://127.0.0.1:{node.rpc_port}/rpc")
    with pytest.raises(RpcCallError) as unknown:
        await asyncio.to_thread(client.get_result, bytes(32), 1)
    assert unknown.value.code == 404 and "unknown job" in str(unknown.value)


operand_bodies = st.one_of(
    st.binary(max_size=200),
    st.builds(
        lambda blob, cut, extra: blob[:cut] + extra,
        st.builds(
            lambda rows, cols, fill: encode_matrix(np.full((rows, cols), fill, dtype=np.int8)),
            st.integers(1, 8),
            st.integers(1, 8),
            st.integers(-128, 127),
        ),
        st.integers(0, 80),
        st.binary(max_size=4),
    ),
)


async def test_any_operand_body_is_stored_whole_or_refused_with_a_400(node, stored_blobs):
    """Generated bodies (random bytes, cut or padded matrix blobs): a well-formed int7
    matrix is stored under its root, anything else is a 400 and stores nothing."""
    bodies: list[bytes] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(operand_bodies)
    def collect(body: bytes) -> None:
        bodies.append(body)

    collect()
    async with aiohttp.ClientSession() as s:
        for body in bodies:
            del stored_blobs[:]
            url = f"http://127.0.0.1:{node.rpc_port}/operand"
            auth = {"Authorization": f"Bearer {node.token}"}
            async with s.post(url, data=body, headers=auth) as r:
                status, reply = r.status, await r.read()
            try:
                x = decode_matrix(body)
                valid = x.dtype == np.int8 and int(x.min()) >= -64 and int(x.max()) <= 63
            except BlobError:
                valid = False
            if valid:
                assert status == 200 and json.loads(reply)["root"] == matrix_rows_root(x).hex()
                assert stored_blobs == [matrix_rows_root(x)]
            else:
                assert status == 400, (body, status, reply)
                assert "error" in json.loads(reply) and stored_blobs == []


async def test_getrevealedrows_gives_the_rows_a_challenged_claim_revealed_on_chain(node):
    """The rows of C a claim revealed (result_rows), each as its poster can check it and
    prove it wrong: the row, its branch against the claim's result_root, the
    transaction and its height; none for a claim not challenged or a job not claimed."""
    chain, clock = await _claimed_job(node)
    job = (await _call(node, _req("getjob", [claimkit.JOB_ID.hex()], 1)))["result"]
    claim_id = bytes.fromhex(job["claim_id"])
    ask = ResultChallengePayload(claim_id, claimkit.JOB_ID, (2, 5))
    await node.process_block(claimkit.add(chain, clock, [claimkit.tx(ALICE, 3, ask)]), None)
    reveal = build_result_rows(claim_id, claimkit.JOB_ID, claimkit.C, [2, 5])
    block = claimkit.add(chain, clock, [claimkit.tx(BOB, 1, reveal)])
    await node.process_block(block, source=None)
    assert node.chain.height == block.header.height

    got = (await _call(node, _req("getrevealedrows", [claimkit.JOB_ID.hex()], 1)))["result"]
    assert got["claim_id"] == claim_id.hex()
    m = claimkit.C.shape[0]
    root = matrix_rows_root(claimkit.C)
    assert [r["index"] for r in got["rows"]] == [2, 5]
    for r in got["rows"]:
        row = bytes.fromhex(r["row"])
        assert row == claimkit.C[r["index"]].astype("<i4").tobytes()
        assert verify_branch(root, r["index"], m, row, [bytes.fromhex(h) for h in r["branch"]])
        assert (r["txid"], r["height"]) == (block.txs[-1].txid.hex(), block.header.height)
    # Found through the transaction index, built at start and following reorgs.
    assert TxIndex(node.chain).reveals_of(claimkit.JOB_ID) == (block.txs[-1].txid,)
    node.txindex.chain_changed(ChainChange(connected=(), disconnected=(block,)))
    gone = (await _call(node, _req("getrevealedrows", [claimkit.JOB_ID.hex()], 1)))["result"]
    assert gone["claim_id"] == claim_id.hex() and gone["rows"] == []
    node.txindex.chain_changed(ChainChange(connected=(block,), disconnected=()))
    back = (await _call(node, _req("getrevealedrows", [claimkit.JOB_ID.hex()], 1)))["result"]
    assert back == got
    unasked = (await _call(node, _req("getrevealedrows", [claimkit.JOB2_ID.hex()], 1)))["result"]
    assert unasked["claim_id"] is not None and unasked["rows"] == []
    for job_id, error in (("ab" * 32, "unknown job"), ("xyz", "job id")):
        reply = await _call(node, _req("getrevealedrows", [job_id], 1))
        assert error in reply["error"]["message"]


async def test_call_many_answers_each_call_of_one_batch_in_order(node):
    await _claimed_job(node)
    client = RpcClient(f"http://127.0.0.1:{node.rpc_port}/rpc")
    ids = [claimkit.JOB2_ID.hex(), "ab" * 32, claimkit.JOB_ID.hex()]
    two, unknown, one = await asyncio.to_thread(client.call_many, "getjob", [[j] for j in ids])
    assert (one["status"], two["status"]) == ("mined", "mined")
    assert one["result_root"] == matrix_rows_root(claimkit.C).hex()
    assert isinstance(unknown, RpcCallError) and "unknown job" in str(unknown)
    assert await asyncio.to_thread(client.call_many, "getjob", []) == []
