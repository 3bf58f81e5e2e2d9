"""The block tree: cumulative work, fork choice, reorgs with exact undo, orphans.

Blocks are kept as a tree of index entries. The active chain is the valid
branch with the most cumulative work (``2^256 // target`` per block); a tie
keeps the branch seen first. A block's header and proof are checked when it
arrives; its body is checked when its branch becomes the best one (as in
Bitcoin Core), and a branch whose body fails is marked invalid and the node
returns to the previous tip. Pure data, no I/O: the node persists it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from enum import Enum
from functools import partial

from consensus.blocks import EMPTY_PROOF, NULL_POSTER, Block, BlockHeader, JobSpec, tx_root
from consensus.difficulty import block_work
from consensus.errors import DuplicateProofOfWork, InvalidBlock
from consensus.keys import VerifyBatch, verify_many
from consensus.params import NetworkParams
from consensus.pow import verify_pow
from consensus.state import State, Undo
from consensus.template import build_template
from consensus.transactions import Transaction
from consensus.validation import (
    Anchor,
    HeaderContext,
    check_block_size,
    check_child_header,
    expected_target,
    genesis_state,
    state_transition,
)

MAX_ORPHANS = 256
MAX_TWINS = 16
"""Refused second blocks of a proof of work kept aside, in case a branch is built on one."""


class Status(Enum):
    HEADER_VALID = "header-valid"  # header and proof checked, body not yet
    ACTIVE = "active"  # on the active chain, body applied
    VALID = "valid"  # body applied once, now on a side branch
    INVALID = "invalid"


@dataclass
class Entry:
    header: BlockHeader
    work: int  # cumulative, genesis included
    seq: int  # arrival order: ties in work go to the first seen
    status: Status

    @property
    def hash(self) -> bytes:
        return self.header.hash


@dataclass(frozen=True)
class AddResult:
    status: str  # "connected", "side", "orphan", "duplicate"
    reorged: int = 0  # blocks disconnected from the old active chain
    connected: tuple[bytes, ...] = ()  # hashes that joined the active chain, in order
    disconnected: tuple[Block, ...] = ()  # blocks that left it (their txs go back to mempool)


def make_genesis(params: NetworkParams) -> tuple[Block, State]:
    state = genesis_state(params)
    header = BlockHeader(
        height=0,
        prev_hash=bytes(32),
        timestamp_ms=params.genesis_timestamp_ms,
        target=params.genesis_target,
        tx_root=tx_root(()),
        state_root=state.root,
        job=JobSpec(NULL_POSTER, 0, 0, 0, bytes(32), bytes(32)),
        miner=bytes(20),
        reward=0,
        extra_nonce=params.genesis_nonce,
        result_root=bytes(32),
        proof=EMPTY_PROOF,
    )
    return Block(header, ()), state


class Chain:
    """The block tree and the state at its active tip."""

    def __init__(self, params: NetworkParams, clock: Callable[[], int]) -> None:
        self.params = params
        self.clock = clock  # milliseconds since the epoch, for the future-drift rule
        genesis, self.state = make_genesis(params)
        self.genesis = genesis
        self.entries: dict[bytes, Entry] = {
            genesis.hash: Entry(genesis.header, block_work(genesis.header.target), 0, Status.ACTIVE)
        }
        self.blocks: dict[bytes, Block] = {genesis.hash: genesis}
        self.undos: dict[bytes, Undo] = {}
        self.active: list[bytes] = [genesis.hash]  # by height
        self.orphans: OrderedDict[bytes, Block] = OrderedDict()
        # header_seed → hash of the first block in the tree that holds that proof of
        # work: one proof of work makes one block (see check_proof_unused). As large
        # as the tree, and rebuilt with it on restore.
        self.by_seed: dict[bytes, bytes] = {genesis.header.header_seed: genesis.hash}
        # Second blocks of a proof of work, refused but kept aside (never stored nor
        # relayed): if a block that builds on one arrives, it is admitted then.
        self.twins: OrderedDict[bytes, Block] = OrderedDict()
        # Txids whose signatures the caller has already checked (a node's mempool):
        # the same bytes give the same verdict, so block import need not redo them.
        self.verified_txids: Callable[[], AbstractSet[bytes]] | None = None
        # How a header's proof of work is checked, and a block's signatures: plain
        # functions here; a node puts in its memo of proofs (a header is checked when
        # it arrives and again with its block) and its threads. Same verdicts.
        self.check_pow: Callable[[BlockHeader], object] = partial(verify_pow, params=params)
        self.verify_signatures: VerifyBatch = verify_many
        self._seq = 1
        # Hashes of entries added, or whose status changed, since the node last
        # persisted them: the store saves exactly these and clears them, so a
        # save costs O(changes), not O(chain), whatever path add_block took.
        self.unsaved: set[bytes] = {genesis.hash}

    @classmethod
    def restore(
        cls,
        params: NetworkParams,
        clock: Callable[[], int],
        entries: dict[bytes, Entry],
        blocks: dict[bytes, Block],
        active: list[bytes],
        undos: dict[bytes, Undo],
        state: State,
        next_seq: int,
    ) -> Chain:
        """A chain rebuilt from parts saved earlier, trusted as they are (no re-validation).

        Every block was validated when it was first added; the store checks that
        its parts agree (tip root, undo records) before calling this. Orphans are
        not kept across restarts: peers send them again.
        """
        chain = cls(params, clock)
        if not active or active[0] != chain.genesis.hash:
            raise ValueError("restored chain does not start at this network's genesis")
        chain.entries = entries
        for h, e in sorted(entries.items(), key=lambda item: item[1].seq):
            chain.by_seed.setdefault(e.header.header_seed, h)
        chain.blocks = blocks
        chain.active = active
        chain.undos = undos
        chain.state = state
        chain._seq = next_seq
        chain.unsaved = set()
        return chain

    @property
    def next_seq(self) -> int:
        """The arrival number the next new entry will get."""
        return self._seq

    # ------------------------------------------------------------ queries

    @property
    def tip(self) -> Entry:
        return self.entries[self.active[-1]]

    @property
    def height(self) -> int:
        return len(self.active) - 1

    def contains(self, block_hash: bytes) -> bool:
        return block_hash in self.entries or block_hash in self.orphans

    def is_active(self, block_hash: bytes) -> bool:
        e = self.entries.get(block_hash)
        return e is not None and e.status is Status.ACTIVE

    def block_at(self, height: int) -> Block:
        return self.blocks[self.active[height]]

    def ancestor_timestamps(self, parent_hash: bytes) -> list[int]:
        out: list[int] = []
        h = parent_hash
        while len(out) < self.params.median_time_span:
            e = self.entries[h]
            out.append(e.header.timestamp_ms)
            if e.header.height == 0:
                break
            h = e.header.prev_hash
        return out

    def next_target(self) -> int:
        return expected_target(self.tip.header, self.anchor_for(self.tip.hash), self.params)

    def anchor_for(self, parent_hash: bytes) -> Anchor | None:
        """ASERT anchor of the branch ending at ``parent_hash``: its block at height 1."""
        e = self.entries[parent_hash]
        if e.header.height == 0:
            return None
        h = parent_hash
        while e.header.height > 1 and e.status is not Status.ACTIVE:
            h = e.header.prev_hash
            e = self.entries[h]
        first = e if e.header.height == 1 else self.entries[self.active[1]]
        return Anchor(self.params.genesis_target, first.header.timestamp_ms, 1)

    def header_context(self, block_hash: bytes) -> HeaderContext:
        """The context a child of this block's header is checked against
        (see :func:`consensus.validation.check_child_header`)."""
        e = self.entries[block_hash]
        return HeaderContext(
            e.header,
            e.work,
            self.anchor_for(block_hash),
            tuple(self.ancestor_timestamps(block_hash)),
        )

    def check_header(self, header: BlockHeader) -> HeaderContext:
        """Every header rule for ``header`` on its parent in this tree; raises InvalidBlock.

        For headers that arrive without their block (compact blocks, headers-first
        sync): the same check ``add_block`` makes, so no path keeps a header the
        block tree would refuse.
        """
        parent = self.entries.get(header.prev_hash)
        if parent is None:
            raise InvalidBlock("header: its parent is not known")
        if parent.status is Status.INVALID:
            raise InvalidBlock("header: builds on an invalid block")
        context = self.header_context(header.prev_hash)
        return check_child_header(header, context, self.params, self.clock(), self.check_pow)

    def locator(self) -> list[bytes]:
        """Hashes of the active chain, dense near the tip then exponentially sparse."""
        out, step, i = [], 1, self.height
        while i > 0:
            out.append(self.active[i])
            if len(out) >= 10:
                step *= 2
            i -= step
        out.append(self.active[0])
        return out

    # ------------------------------------------------------------ adding

    def add_block(self, block: Block, built_upon: bool = False) -> AddResult:
        """Accept a block from anywhere; raises InvalidBlock with the rule that failed.

        ``built_upon``: the caller holds a valid header that builds on this block
        (a headers-first download), which lets a second block of a proof of work
        in (see :meth:`check_proof_unused`).
        """
        h = block.hash
        if h in self.entries or h in self.orphans:
            return AddResult("duplicate")
        header = block.header
        check_body_commitment(block)
        # Then its size: a side block or an orphan is stored without being applied,
        # and one over the limit would be kept (and read back at every start) though
        # it can never connect.
        check_block_size(block, self.params)
        parent = self.entries.get(header.prev_hash)
        if parent is None and header.prev_hash in self.twins:
            # Work was done on a second block of a proof of work that was refused:
            # it is part of a branch now, which may be the heaviest.
            self.check_pow(header)
            self.add_block(self.twins.pop(header.prev_hash), built_upon=True)
            parent = self.entries.get(header.prev_hash)
        if parent is None:
            # Check the proof against the header's own target before keeping it,
            # so orphans cost an attacker real work.
            self.check_pow(header)
            self.check_proof_unused(block, built_upon)
            self._keep_orphan(block)
            return AddResult("orphan")
        checked = self.check_header(header)
        self.check_proof_unused(block, built_upon)
        entry = Entry(header, checked.work, self._seq, Status.HEADER_VALID)
        self._seq += 1
        self.entries[h] = entry
        self.by_seed.setdefault(header.header_seed, h)
        self.twins.pop(h, None)
        self.unsaved.add(h)
        self.blocks[h] = block
        result = self._maybe_reorg(entry)
        for child in self._take_orphans(h):
            try:
                r = self.add_block(child)
            except InvalidBlock:
                continue
            result = AddResult(
                result.status if r.status != "connected" else "connected",
                result.reorged + r.reorged,
                result.connected + r.connected,
                result.disconnected + r.disconnected,
            )
        return result

    def check_proof_unused(self, block: Block, built_upon: bool = False) -> None:
        """Raise DuplicateProofOfWork if another block held (in the tree or an orphan)
        has this block's proof of work, unless a branch builds on this one.

        A proof of work is named by its header_seed (every header field but
        result_root and the proof). A second block with it differs only there:
        another winning tile of the same attempt, or its miner's re-mined
        result_root. On its own it adds no work, so it is refused (not stored,
        not relayed, its sender treated as misbehaving) and only kept aside.
        Refusing it forever would split the network for good if its miner sent
        each block to half of it: so once a block that builds on it is known
        (``built_upon``, a waiting orphan, or one arriving later) it is admitted
        like any block, and most work decides.
        """
        header = block.header
        seed = header.header_seed
        other = self.by_seed.get(seed)
        if other is None:
            other = next((h for h, b in self.orphans.items() if b.header.header_seed == seed), None)
        if other is None or other == block.hash:
            return
        if built_upon or any(b.header.prev_hash == block.hash for b in self.orphans.values()):
            return
        self.twins[block.hash] = block
        while len(self.twins) > MAX_TWINS:
            self.twins.popitem(last=False)
        raise DuplicateProofOfWork(
            f"duplicate proof of work: its header_seed {seed.hex()[:16]} was already "
            f"seen as block {other.hex()[:16]}"
        )

    def _keep_orphan(self, block: Block) -> None:
        self.orphans[block.hash] = block
        while len(self.orphans) > MAX_ORPHANS:
            self.orphans.popitem(last=False)

    def _take_orphans(self, parent_hash: bytes) -> list[Block]:
        kids = [b for b in self.orphans.values() if b.header.prev_hash == parent_hash]
        for b in kids:
            del self.orphans[b.hash]
        return kids

    def _branch_to(self, entry: Entry) -> tuple[int, list[bytes]]:
        """Fork height with the active chain and the new branch's hashes above it."""
        branch: list[bytes] = []
        h = entry.hash
        while True:
            e = self.entries[h]
            if e.status is Status.ACTIVE:
                return e.header.height, list(reversed(branch))
            branch.append(h)
            h = e.header.prev_hash

    def _maybe_reorg(self, entry: Entry) -> AddResult:
        if entry.work <= self.tip.work:
            return AddResult("side")
        fork_height, branch = self._branch_to(entry)
        disconnected = self._disconnect_to(fork_height)
        connected: list[bytes] = []
        for h in branch:
            block = self.blocks[h]
            try:
                self._connect(block)
            except InvalidBlock:
                self._mark_invalid(h)
                # Back to the old chain exactly as it was.
                self._disconnect_to(fork_height)
                for old in disconnected:
                    self._connect(old)
                raise
            connected.append(h)
        return AddResult("connected", len(disconnected), tuple(connected), tuple(disconnected))

    def _connect(self, block: Block) -> None:
        """Apply a block of the tree on the tip, through ``state_transition``.

        Its header passed every rule when it arrived (``add_block``), so two
        facts of that arrival are passed on rather than recomputed: its proof
        of work was verified then, and it was not too far in the future then
        (a clock set back since must not turn a block accepted into one refused).
        """
        header = block.header
        known = self.verified_txids() if self.verified_txids is not None else None
        undo = state_transition(
            self.state,
            block,
            self.header_context(header.prev_hash),
            self.params,
            max(self.clock(), header.timestamp_ms),
            _proven_on_arrival,
            known,
            self.verify_signatures,
        )
        self.undos[block.hash] = undo
        self.entries[block.hash].status = Status.ACTIVE
        self.unsaved.add(block.hash)
        self.active.append(block.hash)

    def _disconnect_to(self, height: int) -> list[Block]:
        """Undo active blocks above ``height``; returns them oldest first."""
        out = []
        while self.height > height:
            h = self.active.pop()
            self.state.undo(self.undos.pop(h))
            self.entries[h].status = Status.VALID
            self.unsaved.add(h)
            out.append(self.blocks[h])
        return list(reversed(out))

    def _mark_invalid(self, block_hash: bytes) -> None:
        bad = {block_hash}
        self.entries[block_hash].status = Status.INVALID
        for e in sorted(self.entries.values(), key=lambda x: x.header.height):
            if e.header.prev_hash in bad:
                e.status = Status.INVALID
                bad.add(e.hash)
        self.unsaved |= bad

    # ------------------------------------------------------------ templates

    def build_template(
        self,
        txs: Iterable[Transaction],
        miner: bytes,
        job: JobSpec,
        timestamp_ms: int | None = None,
        verified: bool = False,
    ) -> tuple[BlockHeader, tuple[Transaction, ...]]:
        """A header to mine on the tip with as many of ``txs`` as apply cleanly, in order
        (see :func:`consensus.template.build_template`), and those transactions.
        ``timestamp_ms`` defaults to the chain's clock."""
        header, body = build_template(
            self.state,
            self.header_context(self.tip.hash),
            self.params,
            txs,
            miner,
            job,
            timestamp_ms if timestamp_ms is not None else self.clock(),
            verified,
        )
        return header, body.txs


def _proven_on_arrival(header: BlockHeader) -> None:
    """The proof check of a header already in the tree: ``add_block`` verified it."""


def check_body_commitment(block: Block) -> None:
    """Raise InvalidBlock unless the header's tx_root commits to the block's transactions.

    Checked before a block is kept under its hash, as an orphan or in the tree.
    A body the header does not commit to says nothing about the block the header
    names: marking that hash invalid (or holding the copy as an orphan) would let
    anyone who attaches a wrong body to an honest header make this node refuse
    the honest block when it comes (Bitcoin's CVE-2012-2459 was this, through
    duplicated transactions). Everything else in a body is committed by tx_root,
    so any later failure is the block's own.
    """
    txs = block.txs
    if type(txs) is not tuple or any(type(tx) is not Transaction for tx in txs):
        raise InvalidBlock("body: transactions must be a tuple of Transaction records")
    if block.body_root != block.header.tx_root:
        raise InvalidBlock("body: tx_root does not commit to the transactions")


def headers_after(chain: Chain, locator: Sequence[bytes], limit: int = 2000) -> list[BlockHeader]:
    """Active-chain headers after the first locator hash we share (getheaders)."""
    start = 0
    for h in locator:
        if chain.is_active(h):
            start = chain.entries[h].header.height + 1
            break
    return [chain.entries[h].header for h in chain.active[start : start + limit]]
