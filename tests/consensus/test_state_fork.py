"""State.fork: a state that reads its base and keeps its own writes.

Block templates and the mempool's trial applications run on forks, so what they
write must never reach the live state, and what a fork commits to (its pending
root) must be exactly what the same writes on the state itself give.
"""

from __future__ import annotations

import random

import pytest

from consensus.state import ACCOUNTS, JOBS, State


def _state() -> State:
    state = State()
    state.begin()
    for i in range(20):
        state.set(ACCOUNTS, bytes([i]) * 20, (1_000 + i, i))
    state.set(JOBS, b"j" * 32, (1, 2, 3))
    state.commit()
    return state


def _random_block(rng: random.Random, state: State) -> None:
    """Sets, deletes, overwrites and rolled-back trials on ``state``'s open block."""
    for _ in range(60):
        key = bytes([rng.randrange(30)]) * 20
        op = rng.random()
        if op < 0.5:
            state.set(ACCOUNTS, key, (rng.randrange(10_000), rng.randrange(50)))
        elif op < 0.7:
            state.set(ACCOUNTS, key, None)
        else:
            mark = state.savepoint()
            state.set(ACCOUNTS, key, (7, 7))
            state.set(JOBS, b"j" * 32, None)
            if rng.random() < 0.7:
                state.rollback_to(mark)


@pytest.mark.parametrize("seed", range(12))
def test_a_fork_commits_to_what_the_same_writes_on_the_state_commit_to(seed):
    base = _state()
    before = base.snapshot()
    fork = base.fork()
    fork.begin()
    _random_block(random.Random(seed), fork)
    fork_root, fork_written = fork.pending_root(), fork.written()
    assert base.snapshot() == before  # nothing reached the base
    base.begin()
    _random_block(random.Random(seed), base)
    assert fork_root == base.pending_root()
    assert fork_written == base.written()
    for table in (ACCOUNTS, JOBS):  # and the fork reads back what it wrote, deletions too
        assert dict(fork.tables[table].items()) == dict(base.tables[table].items())
        assert len(fork.tables[table]) == len(base.tables[table])


def test_a_fork_reads_through_deletes_over_and_rolls_back_on_its_own():
    base = _state()
    alice, bob, nobody = bytes([1]) * 20, bytes([2]) * 20, b"\xff" * 20
    fork = base.fork()
    assert fork.root == base.root and fork.account(alice) == (1_001, 1)
    fork.begin()
    fork.set(ACCOUNTS, alice, None)
    fork.set(ACCOUNTS, nobody, (5, 0))
    assert fork.get(ACCOUNTS, alice) is None and alice not in fork.tables[ACCOUNTS]
    assert fork.account(nobody) == (5, 0)
    with pytest.raises(KeyError):
        fork.tables[ACCOUNTS][alice]
    assert base.account(alice) == (1_001, 1) and base.get(ACCOUNTS, nobody) is None
    fork.rollback()
    assert fork.account(alice) == (1_001, 1) and fork.get(ACCOUNTS, nobody) is None
    # The base moves on (a block): the fork reads what the base holds now, and the base's
    # generation says it moved.
    generation = base.generation
    base.begin()
    base.set(ACCOUNTS, bob, (1, 3))
    base.commit()
    assert base.generation == generation + 1
    assert fork.account(bob) == (1, 3)


def test_a_state_in_an_open_block_cannot_be_forked_and_undo_counts_as_a_move():
    base = _state()
    base.begin()
    with pytest.raises(RuntimeError, match="open block"):
        base.fork()
    base.set(ACCOUNTS, b"\x01" * 20, (0, 9))
    undo = base.commit()
    generation = base.generation
    base.undo(undo)
    assert base.generation == generation + 1
    assert base.account(b"\x01" * 20) == (1_001, 1)
