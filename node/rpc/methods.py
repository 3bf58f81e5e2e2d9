"""The node's JSON-RPC methods (what a wallet, an explorer and the testnet tools need)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from consensus.errors import DecodeError, InvalidTransaction
from consensus.keys import address_to_text, parse_address
from consensus.transactions import decode_tx
from node import collector
from node.miner import DeviceFigures, MinerCounters, MinerPool
from node.rpc.server import BATCH_YIELD, INVALID_PARAMS, REJECTED, RpcError, RpcServer, parse_hash
from node.rpc.views import block_json, header_json, tx_json

MAX_TX_BATCH = 1_000
MAX_REPLY_TXIDS = 100_000
"""The most txids ``getblocktimes`` lists (whole blocks, the newest first)."""
"""Transactions one sendtransactions call may carry."""

if TYPE_CHECKING:
    from consensus.chain import Chain
    from consensus.keys import PrivateKey
    from consensus.params import NetworkParams
    from node.config import NodeConfig
    from node.mempool import Mempool
    from node.miner import Miner
    from node.net.p2p import PeerManager
    from node.net.peer import PeerSession
    from node.relay.compact import CompactRelay
    from node.relay.sync_progress import SyncProgress
    from node.relay.txrelay import TxRelay
    from node.services.market import MarketService
    from node.txindex import TxIndex


def _address(text: Any) -> bytes:
    if not isinstance(text, str):
        raise RpcError(INVALID_PARAMS, "address must be a string")
    try:
        return parse_address(text)
    except ValueError as e:
        raise RpcError(INVALID_PARAMS, str(e)) from None


def _device_json(f: DeviceFigures) -> dict[str, Any]:
    """One GPU's row of ``getmininginfo``'s ``devices``."""
    c = f.counters
    return {
        "device": f.device,
        "mining": f.mining,
        "hashrate_macs": f.hashrate_macs,
        "blocks_found": f.blocks_found,
        "macs_done": c.macs_done,
        "macs_null": c.macs_null,
        "macs_jobs": c.macs_jobs,
        "jobs_attempted": c.jobs_attempted,
        "attempts_before_post": c.attempts_before_post,
        "attempts_interrupted": c.interruptions,
        "last_error": f.last_error,
    }


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise RpcError(INVALID_PARAMS, f"{what} must be a non-negative integer")
    return value


class NodeApi(Protocol):
    """What the core RPC methods read and drive on the node."""

    @property
    def config(self) -> NodeConfig: ...

    @property
    def params(self) -> NetworkParams: ...

    @property
    def key(self) -> PrivateKey: ...

    @property
    def chain(self) -> Chain: ...

    @property
    def mempool(self) -> Mempool: ...

    @property
    def p2p(self) -> PeerManager: ...

    @property
    def p2p_port(self) -> int: ...

    @property
    def compact(self) -> CompactRelay: ...

    @property
    def txs(self) -> TxRelay: ...

    @property
    def market(self) -> MarketService: ...

    @property
    def miner(self) -> Miner | MinerPool | None: ...

    @property
    def miner_address(self) -> bytes: ...

    @property
    def sync_progress(self) -> SyncProgress: ...

    @property
    def txindex(self) -> TxIndex: ...

    @property
    def block_times(self) -> dict[bytes, float]: ...

    @property
    def started_at(self) -> float: ...

    def start_mining(self) -> None:
        """Start the miner (if not running)."""
        ...

    async def stop_mining(self) -> None:
        """Stop the miner."""
        ...

    def request_stop(self) -> None:
        """Ask the node to stop."""
        ...

    async def submit_transaction(self, tx: Any, source: PeerSession | None = None) -> bytes:
        """Admit a transaction to the mempool and relay it; its txid."""
        ...


def register_methods(rpc: RpcServer, node: NodeApi) -> None:
    chain = lambda: node.chain  # noqa: E731 - the chain object is replaced on restart only

    async def getinfo() -> dict[str, Any]:
        c = chain()
        return {
            "network": node.params.name,
            "chain_id": node.params.chain_id,
            "height": c.height,
            "tip": c.tip.hash.hex(),
            "work": hex(c.tip.work),
            "genesis": c.genesis.hash.hex(),
            "peers": len(node.p2p.peers),
            "mempool": len(node.mempool),
            "p2p": node.p2p.stats.as_dict(),
            "tx_relay": {
                "wanted": len(node.txs.wanted),
                "requested": len(node.txs.requested),
                "admitting": len(node.txs.intake),
                "dropped_announcements": node.txs.dropped,
                "held_for_nonce_gaps": len(node.txs.held),
            },
            "compact": node.compact.stats.as_dict(),
            "mining": node.miner is not None and node.miner.running,
            "node_id": node.key.public_key.hex(),
            "p2p_port": node.p2p_port,
            "uptime_s": round(time.time() - node.started_at, 1),
            "sync": node.sync_progress.state(),
            "gc": collector.stats(),
        }

    async def getblock(block_hash: str, verbose: bool = True) -> dict[str, Any]:
        h = parse_hash(block_hash, "block hash")
        block = chain().blocks.get(h)
        if block is None:
            raise RpcError(REJECTED, f"unknown block {block_hash}")
        out = block_json(block, with_txs=verbose)
        out["active"] = chain().is_active(h)
        return out

    async def getblockbyheight(height: int, verbose: bool = True) -> dict[str, Any]:
        height = _int(height, "height")
        c = chain()
        if height > c.height:
            raise RpcError(REJECTED, f"height {height} is above the tip ({c.height})")
        return block_json(c.block_at(height), with_txs=verbose)

    async def getheaders(start: int, count: int = 100) -> list[dict[str, Any]]:
        start, count = _int(start, "start"), min(_int(count, "count"), 2000)
        c = chain()
        return [
            header_json(c.block_at(h).header)
            for h in range(start, min(c.height + 1, start + count))
        ]

    async def gettransaction(txid: str) -> dict[str, Any]:
        h = parse_hash(txid, "txid")
        tx = node.mempool.get(h)
        if tx is not None:
            return {**tx_json(tx), "confirmations": 0, "block": None}
        found = node.txindex.confirmed(h)
        if found is None:
            raise RpcError(REJECTED, f"unknown transaction {txid}")
        t, block = found
        height = block.header.height
        return {
            **tx_json(t),
            "confirmations": chain().height - height + 1,
            "block": block.hash.hex(),
            "height": height,
        }

    async def sendtransaction(tx_hex: str) -> str:
        if not isinstance(tx_hex, str):
            raise RpcError(INVALID_PARAMS, "transaction must be hex")
        try:
            tx = decode_tx(bytes.fromhex(tx_hex))
        except ValueError:
            raise RpcError(INVALID_PARAMS, "transaction is not hex") from None
        except DecodeError as e:
            raise RpcError(INVALID_PARAMS, f"malformed transaction: {e}") from None
        try:
            txid = await node.submit_transaction(tx)
        except InvalidTransaction as e:
            raise RpcError(REJECTED, f"transaction rejected: {e}") from None
        return txid.hex()

    async def sendtransactions(txs_hex: list[str]) -> list[dict[str, str]]:
        """Submit up to MAX_TX_BATCH transactions in one call (a wallet's or a load
        generator's batch); per transaction, {"txid"} or {"error"} saying why not."""
        if not isinstance(txs_hex, list) or len(txs_hex) > MAX_TX_BATCH:
            raise RpcError(
                INVALID_PARAMS, f"give a list of at most {MAX_TX_BATCH} hex transactions"
            )
        out: list[dict[str, str]] = []
        for i, tx_hex in enumerate(txs_hex):
            try:
                out.append({"txid": await sendtransaction(tx_hex)})
            except RpcError as e:
                out.append({"error": e.message})
            if i % BATCH_YIELD == BATCH_YIELD - 1:
                await asyncio.sleep(0)  # a big batch does not hold up blocks and peers
        return out

    async def getpublickey(address: str) -> str:
        """The Ed25519 public key behind an address, from any transaction it has sent
        (pending or on the active chain): what a data owner seals a grant to."""
        addr = _address(address)
        for tx in node.mempool.by_sender(addr):
            return str(tx.sender.hex())
        key = node.txindex.public_key(addr)
        if key is not None:
            return key.hex()
        raise RpcError(
            REJECTED,
            f"{address} has not sent a transaction on this chain, so its public key is "
            "unknown: ask its owner for it ('pouw data pubkey')",
        )

    async def getaccount(address: str) -> dict[str, Any]:
        addr = _address(address)
        balance, nonce = chain().state.account(addr)
        pending = node.mempool.by_sender(addr)
        return {
            "address": address_to_text(addr),
            "balance": balance,
            "nonce": nonce,
            "next_nonce": nonce + len(pending),
            "pending": len(pending),
            "immature": chain().state.get("locked", addr, 0),
        }

    async def getbalance(address: str) -> int:
        return chain().state.balance(_address(address))

    async def getmempool() -> dict[str, Any]:
        return {"size": len(node.mempool), "txids": [t.hex() for t in node.mempool.txids()][:1000]}

    async def getpeers() -> list[dict[str, Any]]:
        return [
            {
                "address": p.address,
                "direction": p.direction,
                "node_id": p.node_id.hex() if p.node_id else None,
                "best_height": p.best_height,
                "latency_ms": p.latency_ms,
                "connected_s": round(time.time() - p.connected_at, 1),
            }
            for p in node.p2p.peers
        ]

    async def getbans() -> list[dict[str, Any]]:
        return node.p2p.bans()

    async def getmininginfo() -> dict[str, Any]:
        """The miner's figures: MACs in all (``macs_done``), on null and on posted jobs,
        posted-job attempts (``jobs_attempted``; the newest 10,000 as [job id, MACs] in
        ``attempted_jobs``; ``attempts_before_post`` of them made while the job's post
        waited for its block; ``attempts_interrupted``: attempts that a better-paying job
        ran inside, between their row strips), the job_result claims this node sent
        (``claims_sent``), the result_challenges on them it answered
        (``challenges_answered``; ``results_recomputed``: those whose kept C was lost and
        was computed again from the job's operands) and how many other miners it splits
        the posted jobs with (``miners_seen``). With ``--devices``, ``devices`` has each
        GPU's figures (the others are their sums)."""
        m = node.miner
        # One consistent read: the miner thread counts while the RPC runs.
        none = MinerCounters(0, 0, 0, 0, 0, [])
        counted = m.counters() if m else none
        per_device = {}
        if node.config.devices is not None:
            figures = (
                m.device_figures()
                if isinstance(m, MinerPool)
                else [DeviceFigures(d, False, 0.0, 0, none, None) for d in node.config.devices]
            )
            per_device = {"devices": [_device_json(f) for f in figures]}
        return {
            "mining": m is not None and m.running,
            "backend": node.config.backend,
            "hashrate_macs": m.hashrate() if m else 0.0,
            "blocks_found": m.blocks_found if m else 0,
            "macs_done": counted.macs_done,
            "macs_null": counted.macs_null,
            "macs_jobs": counted.macs_jobs,
            "jobs_attempted": counted.jobs_attempted,
            "attempts_before_post": counted.attempts_before_post,
            "attempts_interrupted": counted.interruptions,
            "claims_sent": node.market.claims_sent,
            "challenges_answered": node.market.challenges_answered,
            "results_recomputed": node.market.results_recomputed,
            "miners_seen": len(node.market.rivals()),
            "attempted_jobs": [[j.hex(), n] for j, n in counted.attempted_jobs],
            "target": hex(chain().next_target()),
            "miner_address": address_to_text(node.miner_address),
            "null_job_shape": list(node.params.null_job_shape),
            **per_device,
        }

    async def setmining(enabled: bool) -> bool:
        if enabled:
            node.start_mining()
        else:
            await node.stop_mining()
        return bool(enabled)

    async def getblocktimes(count: int = 100, with_txids: bool = False) -> dict[str, Any]:
        """First-seen times (this node's clock, seconds) of the last ``count`` active
        blocks, and of the side blocks it knows above them: for the testnet tools'
        propagation, latency and stale-block measurements. Read-only. With
        ``with_txids``, only as many of the newest blocks as hold MAX_REPLY_TXIDS
        transactions (a reply of every txid in a long chain was 47 MB, built on the
        event loop)."""
        count = min(_int(count, "count"), 100_000)
        c = chain()
        low = max(0, c.height - count + 1)
        if with_txids:
            listed = 0
            for h in range(c.height, low - 1, -1):
                listed += len(c.blocks[c.active[h]].txs)
                if listed > MAX_REPLY_TXIDS:
                    low = h + 1
                    break

        def row(h: bytes, with_txs: bool) -> dict[str, Any]:
            b = c.blocks[h]
            out = {
                "hash": h.hex(),
                "height": b.header.height,
                "miner": address_to_text(b.header.miner),
                "first_seen": node.block_times.get(h),
                "txs": len(b.txs),
            }
            if with_txs:
                out["txids"] = [t.txid.hex() for t in b.txs]
            return out

        active = [row(c.active[h], bool(with_txids)) for h in range(low, c.height + 1)]
        side = [
            row(h, False)
            for h, b in list(c.blocks.items())
            if b.header.height >= low and not c.is_active(h)
        ]
        return {"height": c.height, "active": active, "side": side}

    async def stop() -> str:
        node.request_stop()
        return "stopping"

    handlers: list[tuple[str, Callable[..., Awaitable[Any]]]] = [
        ("getinfo", getinfo),
        ("getblock", getblock),
        ("getblockbyheight", getblockbyheight),
        ("getheaders", getheaders),
        ("gettransaction", gettransaction),
        ("getaccount", getaccount),
        ("getpublickey", getpublickey),
        ("getbalance", getbalance),
        ("getmempool", getmempool),
        ("getpeers", getpeers),
        ("getbans", getbans),
        ("getmininginfo", getmininginfo),
        ("getblocktimes", getblocktimes),
    ]
    for name, fn in handlers:
        rpc.method(name, fn)
    rpc.method("sendtransaction", sendtransaction, mutating=True)
    rpc.method("sendtransactions", sendtransactions, mutating=True)
    rpc.method("setmining", setmining, mutating=True)
    rpc.method("stop", stop, mutating=True)
