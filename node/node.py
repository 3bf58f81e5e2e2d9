"""A pouwnet node: chain, store, mempool, peers, miner and RPC, with one lifecycle.

Everything that touches the chain runs on the event loop thread; the miner's
kernels run on their own thread (Numba ``nogil``), so the loop keeps serving
peers and RPC while it mines.

Block download is headers-first: a peer with more work is asked for headers
after our locator; their proofs are checked (one tile each, milliseconds), and
the blocks are fetched from several peers at once in a bounded window and
connected in height order. Requests that stall are given to another peer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from aiohttp import web

from consensus.blocks import Block, BlockHeader, JobSpec
from consensus.chain import AddResult, Chain
from consensus.errors import InvalidBlock
from consensus.keys import PrivateKey
from consensus.pow import Job, MinedBlock, check_job_shape, null_job
from consensus.template import TemplateBody, build_template
from consensus.validation import check_header_pow
from kernels.attempt import warm_up
from node.blobs import BlobExchange
from node.compact import CompactRelay
from node.config import NodeConfig
from node.errors import ProtocolViolation
from node.market import MarketService
from node.mempool import Mempool
from node.miner import Miner, MiningWork
from node.p2p import PeerManager
from node.peer import PeerSession
from node.rpc import Metrics, RpcServer, write_cookie
from node.rpc_data import DataHost, register_data_methods
from node.rpc_market import register_market_methods
from node.rpc_methods import register_methods
from node.store import Store
from node.sync_progress import SyncProgress
from node.txrelay import TxRelay
from node.wire import (
    MAX_HEADERS,
    TXS_BATCH_BYTES,
    BlobChunk,
    BlobGet,
    BlockMsg,
    BlockTxn,
    CompactBlock,
    GetBlockTxn,
    GetData,
    GetHeaders,
    Headers,
    Inv,
    InvItem,
    InvKind,
    NotFound,
    TxMsg,
    TxsMsg,
    encode_message,
    headers_reply,
)

log = logging.getLogger("pouw.node")

INV_TX = int(InvKind.TX)
INV_BLOCK = int(InvKind.BLOCK)
INV_CMPCT = int(InvKind.CMPCT_BLOCK)
DOWNLOAD_WINDOW = 256  # blocks requested ahead of the connected tip
PER_PEER_INFLIGHT = 32
STALL_SECONDS = 10.0
TEMPLATE_REFRESH_S = 1.0
"""A template on the same tip and job is rebuilt for new transactions at most this often."""
TEMPLATE_COST_RATIO = 10.0
TEMPLATE_MAX_TXS = 20_000
"""Transactions a block template takes from the mempool, at most (half a devnet block
holds ~27,000 transfers)."""
BLOCK_TIMES_KEPT = 10_000
BLOCK_FRAMES_KEPT = 8
STORE_BATCH_S = 0.25
"""While catching up, blocks are written to the store in one transaction this often."""


def now_ms() -> int:
    return int(time.time() * 1000)


class Node:
    """One node process's worth of state; ``await start()``, then ``await stop()``."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.params = config.params
        self.datadir = config.datadir
        self.metrics = Metrics()
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[Any]] = []
        self._runners: list[web.AppRunner] = []
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        # headers-first download state
        self._pending_headers: dict[bytes, BlockHeader] = {}
        self._download: deque[bytes] = deque()
        self._inflight: dict[bytes, tuple[PeerSession, float]] = {}
        self._downloaded: dict[bytes, Block] = {}
        self._sync_target = 0
        self._store_dirty = False
        self._store_synced = 0.0
        self.sync_progress = SyncProgress(draw=config.progress)
        self._null_jobs: OrderedDict[bytes, Job] = OrderedDict()
        self.txs = TxRelay(self)
        self.compact = CompactRelay(self)
        self._work_cost = 0.0
        self._block_frames: OrderedDict[bytes, bytes] = OrderedDict()
        self._work: tuple[bytes, JobSpec, tuple[int, int], float, MiningWork] | None = None
        self._template: TemplateBody | None = None
        self._template_removals = 0
        self._template_admissions = 0
        self.miner: Miner | None = None
        self.p2p_port = 0
        self.rpc_port = 0
        self.block_times: dict[bytes, float] = {}  # first seen (s), for propagation metrics

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.key = _load_node_key(self.datadir / "node_key")
        self.store = Store(self.datadir / "chain.sqlite", self.params)
        self.chain: Chain = self.store.load_chain(now_ms)
        # Load the verifier's compiled kernels while the node starts and connects.
        self._tasks.append(asyncio.create_task(asyncio.to_thread(warm_up), name="warm-up"))
        self.blobs = BlobExchange(self.store, lambda: self.p2p.peers)
        self.market = MarketService(self, dishonest=self.config.dishonest_results)
        self.mempool = Mempool(self.params)
        self.chain.verified_txids = self.mempool.verified_txids
        self.metrics.height.set(self.chain.height)
        self.token = write_cookie(self.datadir)
        self.rpc = RpcServer(self.token, self.metrics)
        register_methods(self.rpc, self)
        register_market_methods(self.rpc, self)
        self.data_host = DataHost(self, self.datadir / "datasets")
        register_data_methods(self.rpc, self)

        listen_host, listen_port = self.config.listen
        p2p_app = web.Application()
        self.p2p = PeerManager(
            self.key,
            self.params.chain_id,
            self.chain.genesis.hash,
            self,
            listen_host=listen_host,
            listen_port=listen_port,
            bootstrap=list(self.config.peers),
            max_outbound=self.config.max_outbound,
            max_inbound=self.config.max_inbound,
        )
        self.p2p.add_routes(p2p_app)
        self.data_host.add_routes(p2p_app)
        self.p2p_port = await self._serve(p2p_app, listen_host, listen_port)
        self.p2p.listen_port = self.p2p_port
        rpc_app = web.Application(client_max_size=4 * 1024 * 1024)
        self.rpc.add_routes(rpc_app)
        self.rpc_port = await self._serve(rpc_app, *self.config.rpc)
        self._write_info()
        await self.p2p.start()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks += self.txs.tasks()
        if self.config.mine:
            self.start_mining()
        log.info(
            "node %s on %s: p2p %s:%d, rpc %s:%d, height %d",
            self.key.public_key.hex()[:16],
            self.params.name,
            listen_host,
            self.p2p_port,
            self.config.rpc[0],
            self.rpc_port,
            self.chain.height,
        )

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runners.append(runner)
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    def _write_info(self) -> None:
        info = {
            "pid": os.getpid(),
            "network": self.params.name,
            "p2p": f"{self.config.listen[0]}:{self.p2p_port}",
            "rpc": f"{self.config.rpc[0]}:{self.rpc_port}",
            "node_id": self.key.public_key.hex(),
        }
        tmp = self.datadir / "node.json.tmp"
        tmp.write_text(json.dumps(info))
        tmp.replace(self.datadir / "node.json")

    async def stop(self) -> None:
        if self._stopping.is_set():
            # A stop is under way (say from request_stop): return once it is done,
            # so that `pouw node` does not end the loop under a half-finished stop.
            await self._stopped.wait()
            return
        self._stopping.set()
        try:
            if self.miner is not None:
                await self.miner.stop()
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.blobs.close()
            self.market.close()
            await self.p2p.stop()
            await self.rpc.close_subscribers()
            for runner in self._runners:
                await runner.cleanup()
            self._flush_store()
            self.store.close()
            (self.datadir / "node.json").unlink(missing_ok=True)
            log.info("node stopped at height %d", self.chain.height)
        finally:
            self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        asyncio.get_running_loop().create_task(self.stop())

    # ------------------------------------------------------------ mining

    def start_mining(self) -> None:
        if self.miner is None:
            self.miner = Miner(
                self.params,
                asyncio.get_running_loop(),
                self._mining_work,
                self._submit_mined,
                self.config.backend,
                self.config.threads,
                self.config.miner_nice,
            )
        self.miner.start()

    async def stop_mining(self) -> None:
        if self.miner is not None:
            await self.miner.stop()

    @property
    def miner_address(self) -> bytes:
        return self.config.miner_address or self.key.address

    def _null_job(self, prev_hash: bytes) -> Job:
        job = self._null_jobs.get(prev_hash)
        if job is None:
            job = null_job(prev_hash, self.params)
            self._null_jobs[prev_hash] = job
            while len(self._null_jobs) > 8:
                self._null_jobs.popitem(last=False)
        return job

    async def _mining_work(self) -> MiningWork:
        """A block template: reused while the tip and job stay the same, and rebuilt
        for new transactions at most every TEMPLATE_REFRESH_S (building one applies
        every transaction, which is the costliest thing a busy node does per block)."""
        tip = self.chain.tip.hash
        job = self.market.pick_job() or self._null_job(tip)
        revision = self.mempool.revision
        if self._work is not None:
            w_tip, w_job, w_rev, built, work = self._work
            # Refresh no sooner than TEMPLATE_COST_RATIO times the last build took:
            # templates then use at most ~1/TEMPLATE_COST_RATIO of the event loop.
            age = time.monotonic() - built
            fresh = w_rev == revision or age < max(TEMPLATE_REFRESH_S, self._work_cost)
            if w_tip == tip and w_job == job.spec and fresh:
                return work
        check_job_shape(job.spec, self.params)
        started = time.monotonic()
        # On the same tip the last template's transactions stay and only those admitted
        # since are applied; one that left the pool (replaced, evicted) means a fresh,
        # fee-ordered start.
        mempool = self.mempool
        base = self._template
        if base is None or base.parent != tip or self._template_removals != mempool.removals:
            base = None
            candidates = mempool.select(TEMPLATE_MAX_TXS, self.params.max_block_bytes // 2)
        else:
            room = max(0, TEMPLATE_MAX_TXS - len(base.txs))
            candidates = mempool.admitted_since(self._template_admissions, room)
        self._template_admissions = mempool.admissions
        template, body = build_template(
            self.chain,
            candidates,
            self.miner_address,
            job.spec,
            now_ms(),
            verified=True,
            on_top_of=base,
        )
        self._template, self._template_removals = body, self.mempool.removals
        work = MiningWork(template=template, job=job, txs=body.txs)
        self._work = (tip, job.spec, revision, time.monotonic(), work)
        self._work_cost = TEMPLATE_COST_RATIO * (time.monotonic() - started)
        return work

    async def _submit_mined(self, found: MinedBlock, work: MiningWork) -> None:
        if found.header.prev_hash != self.chain.tip.hash:
            return  # the tip moved while the last attempt ran: stale, drop it
        block = Block(self.market.finish(found, work.job), work.txs)
        self.metrics.mined.inc()
        log.info("mined block %d %s", block.header.height, block.hash.hex()[:16])
        await self.process_block(block, source=None)

    # ------------------------------------------------------------ blocks

    async def process_block(self, block: Block, source: PeerSession | None) -> AddResult | None:
        """Validate and add a block from a peer (or our miner); relay it if it is good."""
        h = block.hash
        if h not in self.block_times:
            self.block_times[h] = time.time()
            while len(self.block_times) > BLOCK_TIMES_KEPT:
                del self.block_times[next(iter(self.block_times))]
        try:
            result = self.chain.add_block(block)
        except InvalidBlock as e:
            self.metrics.blocks.labels("rejected").inc()
            self.store.record(self.chain, block, None)
            log.warning("rejected block %s from %s: %s", h.hex()[:16], _who(source), e)
            if source is not None:
                ban = "too far in the future" not in str(e)
                raise ProtocolViolation(f"invalid block: {e}", ban=ban) from None
            return None
        if result.status == "duplicate":
            return result
        catching_up = bool(self._download and self._sync_target)
        pushed = result.status == "connected" and self.chain.tip.hash == h and not catching_up
        if pushed:
            # A new tip goes to every peer as a compact block before we write it
            # down: each checks it itself, and a relay waiting on our disk would
            # only add to every stale race.
            self.compact.push(h, exclude=source)
        if result.connected and self.miner is not None:
            self.miner.tip_changed()  # stop mining on the old tip now, not after the disk write
        if catching_up:
            # Catching up: one store transaction per STORE_BATCH_S, not per block. A
            # crash loses at most that much, which is downloaded again on restart.
            self._store_dirty = True
            if time.monotonic() - self._store_synced >= STORE_BATCH_S:
                self._flush_store()
        else:
            self.store.record(self.chain, block, result)
        self.metrics.blocks.labels("accepted").inc()
        if result.status == "orphan":
            if source is not None:
                await source.send(GetHeaders(tuple(self.chain.locator()), bytes(32)))
            return result
        self._after_chain_change(result)
        if not pushed:
            self.p2p.announce(INV_BLOCK, h, exclude=source)
        self.metrics.blocks.labels("relayed").inc()
        return result

    def _flush_store(self) -> None:
        """Write what the chain changed since the last store write (see process_block)."""
        if self._store_dirty:
            self.store.sync(self.chain)
            self._store_dirty = False
        self._store_synced = time.monotonic()

    def _after_chain_change(self, result: AddResult) -> None:
        if result.connected:
            connected = [self.chain.blocks[h] for h in result.connected]
            for b in connected:
                self.compact.block_connected(b)
            self.mempool.on_reorg(
                list(result.disconnected), connected, self.chain.state, self.chain.height
            )
            self.metrics.height.set(self.chain.height)
            self.metrics.mempool.set(len(self.mempool))
            for b in connected:
                self.rpc.notify(
                    {
                        "event": "block",
                        "hash": b.hash.hex(),
                        "height": b.header.height,
                        "txs": len(b.txs),
                    }
                )
            if result.reorged:
                log.info("reorg: %d blocks replaced", result.reorged)

    # ------------------------------------------------------------ transactions

    async def submit_transaction(self, tx: Any, source: PeerSession | None = None) -> bytes:
        """Admit a transaction to the mempool and announce it; InvalidTransaction if refused."""
        txid = self.txs.admit(tx, source)
        self.metrics.mempool.set(len(self.mempool))
        return txid

    # ------------------------------------------------------------ blobs

    def put_blob(self, data: bytes) -> bytes:
        """Keep a blob (job operand, result) to serve to peers; its root (node.blobs)."""
        return self.blobs.put(data)

    async def fetch_blob(self, root: bytes, timeout: float = 60.0) -> bytes:
        """The blob ``root`` from the store, or fetched from peers chunk by verified chunk.

        Raises ``node.blobs.BlobFetchError`` (saying why) if no peer gives it in time.
        """
        return await self.blobs.fetch(root, timeout)

    # ------------------------------------------------------------ PeerHandler

    def local_status(self) -> tuple[int, int]:
        return self.chain.height, self.chain.tip.work

    async def on_peer_ready(self, peer: PeerSession) -> None:
        self.metrics.peers.set(len(self.p2p.peers))
        if peer.best_work > self.chain.tip.work:
            await peer.send(GetHeaders(tuple(self.chain.locator()), bytes(32)))

    async def on_peer_closed(self, peer: PeerSession) -> None:
        self.metrics.peers.set(len(self.p2p.peers))
        self.blobs.peer_closed(peer)
        self.txs.peer_closed(peer)
        self.compact.peer_closed(peer)
        for h, (p, _) in list(self._inflight.items()):
            if p is peer:
                del self._inflight[h]
        self._schedule_downloads()

    async def on_message(self, peer: PeerSession, msg: Any) -> None:
        if isinstance(msg, Inv):
            await self._on_inv(peer, msg)
        elif isinstance(msg, GetData):
            await self._on_getdata(peer, msg)
        elif isinstance(msg, TxsMsg):
            await self._on_txs(peer, msg)
        elif isinstance(msg, TxMsg):
            await self._on_tx(peer, msg)
        elif isinstance(msg, BlockMsg):
            await self._on_block(peer, msg)
        elif isinstance(msg, CompactBlock):
            await self.compact.on_compact_block(peer, msg)
        elif isinstance(msg, BlockTxn):
            await self.compact.on_block_txn(peer, msg)
        elif isinstance(msg, GetBlockTxn):
            self.compact.on_get_block_txn(peer, msg)
        elif isinstance(msg, GetHeaders):
            await self._on_getheaders(peer, msg)
        elif isinstance(msg, Headers):
            await self._on_headers(peer, msg)
        elif isinstance(msg, BlobGet):
            await self.blobs.on_blob_get(peer, msg)
        elif isinstance(msg, BlobChunk):
            self.blobs.on_blob_chunk(peer, msg)
        elif isinstance(msg, NotFound):
            for item in msg.items:
                peer.take_requested(item.kind, item.hash)
                if item.kind == INV_TX:
                    self.txs.not_found(peer, item.hash)
                self.compact.not_found(peer, item)
                if self._inflight.get(item.hash, (None, 0))[0] is peer:
                    del self._inflight[item.hash]
            self._schedule_downloads()

    async def _on_inv(self, peer: PeerSession, msg: Inv) -> None:
        wanted, txids = [], []
        for item in msg.items:  # the peer knows them all (PeerSession.note_inventory)
            if item.kind == INV_TX:
                txids.append(item.hash)
            elif item.kind == INV_BLOCK:
                known = self.chain.contains(item.hash) or item.hash in self._pending_headers
                busy = item.hash in self._inflight or self.compact.pending(item.hash)
                if not known and not busy:
                    wanted.append(item)
            else:
                raise ProtocolViolation(f"inv: {item.kind.name} is never announced")
        if wanted and (self._download or self._sync_target):
            peer.request(wanted)  # catching up: we hold none of their transactions
        elif wanted:
            self.compact.request(peer, [item.hash for item in wanted])
        if txids:
            self.txs.on_inv(peer, txids)

    async def _on_getdata(self, peer: PeerSession, msg: GetData) -> None:
        # Everything is queued at once: a GETDATA names up to MAX_INV items, and
        # yielding the loop per item made one for 1,000 transactions take seconds
        # (and held up the block request that the same peer sent right after it).
        missing = []
        txs: list[Any] = []  # sent in TXS frames of up to TXS_BATCH_BYTES
        size = 0
        for item in msg.items:
            if item.kind == INV_TX and (tx := self.mempool.get(item.hash)) is not None:
                peer.mark_known(INV_TX, item.hash)
                txs.append(tx)
                size += len(tx.encoded)
                if size >= TXS_BATCH_BYTES:
                    _send_txs(peer, txs)
                    txs, size = [], 0
            elif item.kind == INV_BLOCK and item.hash in self.chain.blocks:
                peer.mark_known(INV_BLOCK, item.hash)
                peer.send_frame(self._block_frame(item.hash))
            elif item.kind == INV_CMPCT and item.hash in self.chain.blocks:
                self.compact.serve(peer, item.hash)
            else:
                missing.append(item)
        _send_txs(peer, txs)
        if missing:
            peer.send_nowait(NotFound(tuple(missing)))
        await asyncio.sleep(0)

    def _block_frame(self, h: bytes) -> bytes:
        """The BLOCK frame of a block we have; the newest few are kept, since every
        peer asks for a new block at about the same time."""
        frame = self._block_frames.get(h)
        if frame is None:
            frame = encode_message(BlockMsg(self.chain.blocks[h]))
            self._block_frames[h] = frame
            while len(self._block_frames) > BLOCK_FRAMES_KEPT:
                self._block_frames.popitem(last=False)
        return frame

    async def _on_tx(self, peer: PeerSession, msg: TxMsg) -> None:
        self.txs.on_tx(peer, msg.tx)

    async def _on_txs(self, peer: PeerSession, msg: TxsMsg) -> None:
        for tx in msg.txs:
            self.txs.on_tx(peer, tx)

    async def _on_block(self, peer: PeerSession, msg: BlockMsg) -> None:
        block = msg.block
        if not peer.take_requested(INV_BLOCK, block.hash):
            raise ProtocolViolation("unrequested block")
        peer.mark_known(INV_BLOCK, block.hash)
        await self.accept_block(block, peer)

    async def accept_block(self, block: Block, peer: PeerSession) -> None:
        """A block ``peer`` sent, whole or rebuilt from a compact block: the next one of
        the headers-first download, or one announced at the tip."""
        h = block.hash
        if h in self._pending_headers:
            self._inflight.pop(h, None)
            if block.header != self._pending_headers[h]:
                raise ProtocolViolation("block does not match its announced header")
            self._downloaded[h] = block
            await self._connect_downloaded(peer)
            return
        await self.process_block(block, source=peer)

    async def _on_getheaders(self, peer: PeerSession, msg: GetHeaders) -> None:
        from consensus.chain import headers_after

        headers = headers_after(self.chain, msg.locator, MAX_HEADERS)
        if msg.stop != bytes(32):
            for i, hd in enumerate(headers):
                if hd.hash == msg.stop:
                    headers = headers[: i + 1]
                    break
        await peer.send(headers_reply(headers))

    async def _on_headers(self, peer: PeerSession, msg: Headers) -> None:
        prev_known = True
        added = 0
        for header in msg.headers:
            h = header.hash
            if self.chain.contains(h) or h in self._pending_headers:
                continue
            parent_known = header.prev_hash in self.chain.entries or (
                header.prev_hash in self._pending_headers
            )
            if not parent_known:
                prev_known = False
                break
            try:
                check_header_pow(header, self.params)
            except InvalidBlock as e:
                raise ProtocolViolation(f"headers: invalid proof of work: {e}") from None
            self._pending_headers[h] = header
            self._download.append(h)
            added += 1
            self._sync_target = max(self._sync_target, header.height)
            if added % 100 == 0:
                # Start downloading what is verified so far; let the loop breathe.
                self._schedule_downloads()
                await asyncio.sleep(0)
        if not prev_known:
            # The peer's chain forked below our locator's resolution: ask again.
            await peer.send(GetHeaders(tuple(self.chain.locator()), bytes(32)))
            return
        peer.best_height = max(peer.best_height, msg.headers[-1].height if msg.headers else 0)
        if msg.headers and msg.headers[-1].height < peer.best_height:
            # A reply stops at MAX_HEADERS or MAX_HEADERS_BYTES: ask for the rest.
            await peer.send(GetHeaders((msg.headers[-1].hash,), bytes(32)))
        if added:
            self.sync_progress.update(self.chain.height, self._sync_target)
            log.info(
                "headers: %d new from %s, syncing to height %d",
                added,
                peer.address,
                self._sync_target,
            )
        self._schedule_downloads()

    def _schedule_downloads(self) -> None:
        """Ask peers for the next blocks of the download window, up to
        PER_PEER_INFLIGHT each, the least loaded peer that has the block first."""
        if not self._download:
            return
        peers = [p for p in self.p2p.peers if p.best_height > self.chain.height]
        if not peers:
            return
        load = {id(p): 0 for p in peers}
        for p, _ in self._inflight.values():
            if id(p) in load:
                load[id(p)] += 1
        free = sum(max(0, PER_PEER_INFLIGHT - n) for n in load.values())
        inflight, downloaded, pending = self._inflight, self._downloaded, self._pending_headers
        batches: dict[int, tuple[PeerSession, list[InvItem]]] = {}
        now = time.monotonic()
        for i, h in enumerate(self._download):
            if i >= DOWNLOAD_WINDOW or free <= 0:
                break  # a block arriving frees one slot: the scan stops right there
            if h in inflight or h in downloaded or self.compact.pending(h):
                continue
            height = pending[h].height
            best = None
            for p in peers:
                n = load[id(p)]
                fits = n < PER_PEER_INFLIGHT and p.best_height >= height
                if fits and (best is None or n < load[id(best)]):
                    best = p
            if best is None:
                continue
            load[id(best)] += 1
            free -= 1
            inflight[h] = (best, now)
            batches.setdefault(id(best), (best, []))[1].append(InvItem(INV_BLOCK, h))
        for peer, items in batches.values():
            peer.request(items)

    async def _connect_downloaded(self, peer: PeerSession) -> None:
        while self._download and self._download[0] in self._downloaded:
            h = self._download.popleft()
            block = self._downloaded.pop(h)
            self._pending_headers.pop(h, None)
            try:
                await self.process_block(block, source=peer)
            except ProtocolViolation:
                self._forget_download_queue()
                raise
        self._schedule_downloads()
        if self._sync_target:
            self.sync_progress.update(self.chain.height, self._sync_target)
        if not self._download and self._sync_target:
            self._flush_store()
            log.info("sync: at height %d", self.chain.height)
            self._sync_target = 0

    def _forget_download_queue(self) -> None:
        self._download.clear()
        self._pending_headers.clear()
        self._downloaded.clear()
        self._inflight.clear()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                now = time.monotonic()
                for h, (peer, t) in list(self._inflight.items()):
                    if now - t > STALL_SECONDS:
                        del self._inflight[h]
                        log.info(
                            "block %s stalled at %s: asking another peer",
                            h.hex()[:16],
                            peer.address,
                        )
                self._schedule_downloads()
                if time.monotonic() - self._store_synced >= STORE_BATCH_S:
                    self._flush_store()
                self.mempool.expire(now_ms())
                self.txs.expire()
                self.compact.expire()
                self.metrics.mempool.set(len(self.mempool))
                if self.miner is not None:
                    self.metrics.hashrate.set(self.miner.hashrate())
            except Exception:
                log.exception("housekeeping failed")


def _send_txs(peer: PeerSession, txs: list[Any]) -> None:
    if len(txs) == 1:
        peer.send_nowait(TxMsg(txs[0]))
    elif txs:
        peer.send_nowait(TxsMsg(tuple(txs)))


def _who(peer: PeerSession | None) -> str:
    return "this node" if peer is None else peer.address


def _load_node_key(path: Path) -> PrivateKey:
    """The node's P2P identity (not a wallet key), created on first start."""
    if path.exists():
        seed = bytes.fromhex(path.read_text().strip())
        return PrivateKey.from_seed(seed)
    key = PrivateKey.generate()
    path.write_text(key.seed.hex())
    path.chmod(0o600)
    return key
