"""Interruptible attempts: the noisy product computed by strips of whole tile rows.

A tile's transcript depends on its own rows of A' and columns of B' only, so the
strips give the same C' and transcripts bit for bit, and a caller (a miner) may run
other work between them (PROTOCOL §8). Kernel modules and the backend registry both
use this module; it imports neither.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from kernels.noise import NoiseFactors, add_noise, add_noise_transposed
from kernels.params import ATTEMPT_STRIPS, TRANSCRIPT_WORDS
from kernels.validate import check_operand


def tile_strips(tiles: int) -> list[tuple[int, int]]:
    """(first, end) tile rows of the ``ATTEMPT_STRIPS`` strips, of whole tile rows, that an
    interruptible attempt on ``tiles`` tile rows is computed in (fewer if ``tiles`` is)."""
    step = max(1, -(-tiles // ATTEMPT_STRIPS))
    return [(t0, min(tiles, t0 + step)) for t0 in range(0, tiles, step)]


def strips_between(
    tiles: int, between_strips: Callable[[], None] | None
) -> Iterator[tuple[int, int]]:
    """(first, end) tile rows to compute in turn: all ``tiles`` at once without
    ``between_strips``, else the :func:`tile_strips`, that function called between them."""
    if between_strips is None:
        yield 0, tiles
        return
    for t0, t1 in tile_strips(tiles):
        if t0:
            between_strips()
        yield t0, t1


NoisyProduct = Callable[[np.ndarray, np.ndarray, int, int, int], tuple[np.ndarray, np.ndarray]]
"""``noisy_product(a_noisy, bt_noisy, r, h, w) -> (C', T)``: a backend's, or a module's."""


def built_noisy_product(
    noisy_product: NoisyProduct,
    a: np.ndarray,
    noise_a: NoiseFactors,
    b: np.ndarray,
    noise_b: NoiseFactors,
    r: int,
    h: int,
    w: int,
    between_strips: Callable[[], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(C', T) by ``noisy_product`` of A' and B'ᵀ, built here from the clean operands and
    their noise. With ``between_strips``, by the row strips of whole tiles ``tile_strips``
    gives (a tile's transcript depends on its own rows and columns only, so the strips
    give the same bits), that function called between them. ValueError first if A or B
    has an entry outside the int7 range."""
    check_operand("A", a)
    check_operand("B", b)
    a_noisy, bt_noisy = add_noise(a, noise_a), add_noise_transposed(b, noise_b)
    if between_strips is None:
        return noisy_product(a_noisy, bt_noisy, r, h, w)
    m, n = a.shape[0], b.shape[1]
    c_noisy = np.empty((m, n), dtype=np.int32)
    transcripts = np.empty((m // h, n // w, TRANSCRIPT_WORDS), dtype=np.uint32)
    for t0, t1 in strips_between(m // h, between_strips):
        c_noisy[t0 * h : t1 * h], transcripts[t0:t1] = noisy_product(
            a_noisy[t0 * h : t1 * h], bt_noisy, r, h, w
        )
    return c_noisy, transcripts
