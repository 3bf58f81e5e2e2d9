"""An in-process Node under test: a scripted peer connected to it, and its JSON-RPC."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from tests.support.p2p_testkit import TestPeer

if TYPE_CHECKING:
    from node.app import Node


async def until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Wait until ``predicate()`` holds (node-side state: re-checked every few ms)."""

    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


async def connected_peer(node: Node, best_height: int = 0, best_work: int = 0) -> TestPeer:
    """A TestPeer that completed its handshake, advertising ``best_height`` and
    ``best_work``, returned once the node lists it as a peer."""
    peer = TestPeer(
        node.p2p_port,
        chain_id=node.params.chain_id,
        genesis_hash=node.chain.genesis.hash,
        best_height=best_height,
        best_work=best_work,
    )
    await peer.connect()
    await peer.handshake()
    await peer.wait_for(lambda: any(p.node_id == peer.node_id for p in node.p2p.peers))
    return peer


async def rpc_call(
    node: Node, method: str, *params: Any, token: bool = True, raw: bytes | None = None
) -> Any:
    """POST one JSON-RPC request (or the ``raw`` body) to the node: its decoded reply.
    ``token`` sends the cookie token that mutating methods need."""
    headers = {"Authorization": f"Bearer {node.token}"} if token else {}
    body = (
        raw
        if raw is not None
        else json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
        ).encode()
    )
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{node.rpc_port}/rpc", data=body, headers=headers) as r,
    ):
        return await r.json()
