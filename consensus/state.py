"""Chain state and the exact undo of every change (PROTOCOL §7, §9).

State is a set of tables of plain values. Every write goes through
:meth:`State.set`, which records the previous value in the open journal, so a
block's changes can be undone exactly, in reverse, on a reorg. Later rules
(market escrows, datasets, grants) add tables and get undo for free.

Commitment: ``state_root`` is a *rolling* commitment,
``root_h = H(root_{h−1}, canonical(sorted changes of block h))``. It binds the
whole state (given genesis) in O(changes) per block, so two nodes that differ
in any account disagree on the next root. It does not support light-client
proofs of single accounts; a Merkle-Patricia-style tree can replace it without
touching the rules, since only this module computes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from consensus.encoding import encode
from consensus.hashing import Hash32, tagged_hash

TAG_STATE = "state"
GENESIS_PARENT_ROOT = bytes(32)

ACCOUNTS = "accounts"
"""address → (balance, nonce)."""
IMMATURE = "immature"
"""maturity height → (miner address, amount): coinbases not yet spendable."""
LOCKED = "locked"
"""address → total of its immature coinbases (to explain a refused spend)."""

TABLES = (ACCOUNTS, IMMATURE, LOCKED)
_MISSING = object()


@dataclass
class Undo:
    """What one block changed: (table, key, previous value or None if absent), in order."""

    entries: list[tuple[str, Any, Any]] = field(default_factory=list)
    prev_root: bytes = GENESIS_PARENT_ROOT


class State:
    """Tables of plain values with a journal. Pure data: no I/O."""

    def __init__(self, tables: dict[str, dict[Any, Any]] | None = None, root: bytes = bytes(32)):
        self.tables: dict[str, dict[Any, Any]] = {t: {} for t in TABLES}
        if tables:
            for name, rows in tables.items():
                self.tables[name] = dict(rows)
        self.root = root
        self._journal: list[tuple[str, Any, Any]] | None = None

    # ------------------------------------------------------------ reading

    def get(self, table: str, key: Any, default: Any = None) -> Any:
        return self.tables[table].get(key, default)

    def account(self, addr: bytes) -> tuple[int, int]:
        """(balance, nonce); an unknown address has (0, 0)."""
        value: tuple[int, int] = self.tables[ACCOUNTS].get(addr, (0, 0))
        return value

    def balance(self, addr: bytes) -> int:
        return self.account(addr)[0]

    def nonce(self, addr: bytes) -> int:
        return self.account(addr)[1]

    def snapshot(self) -> dict[str, dict[Any, Any]]:
        """A deep-enough copy for comparisons in tests (values are immutable)."""
        return {name: dict(rows) for name, rows in self.tables.items()}

    # ------------------------------------------------------------ writing

    def begin(self) -> None:
        if self._journal is not None:
            raise RuntimeError("a block is already being applied")
        self._journal = []

    def set(self, table: str, key: Any, value: Any) -> None:
        """Write (or delete, with None) one entry, journalling the old value."""
        if self._journal is None:
            raise RuntimeError("state writes happen only inside begin()/commit()")
        rows = self.tables[table]
        self._journal.append((table, key, rows.get(key)))
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = value

    def set_account(self, addr: bytes, balance: int, nonce: int) -> None:
        self.set(ACCOUNTS, addr, (balance, nonce) if balance or nonce else None)

    def savepoint(self) -> int:
        """A mark inside the open block to roll back to (one transaction's writes)."""
        if self._journal is None:
            raise RuntimeError("no block is being applied")
        return len(self._journal)

    def rollback_to(self, mark: int) -> None:
        """Undo the open block's writes made after ``mark``."""
        if self._journal is None:
            raise RuntimeError("no block is being applied")
        tail = self._journal[mark:]
        del self._journal[mark:]
        self._revert(tail)

    def rollback(self) -> None:
        """Discard the open block's writes (it failed validation)."""
        if self._journal is None:
            return
        self._revert(self._journal)
        self._journal = None

    def commit(self) -> Undo:
        """Close the block: advance the rolling root and return its undo record."""
        if self._journal is None:
            raise RuntimeError("no block is being applied")
        journal, self._journal = self._journal, None
        undo = Undo(entries=journal, prev_root=self.root)
        self.root = next_root(self.root, self._changes(journal))
        return undo

    def undo(self, undo: Undo) -> None:
        """Revert a committed block exactly."""
        if self._journal is not None:
            raise RuntimeError("cannot undo while a block is being applied")
        self._revert(undo.entries)
        self.root = undo.prev_root

    def _revert(self, entries: list[tuple[str, Any, Any]]) -> None:
        for table, key, old in reversed(entries):
            if old is None:
                self.tables[table].pop(key, None)
            else:
                self.tables[table][key] = old

    def _changes(self, journal: list[tuple[str, Any, Any]]) -> list[list[Any]]:
        touched = sorted({(t, k) for t, k, _ in journal}, key=_sort_key)
        return [[t, _plain(k), _plain(self.tables[t].get(k))] for t, k in touched]

    def pending_root(self) -> Hash32:
        """The root the open block would commit to, without closing it."""
        if self._journal is None:
            raise RuntimeError("no block is being applied")
        return next_root(self.root, self._changes(self._journal))


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _sort_key(item: tuple[str, Any]) -> tuple[str, bytes]:
    return item[0], encode(_plain(item[1]))


def next_root(prev_root: bytes, changes: list[list[Any]]) -> Hash32:
    return tagged_hash(TAG_STATE, prev_root, encode(changes))


def iter_accounts(state: State) -> Iterator[tuple[bytes, int, int]]:
    for addr, (balance, nonce) in sorted(state.tables[ACCOUNTS].items()):
        yield addr, balance, nonce
