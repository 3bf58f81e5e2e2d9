"""Data sharing against hostile counterparts over real sockets: a host that answers a
grantee's client with junk gets a DataShareError, never a crash; a reader that sends
a host junk gets a 400, never an internal error."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from aiohttp import web

from consensus.keys import PrivateKey
from node.client.datashare import DataShareError, read_dataset
from node.config import NodeConfig
from tests.support.chainkit import MID

NESTED_JSON = b"[" * 100_000
GOOD_CHALLENGE = {"challenge": "11" * 32, "host_id": "22" * 32}


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def hostile_host(challenge: web.Response, read: web.Response | None = None) -> web.Application:
    async def on_challenge(request: web.Request) -> web.Response:
        return challenge

    async def on_read(request: web.Request) -> web.Response:
        assert read is not None
        return read

    app = web.Application()
    app.router.add_post("/data/challenge", on_challenge)
    app.router.add_post("/data/read", on_read)
    return app


CHALLENGE_ANSWERS = {
    "nested past the stack": web.Response(body=NESTED_JSON, content_type="application/json"),
    "a JSON list": web.json_response([1, 2]),
    "not JSON at all": web.Response(body=b"\xff<html>", content_type="text/html"),
    "a challenge that is not hex": web.json_response({"challenge": "zz", "host_id": 5}),
    "a refusal that is a list": web.json_response([], status=403),
}


@pytest.mark.parametrize("what", CHALLENGE_ANSWERS)
async def test_a_host_answering_the_challenge_with_junk_is_a_data_share_error(what):
    runner, url = await serve(hostile_host(CHALLENGE_ANSWERS[what]))
    try:
        with pytest.raises(DataShareError):
            await read_dataset(url, PrivateKey.generate(), MID.chain_id, bytes(32), bytes(32), 10)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "read",
    [
        web.Response(body=b"\x91" * 100_000 + b"\xc0"),
        web.Response(body=b"\x81\xc4\x01k\x01"),
        web.json_response([], status=500),
        web.Response(body=NESTED_JSON, status=403),
    ],
)
async def test_a_host_answering_the_read_with_junk_is_a_data_share_error(read):
    runner, url = await serve(hostile_host(web.json_response(GOOD_CHALLENGE), read))
    try:
        with pytest.raises(DataShareError):
            await read_dataset(url, PrivateKey.generate(), MID.chain_id, bytes(32), bytes(32), 10)
    finally:
        await runner.cleanup()


async def test_a_read_request_nested_past_the_stack_is_refused_as_malformed(tmp_path, caplog):
    from node.app import Node

    node = Node(NodeConfig(params=MID, datadir=tmp_path / "node"))
    await node.start()
    try:
        url = f"http://127.0.0.1:{node.p2p_port}/data/read"
        with caplog.at_level(logging.ERROR):
            async with aiohttp.ClientSession() as s, s.post(url, data=NESTED_JSON) as r:
                status, body = r.status, await r.json()
        assert (status, body) == (400, {"error": "malformed read request"})
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        await node.stop()
