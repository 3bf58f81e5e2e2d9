"""Numeric constants of the PoUW arithmetic (PROTOCOL §1, §3, §4).

These are the limits that make every backend exact: operands are int7, noise
entries are bounded so that A + E_A fits in int8, and k is capped so that an
honest int32 accumulation can never wrap.
"""

from __future__ import annotations

OPERAND_MIN = -64
"""Smallest job operand value (int7)."""
OPERAND_MAX = 63
"""Largest job operand value (int7)."""

NOISE_FACTOR_MIN = -32
"""Smallest entry of a low-rank noise factor L; E = L·R then lies in [-63, 63]."""
NOISE_FACTOR_MAX = 31

MAX_K = 65_536
"""Largest inner dimension: 65,536 · 127 · 127 < 2^31, so C' never wraps."""

DEFAULT_RANK = 64
"""Noise rank r, also the width of the k-chunk after which every tile is folded."""
DEFAULT_TILE_H = 16
DEFAULT_TILE_W = 16

TRANSCRIPT_WORDS = 16
"""A tile transcript T is 16 uint32 words (64 bytes)."""
TRANSCRIPT_ROTATION = 13
"""T[c mod 16] = rotl32(T[c mod 16], 13) XOR fold(chunk c)."""

ATTEMPT_STRIPS = 4
"""Strips of tile rows an interruptible attempt computes its noisy product in: between
them its caller may run other work (a miner, a better-paying job), ~1/8 of an attempt's
time on average to wait for that, against one more pass of the strip loop each."""
