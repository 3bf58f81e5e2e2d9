"""Transactions waiting for a block: admission, fee ordering, eviction, reorgs.

Every pending transaction has been checked on its own (form and signature,
once, on admission) and against the state at the tip *as if the sender's
earlier pending transactions had already applied*. So a sender's queue is a
run of consecutive nonces starting at its account nonce, every one of which
the sender can afford in order. Block templates take the best fee rate first
while keeping each sender's nonces in order.

Policy choices (not consensus): a transaction pays at least ``MIN_FEE_PER_KB``
for each started 1,000 encoded bytes (consensus allows a zero fee: without the
floor, keys that were never funded filled blocks and state for nothing); a
sender has at most ``MAX_PER_SENDER`` pending; transactions are ranked by fee
per encoded byte; replacing a pending (sender, nonce) needs a tenth more fee
(``replacement_fee``); a full pool evicts the cheapest transaction that is last
in its sender's queue (so no gap is left) only for a newcomer paying a higher rate, found
through a heap of the queues' last transactions kept as the pool changes (a
newcomer that pays no more than the cheapest is refused in O(log n)); a
transaction waiting longer than the TTL is dropped with its sender's later ones.

Job claims: a transaction is checked against the state the next block starts
from, so after the tip's own claim on a posted job (a block's header claim
takes effect before its child's transactions). At most one pending
``job_result`` claims a job: the first seen wins and a later one is refused
with the claim that holds the job. When a block claims a job, by header or by
``job_result``, the pending claims of it are dropped with their senders' later
transactions that no longer apply.

Disputes of a claim: a sender has at most one pending ``fraud_proof`` and one
``result_challenge`` of a job. Only one of either can ever apply (a refunded job
takes no second proof, a claim no second challenge), so a second would wait for a
block that refuses it, holding its sender's later nonces (a poster running ``pouw job
result`` twice sent two); it is refused naming the first. Another sender's may wait
beside it, whichever a block takes first applying: a proof held at a low fee must
not shut out a better-paying one. The disputes of a job no longer awaiting payment
are dropped, with their senders' later transactions that no longer apply.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, KeysView, Sequence
from dataclasses import dataclass

from consensus.blocks import Block, BlockHeader
from consensus.errors import InvalidTransaction
from consensus.market import MINED, OPEN, job_record
from consensus.params import NetworkParams
from consensus.state import State
from consensus.transactions import (
    FraudProofPayload,
    JobResultPayload,
    ResultChallengePayload,
    Transaction,
    TransferPayload,
    TxKind,
    check_tx_form,
    check_tx_signature,
)
from consensus.validation import apply_transaction, open_block

DEFAULT_MAX_TXS = 50_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_TTL_MS = 3_600_000
MIN_FEE_PER_KB = 1
"""Relay floor: base units of fee per started 1,000 encoded bytes (``min_fee``)."""
MAX_PER_SENDER = 1_000
"""Pending transactions one sender may have (a replacement within them costs O(queue))."""
RATE_SHIFT = 32
"""Fee rates are fee·2^32 // size: exact integers, ordered like fee per byte."""


def replacement_fee(fee: int) -> int:
    """The least fee that replaces a pending transaction paying ``fee``: a tenth more
    (at least 1), so that bumping one without end costs more each time (a 1-unit bump
    each time let one sender make the pool re-check its queue for nothing)."""
    return fee + max(1, fee // 10)


def min_fee(size: int) -> int:
    """The least fee the pool takes for a transaction of ``size`` encoded bytes."""
    return MIN_FEE_PER_KB * -(-size // 1000)


class NonceGap(InvalidTransaction):
    """Refused only because the sender's earlier nonces are missing here: a transaction
    that may apply once they arrive (the relay holds it, ``node.relay.txrelay``)."""

    def __init__(self, message: str, sender: bytes, nonce: int, next_nonce: int) -> None:
        super().__init__(message)
        self.sender = sender
        self.nonce = nonce
        self.next_nonce = next_nonce


@dataclass
class _Pending:
    tx: Transaction
    size: int
    rate: int
    spend: int  # how much the sender's balance drops when it applies
    arrival_ms: int
    order: int  # admission counter: ties in rate go to the first come
    transfer: bool  # a plain transfer: its validity depends on nonce and balance only


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Mempool:
    """Pending transactions by txid and by (sender, nonce)."""

    def __init__(
        self,
        params: NetworkParams,
        max_txs: int = DEFAULT_MAX_TXS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        ttl_ms: int = DEFAULT_TTL_MS,
        clock: Callable[[], int] = _now_ms,
    ) -> None:
        self.params = params
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self.ttl_ms = ttl_ms
        self.clock = clock  # milliseconds, for arrival times
        self._txs: dict[bytes, _Pending] = {}
        self._senders: dict[bytes, _Queue] = {}
        self._bytes = 0
        self._order = 0
        self._claims: dict[bytes, bytes] = {}
        """job id → txid of the pending job_result that claims it."""
        self._disputes: dict[tuple[TxKind, bytes, bytes], bytes] = {}
        """(kind, job id, sender) → txid of the sender's pending fraud_proof or
        result_challenge of the job's claim (module docstring)."""
        self._tails: list[tuple[int, int, bytes, int]] = []
        """(rate, -order, sender, nonce) of each sender's last pending transaction, a heap
        with stale entries dropped lazily (``_cheapest_tail``)."""
        self._tip: BlockHeader | None = None
        """The latest tip the pool was told of: its header claim applies before the next
        block's transactions."""
        self.removals = 0
        """Transactions that left the pool, for any reason (template reuse)."""

    # ------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, txid: object) -> bool:
        return txid in self._txs

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def revision(self) -> tuple[int, int]:
        """Changes whenever a transaction is admitted or removed (for template reuse)."""
        return self._order, len(self._txs)

    def get(self, txid: bytes) -> Transaction | None:
        p = self._txs.get(txid)
        return None if p is None else p.tx

    @property
    def admissions(self) -> int:
        """How many transactions have been admitted so far (the next one's number)."""
        return self._order

    def admitted_since(self, admissions: int, limit: int) -> list[Transaction]:
        """Up to ``limit`` of the transactions admitted after the first ``admissions``,
        in admission order: each sender's in nonce order, as admission demands."""
        newer: list[Transaction] = []
        for p in reversed(self._txs.values()):  # admission order, newest last
            if p.order < admissions:
                break
            newer.append(p.tx)
        newer.reverse()
        return newer[:limit]

    def txids(self) -> list[bytes]:
        return list(self._txs)

    def claim_of(self, job_id: bytes) -> bytes | None:
        """The txid of the pending job_result that claims ``job_id``, if any."""
        return self._claims.get(job_id)

    def pending_spend(self, addr: bytes) -> int:
        """What the sender's pending transactions take from its balance, all together."""
        return self._senders.get(addr, _EMPTY).spend

    def next_nonce(self, addr: bytes, state: State) -> int:
        """The nonce the sender's next transaction must carry here: the account's at
        ``state``, past the run of its pending ones."""
        account_nonce = state.nonce(addr)
        queue = self._senders.get(addr, _EMPTY)
        if queue.is_run_from(account_nonce):
            return account_nonce + len(queue)
        next_nonce = account_nonce
        while next_nonce in queue:
            next_nonce += 1
        return next_nonce

    def by_sender(self, addr: bytes) -> list[Transaction]:
        """The sender's pending transactions, by nonce."""
        queue = self._senders.get(addr, _EMPTY)
        return [queue[n].tx for n in sorted(queue)]

    def verified_txids(self) -> KeysView[bytes]:
        """Txids whose form and signature were checked on admission (for apply_body):
        a live view, not a copy (a block is connected with tens of thousands pending)."""
        return self._txs.keys()

    # ------------------------------------------------------------ admission

    def add(
        self,
        tx: Transaction,
        state: State,
        height: int,
        now_ms: int | None = None,
        tip: BlockHeader | None = None,
    ) -> None:
        """Admit ``tx`` for the block after ``height`` (the tip of ``state``).

        ``tip``, the header at ``height``: a node passes it so that the tip's
        claim on a posted job, which takes effect before the next block's
        transactions, is seen (a job_result of that job is refused). Without
        it the pool uses the tip of its last ``on_reorg``.

        Raises InvalidTransaction with the reason it is refused.
        """
        if tx.txid in self._txs:
            raise InvalidTransaction("already in the mempool")
        if tip is not None:
            self._tip = tip
        check_tx_form(tx, self.params.chain_id)
        size = len(tx.encoded)
        if tx.fee < min_fee(size):
            raise InvalidTransaction(
                f"fee: {tx.fee} is below the relay minimum of {min_fee(size)} "
                f"for {size} bytes ({MIN_FEE_PER_KB} per started 1,000)"
            )
        # Cheap state and policy checks before the signature, so junk costs little;
        # making room in a full pool (more work) only for a signed transaction.
        replaced = self._check_place(tx, state)
        self._check_claims(tx, replaced)
        check_tx_signature(tx)
        victims = self._victims(tx, size, _rate(tx.fee, size), replaced)
        spend = self._trial_apply(tx, state, height)
        self._check_affordable(tx, state, replaced, spend)
        for v in victims:
            self._remove(v)
        if replaced is not None:
            self._remove(replaced)
        self._insert(tx, spend, self.clock() if now_ms is None else now_ms)

    def _check_place(self, tx: Transaction, state: State) -> _Pending | None:
        """Nonce order, replace-by-fee, the sender's share and a first look at its
        balance: the pending transaction it replaces, if any."""
        sender = tx.sender_address
        account_nonce = state.nonce(sender)
        self._drop_stale(sender, account_nonce)
        queue = self._senders.get(sender, _EMPTY)
        next_nonce = self.next_nonce(sender, state)
        if tx.nonce < account_nonce:
            raise InvalidTransaction(
                f"nonce: {tx.nonce} was already used (next is {account_nonce})"
            )
        replaced = queue.get(tx.nonce)
        if replaced is None and len(queue) >= MAX_PER_SENDER:
            raise InvalidTransaction(
                f"sender: {len(queue)} pending transactions, the most a sender may have"
            )
        if replaced is None and state.balance(sender) - queue.spend < tx.fee:
            # Not held for a gap either: a key that cannot pay must not fill the relay.
            raise InvalidTransaction(
                f"balance: the sender cannot pay the fee {tx.fee} after its "
                f"{len(queue)} pending transactions"
            )
        if replaced is None and tx.nonce != next_nonce:
            raise NonceGap(
                f"nonce: {tx.nonce} leaves a gap (next is {next_nonce}, "
                f"{next_nonce - account_nonce} pending from this sender)",
                sender,
                tx.nonce,
                next_nonce,
            )
        if replaced is not None and tx.fee < replacement_fee(replaced.tx.fee):
            raise InvalidTransaction(
                f"replacement: fee {tx.fee} does not exceed the pending transaction's "
                f"fee {replaced.tx.fee} for nonce {tx.nonce} by a tenth "
                f"(at least {replacement_fee(replaced.tx.fee)})"
            )
        return replaced

    def _victims(
        self, tx: Transaction, size: int, rate: int, replaced: _Pending | None
    ) -> list[_Pending]:
        """The cheapest queue tails to evict to make room; refuses if they pay as much."""
        count = len(self._txs) + 1 - (replaced is not None)
        total = self._bytes + size - (replaced.size if replaced is not None else 0)
        if count <= self.max_txs and total <= self.max_bytes:
            return []
        if size > self.max_bytes:
            raise InvalidTransaction(f"mempool full: {size} bytes exceeds its whole capacity")
        sender = tx.sender_address
        cheapest = self._cheapest_tail()
        if cheapest is not None and cheapest[2] != sender and cheapest[0] >= rate:
            raise InvalidTransaction("mempool full: the newcomer does not pay a higher rate")
        tails = [
            (p.rate, -p.order, addr, n)
            for addr, queue in self._senders.items()
            if addr != sender
            for n, p in [max(queue.items())]
        ]
        heapq.heapify(tails)  # the lowest rate (and newest) on top
        victims: list[_Pending] = []
        while count > self.max_txs or total > self.max_bytes:
            if not tails:
                raise InvalidTransaction("mempool full")
            victim_rate, _, addr, n = heapq.heappop(tails)
            if victim_rate >= rate:
                raise InvalidTransaction("mempool full: the newcomer does not pay a higher rate")
            queue = self._senders[addr]
            victim = queue[n]
            victims.append(victim)
            count -= 1
            total -= victim.size
            if n - 1 in queue:  # its predecessor is now the sender's last
                p = queue[n - 1]
                heapq.heappush(tails, (p.rate, -p.order, addr, n - 1))
        return victims

    def _check_claims(self, tx: Transaction, replaced: _Pending | None) -> None:
        """A job_result may not claim a job another pending transaction claims, nor a
        fraud_proof or result_challenge dispute a job its sender disputes already."""
        p = tx.payload
        replaced_txid = replaced.tx.txid if replaced is not None else None
        if isinstance(p, FraudProofPayload | ResultChallengePayload):
            holder = self._disputes.get((tx.kind, p.job_id, tx.sender_address))
            if holder is not None and holder != replaced_txid:
                raise InvalidTransaction(
                    f"payload.job_id: this sender's {tx.kind.name.lower()} of job "
                    f"{p.job_id.hex()[:16]} is already pending: transaction {holder.hex()} "
                    "(only one can apply)"
                )
            return
        if type(p) is not JobResultPayload:
            return
        for i, claim in enumerate(p.claims):
            holder = self._claims.get(claim.job_id)
            if holder is not None and holder != replaced_txid:
                raise InvalidTransaction(
                    f"payload.claims[{i}].job_id: job {claim.job_id.hex()[:16]} is already "
                    f"claimed by pending transaction {holder.hex()[:16]} (the first seen wins)"
                )

    def _trial_apply(self, tx: Transaction, state: State, height: int) -> int:
        """Apply ``tx`` to the sender as its earlier pending txs would leave it; its spend.

        The consensus rule itself decides (nonce, balance, immature coinbase,
        enabled kinds, open jobs), on a fork of the state: the tip's state is
        never written, so a template built from it in another thread never reads
        a trial's writes. Market and data transactions see the tip's job claim
        first, as the next block will.
        """
        sender = tx.sender_address
        balance, account_nonce = state.account(sender)
        queue = self._senders.get(sender, _EMPTY)
        if queue.is_run_from(account_nonce) and tx.nonce == account_nonce + len(queue):
            ahead_count, ahead_spend = len(queue), queue.spend  # appending: all are ahead
        else:
            ahead = [queue[n] for n in range(account_nonce, tx.nonce)]
            ahead_count, ahead_spend = len(ahead), sum(p.spend for p in ahead)
        start = balance - ahead_spend
        if start < 0:
            raise InvalidTransaction(
                f"balance: the sender's {ahead_count} pending transactions already spend "
                f"more than its {balance}"
            )
        tip = self._tip
        trial = state.fork()
        trial.begin()
        if tip is not None and tip.height == height and type(tx.payload) is not TransferPayload:
            open_block(trial, tip, self.params)
        trial.set_account(sender, start, tx.nonce)
        try:
            apply_transaction(trial, tx, height + 1, self.params)
        except InvalidTransaction as e:
            if ahead_count:
                raise InvalidTransaction(
                    f"{e} (after its {ahead_count} pending transactions)"
                ) from None
            raise
        return start - trial.balance(sender)

    def _check_affordable(
        self, tx: Transaction, state: State, replaced: _Pending | None, spend: int
    ) -> None:
        """A replacement must leave the sender's later pending txs affordable too."""
        if replaced is None:
            return
        queue = self._senders[tx.sender_address]
        total = queue.spend - replaced.spend + spend
        balance = state.balance(tx.sender_address)
        if total > balance:
            raise InvalidTransaction(
                f"balance: with this replacement the sender's pending transactions spend "
                f"{total} but it has {balance}"
            )

    def _insert(self, tx: Transaction, spend: int, arrival_ms: int) -> None:
        size = len(tx.encoded)
        transfer = type(tx.payload) is TransferPayload
        p = _Pending(tx, size, _rate(tx.fee, size), spend, arrival_ms, self._order, transfer)
        self._order += 1
        self._txs[tx.txid] = p
        queue = self._senders.get(tx.sender_address)
        if queue is None:
            queue = self._senders[tx.sender_address] = _Queue()
        queue.put(tx.nonce, p)
        if tx.nonce == queue.high:
            self._push_tail(tx.sender_address, tx.nonce, p)
        self._bytes += size
        if type(tx.payload) is JobResultPayload:
            for claim in tx.payload.claims:
                self._claims[claim.job_id] = tx.txid
        elif isinstance(tx.payload, FraudProofPayload | ResultChallengePayload):
            self._disputes[(tx.kind, tx.payload.job_id, tx.sender_address)] = tx.txid

    def _remove(self, p: _Pending) -> None:
        self.removals += 1
        del self._txs[p.tx.txid]
        if type(p.tx.payload) is JobResultPayload:
            for claim in p.tx.payload.claims:
                if self._claims.get(claim.job_id) == p.tx.txid:
                    del self._claims[claim.job_id]
        elif isinstance(p.tx.payload, FraudProofPayload | ResultChallengePayload):
            key = (p.tx.kind, p.tx.payload.job_id, p.tx.sender_address)
            if self._disputes.get(key) == p.tx.txid:
                del self._disputes[key]
        sender = p.tx.sender_address
        queue = self._senders[sender]
        queue.take(p.tx.nonce)
        if not queue:
            del self._senders[sender]
        elif p.tx.nonce > queue.high:  # it was the last: the one before it is now
            self._push_tail(sender, queue.high, queue[queue.high])
        self._bytes -= p.size

    def _push_tail(self, sender: bytes, nonce: int, p: _Pending) -> None:
        tails = self._tails
        heapq.heappush(tails, (p.rate, -p.order, sender, nonce))
        if len(tails) > 2 * len(self._senders) + 1024:  # mostly stale: rebuild
            live = [t for t in tails if self._is_tail(t)]
            heapq.heapify(live)
            self._tails = live

    def _is_tail(self, entry: tuple[int, int, bytes, int]) -> bool:
        _, neg_order, sender, nonce = entry
        queue = self._senders.get(sender)
        if queue is None or queue.high != nonce:
            return False
        p = queue.get(nonce)
        return p is not None and p.order == -neg_order

    def _cheapest_tail(self) -> tuple[int, int, bytes, int] | None:
        """The (rate, -order, sender, nonce) of the cheapest last pending transaction."""
        tails = self._tails
        while tails and not self._is_tail(tails[0]):
            heapq.heappop(tails)
        return tails[0] if tails else None

    def _drop_stale(self, sender: bytes, account_nonce: int) -> None:
        queue = self._senders.get(sender)
        if queue and queue.low < account_nonce:
            for n in [n for n in queue if n < account_nonce]:
                self._remove(queue[n])

    # ------------------------------------------------------------ templates

    def select(self, max_count: int, max_bytes: int) -> list[Transaction]:
        """Best fee rate first, each sender's transactions in nonce order.

        Each sender's next transaction is a candidate; taking one makes the sender's
        following one a candidate. A sender whose next transaction does not fit is
        passed over entirely (its later nonces could not apply). The first candidates
        are sorted once and the followers kept in a heap: from a pool of one
        transaction per sender the selection is a sort and a walk, not a heap pop each.
        """
        heads = [
            (-p.rate, p.order, addr, queue.low, p, queue)
            for addr, queue in self._senders.items()
            for p in (queue[queue.low],)
        ]  # (rate, order) is unique: p and queue are carried, never compared
        heads.sort()
        followers: list[tuple[int, int, bytes, int, _Pending, _Queue]] = []
        out: list[Transaction] = []
        used, taken, count = 0, 0, len(heads)
        while len(out) < max_count:
            if followers and (taken == count or followers[0] < heads[taken]):
                _, _, addr, n, p, queue = heapq.heappop(followers)
            elif taken < count:
                _, _, addr, n, p, queue = heads[taken]
                taken += 1
            else:
                break
            if used + p.size > max_bytes:
                continue
            out.append(p.tx)
            used += p.size
            following = queue.get(n + 1)
            if following is not None:
                item = (-following.rate, following.order, addr, n + 1, following, queue)
                heapq.heappush(followers, item)
        return out

    # ------------------------------------------------------------ chain events

    def remove_for_block(self, block: Block) -> None:
        """Drop the block's transactions and every pending one its nonces made stale."""
        used: dict[bytes, int] = {}
        for tx in block.txs:
            sender = tx.sender_address
            used[sender] = max(used.get(sender, -1), tx.nonce)
            p = self._txs.get(tx.txid)
            if p is not None:
                self._remove(p)
        for sender, last in used.items():
            self._drop_stale(sender, last + 1)

    def on_reorg(
        self,
        disconnected: Sequence[Block],
        connected: Sequence[Block],
        state: State,
        height: int,
    ) -> None:
        """Follow a reorg: ``state`` and ``height`` are the new tip's.

        Transactions of disconnected blocks come back unless a connected block
        has them; every pending transaction is checked again against the new
        state (balances and nonces may have changed anywhere) and dropped if it
        no longer applies. Signatures are not checked again: pending ones were
        checked on admission and block ones when their block was validated.
        """
        in_connected = {tx.txid for b in connected for tx in b.txs}
        if connected:
            self._tip = connected[-1].header
        if not disconnected:
            # The common case, the tip moved forward: only the senders of the new
            # blocks' transactions can have less to spend than their queues assumed,
            # and only the senders of claims of jobs that are no longer open (or that
            # the new tip claims) can hold a claim that no longer applies.
            for block in connected:
                self.remove_for_block(block)
            senders = {tx.sender_address for b in connected for tx in b.txs}
            self._recheck_senders(senders | self._stale_claimants(state, height), state, height)
            return
        now = self.clock()
        returned = [
            (tx, now)
            for b in disconnected
            for tx in b.txs
            if tx.txid not in in_connected and tx.txid not in self._txs
        ]
        pending = [(p.tx, p.arrival_ms) for p in sorted(self._txs.values(), key=_by_order)]
        self._txs.clear()
        self._senders.clear()
        self._claims.clear()
        self._disputes.clear()
        self._tails.clear()
        self._bytes = 0
        self.removals += 1
        self._readmit([*returned, *pending], state, height, skip=in_connected)

    def _stale_claimants(self, state: State, height: int) -> set[bytes]:
        """Senders of pending claims of jobs the next block cannot let them claim, and of
        pending disputes of jobs no longer awaiting payment."""
        tip = self._tip
        p = self.params
        tip_job = tip.job.job_id(p.rank, p.tile_h, p.tile_w) if tip is not None else None
        out: set[bytes] = set()
        for job_id, txid in self._claims.items():
            job = job_record(state, job_id)
            expired = job is not None and height + 1 > job["expiry"]
            if job is None or job["status"] != OPEN or expired or job_id == tip_job:
                out.add(self._txs[txid].tx.sender_address)
        for (_, job_id, _), txid in self._disputes.items():
            job = job_record(state, job_id)
            if job is None or job["status"] != MINED:
                out.add(self._txs[txid].tx.sender_address)
        return out

    def _recheck_senders(self, senders: Iterable[bytes], state: State, height: int) -> None:
        """Check these senders' queues again against ``state``, keeping what still applies.

        A queue of plain transfers is kept as it is when its nonces start at the
        account's and the account can pay its total spend: a transfer applies
        if its nonce is next and the balance covers its fee and amount, and
        every earlier part of the queue spends less than the whole. Re-applying
        each one would reach the same verdicts, at a cost per pending
        transaction on every block.
        """
        candidates: list[tuple[Transaction, int]] = []
        for sender in senders:
            queue = self._senders.get(sender)
            if not queue:
                continue
            balance, nonce = state.account(sender)
            if not queue.others and queue.is_run_from(nonce) and queue.spend <= balance:
                continue
            for n in sorted(queue):
                p = queue[n]
                candidates.append((p.tx, p.arrival_ms))
                self._remove(p)
        self._readmit(candidates, state, height, skip=set())

    def _readmit(
        self,
        candidates: Iterable[tuple[Transaction, int]],
        state: State,
        height: int,
        skip: set[bytes],
    ) -> None:
        by_sender: dict[bytes, list[tuple[Transaction, int]]] = {}
        for tx, arrival in candidates:
            if tx.txid not in skip:
                by_sender.setdefault(tx.sender_address, []).append((tx, arrival))
        for txs in by_sender.values():
            # Nonce order; for one nonce the higher fee first (the other then fails RBF).
            txs.sort(key=lambda item: (item[0].nonce, -item[0].fee))
            for tx, arrival in txs:
                if tx.txid in self._txs:
                    continue
                try:
                    replaced = self._check_place(tx, state)
                    self._check_claims(tx, replaced)
                    size = len(tx.encoded)
                    victims = self._victims(tx, size, _rate(tx.fee, size), replaced)
                    spend = self._trial_apply(tx, state, height)
                    self._check_affordable(tx, state, replaced, spend)
                except InvalidTransaction:
                    continue
                for v in victims:
                    self._remove(v)
                if replaced is not None:
                    self._remove(replaced)
                self._insert(tx, spend, arrival)

    def expire(self, now_ms: int) -> int:
        """Drop transactions older than the TTL, with their senders' later ones; how many."""
        cutoff = now_ms - self.ttl_ms
        dropped = 0
        for p in [p for p in self._txs.values() if p.arrival_ms < cutoff]:
            queue = self._senders.get(p.tx.sender_address)
            if queue is None or p.tx.nonce not in queue:
                continue  # already gone behind an earlier expired one
            for n in sorted(n for n in queue if n >= p.tx.nonce):
                self._remove(queue[n])
                dropped += 1
        return dropped


class _Queue(dict[int, "_Pending"]):
    """One sender's pending transactions by nonce, with their lowest and highest
    nonce and total spend kept up to date, so admitting the next nonce is O(1)."""

    __slots__ = ("high", "low", "others", "spend")

    def __init__(self) -> None:
        super().__init__()
        self.low = self.high = self.spend = 0
        self.others = 0
        """How many are not plain transfers."""

    def put(self, nonce: int, p: _Pending) -> None:
        old = self.get(nonce)
        if old is not None:
            self.spend -= old.spend
            self.others -= not old.transfer
        elif not self:
            self.low = self.high = nonce
        else:
            self.low, self.high = min(self.low, nonce), max(self.high, nonce)
        self[nonce] = p
        self.spend += p.spend
        self.others += not p.transfer

    def take(self, nonce: int) -> None:
        p = self.pop(nonce)
        self.spend -= p.spend
        self.others -= not p.transfer
        if not self:
            return
        if nonce == self.low:
            self.low = nonce + 1 if nonce + 1 in self else min(self)
        if nonce == self.high:
            self.high = nonce - 1 if nonce - 1 in self else max(self)

    def is_run_from(self, first: int) -> bool:
        """Whether the nonces are exactly first, first + 1, … (or there are none)."""
        return not self or (self.low == first and self.high - self.low + 1 == len(self))


_EMPTY = _Queue()


def _rate(fee: int, size: int) -> int:
    return (fee << RATE_SHIFT) // max(size, 1)


def _by_order(p: _Pending) -> int:
    return p.order
