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
import errno
import json
import logging
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from consensus.blocks import Block, BlockHeader
from consensus.chain import AddResult, Chain
from consensus.keys import PrivateKey
from kernels.attempt import warm_up
from kernels.threads import layer_is_threadsafe, threading_layer
from node import explorer
from node.chain_service import ChainChange, ChainService
from node.config import NodeConfig
from node.datadir import DatadirLock, write_cookie
from node.mempool import Mempool
from node.metrics import Metrics, NodeCollector
from node.miner import Miner, MinerPool
from node.net.addresses import AddressBook
from node.net.bans import BanList
from node.net.errors import ProtocolViolation
from node.net.httpguard import AllowedHosts, ConnectionGuard, QuietServerLog, listener_guard
from node.net.p2p import PeerManager
from node.net.peer import PeerSession
from node.net.wire import (
    TXS_BATCH_BYTES,
    BlobChunk,
    BlobGet,
    BlobGetRange,
    BlobRange,
    BlockBody,
    BlockMsg,
    BlockTxn,
    CompactBlock,
    GetBlockTxn,
    GetData,
    GetHeaders,
    Headers,
    Inv,
    InvKind,
    NotFound,
    TxMsg,
    TxsMsg,
    encode_message,
)
from node.relay.blobs import BlobExchange
from node.relay.compact import CompactRelay
from node.relay.headersync import HeaderSync
from node.relay.sync_progress import SyncProgress
from node.relay.txrelay import TxRelay
from node.rpc.data import register_data_methods
from node.rpc.market import register_market_methods
from node.rpc.methods import register_methods
from node.rpc.server import MAX_REQUEST_BYTES, RpcServer
from node.services.data_host import DataHost
from node.services.market import MarketService
from node.store import FILENAME, Store
from node.txindex import TxIndex
from node.verifier import ProofOfWorkMemo, SignatureVerifier
from node.work import WorkSource, now_ms

log = logging.getLogger("pouw.node")


def _warm_up() -> None:
    """Load the kernels a node runs first; say so if they must run one at a time."""
    try:
        warm_up()
    except Exception:  # then each first call compiles what it needs, as without it
        log.exception("loading the kernels failed")
    if not layer_is_threadsafe():
        log.warning(
            "Numba's %s threading layer is not thread-safe (no OpenMP or TBB runtime "
            "loaded): parallel kernels run one at a time. An OpenMP runtime (Debian/Ubuntu: "
            "apt install libgomp1), or `pip install tbb` with LD_LIBRARY_PATH=%s/lib, lets "
            "them overlap",
            threading_layer(),
            sys.prefix,
        )


COMPILING_NOTICE_S = 5.0
"""A warm-up still running after this long is compiling (loading takes about a second)."""


async def _say_if_compiling(warm: asyncio.Task[None]) -> None:
    """Tell the user why the node is slow to answer on its first start on a machine."""
    done, _ = await asyncio.wait({warm}, timeout=COMPILING_NOTICE_S)
    if done:
        return
    started = time.monotonic() - COMPILING_NOTICE_S
    log.warning(
        "compiling the kernels for this CPU (the first start on this machine: a minute or "
        "more; later starts load them in about a second). Mining and the checks of peers' "
        "blocks wait for it"
    )
    await asyncio.wait({warm})  # _warm_up logs its own failure: the task never raises
    log.info("kernels compiled in %.0f s", time.monotonic() - started)


INV_TX = int(InvKind.TX)
INV_BLOCK = int(InvKind.BLOCK)
INV_CMPCT = int(InvKind.CMPCT_BLOCK)
_CHECKED_ON_THE_LOOP = (BlockMsg, BlockBody, CompactBlock, BlockTxn, Headers)
"""Messages whose handling checks a proof of work (kernels) on the event loop."""
BLOCK_FRAMES_KEPT = 8
PEERS_FILE = "peers.json"
BANS_FILE = "bans.json"
PEERS_SAVE_S = 900.0
"""How often the address book and bans are written besides at stop (Bitcoin Core's 15 min)."""


class Node:
    """One node process's worth of state; ``await start()``, then ``await stop()``."""

    # Made in start(), once the datadir is locked: declared here so that the RPC's view
    # of the node (NodeApi in node/rpc/methods.py) is checked against them.
    key: PrivateKey
    store: Store
    chain: Chain
    chain_service: ChainService
    compact: CompactRelay
    sync: HeaderSync
    txs: TxRelay
    work: WorkSource
    blobs: BlobExchange
    market: MarketService
    mempool: Mempool
    token: str
    rpc: RpcServer
    data_host: DataHost
    p2p: PeerManager

    def __init__(self, config: NodeConfig, lock: DatadirLock | None = None) -> None:
        """``lock``: the datadir's lock if the caller took it already (`pouw node` does,
        before it opens the log); otherwise ``start`` takes it."""
        self.config = config
        self._lock = lock if lock is not None else DatadirLock(config.datadir)
        self.params = config.params
        self.datadir = config.datadir
        self.metrics = Metrics()
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[Any]] = []
        self._runners: list[web.AppRunner] = []
        self.connection_guards: tuple[ConnectionGuard, ...] = ()
        """The P2P and RPC listeners' connection caps and header deadlines (start sets them)."""
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._peers_saved = time.monotonic()
        self.sync_progress = SyncProgress(draw=config.progress)
        self._block_frames: OrderedDict[bytes, bytes] = OrderedDict()
        self.miner: Miner | MinerPool | None = None
        self.p2p_port = 0
        self.rpc_port = 0
        self.explorer_url = ""
        self.pow_memo = ProofOfWorkMemo(self.params)
        self.verifier = SignatureVerifier()

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Lock the datadir (DatadirInUse if another node has it), load, listen, connect.

        Components are built in the order they depend on each other, each given only
        what it uses; the chain and store exist once the datadir is locked, so
        everything that reads them is built here.
        """
        self._lock.acquire()
        self.key = _load_node_key(self.datadir / "node_key")
        self.store = Store(self.datadir / FILENAME, self.params)
        self.chain = chain = self.store.load_chain(now_ms)
        self.mempool = mempool = Mempool(self.params)
        chain.verified_txids = mempool.verified_txids
        chain.check_pow = self.pow_memo.check
        chain.verify_signatures = self.verifier.verify_many
        self.metrics.height.set(chain.height)
        # Load the verifier's compiled kernels while the node starts and connects.
        self._warm = warm = asyncio.create_task(asyncio.to_thread(_warm_up), name="warm-up")
        self._tasks += [warm, asyncio.create_task(_say_if_compiling(warm), name="warm-up-notice")]

        listen_host, listen_port = self.config.listen
        # The node dispatches the peers' messages (PeerHandler): on_message below.
        self.p2p = p2p = PeerManager(
            self.key,
            self.params.chain_id,
            chain.genesis.hash,
            self,
            listen_host=listen_host,
            listen_port=listen_port,
            bootstrap=list(self.config.peers),
            max_outbound=self.config.max_outbound,
            max_inbound=self.config.max_inbound,
            addresses=AddressBook.load(self.datadir / PEERS_FILE),
            bans=BanList.load(self.datadir / BANS_FILE),
            connect_only=self.config.connect_only,
        )

        def connected() -> list[PeerSession]:
            return p2p.peers

        self.chain_service = service = ChainService(chain, self.store, self.metrics)
        self.txindex = TxIndex(chain)

        def unconnecting(peer: PeerSession, header: BlockHeader) -> bool:
            return self.sync.block_on_missing_parent(peer, header)  # built just below

        self.compact = CompactRelay(chain, mempool.get, connected, unconnecting)
        self.sync = HeaderSync(
            chain,
            self.params,
            self.sync_progress,
            peers=connected,
            compact_pending=self.compact.pending,
            process_block=service.process_block,
            flush_store=service.flush_store,
        )
        service.follow_download(self.sync)
        self.txs = TxRelay(chain, self.params.chain_id, mempool, p2p, self.metrics)
        self.blobs = BlobExchange(self.store, connected)
        self.market = MarketService(
            chain,
            self.params,
            mempool,
            self.blobs,
            admit_tx=self.txs.admit,
            miner_address=self.miner_address,
            claim_key=self.claim_key,
            dishonest=self.config.dishonest_results,
            withhold=self.config.withhold_results,
            reveal_withheld=self.config.reveal_withheld,
        )
        self.work = WorkSource(
            chain,
            self.params,
            mempool,
            self.market,
            self.metrics,
            miner_address=self.miner_address,
            process_block=service.process_block,
        )
        self._handlers = self._message_handlers()
        self.token = write_cookie(self.datadir)
        self.metrics.registry.register(
            NodeCollector(chain, mempool, p2p, self.sync_progress, self.datadir)
        )
        self.rpc = RpcServer(self.token, self.metrics)
        register_methods(self.rpc, self)
        register_market_methods(
            self.rpc, chain, self.params, mempool, self.market, self.blobs, self.txindex
        )
        self.data_host = DataHost(
            chain,
            self.params.chain_id,
            self.key.public_key,
            self.metrics,
            self.datadir / "datasets",
        )
        register_data_methods(self.rpc, chain, self.data_host)
        self._wire_listeners()

        # Peers reach the P2P listener under any name; it serves no web pages.
        p2p_guard = ConnectionGuard("p2p listener")
        p2p_app = web.Application(middlewares=[p2p_guard.middleware, listener_guard(None)])
        self.p2p.add_routes(p2p_app)
        self.data_host.add_routes(p2p_app)
        self.p2p_port = await self._serve(p2p_app, p2p_guard, listen_host, listen_port, "--listen")
        self.p2p.listen_port = self.p2p_port
        rpc_hosts = AllowedHosts(self.config.rpc[0], self.config.rpc_allow_hosts)
        rpc_guard = ConnectionGuard("rpc listener")
        rpc_app = web.Application(
            client_max_size=MAX_REQUEST_BYTES,
            middlewares=[rpc_guard.middleware, listener_guard(rpc_hosts)],
        )
        self.rpc.add_routes(rpc_app)
        explorer.add_routes(rpc_app, self.chain, self.params, self.mempool, self.rpc)
        self.rpc_port = await self._serve(rpc_app, rpc_guard, *self.config.rpc, "--rpc")
        self.connection_guards = (p2p_guard, rpc_guard)
        self.explorer_url = explorer.explorer_url(self.config.rpc[0], self.rpc_port)
        self._write_info()
        await self.p2p.start()
        self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks += self.txs.tasks()
        if self.config.mine:
            self.start_mining()
        log.info(
            "node %s on %s: p2p %s:%d, rpc %s:%d, explorer %s, height %d",
            self.key.public_key.hex()[:16],
            self.params.name,
            listen_host,
            self.p2p_port,
            self.config.rpc[0],
            self.rpc_port,
            self.explorer_url,
            self.chain.height,
        )

    async def _serve(
        self, app: web.Application, guard: ConnectionGuard, host: str, port: int, option: str
    ) -> int:
        """Listen on host:port behind ``guard``; an OSError naming ``option`` if the
        address is taken."""
        runner = web.AppRunner(app, access_log=None, logger=QuietServerLog())
        await runner.setup()
        self._runners.append(runner)
        site = guard.site(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be listened on ({e})"
            raise OSError(
                f"{option} {host}:{port}: the address {why} (port 0 picks a free one)"
            ) from None
        server = site._server
        assert server is not None
        return int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    def _write_info(self) -> None:
        info = {
            "pid": os.getpid(),
            "network": self.params.name,
            "p2p": f"{self.config.listen[0]}:{self.p2p_port}",
            "rpc": f"{self.config.rpc[0]}:{self.rpc_port}",
            "explorer": self.explorer_url,
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
        if not self._lock.held:  # start never got the datadir: nothing here is ours
            self._stopped.set()
            return
        try:
            if self.miner is not None:
                await self.miner.stop()
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.work.close()
            self.blobs.close()
            self.market.close()
            await self.market.pruning_done()  # before the store closes under it
            # Stop listening first: a peer that redials when we close its session is then
            # refused at once, instead of connecting to a server that is draining and
            # holding both nodes until its handshake times out.
            for runner in self._runners:
                for site in list(runner.sites):
                    await site.stop()
            await self.p2p.stop()
            try:
                self.save_peers()
            except OSError:
                log.exception("could not save the address book and bans")
            await self.rpc.close_subscribers()
            for runner in self._runners:
                await runner.cleanup()
            self.flush_store()
            self.store.close()
            self.verifier.close()
            (self.datadir / "node.json").unlink(missing_ok=True)
            log.info("node stopped at height %d", self.chain.height)
        finally:
            self._lock.release()
            self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    def request_stop(self) -> None:
        asyncio.get_running_loop().create_task(self.stop())

    # ------------------------------------------------------------ mining

    def start_mining(self) -> None:
        if self.miner is None:
            self.miner = self._new_miner()
            self.chain_service.on_tip_changed(self.miner.tip_changed)
            self.market.on_job_ready(self.miner.job_ready)
            self.txs.on_admitted(self._post_admitted)
        self.miner.start()

    def _new_miner(self) -> Miner | MinerPool:
        """One miner, or with ``--devices`` a pool of one per GPU, each with its own share
        of the work (``WorkSource.share``)."""
        loop = asyncio.get_running_loop()
        config = self.config
        if config.devices is None:
            return Miner(
                self.params,
                loop,
                self.work.work,
                self.work.submit,
                self.work.deliver,
                config.backend,
                config.threads,
                config.miner_nice,
                better_work=self.work.better_work,
            )
        busy: dict[int, frozenset[bytes]] = {}
        shares = [self.work.share(busy, slot) for slot in range(len(config.devices))]
        return MinerPool(
            [
                Miner(
                    self.params,
                    loop,
                    share.work,
                    share.submit,
                    share.deliver,
                    config.backend,
                    config.threads,
                    config.miner_nice,
                    better_work=share.better_work,
                    device=device,
                )
                for share, device in zip(shares, config.devices, strict=True)
            ]
        )

    def _post_admitted(self, txid: bytes) -> None:
        if self.miner is not None and self.miner.running:
            rate = self.market.post_admitted(txid)
            if rate is not None:
                self.miner.post_arrived(rate)

    async def stop_mining(self) -> None:
        if self.miner is not None:
            await self.miner.stop()

    @property
    def miner_address(self) -> bytes:
        if self.config.miner_key is not None:
            return self.config.miner_key.address
        return self.config.miner_address or self.key.address

    @property
    def claim_key(self) -> PrivateKey | None:
        """The key that signs this miner's job_result claims: ``--miner-key``, else the
        node key when it is the miner address; None when the node holds no such key."""
        if self.config.miner_key is not None:
            return self.config.miner_key
        return self.key if self.miner_address == self.key.address else None

    # ------------------------------------------------------------ blocks

    async def process_block(self, block: Block, source: PeerSession | None) -> AddResult | None:
        """Validate and add a block from a peer (or our miner) (``ChainService``)."""
        return await self.chain_service.process_block(block, source)

    def flush_store(self) -> None:
        """Write the batched store writes (``ChainService.flush_store``)."""
        self.chain_service.flush_store()

    @property
    def block_times(self) -> dict[bytes, float]:
        """When each recent block was first seen (s), for propagation metrics."""
        return self.chain_service.block_times

    def _wire_listeners(self) -> None:
        """Who hears of the chain's changes, in the order of the block flow
        (docs/architecture.md), and of admitted transactions; the miner's tip
        listener is added with the miner."""
        service = self.chain_service
        service.push_new_tips_with(self.compact.push)
        service.announce_blocks_with(self._announce_block)
        service.on_chain_changed(self.txindex.chain_changed)
        service.on_chain_changed(self.compact.chain_changed)
        service.on_chain_changed(self._mempool_follows)
        service.on_chain_changed(self.txs.chain_changed)
        service.on_chain_changed(self._publish_blocks)
        service.on_chain_changed(self.market.chain_changed)
        self.txs.on_admitted(self._publish_tx)

    def _announce_block(self, block_hash: bytes, source: PeerSession | None) -> int:
        return self.p2p.announce(INV_BLOCK, block_hash, exclude=source)

    def _mempool_follows(self, change: ChainChange) -> None:
        """Drop what was mined, take back what a reorg disconnected."""
        self.mempool.on_reorg(
            list(change.disconnected), list(change.connected), self.chain.state, self.chain.height
        )
        self.metrics.mempool.set(len(self.mempool))

    def _publish_blocks(self, change: ChainChange) -> None:
        """Tell the RPC's ``/ws`` subscribers of each connected block."""
        for b in change.connected:
            self.rpc.notify(
                {
                    "event": "block",
                    "hash": b.hash.hex(),
                    "height": b.header.height,
                    "txs": len(b.txs),
                }
            )

    def _publish_tx(self, txid: bytes) -> None:
        """Tell the RPC's ``/ws`` subscribers of an admitted transaction."""
        self.rpc.notify({"event": "tx", "txid": txid.hex()})

    # ------------------------------------------------------------ transactions

    async def submit_transaction(self, tx: Any, source: PeerSession | None = None) -> bytes:
        """Admit a transaction to the mempool and announce it; InvalidTransaction if refused."""
        txid = self.txs.admit(tx, source)
        self.metrics.mempool.set(len(self.mempool))
        return txid

    # ------------------------------------------------------------ blobs

    def put_blob(self, data: bytes) -> bytes:
        """Keep a blob (job operand, result) to serve to peers; its root (node.relay.blobs)."""
        return self.blobs.put(data)

    async def fetch_blob(self, root: bytes, timeout: float = 60.0) -> bytes:
        """The blob ``root`` from the store, or fetched from peers by verified ranges of chunks.

        Raises ``node.relay.blobs.BlobFetchError`` (saying why) if no peer gives it in time.
        """
        return await self.blobs.fetch(root, timeout)

    # ------------------------------------------------------------ PeerHandler

    def local_status(self) -> tuple[int, int]:
        return self.chain.height, self.chain.tip.work

    async def on_peer_ready(self, peer: PeerSession) -> None:
        self.metrics.peers.set(len(self.p2p.peers))
        await self.sync.ask_if_ahead(peer)

    async def on_peer_closed(self, peer: PeerSession) -> None:
        self.metrics.peers.set(len(self.p2p.peers))
        self.blobs.peer_closed(peer)
        self.txs.peer_closed(peer)
        self.compact.peer_closed(peer)
        await self.sync.peer_closed(peer)

    def _message_handlers(self) -> dict[type, Callable[[PeerSession, Any], Awaitable[None] | None]]:
        """Which component handles each message type after the handshake."""
        return {
            Inv: self._on_inv,
            GetData: self._on_getdata,
            TxsMsg: self._on_txs,
            TxMsg: self._on_tx,
            BlockMsg: self._on_block,
            BlockBody: self.sync.on_body,
            CompactBlock: self._on_compact_block,
            BlockTxn: self._on_block_txn,
            GetBlockTxn: self.compact.on_get_block_txn,
            GetHeaders: self.sync.on_getheaders,
            Headers: self.sync.on_headers,
            BlobGet: self.blobs.on_blob_get,
            BlobChunk: self.blobs.on_blob_chunk,
            BlobGetRange: self.blobs.on_blob_get_range,
            BlobRange: self.blobs.on_blob_range,
            NotFound: self._on_not_found,
        }

    async def on_message(self, peer: PeerSession, msg: Any) -> None:
        handler = self._handlers.get(type(msg))
        if not self._warm.done() and type(msg) in _CHECKED_ON_THE_LOOP:
            # Checking a header's proof runs the verifier's kernels on the loop. While the
            # warm-up still compiles them (a machine's first start: a minute), that call
            # would wait on Numba's compiler lock and stall RPC and every peer with it:
            # this peer's headers and blocks wait for the warm-up instead.
            await asyncio.wait({self._warm})
        if handler is not None:
            handled = handler(peer, msg)
            if handled is not None:  # the handlers that send or wait are coroutines
                await handled

    async def _on_not_found(self, peer: PeerSession, msg: NotFound) -> None:
        for item in msg.items:
            peer.take_requested(item.kind, item.hash)
            if item.kind == INV_TX:
                self.txs.not_found(peer, item.hash)
            self.compact.not_found(peer, item)
        self.sync.not_found(peer, [item.hash for item in msg.items])
        self.sync.schedule()

    async def _on_inv(self, peer: PeerSession, msg: Inv) -> None:
        wanted, txids = [], []
        for item in msg.items:  # the peer knows them all (PeerSession.note_inventory)
            if item.kind == INV_TX:
                txids.append(item.hash)
            elif item.kind == INV_BLOCK:
                known = self.chain.contains(item.hash) or self.sync.knows(item.hash)
                if not known and not self.compact.pending(item.hash):
                    wanted.append(item)
            else:
                raise ProtocolViolation(f"inv: {item.kind.name} is never announced")
        if wanted and self.sync.catching_up:
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
            elif item.kind == InvKind.BODY and item.hash in self.chain.blocks:
                peer.mark_known(INV_BLOCK, item.hash)
                peer.send_nowait(BlockBody(item.hash, self.chain.blocks[item.hash].txs))
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

    async def _on_compact_block(self, peer: PeerSession, msg: CompactBlock) -> None:
        block = await self.compact.on_compact_block(peer, msg)
        if block is not None:
            await self.accept_block(block, peer)

    async def _on_block_txn(self, peer: PeerSession, msg: BlockTxn) -> None:
        block = self.compact.on_block_txn(peer, msg)
        if block is not None:
            await self.accept_block(block, peer)

    async def accept_block(self, block: Block, peer: PeerSession) -> None:
        """A block ``peer`` sent, whole or rebuilt from a compact block: the next one of
        the headers-first download, or one announced at the tip."""
        if not await self.sync.on_block(peer, block):
            await self.process_block(block, source=peer)

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.sync.expire()
                self.chain_service.flush_store_when_due()
                self.mempool.expire(now_ms())
                self.txs.expire()
                self.compact.expire()
                self.metrics.mempool.set(len(self.mempool))
                if self.miner is not None:
                    self.metrics.hashrate.set(self.miner.hashrate())
                if time.monotonic() - self._peers_saved >= PEERS_SAVE_S:
                    self.save_peers()
            except Exception:
                log.exception("housekeeping failed")

    def save_peers(self) -> None:
        """Write the address book and the bans into the datadir (read back at start)."""
        self._peers_saved = time.monotonic()
        self.p2p.addresses.save(self.datadir / PEERS_FILE)
        self.p2p.save_bans(self.datadir / BANS_FILE)


def _send_txs(peer: PeerSession, txs: list[Any]) -> None:
    if len(txs) == 1:
        peer.send_nowait(TxMsg(txs[0]))
    elif txs:
        peer.send_nowait(TxsMsg(tuple(txs)))


def _load_node_key(path: Path) -> PrivateKey:
    """The node's P2P identity (not a wallet key), created on first start."""
    if path.exists():
        seed = bytes.fromhex(path.read_text().strip())
        return PrivateKey.from_seed(seed)
    key = PrivateKey.generate()
    path.write_text(key.seed.hex())
    path.chmod(0o600)
    return key
