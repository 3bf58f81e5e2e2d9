"""Transaction relay: what to ask peers for, admitting what they send, and announcing.

A node under load must keep blocks moving, so transactions flow through a
bounded pipeline instead of whatever queues peers fill:

- An INV's unknown txids go to ``wanted``, each with up to ``ANNOUNCERS`` peers
  that announced it, queued under the first. Only ``REQUEST_WINDOW`` transactions
  are asked for at once, and none while ``PIPELINE`` are already requested or
  waiting for admission: a peer's socket then never holds more than a window of
  transactions in front of the block that follows them, and the reader never
  stops to wait. Every peer has its own share, after Bitcoin Core's per-peer
  announcement and request limits: at most ``PEER_WANTED`` of its announcements
  wait (more are dropped, counted in ``dropped``) and at most ``PEER_IN_FLIGHT``
  of its requests are unanswered, and the window is filled from the peers in
  turn. So a peer that announces without end and answers nothing holds only its
  own share, never the transactions honest peers announce. A request that is
  not answered in ``REQUEST_TIMEOUT_S`` (or answered NOTFOUND, or whose peer
  leaves) goes to the next peer that announced the transaction.
- Transactions that arrive are admitted (signature, mempool rules) by one task
  that yields the event loop every ``SLICE_S``, so blocks are handled between
  them.
- Admitted transactions are announced to every other peer in one INV each
  ``RELAY_S`` (not one frame per transaction), and INVs of transactions travel
  behind blocks in the peers' send queues.
- A transaction refused only because the sender's earlier nonces are missing
  here is held (``HeldTxs``), not forgotten: a sender's transactions travel by
  separate announcements, and one of them refused here in a race (a job_result
  whose job another claim took first) leaves every later one a gap. Forgotten,
  those would reach the chain only in the sender's own blocks; held, they are
  admitted and relayed as soon as the earlier nonces arrive or a block confirms
  them (Ethereum's queued transactions, Bitcoin Core's orphan pool), bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from consensus.errors import InvalidTransaction
from consensus.transactions import check_tx_stateless
from node.mempool import NonceGap
from node.net.errors import ProtocolViolation
from node.net.peer import PeerSession
from node.net.wire import InvItem, InvKind

if TYPE_CHECKING:
    from consensus.chain import Chain
    from node.mempool import Mempool
    from node.metrics import Metrics
    from node.net.p2p import PeerManager

log = logging.getLogger("pouw.node")

INV_TX = int(InvKind.TX)
RELAY_S = 0.1
"""Admitted transactions are announced in one INV per peer this often."""
REQUEST_WINDOW = 1_000
"""Transactions asked of peers and not yet delivered, at most."""
PIPELINE = 2_000
"""No new requests while this many are requested or waiting for admission."""
MAX_WANTED = 50_000
"""Announced transactions waiting to be asked for; beyond, new announcements are dropped."""
PEER_WANTED = 5_000
"""One peer's announcements waiting to be asked for; beyond, its new ones are dropped."""
PEER_IN_FLIGHT = 250
"""One peer's requests not yet answered, at most (a quarter of the window)."""
ANNOUNCERS = 4
"""Peers remembered per wanted transaction: the first is asked, the others after it fails."""
REQUEST_TIMEOUT_S = 30.0
"""A request unanswered this long is given up and asked of the next announcer."""
SLICE_S = 0.005
"""Admission yields the event loop this often."""
SEEN_CACHE = 50_000
"""Recently refused txids, not asked for again."""
HELD_MAX = 1_000
"""Transactions held for a nonce gap, at most; beyond, the longest held go first."""
HELD_MAX_BYTES = 4 * 1024 * 1024
"""Their encoded bytes, at most (a transaction may be 256 KiB), the same way."""
HELD_PER_SENDER = 64
"""Held transactions of one sender, at most."""
HELD_PER_PEER = 250
"""Held transactions one peer sent, at most (a quarter of HELD_MAX): past the bounds the
peer holding the most loses its longest held, so one peer cannot push out the others'."""
HELD_AHEAD = 64
"""A transaction more than this many nonces past the sender's next one is not held."""
HELD_TTL_S = 600.0
"""A held transaction whose gap has not filled after this long is dropped."""

# A transaction refused for one of these reasons is the sender's fault, whatever
# the state, if it is invalid on its own (_valid_on_its_own): a bad signature or
# a wrong chain never happens to an honest peer. Stateful failures (nonce,
# balance, a job claimed meanwhile) do, in races.
_MALICIOUS = ("signature", "chain_id", "payload", "kind")


AdmittedListener = Callable[[bytes], None]
"""Hears the txid of each transaction admitted to the mempool (the RPC's event stream)."""


def _valid_on_its_own(tx: Any, chain_id: int) -> bool:
    """Whether ``tx`` passes every check that does not depend on the state.

    A stateful rule can name the payload too ("payload.claims[0].job_id: the job
    is mined, not open"): a job_result that lost a race for its job, relayed in
    good faith, fails so. Only a transaction that is invalid on its own proves
    that the peer that sent it misbehaves.
    """
    try:
        check_tx_stateless(tx, chain_id)
    except InvalidTransaction:
        return False
    return True


class HeldTxs:
    """Transactions refused only for a nonce gap, by sender and nonce, until the gap
    fills (see the module docstring): at most ``HELD_PER_SENDER`` a sender and
    ``HELD_MAX`` and ``HELD_MAX_BYTES`` in all, ``HELD_PER_PEER`` from one peer (past
    the bounds, the longest held of the peer that holds the most goes first), none past
    ``HELD_TTL_S``."""

    def __init__(self) -> None:
        self._by_sender: dict[bytes, dict[int, tuple[Any, PeerSession | None, float]]] = {}
        self._order: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()  # oldest first
        self._per_peer: dict[PeerSession | None, int] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, txid: object) -> bool:
        return txid in self._order

    def senders(self) -> list[bytes]:
        return list(self._by_sender)

    def holds_for(self, sender: bytes) -> bool:
        return sender in self._by_sender

    def hold(
        self, tx: Any, peer: PeerSession | None, sender: bytes, nonce: int, since: float
    ) -> bool:
        """Hold ``tx`` (sent by ``peer``); False if the sender's share is full or
        another transaction holds that nonce already (the first one stays)."""
        if len(tx.encoded) > HELD_MAX_BYTES:
            return False
        if peer is not None and self._per_peer.get(peer, 0) >= HELD_PER_PEER:
            return False
        held = self._by_sender.setdefault(sender, {})
        if nonce in held or len(held) >= HELD_PER_SENDER:
            if not held:
                del self._by_sender[sender]
            return False
        held[nonce] = (tx, peer, since)
        self._order[tx.txid] = (sender, nonce)
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        self.bytes += len(tx.encoded)
        while len(self._order) > HELD_MAX or self.bytes > HELD_MAX_BYTES:
            most = max(self._per_peer, key=lambda p: self._per_peer[p])
            self._drop(next(t for t, (s, n) in self._order.items() if self._peer_of(s, n) is most))
        return tx.txid in self._order

    def _peer_of(self, sender: bytes, nonce: int) -> PeerSession | None:
        return self._by_sender[sender][nonce][1]

    def lowest(self, sender: bytes) -> int | None:
        """The lowest nonce held for ``sender`` (None if none is)."""
        held = self._by_sender.get(sender)
        return min(held) if held else None

    def pop(self, sender: bytes, nonce: int) -> tuple[Any, PeerSession | None, float]:
        """The transaction held for ``sender`` at ``nonce``, no longer held."""
        entry = self._by_sender[sender][nonce]
        self._drop(entry[0].txid)
        return entry

    def expire(self, now: float) -> int:
        """Drop what was held longer than ``HELD_TTL_S``; how many."""
        old = [
            txid
            for txid, (sender, nonce) in self._order.items()
            if now - self._by_sender[sender][nonce][2] > HELD_TTL_S
        ]
        for txid in old:
            self._drop(txid)
        return len(old)

    def forget_peer(self, peer: PeerSession) -> None:
        """``peer`` closed: what it sent stays held, without a hold on its session."""
        for held in self._by_sender.values():
            for nonce, (tx, source, since) in list(held.items()):
                if source is peer:
                    held[nonce] = (tx, None, since)
        moved = self._per_peer.pop(peer, 0)
        if moved:
            self._per_peer[None] = self._per_peer.get(None, 0) + moved

    def _drop(self, txid: bytes) -> None:
        sender, nonce = self._order.pop(txid)
        held = self._by_sender[sender]
        tx, peer, _ = held.pop(nonce)
        self.bytes -= len(tx.encoded)
        left = self._per_peer[peer] - 1
        if left:
            self._per_peer[peer] = left
        else:
            del self._per_peer[peer]
        if not held:
            del self._by_sender[sender]


class TxRelay:
    """The transaction side of one node's gossip (see the module docstring)."""

    def __init__(
        self, chain: Chain, chain_id: int, mempool: Mempool, p2p: PeerManager, metrics: Metrics
    ) -> None:
        """``p2p``: the peers to announce to and to ban a peer that sends an invalid
        transaction from."""
        self.chain = chain
        self.chain_id = chain_id
        self.mempool = mempool
        self.p2p = p2p
        self.metrics = metrics
        self.wanted: dict[bytes, list[PeerSession]] = {}
        """Txids waiting to be asked for, with the peers that announced them (≤ ANNOUNCERS);
        each waits in the queue of its first."""
        self.requested: dict[bytes, tuple[PeerSession, float]] = {}
        self._spares: dict[bytes, list[PeerSession]] = {}
        """For each requested txid, the other peers that announced it."""
        self._queues: dict[PeerSession, OrderedDict[bytes, None]] = {}
        self._in_flight: dict[PeerSession, int] = {}
        self.intake: deque[tuple[PeerSession, Any]] = deque()
        self.rejected: OrderedDict[bytes, None] = OrderedDict()
        self.held = HeldTxs()
        self.dropped = 0
        """Announcements dropped because ``wanted`` was full (shown in getinfo)."""
        self._announce: dict[int, tuple[PeerSession | None, list[bytes]]] = {}
        self._ready = asyncio.Event()
        self._admitted_listeners: list[AdmittedListener] = []

    def on_admitted(self, listener: AdmittedListener) -> None:
        """``listener`` hears of each transaction admitted to the mempool, as it is."""
        self._admitted_listeners.append(listener)

    def tasks(self) -> list[asyncio.Task[Any]]:
        return [
            asyncio.create_task(self._admit_loop(), name="tx-admit"),
            asyncio.create_task(self._announce_loop(), name="tx-announce"),
        ]

    # ------------------------------------------------------------ admission

    def admit(self, tx: Any, source: PeerSession | None = None) -> bytes:
        """Admit to the mempool and queue the announcement (to every peer but ``source``,
        None for our own), then what was held for this nonce; InvalidTransaction if
        refused (NonceGap if only the sender's earlier nonces are missing)."""
        txid = self._admit(tx, source)
        if self.held.holds_for(tx.sender_address):
            self._release(tx.sender_address)
        return txid

    def _admit(self, tx: Any, source: PeerSession | None) -> bytes:
        txid: bytes = tx.txid
        if txid in self.mempool:
            return txid
        chain = self.chain
        try:
            self.mempool.add(tx, chain.state, chain.height, tip=chain.tip.header)
        except NonceGap:
            self.metrics.txs_rejected.inc()
            raise  # may be held (_admit_from_peer): not remembered as refused
        except InvalidTransaction:
            self.metrics.txs_rejected.inc()
            self._remember_refused(txid)
            raise
        self.metrics.txs_accepted.inc()
        self._announce.setdefault(id(source), (source, []))[1].append(txid)
        for listener in self._admitted_listeners:
            listener(txid)
        return txid

    def _remember_refused(self, txid: bytes) -> None:
        self.rejected[txid] = None
        while len(self.rejected) > SEEN_CACHE:
            self.rejected.popitem(last=False)

    def _release(self, sender: bytes) -> None:
        """Admit the sender's held transactions that its next nonce here reaches, in
        nonce order; those still behind a gap stay as they are held. One refused
        otherwise (its nonce used meanwhile) is dropped, remembered as refused."""
        state = self.chain.state
        while (nonce := self.held.lowest(sender)) is not None:
            if nonce > self.mempool.next_nonce(sender, state):
                return
            tx, peer, _ = self.held.pop(sender, nonce)
            with contextlib.suppress(InvalidTransaction):
                self._admit(tx, None if peer is None or peer.closing else peer)

    def chain_changed(self, change: object) -> None:
        """A new tip (after the mempool followed it): its blocks may have confirmed the
        nonces that held transactions wait for."""
        for sender in self.held.senders():
            self._release(sender)

    def _admit_from_peer(self, peer: PeerSession, tx: Any) -> None:
        try:
            self.admit(tx, peer)
        except NonceGap as e:
            ahead = e.nonce - e.next_nonce
            if not (
                ahead <= HELD_AHEAD
                and _valid_on_its_own(tx, self.chain_id)
                and self.held.hold(tx, peer, e.sender, e.nonce, time.monotonic())
            ):
                self._remember_refused(tx.txid)
        except InvalidTransaction as e:
            reason = str(e)
            if reason.startswith(_MALICIOUS) and not _valid_on_its_own(tx, self.chain_id):
                p2p = self.p2p
                p2p.stats.violations += 1
                log.warning("%s misbehaved: invalid transaction: %s", peer, reason)
                p2p.ban(peer, f"invalid transaction: {reason}")
        except Exception:
            log.exception("admitting transaction %s from %s failed", tx.txid.hex()[:16], peer)

    async def _admit_loop(self) -> None:
        intake = self.intake
        while True:
            await self._ready.wait()
            self._ready.clear()
            until = time.monotonic() + SLICE_S
            while intake:
                peer, tx = intake.popleft()
                if not peer.closing:  # a banned peer's queued transactions are dropped
                    self._admit_from_peer(peer, tx)
                if time.monotonic() >= until:
                    self.metrics.mempool.set(len(self.mempool))
                    self.request_more()
                    await asyncio.sleep(0)
                    until = time.monotonic() + SLICE_S
            self.metrics.mempool.set(len(self.mempool))
            self.request_more()

    async def _announce_loop(self) -> None:
        while True:
            await asyncio.sleep(RELAY_S)
            batches, self._announce = self._announce, {}
            for source, txids in batches.values():
                live = [t for t in txids if t in self.mempool]
                if live:
                    self.p2p.announce_many(INV_TX, live, exclude=source)

    # ------------------------------------------------------------ requests

    def on_inv(self, peer: PeerSession, txids: list[bytes]) -> None:
        """A peer announced these transactions: want the ones we lack."""
        mempool, wanted = self.mempool, self.wanted
        queue = self._queues.get(peer)
        for txid in txids:
            if txid in mempool or txid in self.rejected or txid in self.held:
                continue
            asked = self.requested.get(txid)
            if asked is not None:  # a spare, asked if this request fails
                spares = self._spares.setdefault(txid, [])
                if peer is not asked[0] and peer not in spares and len(spares) < ANNOUNCERS - 1:
                    spares.append(peer)
                continue
            others = wanted.get(txid)
            if others is not None:
                if peer not in others and len(others) < ANNOUNCERS:
                    others.append(peer)
                continue
            if queue is None:
                queue = self._queues.setdefault(peer, OrderedDict())
            if len(queue) >= PEER_WANTED or len(wanted) >= MAX_WANTED:
                self.dropped += 1
                continue
            wanted[txid] = [peer]
            queue[txid] = None
        self.request_more()

    def request_more(self) -> None:
        """Ask for wanted transactions while the pipeline has room, from the peers in
        turn, none beyond its PEER_IN_FLIGHT."""
        room = min(
            REQUEST_WINDOW - len(self.requested),
            PIPELINE - len(self.requested) - len(self.intake),
        )
        if room <= 0 or not self.wanted:
            return
        now = time.monotonic()
        batches: dict[PeerSession, list[bytes]] = {}
        mempool, wanted, in_flight = self.mempool, self.wanted, self._in_flight
        while room > 0:
            ready = [
                (peer, queue)
                for peer, queue in self._queues.items()
                if queue and not peer.closing and in_flight.get(peer, 0) < PEER_IN_FLIGHT
            ]
            if not ready:
                break
            share = max(1, room // len(ready))
            for peer, queue in ready:
                take = min(share, room, PEER_IN_FLIGHT - in_flight.get(peer, 0))
                while take > 0 and queue:
                    txid, _ = queue.popitem(last=False)
                    announcers = wanted.pop(txid)
                    if txid in mempool:
                        continue
                    self.requested[txid] = (peer, now)
                    if len(announcers) > 1:
                        self._spares[txid] = announcers[1:]
                    in_flight[peer] = in_flight.get(peer, 0) + 1
                    batches.setdefault(peer, []).append(txid)
                    take -= 1
                    room -= 1
                if room <= 0:
                    break
        for peer, txids in batches.items():
            peer.request(InvItem(InvKind.TX, t) for t in txids)

    def _answered(self, txid: bytes, peer: PeerSession) -> bool:
        """Forget ``peer``'s request for ``txid``; False if it was not that peer's."""
        asked = self.requested.get(txid)
        if asked is None or asked[0] is not peer:
            return False
        del self.requested[txid]
        left = self._in_flight.get(peer, 1) - 1
        if left > 0:
            self._in_flight[peer] = left
        else:
            self._in_flight.pop(peer, None)
        return True

    def _ask_another(self, txid: bytes) -> None:
        """Queue ``txid`` under the next peer that announced it, if one is left."""
        spares = [p for p in self._spares.pop(txid, ()) if not p.closing]
        if spares and txid not in self.mempool and txid not in self.wanted:
            self.wanted[txid] = spares
            self._queues.setdefault(spares[0], OrderedDict())[txid] = None

    def on_tx(self, peer: PeerSession, tx: Any) -> None:
        """A transaction we asked ``peer`` for: queue it for admission."""
        txid = tx.txid
        if not peer.take_requested(INV_TX, txid):
            raise ProtocolViolation("unrequested transaction")
        peer.mark_known(INV_TX, txid)
        self._answered(txid, peer)
        self._spares.pop(txid, None)
        self.intake.append((peer, tx))
        self._ready.set()

    def not_found(self, peer: PeerSession, txid: bytes) -> None:
        if self._answered(txid, peer):
            self._ask_another(txid)
            self.request_more()

    def peer_closed(self, peer: PeerSession) -> None:
        self.held.forget_peer(peer)
        for txid in self._queues.pop(peer, {}):
            announcers = [p for p in self.wanted.pop(txid, ()) if p is not peer]
            self._spares[txid] = announcers
            self._ask_another(txid)
        for txid, (p, _) in list(self.requested.items()):
            if p is peer:
                self._answered(txid, peer)
                self._ask_another(txid)
        self._in_flight.pop(peer, None)
        self.request_more()

    def expire(self) -> None:
        """Give up requests that were never answered and transactions held too long
        (housekeeping, once a second)."""
        self.held.expire(time.monotonic())
        limit = time.monotonic() - REQUEST_TIMEOUT_S
        for txid, (peer, asked) in list(self.requested.items()):
            if asked < limit:
                self._answered(txid, peer)
                self._ask_another(txid)
        self.request_more()
