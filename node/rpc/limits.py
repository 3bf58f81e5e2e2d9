"""Limits of RPC methods that clients check too: the CLI validates its arguments against
them without importing the server (which brings aiohttp and the kernels)."""

from __future__ import annotations

MAX_MARKET_ROWS = 1_000
"""The most rows ``getmarket`` lists per section (its ``limit``)."""
