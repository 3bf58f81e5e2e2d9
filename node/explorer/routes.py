"""The explorer's routes: its page and assets, and read-only JSON under ``/explorer/api/``.

Single objects come from the node's read-only RPC methods (``RpcServer.read``),
so the explorer shows exactly what ``pouw rpc`` shows and can do no more than a
caller without the token. What the RPC has no method for (chain statistics,
an account's history, lists of jobs' activity and datasets, search) is
computed here from the chain and ``node.rpc.views``. A bad id is a JSON error with
HTTP 400 (malformed) or 404 (unknown), never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from consensus.blocks import NULL_RESULT_ROOT, Block
from consensus.datashare import (
    dataset_record,
    iter_access_logs,
    iter_dataset_models,
    iter_grants,
    published_model_record,
)
from consensus.difficulty import block_work
from consensus.errors import InvalidBlock
from consensus.keys import address_to_text, parse_address
from consensus.market import job_record
from consensus.pow import verify_pow
from consensus.state import DATASETS, JOBS, MODELS
from consensus.transactions import JobResultPayload, TransferPayload, TxKind
from kernels.tickets import ticket_threshold
from node.rpc.server import INVALID_PARAMS, REJECTED, RpcError
from node.rpc.views import tx_json

if TYPE_CHECKING:
    from consensus.chain import Chain
    from consensus.params import NetworkParams
    from node.mempool import Mempool
    from node.rpc.server import RpcServer

log = logging.getLogger("pouw.explorer")

STATIC_DIR = Path(__file__).parent / "static"
API = "/explorer/api"
DEFAULT_WINDOW = 60
"""Blocks the home page's statistics and charts cover unless ``?blocks=`` says otherwise."""
MAX_WINDOW = 1_000
ROLLING = 10
"""Blocks each point of the hashrate charts averages over."""
SCAN_BLOCKS = 2_000
"""How far back an account's history and the market's activity look…"""
SCAN_TXS = 100_000
"""…unless their blocks hold more transactions than this."""
SCAN_YIELD = 50
"""A scan lets the event loop run other work after this many blocks."""
MAX_ROWS = 200
"""Rows of history or activity one answer holds."""
DATA_KINDS = frozenset(
    {
        TxKind.TRANSFER,
        TxKind.DATASET_REGISTER,
        TxKind.ACCESS_GRANT,
        TxKind.ACCESS_REVOKE,
        TxKind.ACCESS_LOG,
        TxKind.MODEL_PUBLISH,
    }
)
"""Kinds that are not the market's: the market page shows every other kind."""


class ApiError(Exception):
    """A refusal to show the caller: HTTP status and a readable reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def add_routes(
    app: web.Application, chain: Chain, params: NetworkParams, mempool: Mempool, rpc: RpcServer
) -> None:
    """Serve the explorer on ``app`` (the node's RPC listener): it reads ``chain`` and
    ``mempool`` and answers through ``rpc``'s read-only methods."""
    explorer = Explorer(chain, params, mempool, rpc)
    index = STATIC_DIR / "index.html"

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

    app.router.add_get("/", page)
    app.router.add_get("/explorer", page)
    app.router.add_get("/explorer/", page)
    app.router.add_static("/explorer/static/", STATIC_DIR)
    for path, handler in [
        ("summary", explorer.summary),
        ("block/{id}", explorer.block),
        ("tx/{id}", explorer.transaction),
        ("account/{id}", explorer.account),
        ("market", explorer.market),
        ("job/{id}", explorer.job),
        ("model/{id}", explorer.model),
        ("datasets", explorer.datasets),
        ("dataset/{id}", explorer.dataset),
        ("peers", explorer.peers),
        ("search", explorer.search),
    ]:
        app.router.add_get(f"{API}/{path}", _endpoint(handler))
    app.router.add_get(f"{API}/{{tail:.*}}", _endpoint(_no_such_endpoint))


def _endpoint(
    handler: Callable[[web.Request], Awaitable[Any]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def answer(request: web.Request) -> web.Response:
        try:
            body = await handler(request)
        except ApiError as e:
            return web.json_response({"error": e.message}, status=e.status)
        except Exception:
            log.exception("explorer %s failed", request.path)
            return web.json_response({"error": "internal error"}, status=500)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    return answer


async def _no_such_endpoint(request: web.Request) -> Any:
    raise ApiError(404, f"no explorer endpoint {request.path[:100]}")


class Explorer:
    """The JSON the explorer's pages read, from one node."""

    def __init__(
        self, chain: Chain, params: NetworkParams, mempool: Mempool, rpc: RpcServer
    ) -> None:
        self.chain = chain
        self.params = params
        self.mempool = mempool
        self._rpc = rpc

    async def rpc(self, name: str, *params: Any) -> Any:
        """A read-only RPC method's answer; its refusal as a 400 (bad input) or 404."""
        try:
            return await self._rpc.read(name, *params)
        except RpcError as e:
            if e.code == INVALID_PARAMS:
                raise ApiError(400, e.message.removeprefix("invalid params: ")) from None
            if e.code == REJECTED:
                raise ApiError(404, e.message) from None
            raise

    def _job_id(self, block: Block) -> bytes:
        p = self.params
        return block.header.job.job_id(p.rank, p.tile_h, p.tile_w)

    # ------------------------------------------------------------ home

    async def summary(self, request: web.Request) -> dict[str, Any]:
        count = _query_int(request, "blocks", DEFAULT_WINDOW, 2, MAX_WINDOW)
        info = await self.rpc("getinfo")
        mining = await self.rpc("getmininginfo")
        series = self._series(count)
        return {
            "info": {
                k: info[k]
                for k in ("network", "height", "tip", "peers", "mempool", "mining", "sync")
            },
            "miner_hashrate_macs": mining["hashrate_macs"],
            "market": await self.rpc("getmarketinfo"),
            "window": _window_stats(series),
            "series": series,
        }

    def _claimed_macs(self, block: Block) -> int:
        """MACs of the posted jobs this block's results were delivered for: its own job
        when the header claimed it, and every job a ``job_result`` in it claims.

        A job is computed once (one attempt each), so what a block delivers is the
        jobs' m·k·n, not its expected work; a block on a job someone else had
        already claimed delivers nothing new.
        """
        state = self.chain.state
        own = job_record(state, self._job_id(block))
        claimed = own is not None and own["claim_kind"] == "block" and own["claim_id"] == block.hash
        recs = [own] if claimed else []
        for tx in block.txs:
            if isinstance(tx.payload, JobResultPayload):
                recs += [job_record(state, claim.job_id) for claim in tx.payload.claims]
        return sum(r["m"] * r["k"] * r["n"] for r in recs if r is not None)

    def _series(self, count: int) -> list[dict[str, Any]]:
        """One row per active block of the last ``count``: its interval, expected MACs
        (block work), the MACs of the posted jobs whose results it delivered (its own
        job's, claimed by its header, and those its job_result transactions claim),
        and the network's MAC/s over the ROLLING blocks up to it."""
        chain = self.chain
        jobs = chain.state.tables[JOBS]
        rows: list[dict[str, Any]] = []
        low = max(1, chain.height - count + 1)
        # Block 1's interval runs from genesis's fixed timestamp: not a block interval.
        prev_ms = chain.block_at(low - 1).header.timestamp_ms if low > 1 else None
        for height in range(low, chain.height + 1):
            block = chain.block_at(height)
            h = block.header
            interval = None if prev_ms is None else max(h.timestamp_ms - prev_ms, 1) / 1000
            prev_ms = h.timestamp_ms
            rows.append(
                {
                    "height": height,
                    "hash": block.hash.hex(),
                    "time_ms": h.timestamp_ms,
                    "interval_s": interval,
                    "work": block_work(h.target),
                    "useful": self._job_id(block) in jobs,
                    "useful_macs": self._claimed_macs(block),
                    "txs": len(block.txs),
                    "miner": address_to_text(h.miner),
                }
            )
        for i, row in enumerate(rows):
            recent = [r for r in rows[max(0, i - ROLLING + 1) : i + 1] if r["interval_s"]]
            span = sum(r["interval_s"] for r in recent)
            row["hashrate_macs"] = sum(r["work"] for r in recent) / span if span else None
            useful = sum(r["useful_macs"] for r in recent)
            row["useful_macs_per_s"] = useful / span if span else None
        return rows

    # ------------------------------------------------------------ chain

    async def block(self, request: web.Request) -> dict[str, Any]:
        ident = request.match_info["id"].strip()
        if _is_height(ident):
            out: dict[str, Any] = await self.rpc("getblockbyheight", int(ident))
        else:
            out = await self.rpc("getblock", ident)
        chain = self.chain
        block = chain.blocks[bytes.fromhex(out["hash"])]
        active = chain.is_active(block.hash)
        out["active"] = active
        out["confirmations"] = chain.height - block.header.height + 1 if active else 0
        above = block.header.height + 1
        out["next"] = chain.block_at(above).hash.hex() if active and above <= chain.height else None
        out["proof"] = await self._proof(block)
        return out

    async def _proof(self, block: Block) -> dict[str, Any]:
        """The PoUW proof as a reader checks it: which job, which tile, its ticket
        against the threshold (recomputed from the header, as a verifier does)."""
        h, p = block.header, self.params
        job_id = self._job_id(block)
        posted = job_id in self.chain.state.tables[JOBS]
        threshold = ticket_threshold(h.target, p.tile_h, p.tile_w, max(h.job.k, 1))
        out: dict[str, Any] = {
            "job_id": job_id.hex(),
            "job": "posted" if posted else "null" if h.result_root == NULL_RESULT_ROOT else "own",
            "tile": [h.proof.tile_i, h.proof.tile_j],
            "threshold": f"{threshold:064x}",
            "result_root": h.result_root.hex(),
            "work_macs": block_work(h.target),
        }
        if h.height == 0:
            out["ticket"] = None  # genesis carries no proof
            return out
        try:
            ticket = await asyncio.to_thread(verify_pow, h, p)
        except InvalidBlock as e:  # cannot happen on a connected block; say so if it does
            out["ticket"] = None
            out["error"] = str(e)
            return out
        out["ticket"] = f"{ticket:064x}"
        out["ticket_share"] = ticket / threshold
        return out

    async def transaction(self, request: web.Request) -> dict[str, Any]:
        out: dict[str, Any] = await self.rpc("gettransaction", request.match_info["id"].strip())
        return out

    async def account(self, request: web.Request) -> dict[str, Any]:
        out: dict[str, Any] = await self.rpc("getaccount", request.match_info["id"].strip())
        addr = parse_address(out["address"])
        pending = [
            {**tx_json(tx), "height": None, "block": None} for tx in self.mempool.by_sender(addr)
        ]

        def involving(block: Block) -> list[dict[str, Any]]:
            rows = []
            if block.header.miner == addr:
                rows.append({"kind": "coinbase", "amount": block.header.reward})
            for tx in block.txs:
                p = tx.payload
                received = isinstance(p, TransferPayload) and p.to == addr
                if tx.sender_address == addr or received:
                    rows.append({**tx_json(tx), "direction": "in" if received else "out"})
            return rows

        history, out["history_blocks"] = await self._scan(involving)
        out["history"] = pending + history
        return out

    async def _scan(
        self, rows_of: Callable[[Block], list[dict[str, Any]]]
    ) -> tuple[list[dict[str, Any]], int]:
        """Rows from the active chain's blocks, newest first, until MAX_ROWS rows,
        SCAN_BLOCKS blocks or SCAN_TXS transactions, and how many blocks were read. A
        stranger's request must not hold the event loop: it yields every SCAN_YIELD blocks,
        reading a copy of the active chain's hashes taken at the start."""
        chain = self.chain
        hashes = chain.active[max(1, len(chain.active) - SCAN_BLOCKS) :]
        out: list[dict[str, Any]] = []
        read = txs = 0
        for block_hash in reversed(hashes):
            block = chain.blocks.get(block_hash)
            if block is None:
                break
            where = {"height": block.header.height, "block": block_hash.hex()}
            out += [{**row, **where} for row in rows_of(block)]
            read += 1
            txs += len(block.txs)
            if len(out) >= MAX_ROWS or txs >= SCAN_TXS:
                break
            if read % SCAN_YIELD == 0:
                await asyncio.sleep(0)
        return out[:MAX_ROWS], read

    # ------------------------------------------------------------ market

    async def market(self, request: web.Request) -> dict[str, Any]:
        jobs = [_with_rate(j) for j in await self.rpc("listjobs")]
        # Open jobs best-paying first, as miners rank them; the others by status.
        jobs.sort(key=lambda j: (j["status"] != "open", j["status"], -j["fee_per_gmac"]))
        model_ids = sorted({model_id for model_id, step in self.chain.state.tables[MODELS]})

        def market_txs(block: Block) -> list[dict[str, Any]]:
            # Every kind but transfers and data sharing: posts, cancels, fraud proofs,
            # model records, claims, and any kind added later (from its payload's fields).
            return [tx_json(tx) for tx in block.txs if tx.kind not in DATA_KINDS]

        activity, scanned = await self._scan(market_txs)
        return {
            "info": await self.rpc("getmarketinfo"),
            "jobs": jobs,
            "activity": activity,
            "activity_blocks": scanned,
            "models": [await self.rpc("getmodel", m.hex()) for m in model_ids],
        }

    async def job(self, request: web.Request) -> dict[str, Any]:
        job_id = request.match_info["id"].strip()
        out = _with_rate(await self.rpc("getjob", job_id))
        return {"job_id": job_id.lower(), **out}

    async def model(self, request: web.Request) -> dict[str, Any]:
        """A model's training lineage (model_record) and, if published, its provenance."""
        ident = request.match_info["id"].strip()
        try:
            out: dict[str, Any] = await self.rpc("getmodel", ident)
        except ApiError as e:
            if e.status != 404:
                raise
            out = {"model_id": ident.lower(), "steps": []}
        published = published_model_record(self.chain.state, bytes.fromhex(ident))
        if published is None and not out["steps"]:
            raise ApiError(404, f"unknown model {ident[:100]}")
        out["published"] = None if published is None else _hexed(published)
        return out

    # ------------------------------------------------------------ data

    async def datasets(self, request: web.Request) -> list[dict[str, Any]]:
        state = self.chain.state
        out = []
        for ds_id in state.tables[DATASETS]:
            rec = dataset_record(state, ds_id)
            assert rec is not None
            out.append(
                {
                    "dataset_id": ds_id.hex(),
                    "owner": address_to_text(rec["owner"]),
                    "size": rec["size"],
                    "metadata": rec["metadata"],
                    "height": rec["height"],
                    "grants": sum(1 for _ in iter_grants(state, ds_id)),
                    "reads": sum(1 for _ in iter_access_logs(state, ds_id)),
                    "models": sum(1 for _ in iter_dataset_models(state, ds_id)),
                }
            )
        out.sort(key=lambda d: -d["height"])
        return out

    async def dataset(self, request: web.Request) -> dict[str, Any]:
        """A dataset's record and grants with its audit (what ``pouw data audit`` shows)."""
        ident = request.match_info["id"].strip()
        out: dict[str, Any] = await self.rpc("getdataset", ident)
        audit = await self.rpc("getaudit", ident)
        return {**out, **{k: audit[k] for k in ("events", "access_logs", "models", "served_reads")}}

    # ------------------------------------------------------------ network

    async def peers(self, request: web.Request) -> dict[str, Any]:
        info = await self.rpc("getinfo")
        return {
            "peers": await self.rpc("getpeers"),
            "bans": await self.rpc("getbans"),
            "p2p": info["p2p"],
            "node_id": info["node_id"],
            "p2p_port": info["p2p_port"],
        }

    # ------------------------------------------------------------ search

    async def search(self, request: web.Request) -> dict[str, str]:
        """Where a height, hash, txid, address, job, dataset or model id leads."""
        query = request.query.get("q", "").strip()
        if not query:
            raise ApiError(400, "type a height, block hash, txid, address, job or dataset id")
        if _is_height(query):
            if int(query) > self.chain.height:
                raise ApiError(
                    404, f"no block at height {query}: the tip is at {self.chain.height}"
                )
            return {"kind": "block", "id": query}
        text = query.lower().removeprefix("pw")
        if len(text) == 40 and _is_hex(text):
            return {"kind": "account", "id": "pw" + text}
        if len(query) != 64 or not _is_hex(query):
            raise ApiError(
                400,
                f"{query[:80]!r} is not a height, a 64-hex-digit hash or id, or an address "
                "(pw + 40 hex digits)",
            )
        raw = bytes.fromhex(query)
        state = self.chain.state
        found = [
            ("block", raw in self.chain.blocks),
            ("job", state.get(JOBS, raw) is not None),
            ("dataset", state.get(DATASETS, raw) is not None),
            ("model", (raw, 0) in state.tables[MODELS] or published_model_record(state, raw)),
        ]
        for kind, hit in found:
            if hit:
                return {"kind": kind, "id": query.lower()}
        try:
            await self.rpc("gettransaction", query)
        except ApiError:
            raise ApiError(404, f"nothing on this chain has the id {query.lower()}") from None
        return {"kind": "tx", "id": query.lower()}


def _window_stats(series: list[dict[str, Any]]) -> dict[str, Any]:
    """The home page's figures over the window: mean block interval, the network's
    MAC/s (block work over time), and the share of that work that delivered posted
    jobs' results (claimed by a block or a job_result; at most 1: block work is the
    expected work, the network may have been luckier)."""
    timed = [r for r in series if r["interval_s"]]
    span = sum(r["interval_s"] for r in timed)
    work = sum(r["work"] for r in series)
    useful = sum(r["useful_macs"] for r in series)
    hashrate = sum(r["work"] for r in timed) / span if span else None
    share = min(1.0, useful / work) if work else None
    return {
        "blocks": len(series),
        "interval_s": span / len(timed) if timed else None,
        "hashrate_macs": hashrate,
        "useful_share": share,
        "useful_blocks": sum(1 for r in series if r["useful"]),
        "useful_macs_per_s": hashrate * share
        if hashrate is not None and share is not None
        else None,
    }


def _with_rate(job: dict[str, Any]) -> dict[str, Any]:
    """A job record with its fee per 10^9 multiply-accumulates, as miners rank jobs."""
    macs = job["m"] * job["k"] * job["n"]
    return {**job, "fee_per_gmac": job["reward"] * 1e9 / macs if macs else 0.0}


def _hexed(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, bytes):
            out[key] = address_to_text(value) if len(value) == 20 else value.hex()
        else:
            out[key] = value
    return out


def _is_height(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes '²', which ``int`` refuses)."""
    return text.isascii() and text.isdigit() and len(text) <= 20


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not _is_height(text) or not low <= int(text) <= high:
        raise ApiError(400, f"{name} must be an integer in [{low}, {high}]")
    return int(text)
