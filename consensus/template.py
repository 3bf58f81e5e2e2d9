"""Block templates: the block a miner works on next, built on the tip and extended.

A template applies candidate transactions to the tip's state inside a journal
that is rolled back afterwards: those that apply are included in order, the
rest are skipped. Its header commits to them (tx_root), to the state after
them and the coinbase (state_root), and to the reward they pay.

A busy node rebuilds its template every second or so to take in the
transactions that arrived since. Applying every pending transaction again
and hashing its whole transaction tree each time was the largest per-block
cost such a node had. So a template's ``TemplateBody`` keeps what its
transactions wrote (the value of every key after them) and its Merkle tree,
and a newer template on the same tip is built *on top of it*: the writes are
restored, only the newcomers are applied after the old transactions, and the
tree is extended. Restoring the writes leaves the state exactly as applying
the old transactions did (the same keys touched, with the same values), so
the newcomers get the same verdicts and the state root is the same as a
template built from scratch with the same transactions in the same order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from consensus.blocks import EMPTY_PROOF, BlockHeader, JobSpec
from consensus.errors import InvalidTransaction
from consensus.merkle import EMPTY_ROOT, extend_levels, leaf_hashes
from consensus.params import NetworkParams
from consensus.state import State
from consensus.transactions import Transaction, check_tx_stateless
from consensus.validation import (
    HeaderContext,
    apply_transaction,
    close_block,
    expected_target,
    median_time_past,
    open_block,
)


@dataclass(frozen=True)
class TemplateBody:
    """A template's transactions on top of block ``parent``, and what they wrote."""

    parent: bytes
    txs: tuple[Transaction, ...]
    txids: frozenset[bytes]
    fees: int
    size: int
    """Encoded bytes of the transactions."""
    writes: tuple[tuple[str, Any, Any], ...]
    """(table, key, value after) of every key the parent's job claim and the
    transactions wrote; None where the key ended up absent."""
    levels: list[list[bytes]]
    """The Merkle tree of the txids, leaves first (``merkle.tree_levels``); never
    changed once made (``extend_levels`` leaves what it extends as it is)."""

    @property
    def tx_root(self) -> bytes:
        return self.levels[-1][0] if self.levels else EMPTY_ROOT


def build_template(
    state: State,
    tip: HeaderContext,
    params: NetworkParams,
    txs: Iterable[Transaction],
    miner: bytes,
    job: JobSpec,
    timestamp_ms: int,
    verified: bool = False,
    on_top_of: TemplateBody | None = None,
) -> tuple[BlockHeader, TemplateBody]:
    """A header to mine on ``tip`` with as many of ``txs`` as apply cleanly, in order.

    ``state`` is the state at ``tip`` (left as it is); ``tip`` is the tip's
    context (``Chain.header_context``). The timestamp is ``timestamp_ms``, or
    just after the median time past if that is earlier.
    Transactions that fail (bad nonce, balance…) are skipped, not fatal.
    ``verified`` skips signature checks the caller has made (a mempool's).
    ``on_top_of``: an earlier body on the same tip; its transactions stay first,
    in their order, and those of ``txs`` it does not hold follow. On another tip
    it is ignored and the template is built from scratch.
    """
    parent = tip.header
    base = on_top_of if on_top_of is not None and on_top_of.parent == parent.hash else None
    mtp = median_time_past(tip.recent_timestamps)
    ts = max(timestamp_ms, mtp + 1)
    height = parent.height + 1
    # Half the block for transactions leaves room for the header and its proof
    # (h + w operand rows of k bytes with their branches).
    budget = params.max_block_bytes // 2
    included = list(base.txs) if base is not None else []
    have = base.txids if base is not None else frozenset()
    fees = base.fees if base is not None else 0
    size = base.size if base is not None else 0
    added: list[Transaction] = []
    st = state
    st.begin()
    try:
        if base is None:
            open_block(st, parent, params)
        else:
            for table, key, value in base.writes:
                st.set(table, key, value)
        for tx in txs:
            if tx.txid in have:
                continue
            if size + len(tx.encoded) > budget:
                continue  # too big for what is left; a smaller one may still fit
            try:
                if not verified:
                    check_tx_stateless(tx, params.chain_id)
                fee = apply_transaction_checked(st, tx, height, params)
            except InvalidTransaction:
                continue
            added.append(tx)
            fees += fee
            size += len(tx.encoded)
        writes = tuple(st.written())
        txids = [tx.txid for tx in added]
        levels = extend_levels(
            base.levels if base is not None else [],
            leaf_hashes(txids, first_index=len(included)),
        )
        included += added
        body = TemplateBody(
            parent=parent.hash,
            txs=tuple(included),
            txids=have | frozenset(txids),
            fees=fees,
            size=size,
            writes=writes,
            levels=levels,
        )
        header = BlockHeader(
            height=height,
            prev_hash=parent.hash,
            timestamp_ms=ts,
            target=expected_target(parent, tip.anchor, params),
            tx_root=body.tx_root,
            state_root=bytes(32),
            job=job,
            miner=miner,
            reward=params.block_reward + fees,
            extra_nonce=0,
            result_root=bytes(32),
            proof=EMPTY_PROOF,
        )
        close_block(st, header, params)
        header = dataclasses.replace(header, state_root=st.pending_root())
    finally:
        st.rollback()
    return header, body


def apply_transaction_checked(
    state: State, tx: Transaction, height: int, params: NetworkParams
) -> int:
    """apply_transaction inside an open journal, leaving the state unchanged on failure."""
    mark = state.savepoint()
    try:
        return apply_transaction(state, tx, height, params)
    except InvalidTransaction:
        state.rollback_to(mark)
        raise
