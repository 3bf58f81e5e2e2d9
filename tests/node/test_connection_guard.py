"""A listener's connection cap and first-request deadline (node/net/httpguard.py), over
real sockets: slow-loris clients are closed, extra connections refused unread, and
honest requests, kept-alive ones included, are served throughout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from node.net.httpguard import ConnectionGuard, default_max_open

TIMEOUT = 0.4
MAX_OPEN = 4


@pytest.fixture
async def served() -> AsyncIterator[tuple[ConnectionGuard, int]]:
    guard = ConnectionGuard("test listener", max_open=MAX_OPEN, header_timeout=TIMEOUT)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application(middlewares=[guard.middleware])
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = guard.site(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield guard, port
    finally:
        await runner.cleanup()


REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _request(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return reply


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closes the connection (EOF or reset)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        data = await asyncio.wait_for(reader.read(1024), seconds)
    except ConnectionResetError:
        data = b""
    assert data == b"", data
    return loop.time() - started


async def test_a_connection_that_sends_no_request_is_closed_after_the_deadline(served):
    guard, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nX-a: ")  # and never the rest
    waited = await _closed_within(reader, 5 * TIMEOUT)
    assert waited >= TIMEOUT * 0.8
    assert guard.timed_out == 1 and guard.open == 0
    writer.close()
    assert b"hello" in await _request(port)


async def test_connections_over_the_cap_are_refused_and_honest_ones_served_after(served):
    guard, port = served
    slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(MAX_OPEN)]
    for _, writer in slow:
        writer.write(b"GET / HTTP/1.1\r\n")
    await asyncio.sleep(0)  # let the server register them
    for _ in range(50):
        if guard.open == MAX_OPEN:
            break
        await asyncio.sleep(0.01)
    assert guard.open == MAX_OPEN
    extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _closed_within(extra_reader, TIMEOUT / 2) < TIMEOUT / 2
    assert guard.refused == 1
    extra_writer.close()
    for _, writer in slow:
        writer.close()
    for _ in range(100):
        if guard.open == 0:
            break
        await asyncio.sleep(0.01)
    assert guard.open == 0
    assert b"hello" in await _request(port)


async def test_a_kept_alive_connection_outlives_the_first_request_deadline(served):
    guard, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(2):
        writer.write(REQUEST)
        head = await asyncio.wait_for(reader.readuntil(b"hello"), 5)
        assert b"200 OK" in head
        await asyncio.sleep(TIMEOUT * 1.5)  # past the first request's deadline
    assert guard.timed_out == 0 and guard.open == 1
    writer.close()


class _Transport:
    def __init__(self, ip: str) -> None:
        self.ip = ip

    def get_extra_info(self, name: str) -> object:
        return (self.ip, 40000) if name == "peername" else None


async def test_one_address_holds_at_most_max_per_ip_but_loopback_is_exempt():
    guard = ConnectionGuard("test", max_open=100, max_per_ip=3, header_timeout=60)
    remote = [_Transport("203.0.113.9") for _ in range(4)]
    assert [guard._admit(t, t.ip) for t in remote[:3]] == [None, None, None]
    why = guard._admit(remote[3], remote[3].ip)
    assert why is not None and "203.0.113.9" in why
    assert guard._admit(_Transport("198.51.100.1"), "198.51.100.1") is None
    for ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert all(guard._admit(_Transport(ip), ip) is None for _ in range(5))
    guard._release(remote[0], "203.0.113.9")
    assert guard._admit(remote[3], remote[3].ip) is None
    for timer in guard._waiting.values():
        timer.cancel()


def test_the_default_cap_leaves_most_descriptors_free():
    resource = pytest.importorskip("resource")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = default_max_open()
    assert 64 <= cap <= 4096
    if soft != resource.RLIM_INFINITY and soft >= 256:
        assert cap <= soft // 4
