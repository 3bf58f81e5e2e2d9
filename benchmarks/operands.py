"""Random job operands for the benchmarks, drawn fast enough not to be what they measure.

A job's operands are int8 matrices with entries in [-64, 63] (PROTOCOL §8).
``Generator.integers(-64, 64, dtype=np.int8)`` draws them one bounded integer at a
time: ~42 ms for a 2048×4096 operand on a Zen 4 core, so `pouw bench market`, which
posts hundreds of jobs of two such operands, spent most of its minute of backlog
posting drawing numbers, and its stream's draws took CPU from the nodes it measured.
Masking the generator's raw 64-bit words to 7 bits gives the same distribution
(each byte's low 7 bits are uniform on [0, 127]; shifted by -64, on [-64, 63]) in
~6 ms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def random_operand(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A C-contiguous int8 matrix of ``shape`` with independent entries uniform on
    [-64, 63], drawn from ``rng`` (the same seed gives the same matrix)."""
    count = math.prod(shape)
    raw = rng.bit_generator.random_raw(-(-count // 8)).view(np.uint8)[:count]
    raw &= 0x7F
    raw -= 64  # wraps: [0, 63] → [192, 255], which is [-64, -1] as int8
    return raw.view(np.int8).reshape(shape)


def random_operands(
    rng: np.random.Generator, m: int, k: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """A job's two operands: A (m×k) and B (k×n), drawn in that order."""
    return random_operand(rng, (m, k)), random_operand(rng, (k, n))


@dataclass(frozen=True)
class DrawnOperands:
    """A job's operands as the seed they are drawn from: a few integers held for each
    job posted, the matrices drawn again (~12 ms for two 2048×4096 operands) when the
    job's result is checked. `pouw bench market` posts hundreds of jobs it never checks
    (the backlog the network does not reach), and holding every job's 16 MiB of
    operands took ~12 GB of the client's memory at the defaults."""

    seed: tuple[int, ...]
    shape: tuple[int, int, int]
    """(m, k, n): A is m×k, B is k×n."""

    def draw(self) -> tuple[np.ndarray, np.ndarray]:
        """A and B, the same every call."""
        return random_operands(np.random.default_rng(self.seed), *self.shape)
