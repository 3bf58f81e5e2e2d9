"""What the CUDA kernels share (PROTOCOL §4): the simulator switch and the fold of one
transcript word, ``T[c % 16] = rotl32(T[c % 16], 13) ^ x``, written once for the dp4a
and the tensor-core kernel alike."""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import cuda

from kernels.params import TRANSCRIPT_ROTATION

SIM: bool = bool(numba.config.ENABLE_CUDASIM)  # type: ignore[attr-defined]
"""numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1`` before numba.cuda is imported)."""

FULL_MASK = 0xFFFFFFFF
"""Every lane of a warp, for the ``*_sync`` warp intrinsics."""
KT_MAX = 64
"""Most k bytes a kernel stages in shared memory at once."""

_MASK32 = np.uint64(0xFFFFFFFF)
_ROT_L = np.uint64(TRANSCRIPT_ROTATION)
_ROT_R = np.uint64(32 - TRANSCRIPT_ROTATION)


def _fold_word(t: Any, x: Any) -> Any:
    """rotl32(t, 13) ^ x: a transcript word (uint32) after a chunk whose XOR is x (int32).
    In uint64, since numba types uint32 shifts by a Python int as int64."""
    tv = np.uint64(t)
    rot = ((tv << _ROT_L) | (tv >> _ROT_R)) & _MASK32
    return np.uint32(rot ^ np.uint64(np.uint32(x)))


fold_word = _fold_word if SIM else cuda.jit(device=True, inline=True)(_fold_word)


def is_available() -> bool:
    """True when a real CUDA GPU is visible (never under the simulator)."""
    return not SIM and bool(cuda.is_available())
