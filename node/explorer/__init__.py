"""The block explorer every node serves on its RPC listener (``GET /``).

A page of static HTML, one script and one stylesheet shipped in this package
(no CDN, no build step), reading read-only JSON from ``/explorer/api/…``
(``routes.py``). Those endpoints answer through the node's read-only JSON-RPC
methods and views, so the explorer never needs the cookie token and shows what
``pouw rpc`` shows; the listener's Host/Origin guard covers them like every
other route.
"""

from __future__ import annotations

from node.explorer.routes import add_routes
from node.net.httpguard import WILDCARD_HOSTS

__all__ = ["add_routes", "explorer_url"]


def explorer_url(host: str, port: int) -> str:
    """The explorer's address on an RPC listener at ``host:port`` (a listener on every
    interface is reached on loopback)."""
    host = host.strip("[]")
    if host in WILDCARD_HOSTS:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"
