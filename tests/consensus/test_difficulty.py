"""ASERT keeps the chain on schedule through ×10 hashrate steps (PROTOCOL §7)."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.difficulty import MAX_TARGET, asert_target, block_work, target_for_work

BLOCK_TIME = 2_000  # ms
HALF_LIFE = 60_000  # ms: 30 blocks
ANCHOR_TARGET = target_for_work(10**9)


def _next(parent_ts: int, parent_height: int) -> int:
    return asert_target(ANCHOR_TARGET, 0, 0, parent_ts, parent_height, BLOCK_TIME, HALF_LIFE)


def test_on_schedule_keeps_the_anchor_target():
    assert _next(BLOCK_TIME * 50, 50) == ANCHOR_TARGET


def test_one_half_life_behind_doubles_the_target_and_ahead_halves_it():
    assert abs(_next(BLOCK_TIME * 50 + HALF_LIFE, 50) - 2 * ANCHOR_TARGET) <= ANCHOR_TARGET >> 15
    assert abs(_next(BLOCK_TIME * 50 - HALF_LIFE, 50) - ANCHOR_TARGET // 2) <= ANCHOR_TARGET >> 15


@given(st.integers(-(10**7), 10**7), st.integers(0, 10**4))
def test_target_is_monotone_in_time_and_clamped(dt, height):
    t1 = _next(BLOCK_TIME * height + dt, height)
    t2 = _next(BLOCK_TIME * height + dt + 1_000, height)
    assert 1 <= t1 <= t2 <= MAX_TARGET


def _simulate(rates: list[tuple[int, float]], seed: int = 1) -> list[int]:
    """Mine with exponential block times; returns every block's duration (ms)."""
    rnd = random.Random(seed)
    ts, height, durations = 0, 0, []
    for blocks, macs_per_ms in rates:
        for _ in range(blocks):
            work = block_work(_next(ts, height))
            dt = max(1, round(rnd.expovariate(1.0) * work / macs_per_ms))
            ts, height = ts + dt, height + 1
            durations.append(dt)
    return durations


def test_mean_block_time_within_5_percent_through_x10_steps():
    base = 10**9 / BLOCK_TIME  # the rate the anchor target was set for
    phases = [(1500, base), (1500, base * 10), (1500, base)]
    durations = _simulate(phases)
    mean = sum(durations) / len(durations)
    assert mean == pytest.approx(BLOCK_TIME, rel=0.05)
    # And after each step it settles: the second half of each phase is on target.
    for p in range(3):
        settled = durations[p * 1500 + 750 : (p + 1) * 1500]
        assert sum(settled) / len(settled) == pytest.approx(BLOCK_TIME, rel=0.08)


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="anchor target"):
        asert_target(0, 0, 0, 0, 0, BLOCK_TIME, HALF_LIFE)
    with pytest.raises(ValueError, match="below the anchor"):
        asert_target(ANCHOR_TARGET, 0, 5, 0, 4, BLOCK_TIME, HALF_LIFE)
    with pytest.raises(ValueError, match="positive"):
        block_work(0)
