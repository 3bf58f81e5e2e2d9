"""The block explorer every node serves on its RPC listener (``GET /``).

A page of static HTML, one script and one stylesheet shipped in this package
(no CDN, no build step), reading read-only JSON from ``/explorer/api/…``. Those
endpoints answer through the node's read-only JSON-RPC methods and views, so
the explorer never needs the cookie token and shows what ``pouw rpc`` shows;
the listener's Host/Origin guard covers them like every other route.
"""

from node.explorer.routes import add_routes, explorer_url

__all__ = ["add_routes", "explorer_url"]
