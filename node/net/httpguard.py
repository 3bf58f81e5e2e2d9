"""What every HTTP listener of a node shares: which Host and Origin it answers,
and short, rate-limited log lines for what strangers send it.

A web page cannot read another site's responses, unless it rebinds its own name
to the node's address (DNS rebinding): its requests then carry ``Host:
evil.example``. So the RPC listener answers only the names it listens on
(``--rpc-allow-host`` adds more), and a request from a web page (it carries an
``Origin``) only when that page is the node's own: same host and port. The P2P
listener is reached under any name by design, and serves no pages, so it refuses
every request that comes from a web page.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from node.net.peer import is_loopback

log = logging.getLogger("pouw.http")

LOG_INTERVAL_S = 10.0
"""A stranger's bad requests cost at most one log line per this many seconds."""
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
DEFAULT_PORTS = {"http": 80, "https": 443}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RateLimitedLog:
    """At most one line per ``interval`` seconds; the next line that gets through
    counts the ones that did not."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL_S) -> None:
        self.logger = logger
        self.interval = interval
        self.suppressed = 0
        self._next = 0.0

    def __call__(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self.suppressed += 1
            return
        self._next = now + self.interval
        if self.suppressed:
            msg += f" (and {self.suppressed} more since the last such line)"
            self.suppressed = 0
        self.logger.log(level, msg, *args)


_ExcInfo = (
    bool
    | BaseException
    | tuple[type[BaseException], BaseException, TracebackType | None]
    | tuple[None, None, None]
    | None
)


class QuietServerLog(logging.LoggerAdapter):
    """aiohttp's server logger for a node's listeners: malformed HTTP from a client
    (garbage behind a refused upgrade, a bad request line or header) becomes one
    short rate-limited line instead of an ERROR with tracebacks. Anything else, a
    failing handler above all, keeps its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.client_errors = RateLimitedLog(log)

    def log(
        self,
        level: int,
        msg: object,
        *args: object,
        exc_info: _ExcInfo = None,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        exc = sys.exc_info()[1] if exc_info is True else exc_info
        if isinstance(exc, tuple):
            exc = exc[1]
        if isinstance(exc, HttpProcessingError) and level > logging.DEBUG:
            who = args[0] if args else "a client"
            self.client_errors(logging.INFO, "malformed HTTP from %s: %s", who, type(exc).__name__)
            return
        super().log(
            level,
            msg,
            *args,
            exc_info=exc_info,
            stack_info=stack_info,
            stacklevel=stacklevel,
            extra=extra,
            **kwargs,
        )


class AllowedHosts:
    """The names a listener on ``listen_host`` answers to: that host; every loopback
    name if it is a loopback address; any IP address (and localhost) if it listens on
    all interfaces; and the ``extra`` names (``--rpc-allow-host``). Ports are not
    compared: a rebinding page chooses its name, not the node's address."""

    def __init__(self, listen_host: str, extra: Iterable[str] = ()) -> None:
        host = listen_host.strip("[]").lower()
        self.any_address = host in WILDCARD_HOSTS
        names = {host} | {parse_allowed_host(h) for h in extra}
        if self.any_address or host == "localhost" or _is_loopback(host):
            names |= LOOPBACK_NAMES
        self.names = frozenset(names - {""})

    def allows(self, hostname: str) -> bool:
        if hostname in self.names:
            return True
        return self.any_address and _is_ip(hostname)


def parse_allowed_host(text: str) -> str:
    """A ``--rpc-allow-host`` value (``name`` or ``name:port``) → the lower-case
    host name; ValueError with a readable reason otherwise."""
    hostname, _ = _authority(text.strip())
    if hostname is None:
        raise ValueError(f"--rpc-allow-host {text!r} is not a host name")
    return hostname


def bad_upgrade() -> web.Response:
    """The answer to a request for a WebSocket that is not a valid upgrade. The
    connection closes with it: what the client sent behind it is not parsed."""
    response = web.Response(status=400, text="not a valid WebSocket upgrade\n")
    response.force_close()
    return response


def listener_guard(hosts: AllowedHosts | None) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware: refuse (403, one short reason) a request whose Host is not
    one of ``hosts`` or whose Origin is not the page's own; with ``hosts=None`` (a
    listener reached under any name) Host is not checked and any Origin is refused."""
    refused = RateLimitedLog(log)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        reason = refusal(request.headers.get("Host"), request.headers.get("Origin"), hosts)
        if reason is None:
            return await handler(request)
        refused(logging.INFO, "refused %s from %s: %s", request.path, request.remote, reason)
        response = web.Response(status=403, text=f"forbidden: {reason}\n")
        response.force_close()
        return response

    return guard


def refusal(host: str | None, origin: str | None, hosts: AllowedHosts | None) -> str | None:
    """Why a request with these Host and Origin headers is refused, or None."""
    if hosts is not None and host is not None:
        hostname, _ = _authority(host)
        if hostname is None or not hosts.allows(hostname):
            return f"Host {host[:100]!r} is not a name this node answers to (--rpc-allow-host)"
    if origin is None:
        return None
    if hosts is None:
        return "this listener serves no web pages"
    if host is None or not _same_origin(origin, host):
        return f"Origin {origin[:100]!r} is not this node's"
    return None


def _same_origin(origin: str, host: str) -> bool:
    try:
        parts = urlsplit(origin)
        default_port = DEFAULT_PORTS.get(parts.scheme)
        if default_port is None or parts.hostname is None:
            return False
        origin_port = parts.port or default_port
    except ValueError:
        return False
    hostname, port = _authority(host)
    return hostname == parts.hostname and (port or default_port) == origin_port


def _authority(text: str) -> tuple[str | None, int | None]:
    """'name[:port]' or '[v6][:port]' → (lower-case name, port); (None, None) if malformed."""
    try:
        parts = urlsplit(f"//{text}")
        port = parts.port
    except ValueError:
        return None, None
    if not parts.hostname or parts.path or parts.query or parts.fragment or parts.username:
        return None, None
    return parts.hostname, port


def _is_ip(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def _is_loopback(hostname: str) -> bool:
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------ connections

HEADER_TIMEOUT_S = 10.0
"""A new connection must have sent its first request's headers within this: a peer's
upgrade to /p2p or an RPC call takes milliseconds, a slow-loris client forever."""
MAX_PER_IP = 16
"""Open connections one address may hold on a listener (loopback is exempt: every
node of a local testnet, and every local RPC client, is 127.0.0.1)."""


def default_max_open() -> int:
    """Open connections one listener admits: a quarter of the process's file
    descriptors (two listeners then leave half for the store, peers we dial and
    clients), between 64 and 4,096."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            soft = 16384
    except (ImportError, OSError, ValueError):  # no such limit here (Windows)
        soft = 1024
    return max(64, min(4096, soft // 4))


class ConnectionGuard:
    """Bounds a listener's TCP connections before aiohttp reads a byte of them.

    aiohttp's server has no deadline for a request's headers and no cap on
    connections: a client that sends ``GET /p2p HTTP/1.1`` and then one header byte
    every few seconds holds a file descriptor for as long as it likes, and a few
    thousand such clients exhaust the process's descriptors (the node then can
    accept nothing, peers and RPC alike, and asyncio logs every failed accept).
    Here each connection is refused at once (closed, nothing read) when the
    listener already holds ``max_open`` or its address ``max_per_ip`` (loopback
    exempt), and closed when its first request has not reached a handler within
    ``header_timeout`` seconds. Later requests on a kept-alive connection fall
    under aiohttp's own keep-alive timeout.
    """

    def __init__(
        self,
        name: str,
        *,
        max_open: int | None = None,
        max_per_ip: int = MAX_PER_IP,
        header_timeout: float = HEADER_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.max_open = max_open if max_open is not None else default_max_open()
        self.max_per_ip = max_per_ip
        self.header_timeout = header_timeout
        self.open = 0
        self.refused = 0
        self.timed_out = 0
        self._per_ip: dict[str, int] = {}
        self._waiting: dict[object, asyncio.TimerHandle] = {}
        self._log = RateLimitedLog(log)

    def site(self, runner: web.AppRunner, host: str, port: int) -> web.TCPSite:
        """A TCPSite for ``runner`` whose connections pass this guard."""
        return _GuardedSite(runner, host, port, self)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection's first request as arrived (its deadline is lifted)."""
        timer = self._waiting.pop(request.transport, None)
        if timer is not None:
            timer.cancel()
        return await handler(request)

    def _admit(self, transport: asyncio.BaseTransport, ip: str) -> str | None:
        """Registers a new connection from ``ip``, or says why it is refused."""
        if self.open >= self.max_open:
            return f"{self.open} connections open (the limit is {self.max_open})"
        # The exemption p2p's per-IP cap makes too (IPv4-mapped loopback included).
        if not is_loopback(ip) and self._per_ip.get(ip, 0) >= self.max_per_ip:
            return f"{self.max_per_ip} connections open from {ip}"
        self.open += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        loop = asyncio.get_running_loop()
        self._waiting[transport] = loop.call_later(self.header_timeout, self._expire, transport)
        return None

    def _release(self, transport: asyncio.BaseTransport, ip: str) -> None:
        timer = self._waiting.pop(transport, None)
        if timer is not None:
            timer.cancel()
        self.open -= 1
        left = self._per_ip.get(ip, 1) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        if self._waiting.pop(transport, None) is None:
            return
        self.timed_out += 1
        self._log(
            logging.INFO,
            "%s: closed a connection from %s that sent no request within %g s",
            self.name,
            _peer_ip(transport) or "?",
            self.header_timeout,
        )
        transport.abort()  # type: ignore[attr-defined]


def _peer_ip(transport: asyncio.BaseTransport) -> str:
    """The remote address of a TCP connection ("" if the transport cannot say)."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind :class:`ConnectionGuard`."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None
        self._ip = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ip = _peer_ip(transport)
        why = self._guard._admit(transport, ip)
        if why is not None:
            self._guard.refused += 1
            self._guard._log(
                logging.INFO, "%s: refused a connection from %s: %s", self._guard.name, ip, why
            )
            transport.abort()  # type: ignore[attr-defined]
            return
        self._ip = ip
        self._transport = transport
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is None:
            return  # refused: aiohttp never saw it
        self._guard._release(self._transport, self._ip)
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._transport is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._transport is not None else None

    def pause_writing(self) -> None:
        if self._transport is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._inner.resume_writing()


class _GuardedSite(web.TCPSite):
    """TCPSite.start with each connection's protocol wrapped by a guard."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard):
        super().__init__(runner, host, port)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        guard = self._guard
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _GuardedProtocol(guard, server()),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
