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

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from consensus.encoding import decode, encode
from consensus.errors import DecodeError, InvalidTransaction
from consensus.hashing import Hash32, tagged_hash

TAG_STATE = "state"
GENESIS_PARENT_ROOT = bytes(32)

ACCOUNTS = "accounts"
"""address → (balance, nonce)."""
IMMATURE = "immature"
"""maturity height → ImmatureCoinbase: coinbases not yet spendable."""
LOCKED = "locked"
"""address → total of its immature coinbases (to explain a refused spend)."""

JOBS = "jobs"
"""job id → the posted job's record (consensus.market)."""
JOBS_DUE = "jobs_due"
"""height → job ids whose reward is paid at that height (consensus.market)."""

JOB_CHALLENGES = "job_challenges"
"""job id → rows of C its claim (the job record's) has still to reveal: its result_challenge."""

MODELS = "models"
"""(model id, step) → ModelStep (consensus.validation, model_record)."""

DATASETS = "datasets"
"""dataset id → (owner, content root, size, chunk size, metadata, height) (consensus.datashare)."""
GRANTS = "grants"
"""(dataset id, grantee) → (sealed key, expiry height, revoked height or 0, granted height)."""
ACCESS_LOGS = "access_logs"
"""(dataset id, request nonce) → (grantee, height): confirmed read requests."""

MODELS_PUBLISHED = "models_published"
"""model id → (publisher, weights hash, dataset id, content root, access_log nonce, metadata,
height): models published with their data provenance (consensus.datashare, model_publish)."""
DATASET_MODELS = "dataset_models"
"""(dataset id, model id) → height: the models published from each dataset."""

TABLES = (
    ACCOUNTS,
    IMMATURE,
    LOCKED,
    JOBS,
    JOBS_DUE,
    JOB_CHALLENGES,
    MODELS,
    DATASETS,
    GRANTS,
    ACCESS_LOGS,
    MODELS_PUBLISHED,
    DATASET_MODELS,
)
_MISSING = object()
_GONE = object()
"""A fork's mark for a row it deleted that its base still holds."""


class ImmatureCoinbase(NamedTuple):
    """An IMMATURE value. Values are stored as plain tuples, in this order (the
    state's encoding); read them through :func:`immature_coinbase`."""

    miner: bytes
    amount: int


class ModelStep(NamedTuple):
    """A MODELS value: one recorded training step. Stored as a plain tuple, in this
    order; read through :func:`model_step` or :func:`iter_model_steps`."""

    owner: bytes
    job_ids: tuple[bytes, ...]
    weights_hash: bytes
    parent_hash: bytes
    dataset: str
    height: int


@dataclass
class Undo:
    """What one block changed: each (table, key) it wrote, once, with the value it had
    before the block (None if absent). Reverting the entries restores that state.

    A block of n transfers writes 2n account entries but usually far fewer
    distinct accounts, so only a key's first write is kept: its previous value
    is the one from before the block, and every later write to the key is
    undone by restoring it. The undo record is then as long as the set of keys
    the block touched, which is what the store writes on every block.
    """

    entries: list[tuple[str, Any, Any]] = field(default_factory=list)
    prev_root: bytes = GENESIS_PARENT_ROOT


class _ForkTable(MutableMapping[Any, Any]):
    """One table of a fork (:meth:`State.fork`): the rows it wrote, over its base's rows.

    The base is only read, one ``get`` at a time (each atomic under the GIL), so a fork
    may be read and written in another thread while the base's owner goes on.
    """

    __slots__ = ("_base", "_own")

    def __init__(self, base: MutableMapping[Any, Any]) -> None:
        self._base = base
        self._own: dict[Any, Any] = {}

    def get(self, key: Any, default: Any = None) -> Any:
        value = self._own.get(key, _MISSING)
        if value is _MISSING:
            return self._base.get(key, default)
        return default if value is _GONE else value

    def __getitem__(self, key: Any) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key, _MISSING) is not _MISSING

    def __setitem__(self, key: Any, value: Any) -> None:
        self._own[key] = value

    def __delitem__(self, key: Any) -> None:
        if key not in self:
            raise KeyError(key)
        self._own[key] = _GONE

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise KeyError(key)
            return default
        self._own[key] = _GONE
        return value

    def __iter__(self) -> Iterator[Any]:
        own = self._own
        for key in list(self._base):
            if key not in own:
                yield key
        for key, value in list(own.items()):
            if value is not _GONE:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _ForkTables(Mapping[str, MutableMapping[Any, Any]]):
    """A fork's tables, each made on first use (a mempool trial touches one or two)."""

    __slots__ = ("_base", "_made")

    def __init__(self, base: Mapping[str, MutableMapping[Any, Any]]) -> None:
        self._base = base
        self._made: dict[str, _ForkTable] = {}

    def __getitem__(self, name: str) -> MutableMapping[Any, Any]:
        table = self._made.get(name)
        if table is None:
            table = self._made[name] = _ForkTable(self._base[name])
        return table

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)


class State:
    """Tables of plain values with a journal. Pure data: no I/O."""

    def __init__(self, tables: dict[str, dict[Any, Any]] | None = None, root: bytes = bytes(32)):
        own: dict[str, MutableMapping[Any, Any]] = {t: {} for t in TABLES}
        for name, rows in (tables or {}).items():
            own[name] = dict(rows)
        self.tables: Mapping[str, MutableMapping[Any, Any]] = own
        self.root = root
        self._journal: list[tuple[str, Any, Any]] | None = None
        # pending_root() of the open journal as it is now; any write clears it.
        # A block is checked against pending_root and then committed: one hash.
        self._pending_root: Hash32 | None = None
        self.generation = 0
        """Counts the blocks begun (applied, tried or undone) on this state: a fork made
        at one generation reads the same rows as long as its base stays there."""

    def fork(self) -> State:
        """A state that reads this one and keeps its own writes: what a block template
        or a mempool check applies transactions to, leaving this state untouched (its
        readers never see their writes, even for a moment) and free to go on.

        The fork starts at this state's root with no open block. It reads what this
        state holds at each moment: while ``generation`` is unchanged, that is the
        state it forked from.
        """
        if self._journal is not None:
            raise RuntimeError("cannot fork a state inside an open block")
        fork = State.__new__(State)
        fork.tables = _ForkTables(self.tables)
        fork.root = self.root
        fork._journal = None
        fork._pending_root = None
        fork.generation = 0
        return fork

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
        self.generation += 1
        self._journal = []
        self._pending_root = None

    def set(self, table: str, key: Any, value: Any) -> None:
        """Write (or delete, with None) one entry, journalling the old value."""
        if self._journal is None:
            raise RuntimeError("state writes happen only inside begin()/commit()")
        rows = self.tables[table]
        self._journal.append((table, key, rows.get(key)))
        self._pending_root = None
        if value is None:
            rows.pop(key, None)
        else:
            rows[key] = value

    def set_account(self, addr: bytes, balance: int, nonce: int) -> None:
        self.set(ACCOUNTS, addr, (balance, nonce) if balance or nonce else None)

    def written(self) -> list[tuple[str, Any, Any]]:
        """(table, key, value now or None) of every key the open block has written, in
        the order first written: what restoring onto the block's starting state with
        ``set`` reproduces exactly, state root included (see consensus.template)."""
        if self._journal is None:
            raise RuntimeError("no block is being applied")
        tables = self.tables
        return [(t, k, tables[t].get(k)) for t, k, _ in _first_writes(self._journal)]

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
        self._pending_root = None
        self._revert(tail)

    def rollback(self) -> None:
        """Discard the open block's writes (it failed validation)."""
        if self._journal is None:
            return
        self._revert(self._journal)
        self._journal = None
        self._pending_root = None

    def commit(self) -> Undo:
        """Close the block: advance the rolling root and return its undo record."""
        if self._journal is None:
            raise RuntimeError("no block is being applied")
        root = self._pending_root or next_root(self.root, self._changes(self._journal))
        journal, self._journal, self._pending_root = self._journal, None, None
        undo = Undo(entries=_first_writes(journal), prev_root=self.root)
        self.root = root
        return undo

    def undo(self, undo: Undo) -> None:
        """Revert a committed block exactly."""
        if self._journal is not None:
            raise RuntimeError("cannot undo while a block is being applied")
        self.generation += 1
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
        if self._pending_root is None:
            self._pending_root = next_root(self.root, self._changes(self._journal))
        return self._pending_root


def _first_writes(journal: list[tuple[str, Any, Any]]) -> list[tuple[str, Any, Any]]:
    """The journal's first entry for each (table, key), in order (see ``Undo``)."""
    seen: set[tuple[str, Any]] = set()
    out = []
    for entry in journal:
        table_key = (entry[0], entry[1])
        if table_key not in seen:
            seen.add(table_key)
            out.append(entry)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) if isinstance(v, tuple) else v for v in value]
    return value


def _sort_key(item: tuple[str, Any]) -> tuple[str, bytes]:
    return item[0], encode(_plain(item[1]))


# ------------------------------------------------------------ serialization
#
# State keys and values are immutable plain values: ints, bytes and tuples of
# them, never lists. The canonical encoding turns tuples into arrays and
# decoding gives lists back, so decoding turns every list back into a tuple:
# exact for every table, present and future.

MAX_STORED_VALUE = 64 * 1024 * 1024


def encode_state_value(value: Any) -> bytes:
    """Canonical bytes of a state key or value (tuples as arrays)."""
    return encode(_plain(value))


def decode_state_value(data: bytes) -> Any:
    """The key or value ``encode_state_value`` encoded, tuples restored."""
    return _unplain(decode(data, MAX_STORED_VALUE))


def encode_undo(undo: Undo) -> bytes:
    """An undo record as ``[prev_root, [[table, key, previous value or nil], …]]``."""
    return encode([undo.prev_root, [[t, _plain(k), _plain(v)] for t, k, v in undo.entries]])


def decode_undo(data: bytes) -> Undo:
    plain = decode(data, MAX_STORED_VALUE)
    if not (
        isinstance(plain, list)
        and len(plain) == 2
        and isinstance(plain[0], bytes)
        and isinstance(plain[1], list)
        and all(isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) for e in plain[1])
    ):
        raise DecodeError("undo: not [prev_root, [[table, key, value], …]]")
    entries = [(t, _unplain(k), _unplain(v)) for t, k, v in plain[1]]
    return Undo(entries=entries, prev_root=plain[0])


def _unplain(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_unplain(v) for v in value)
    return value


def check_spendable(state: State, addr: bytes, needed: int) -> None:
    """Raise InvalidTransaction unless ``addr`` can spend ``needed`` now.

    Its balance is what it can spend: a coinbase it mined stays LOCKED (counted
    apart) until it matures, and the refusal says so when that is the reason.
    """
    balance = state.balance(addr)
    if balance >= needed:
        return
    locked = state.get(LOCKED, addr, 0)
    if balance + locked >= needed:
        raise InvalidTransaction(
            f"balance: needs {needed} but only {balance} is spendable; "
            f"{locked} is an immature coinbase"
        )
    raise InvalidTransaction(f"balance: needs {needed} but the sender has {balance}")


def next_root(prev_root: bytes, changes: list[list[Any]]) -> Hash32:
    return tagged_hash(TAG_STATE, prev_root, encode(changes))


def immature_coinbase(state: State, maturity_height: int) -> ImmatureCoinbase | None:
    """The coinbase that matures at ``maturity_height``, if any is still locked."""
    value = state.get(IMMATURE, maturity_height)
    return None if value is None else ImmatureCoinbase(*value)


def model_step(state: State, model_id: bytes, step: int) -> ModelStep | None:
    """Step ``step`` of model ``model_id``, if recorded."""
    value = state.get(MODELS, (model_id, step))
    return None if value is None else ModelStep(*value)


def iter_model_steps(state: State, model_id: bytes) -> Iterator[tuple[int, ModelStep]]:
    """(step, record) of a model's lineage in order; steps are consecutive from 0."""
    step = 0
    while (record := model_step(state, model_id, step)) is not None:
        yield step, record
        step += 1
