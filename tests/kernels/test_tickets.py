"""Tickets: the Numba BLAKE3 used by miners equals the blake3 library."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.tickets import (
    all_tickets,
    ticket_of,
    ticket_threshold,
    ticket_wins,
    tickets_to_ints,
    winning_tiles,
)

SEED = bytes(range(100, 132))


@settings(max_examples=25, deadline=None)
@given(
    words=st.lists(st.integers(0, 2**32 - 1), min_size=16, max_size=16),
    seed=st.binary(min_size=32, max_size=32),
    ti=st.integers(0, 3),
    tj=st.integers(0, 2),
)
def test_numba_blake3_matches_library(words, seed, ti, tj):
    T = np.zeros((4, 3, 16), dtype=np.uint32)
    T[ti, tj] = np.array(words, dtype=np.uint32)
    ints = tickets_to_ints(all_tickets(T, seed))
    assert ints[ti * 3 + tj] == ticket_of(T[ti, tj], seed, ti, tj)


def test_tile_coordinates_are_part_of_the_ticket():
    T = np.zeros((2, 2, 16), dtype=np.uint32)  # identical transcripts everywhere
    ints = tickets_to_ints(all_tickets(T, SEED))
    assert len(set(ints)) == 4


def test_winners_are_exactly_the_tickets_at_or_below_threshold():
    rng = np.random.default_rng(3)
    T = rng.integers(0, 2**32, (16, 16, 16), dtype=np.uint64).astype(np.uint32)
    words = all_tickets(T, SEED)
    ints = tickets_to_ints(words)
    threshold = sorted(ints)[9]  # equality wins too
    expect = sorted((i // 16, i % 16) for i, t in enumerate(ints) if t <= threshold)
    assert winning_tiles(words, threshold) == expect and len(expect) == 10
    assert winning_tiles(words, 0) == []


def test_threshold_scales_with_macs_per_tile_and_caps():
    assert ticket_threshold(1000, 16, 16, 64) == 1000 * 16 * 16 * 64
    assert ticket_threshold(2**250, 16, 16, 65536) == 2**256 - 1
    assert ticket_wins(5, 1, 1, 1, 5) and not ticket_wins(6, 1, 1, 1, 5)
    with pytest.raises(ValueError, match="positive"):
        ticket_threshold(0, 16, 16, 64)


def test_bad_transcript_shape_is_rejected():
    with pytest.raises(ValueError, match="uint32"):
        all_tickets(np.zeros((2, 2, 8), dtype=np.uint32), SEED)
    with pytest.raises(ValueError, match="16 words"):
        ticket_of(np.zeros(8, dtype=np.uint32), SEED, 0, 0)


def test_every_tile_of_a_wide_grid_matches_the_library():
    """Tiles are hashed a row at a time, one per vector lane: a row longer than a vector
    and not a multiple of it, far coordinates and all-ones words still give the library's."""
    rng = np.random.default_rng(9)
    T = rng.integers(0, 2**32, size=(3, 37, 16), dtype=np.uint32)
    T[1, 36] = 0xFFFFFFFF
    tickets = tickets_to_ints(all_tickets(T, SEED))
    for ti in range(3):
        for tj in range(37):
            assert tickets[ti * 37 + tj] == ticket_of(T[ti, tj], SEED, ti, tj), (ti, tj)
