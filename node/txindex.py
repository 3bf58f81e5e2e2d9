"""Where the active chain's transactions are: txid → height, each sender's public key,
and the ``result_rows`` transactions naming each job.

``gettransaction`` and ``getpublickey`` (RPC and explorer) looked a transaction or an
address up by scanning every block from the tip, on the event loop: with ~690k
transactions on chain one call of an unknown id took ~0.2 s, and a client sending
them back to back held RPC, P2P and block relay for everyone. The index answers in
O(1); it is built from the active chain at start and follows every change of it
(``ChainService.on_chain_changed``), so it is never written to the store.
``getrevealedrows`` finds a job's reveals the same way, instead of reading every
block since the job's claim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from consensus.transactions import ResultRowsPayload, Transaction

if TYPE_CHECKING:
    from consensus.blocks import Block
    from consensus.chain import Chain
    from node.chain_service import ChainChange


class TxIndex:
    """The active chain's transactions by txid (their height), its senders' public keys
    by address (with how many of their transactions are on it), and its result_rows
    transactions by the job they name (their txids, in chain order)."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._heights: dict[bytes, int] = {}
        self._keys: dict[bytes, tuple[bytes, int]] = {}
        self._reveals: dict[bytes, list[bytes]] = {}
        for height in range(1, chain.height + 1):
            self._add(chain.block_at(height))

    def height_of(self, txid: bytes) -> int | None:
        """The height of the active block holding ``txid``, or None."""
        return self._heights.get(txid)

    def confirmed(self, txid: bytes) -> tuple[Transaction, Block] | None:
        """The active chain's transaction ``txid`` and the block holding it, or None."""
        height = self._heights.get(txid)
        if height is None:
            return None
        block = self.chain.block_at(height)
        return next((t, block) for t in block.txs if t.txid == txid)

    def public_key(self, address: bytes) -> bytes | None:
        """The public key of ``address`` if one of its transactions is on the active chain."""
        entry = self._keys.get(address)
        return entry[0] if entry is not None else None

    def reveals_of(self, job_id: bytes) -> tuple[bytes, ...]:
        """The txids of the active chain's result_rows transactions naming ``job_id``,
        whichever claim they answer, in chain order."""
        return tuple(self._reveals.get(job_id, ()))

    def chain_changed(self, change: ChainChange) -> None:
        for block in change.disconnected:
            self._remove(block)
        for block in change.connected:
            self._add(block)

    def _add(self, block: Block) -> None:
        height = block.header.height
        for tx in block.txs:
            self._heights[tx.txid] = height
            addr = tx.sender_address
            key, count = self._keys.get(addr, (tx.sender, 0))
            self._keys[addr] = (key, count + 1)
            if type(tx.payload) is ResultRowsPayload:
                self._reveals.setdefault(tx.payload.job_id, []).append(tx.txid)

    def _remove(self, block: Block) -> None:
        for tx in block.txs:
            if self._heights.get(tx.txid) == block.header.height:
                del self._heights[tx.txid]
            if type(tx.payload) is ResultRowsPayload:
                txids = self._reveals.get(tx.payload.job_id, [])
                if tx.txid in txids:
                    txids.remove(tx.txid)
                if not txids:
                    self._reveals.pop(tx.payload.job_id, None)
            addr = tx.sender_address
            entry = self._keys.get(addr)
            if entry is not None:
                if entry[1] <= 1:
                    del self._keys[addr]
                else:
                    self._keys[addr] = (entry[0], entry[1] - 1)
