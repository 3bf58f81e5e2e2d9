"""JSON-RPC methods of the compute market (used by node.client.market and `pouw job`), and
its binary routes on the RPC listener: ``POST /operand`` (putoperand's upload, the
encoded matrix as the body) and ``GET /result/<job_id>`` (getresult's C as bytes), so
megabytes of operands and results cross without hex and JSON around them."""

from __future__ import annotations

import asyncio
import heapq
import logging
import statistics
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from consensus.keys import address_to_text
from consensus.market import (
    CLAIM_BLOCK,
    CLAIM_TX,
    MINED,
    OPEN,
    PAID,
    REFUNDED,
    claim_bond,
    header_claim,
    job_record,
)
from consensus.state import JOB_CHALLENGES, JOBS, State, iter_model_steps
from consensus.transactions import JobResultPayload, ResultRowsPayload, Transaction
from kernels.layout import transposed
from kernels.params import OPERAND_MAX, OPERAND_MIN
from node.relay.blobs import (
    MATRIX_HEADER_SIZE,
    MAX_BLOB_SIZE,
    BlobError,
    BlobFetchError,
    decode_matrix,
    encode_matrix,
)
from node.rpc.limits import MAX_MARKET_ROWS
from node.rpc.server import (
    DISK_FULL,
    INVALID_PARAMS,
    REJECTED,
    UNAUTHORIZED,
    RpcError,
    RpcServer,
    parse_hash,
    read_body,
    route_error,
)
from node.store import DiskFull

if TYPE_CHECKING:
    from consensus.blocks import BlockHeader
    from consensus.chain import Chain
    from consensus.params import NetworkParams
    from node.mempool import Mempool
    from node.relay.blobs import BlobExchange
    from node.services.market import MarketService
    from node.txindex import TxIndex

log = logging.getLogger("pouw.rpc")


def _job_json(rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in rec.items():
        if key in ("poster", "claimant") and value:
            out[key] = address_to_text(value)
        elif isinstance(value, bytes):
            out[key] = value.hex()
        else:
            out[key] = value
    return out


def fee_per_gmac(reward: int, m: int, k: int, n: int) -> float:
    """What a job pays per 10^9 multiply-accumulates (display only: the chain is integer)."""
    return round(reward * 1e9 / (m * k * n), 3)


def _address(value: bytes) -> str | None:
    return address_to_text(value) if value else None


def market_view(
    state: State, height: int, pending_claim: Callable[[bytes], bytes | None], limit: int
) -> dict[str, Any]:
    """The market at ``height`` from the chain state's job records, ``limit`` rows a section.

    * ``open_jobs``: open jobs, those still claimable first, best fee per GMAC first,
      with the pending job_result claiming each (from the mempool), if any;
    * ``recent_claims``: the latest claims (mined, paid or refunded), newest first, and
      ``claim_fee_per_gmac``: min / median / max fee per GMAC over them;
    * ``pending_payment``: claims waiting out their challenge window, soonest due first;
    * ``recent_payments``: settled claims (reward and bond paid at ``due``), newest first;
    * ``fraud_caught``: claims a fraud proof disproved (poster refunded, stake burned).
    """
    counts: Counter[str] = Counter()
    open_rows: list[tuple[tuple[bool, float, str], dict[str, Any]]] = []
    claimed: list[tuple[int, str, dict[str, Any]]] = []
    for job_id in state.tables[JOBS]:
        rec = job_record(state, job_id)
        assert rec is not None
        counts[rec["status"]] += 1
        m, k, n = rec["m"], rec["k"], rec["n"]
        row: dict[str, Any] = {
            "job_id": job_id.hex(),
            "shape": [m, k, n],
            "fee": rec["reward"],
            "fee_per_gmac": fee_per_gmac(rec["reward"], m, k, n),
        }
        if rec["status"] == OPEN:
            expired = rec["expiry"] <= height  # a claim must be in a block ≤ expiry
            pending = pending_claim(job_id)
            row |= {
                "poster": address_to_text(rec["poster"]),
                "expiry": rec["expiry"],
                "expired": expired,
                "pending_claim": pending.hex() if pending is not None else None,
            }
            open_rows.append(((expired, -row["fee_per_gmac"], row["job_id"]), row))
        elif rec["status"] in (MINED, PAID, REFUNDED):
            row |= {
                "status": rec["status"],
                "claimant": _address(rec["claimant"]),
                "claim_kind": rec["claim_kind"],
                "claim_id": rec["claim_id"].hex(),
                "claim_height": rec["claim_height"],
                "bond": rec["bond"],
                "due": rec["due"],
            }
            claimed.append((rec["claim_height"], row["job_id"], row))

    def newest(rows: list[tuple[int, str, dict[str, Any]]]) -> list[dict[str, Any]]:
        return [r for _, _, r in heapq.nlargest(limit, rows, key=lambda t: (t[0], t[1]))]

    recent = newest(claimed)
    fees = [r["fee_per_gmac"] for r in recent]
    awaiting = heapq.nsmallest(
        limit, (r for _, _, r in claimed if r["status"] == MINED), key=lambda r: r["due"]
    )
    return {
        "height": height,
        "jobs": {s: counts[s] for s in ("open", "mined", "paid", "refunded", "cancelled")},
        "open_jobs": [r for _, r in heapq.nsmallest(limit, open_rows, key=lambda t: t[0])],
        "recent_claims": recent,
        "claim_fee_per_gmac": {
            "count": len(fees),
            "min": min(fees) if fees else None,
            "median": statistics.median(fees) if fees else None,
            "max": max(fees) if fees else None,
        },
        "pending_payment": awaiting,
        "recent_payments": newest(
            [(r["due"], r["job_id"], r) for _, _, r in claimed if r["status"] == PAID]
        ),
        "fraud_caught": newest([t for t in claimed if t[2]["status"] == REFUNDED]),
        "limit": limit,
    }


MAX_FETCH_S = 600.0
"""The longest a caller may have the node wait for a blob from its peers."""


def _seconds(value: Any) -> float:
    if type(value) not in (int, float) or not 0 <= value <= MAX_FETCH_S:
        raise RpcError(
            INVALID_PARAMS, f"timeout must be a number of seconds in [0, {MAX_FETCH_S:g}]"
        )
    return float(value)


def _query_seconds(text: str) -> float:
    """A ``timeout`` query parameter as seconds, with :func:`_seconds`' checks."""
    try:
        value: Any = float(text)
    except ValueError:
        value = text
    return _seconds(value)


LAYOUTS = ("rows", "cols")


def max_operand_body(params: NetworkParams) -> int:
    """The largest body ``POST /operand`` takes on a network: the encoded matrix of the
    largest operand a job may have (max_job_dim × max_job_k int8 entries, A's m×k or
    B's k×n) after its header, and never more entries than one blob holds
    (MAX_BLOB_SIZE): devnet 16 MiB (4096×4096), testnet and main 256 MiB (16,384×16,384,
    or 4,096×65,536)."""
    return MATRIX_HEADER_SIZE + min(params.max_job_dim * params.max_job_k, MAX_BLOB_SIZE)


def register_market_methods(
    rpc: RpcServer,
    chain: Chain,
    params: NetworkParams,
    mempool: Mempool,
    market: MarketService,
    blobs: BlobExchange,
    txindex: TxIndex,
) -> None:
    """The compute market's methods: jobs read off ``chain`` and ``mempool``, operands
    and results kept in and fetched through ``blobs``, the miner's side from ``market``,
    a job's revealed rows found through ``txindex``."""

    def store_operand(blob: bytes, layout: str) -> str:
        """Decode, check and store an operand (runs off the event loop); its root as hex."""
        try:
            x = decode_matrix(blob)
        except BlobError as e:
            raise RpcError(INVALID_PARAMS, f"not an encoded matrix: {e}") from None
        if x.dtype != np.int8:
            raise RpcError(INVALID_PARAMS, "operands are int8")
        if x.size and (int(x.min()) < OPERAND_MIN or int(x.max()) > OPERAND_MAX):
            raise RpcError(INVALID_PARAMS, "operand values must lie in [-64, 63]")
        rows = x if layout == "rows" else transposed(x)
        return blobs.put_matrix(rows).hex()

    def store_hex_operand(matrix_hex: str, layout: str) -> str:
        try:
            blob = bytes.fromhex(matrix_hex)
        except ValueError as e:
            raise RpcError(INVALID_PARAMS, f"not an encoded matrix: {e}") from None
        return store_operand(blob, layout)

    def check_layout(layout: str) -> None:
        if layout not in LAYOUTS:
            raise RpcError(INVALID_PARAMS, "layout must be 'rows' (A) or 'cols' (B)")

    async def putoperand(matrix_hex: str, layout: str = "rows") -> str:
        """Keep an operand to serve to miners; returns its root (root_a, or root_b for cols)."""
        check_layout(layout)
        # Off the loop: a job's operand is megabytes to decode, hash into chunks and write,
        # and the node meanwhile relays blocks and serves the miners their operands.
        return await asyncio.to_thread(store_hex_operand, matrix_hex, layout)

    async def post_operand(request: web.Request) -> web.Response:
        """``POST /operand?layout=rows|cols``: putoperand with the encoded matrix as the
        body; answers ``{"root": hex}``."""
        if not rpc.authorized(request):
            message = "POST /operand needs the cookie token (Authorization: Bearer)"
            refusal = route_error(401, UNAUTHORIZED, message)
            refusal.headers["WWW-Authenticate"] = "Bearer"
            return refusal
        limit = max_operand_body(params)
        layout = request.query.get("layout", "rows")
        try:
            check_layout(layout)
            body = await read_body(request, limit)
            if body is None:
                message = (
                    f"operand too large: at most {limit} bytes on {params.name}, "
                    f"an encoded matrix of the largest operand a job may have"
                )
                return route_error(413, INVALID_PARAMS, message)
            root = await asyncio.to_thread(store_operand, body, layout)
        except RpcError as e:
            return route_error(e.status or 400, e.code, e.message)
        except DiskFull as e:
            log.error("POST /operand: %s", e)
            return route_error(507, DISK_FULL, str(e))  # Insufficient Storage
        return web.json_response({"root": root})

    async def getjob(job_id: str) -> dict[str, Any]:
        """A job's record: its claim (claimant, claim_kind, claim_id, bond, due) once
        claimed; while open, the bond a job_result must lock and any pending claim."""
        jid = parse_hash(job_id, "job id")
        rec = job_record(chain.state, jid)
        if rec is None:
            raise RpcError(REJECTED, f"unknown job {job_id}")
        out = _job_json(rec)
        if rec["status"] == OPEN:
            out["claim_bond"] = claim_bond(rec["reward"], params)
            tip = tip_claim(jid)
            pending = None if tip is not None else pending_claim(jid)
            if tip is not None:
                claim_id, claimant, kind = tip.hash, tip.miner, CLAIM_BLOCK
            elif pending is not None:
                claim_id, claimant, kind = pending.txid, pending.sender_address, CLAIM_TX
            out["pending_claim"] = claim_id.hex() if tip or pending else None
            out["pending_claimant"] = address_to_text(claimant) if tip or pending else None
            out["pending_claim_kind"] = kind if tip or pending else None
        unrevealed = chain.state.get(JOB_CHALLENGES, jid)
        if unrevealed is not None:  # the poster asked the claim for rows of C
            out["challenge"] = {
                "claim_id": rec["claim_id"].hex(),
                "rows_unrevealed": list(unrevealed),
            }
        return out

    async def getrevealedrows(job_id: str) -> dict[str, Any]:
        """The rows of C that the claim on a job has revealed on chain (``result_rows``
        transactions answering the poster's result_challenge), each with its branch against
        the claim's result_root, the transaction and its height: for the poster to check
        them against A·B (a wrong one makes a fraud proof; the client does it by itself).
        A job without a claim on chain has none (``claim_id`` null)."""
        jid = parse_hash(job_id, "job id")
        rec = job_record(chain.state, jid)
        if rec is None:
            raise RpcError(REJECTED, f"unknown job {job_id}")
        if rec["status"] not in (MINED, PAID, REFUNDED):
            return {"job_id": jid.hex(), "claim_id": None, "rows": []}
        claim_id = rec["claim_id"]
        rows: list[dict[str, Any]] = []
        for txid in txindex.reveals_of(jid):  # (a reorg may have answered another claim)
            found = txindex.confirmed(txid)
            assert found is not None  # the index follows the active chain
            tx, block = found
            height = block.header.height
            p = tx.payload
            assert type(p) is ResultRowsPayload
            if p.claim_id != claim_id:
                continue
            rows.extend(
                {
                    "index": r.index,
                    "row": r.row.hex(),
                    "branch": [h.hex() for h in r.branch],
                    "txid": txid.hex(),
                    "height": height,
                }
                for r in p.rows
            )
        return {"job_id": jid.hex(), "claim_id": claim_id.hex(), "rows": rows}

    def tip_claim(job_id: bytes) -> BlockHeader | None:
        """The tip's header, if it claims ``job_id`` (consensus ``header_claim``): the
        chain records that claim when the tip's child is applied (a block's state cannot
        hold its own hash); its miner stored C under its result_root before publishing
        it. A job_result in the mempool comes after it in chain order."""
        header = chain.tip.header
        return header if header_claim(chain.state, header, params) == job_id else None

    def pending_claim(job_id: bytes) -> Transaction | None:
        """The job_result in the mempool that claims ``job_id``, if any."""
        txid = mempool.claim_of(job_id)
        return None if txid is None else mempool.get(txid)

    def result_root(job_id: bytes, rec: dict[str, Any]) -> bytes:
        """The root of C a job's claim committed to: its claim on chain, or else the tip's
        header claiming it, or else the job_result pending in the mempool (their claimants
        stored C before sending them, and the client checks C itself); 409 when none
        claims the job."""
        if rec["status"] in (MINED, PAID, REFUNDED):
            root: bytes = rec["result_root"]
            return root
        tip = tip_claim(job_id) if rec["status"] == OPEN else None
        if tip is not None:
            return tip.result_root
        pending = pending_claim(job_id) if rec["status"] == OPEN else None
        if pending is not None:
            assert type(pending.payload) is JobResultPayload  # claim_of indexes only these
            for claim in pending.payload.claims:
                if claim.job_id == job_id:
                    return claim.result_root
        message = f"job {job_id.hex()[:16]} has no result yet: it is {rec['status']}"
        raise RpcError(REJECTED, message, status=409)

    async def listjobs(status: str | None = None) -> list[dict[str, Any]]:
        out = []
        for jid in chain.state.tables["jobs"]:
            rec = job_record(chain.state, jid)
            assert rec is not None
            if status is None or rec["status"] == status:
                out.append({"job_id": jid.hex(), **_job_json(rec)})
        return out

    async def result_blob(job_id: str, seconds: float) -> bytes:
        """C of a claimed job, or of one a pending job_result claims, as an encoded int32
        matrix; RpcErrors with the HTTP status ``GET /result`` answers them with."""
        jid = parse_hash(job_id, "job id")
        rec = job_record(chain.state, jid)
        if rec is None:
            raise RpcError(REJECTED, f"unknown job {job_id}", status=404)
        root = result_root(jid, rec)
        try:
            raw = await blobs.fetch(root, seconds)
        except BlobFetchError as e:
            raise RpcError(REJECTED, f"the result is not available: {e}", status=503) from None
        m, n = rec["m"], rec["n"]
        if len(raw) != 4 * m * n:
            raise RpcError(REJECTED, "the miner's result has the wrong size", status=502)

        def encoded() -> bytes:
            return encode_matrix(np.frombuffer(raw, dtype="<i4").reshape(m, n))

        return await asyncio.to_thread(encoded)  # megabytes to copy: off the loop

    async def getresult(job_id: str, timeout: float = 60.0) -> str:
        """The product C the claiming miner committed to (fetched from peers if needed),
        in a block or in a job_result still pending in the mempool."""
        blob = await result_blob(job_id, _seconds(timeout))
        return await asyncio.to_thread(blob.hex)  # megabytes of hex: off the loop

    async def get_result(request: web.Request) -> web.Response:
        """``GET /result/<job_id>[?timeout=S]``: getresult's C as the encoded matrix bytes."""
        try:
            seconds = _query_seconds(request.query.get("timeout", "60"))
            blob = await result_blob(request.match_info["job_id"], seconds)
        except RpcError as e:
            return route_error(e.status or 400, e.code, e.message)
        return web.Response(body=blob, content_type="application/octet-stream")

    async def getoperands(job_id: str, timeout: float = 60.0) -> dict[str, str]:
        """A job's operands A and B (encoded matrices), fetched from peers if needed."""
        seconds = _seconds(timeout)
        rec = job_record(chain.state, parse_hash(job_id, "job id"))
        if rec is None:
            raise RpcError(REJECTED, f"unknown job {job_id}")
        m, k, n = rec["m"], rec["k"], rec["n"]
        try:
            raw_a = await blobs.fetch(rec["root_a"], seconds)
            raw_bt = await blobs.fetch(rec["root_b"], seconds)
        except BlobFetchError as e:
            raise RpcError(REJECTED, f"the operands are not available: {e}") from None
        a = np.frombuffer(raw_a, dtype=np.int8).reshape(m, k)
        b = transposed(np.frombuffer(raw_bt, dtype=np.int8).reshape(n, k))
        return {"a": encode_matrix(a).hex(), "b": encode_matrix(b).hex()}

    async def getmarketinfo() -> dict[str, Any]:
        return {
            "open_jobs": len(market.open_jobs()),
            "jobs_ready": len(market.jobs),
            "jobs_mined": market.jobs_mined,
        }

    async def getmarket(limit: int = 100) -> dict[str, Any]:
        """Open jobs, recent claims and their fee per GMAC, claims pending payment,
        recent payments and fraud caught (``limit`` rows a section, at most 1,000)."""
        if type(limit) is not int or not 1 <= limit <= MAX_MARKET_ROWS:
            raise RpcError(INVALID_PARAMS, f"limit must be an integer in [1, {MAX_MARKET_ROWS}]")
        return market_view(chain.state, chain.height, mempool.claim_of, limit)

    async def getmodel(model_id: str) -> dict[str, Any]:
        """A model's recorded lineage (model_record txs): its owner and every step in order."""
        steps = list(iter_model_steps(chain.state, parse_hash(model_id, "model id")))
        if not steps:
            raise RpcError(REJECTED, f"unknown model {model_id}")
        return {
            "model_id": model_id,
            "owner": address_to_text(steps[0][1][0]),
            "steps": [
                {
                    "step": step,
                    "job_ids": [j.hex() for j in job_ids],
                    "weights_hash": weights.hex(),
                    "parent_hash": parent.hex(),
                    "dataset": dataset,
                    "height": height,
                }
                for step, (_, job_ids, weights, parent, dataset, height) in steps
            ],
        }

    rpc.method("putoperand", putoperand, mutating=True)
    rpc.method("getjob", getjob)
    rpc.method("getrevealedrows", getrevealedrows)
    rpc.method("listjobs", listjobs)
    rpc.method("getresult", getresult)
    rpc.method("getmarketinfo", getmarketinfo)
    rpc.method("getoperands", getoperands)
    rpc.method("getmodel", getmodel)
    rpc.method("getmarket", getmarket)
    rpc.route("POST", "/operand", post_operand)
    rpc.route("GET", "/result/{job_id}", get_result)
