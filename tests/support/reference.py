"""Plain NumPy reference of the PoUW transcript (PROTOCOL §3–5), for tests only.

Written for clarity, not speed: it follows the protocol text line by line so
that every fast backend can be checked against it bit for bit.
"""

from __future__ import annotations

import numpy as np

from kernels.noise import derive_noise, expand_noise
from kernels.params import TRANSCRIPT_ROTATION, TRANSCRIPT_WORDS


def rotl32(x: np.ndarray, s: int) -> np.ndarray:
    x = x.astype(np.uint32)
    return ((x << np.uint32(s)) | (x >> np.uint32(32 - s))).astype(np.uint32)


def reference_transcripts(
    a_noisy: np.ndarray, bt_noisy: np.ndarray, r: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """C' = A'·B' and every tile's transcript, from A' (m×k) and B'ᵀ (n×k)."""
    m, k = a_noisy.shape
    n = bt_noisy.shape[0]
    a64 = a_noisy.astype(np.int64)
    b64 = bt_noisy.astype(np.int64).T
    acc = np.zeros((m, n), dtype=np.int64)
    T = np.zeros((m // h, n // w, TRANSCRIPT_WORDS), dtype=np.uint32)
    for c in range(k // r):
        acc += a64[:, c * r : (c + 1) * r] @ b64[c * r : (c + 1) * r, :]
        partial = acc.astype(np.int32).view(np.uint32)  # wrapping int32, as the protocol says
        tiles = partial.reshape(m // h, h, n // w, w)
        x = np.bitwise_xor.reduce(np.bitwise_xor.reduce(tiles, axis=3), axis=1)
        slot = c % TRANSCRIPT_WORDS
        T[:, :, slot] = rotl32(T[:, :, slot], TRANSCRIPT_ROTATION) ^ x
    return acc.astype(np.int32), T


def reference_attempt(
    a: np.ndarray, b: np.ndarray, seed_a: bytes, seed_b: bytes, r: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(C, C', T) for operands A (m×k) and B (k×n), with dense noise."""
    m, k = a.shape
    n = b.shape[1]
    e_a = expand_noise(derive_noise(seed_a, m, k, r)).astype(np.int64)
    e_bt = expand_noise(derive_noise(seed_b, n, k, r)).astype(np.int64)
    a_noisy = (a.astype(np.int64) + e_a).astype(np.int8)
    bt_noisy = (b.T.astype(np.int64) + e_bt).astype(np.int8)
    c_noisy, T = reference_transcripts(a_noisy, bt_noisy, r, h, w)
    c = a.astype(np.int64) @ b.astype(np.int64)
    return c.astype(np.int32), c_noisy, T
