"""Backend registry: ``cpu`` (Numba), ``cuda`` (numba-cuda) and ``auto``.

Every backend computes the same two things, bit for bit: the noisy product
with its tile transcripts, and a plain int8 product with the same kernel and
no folds (the baseline an attempt's overhead is measured against).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from kernels.noise import NoiseFactors
from kernels.strips import built_noisy_product
from kernels.tickets import HeldTranscripts, HostTranscripts

BACKEND_NAMES = ("cpu", "cuda", "auto")


class Backend(Protocol):
    @property
    def name(self) -> str: ...

    def noisy_product(
        self, a_noisy: np.ndarray, bt_noisy: np.ndarray, r: int, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def plain_matmul(self, a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int) -> np.ndarray: ...


@dataclass(frozen=True)
class ModuleBackend:
    """A backend whose kernels live in one module with the transcript API."""

    name: str
    module: str

    def _mod(self) -> Any:
        return importlib.import_module(self.module)

    def noisy_product(
        self, a_noisy: np.ndarray, bt_noisy: np.ndarray, r: int, h: int, w: int
    ) -> tuple[np.ndarray, np.ndarray]:
        c, t = self._mod().noisy_product(a_noisy, bt_noisy, r, h, w)
        return c, t

    def plain_matmul(self, a: np.ndarray, bt: np.ndarray, r: int, h: int, w: int) -> np.ndarray:
        out: np.ndarray = self._mod().plain_matmul(a, bt, r, h, w)
        return out

    def noisy_product_from_clean(
        self,
        a: np.ndarray,
        noise_a: NoiseFactors,
        b: np.ndarray,
        noise_b: NoiseFactors,
        r: int,
        h: int,
        w: int,
        between_strips: Callable[[], None] | None = None,
        bt: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(C', T) from the clean A (m×k) and B (k×n) with their noise: modules that can
        pack A' from A directly never build it; for the others A' and B'ᵀ are built here.
        ``between_strips``: computed by row strips, that function called between them
        (:func:`built_noisy_product`). ``bt``: B's transpose, if the caller holds it."""
        fetch_c, held = self.noisy_product_deferred(
            a, noise_a, b, noise_b, r, h, w, between_strips, bt
        )
        return fetch_c(), held.host()

    def noisy_product_deferred(
        self,
        a: np.ndarray,
        noise_a: NoiseFactors,
        b: np.ndarray,
        noise_b: NoiseFactors,
        r: int,
        h: int,
        w: int,
        between_strips: Callable[[], None] | None = None,
        bt: np.ndarray | None = None,
    ) -> tuple[Callable[[], np.ndarray], HeldTranscripts]:
        """(a function returning C', the transcripts) as :meth:`noisy_product_from_clean`
        computes them, where C' and T may stay where they were computed (a GPU, which
        then hashes the tickets too) until a caller asks for them (C' for the recovery
        of C)."""
        mod = self._mod()
        if hasattr(mod, "noisy_product_deferred"):
            fetch, held = mod.noisy_product_deferred(
                a, noise_a, b, noise_b, r, h, w, between_strips, bt
            )
            return fetch, held
        if hasattr(mod, "noisy_product_from_clean"):
            c, t = mod.noisy_product_from_clean(a, noise_a, b, noise_b, r, h, w, between_strips, bt)
        else:
            c, t = built_noisy_product(
                self.noisy_product, a, noise_a, b, noise_b, r, h, w, between_strips
            )
        return lambda: c, HostTranscripts(t)


CPU = ModuleBackend("cpu", "kernels.transcript_cpu")
CUDA = ModuleBackend("cuda", "kernels.transcript_cuda")


def cuda_available() -> bool:
    """True when a real CUDA GPU is visible (never under the simulator)."""
    try:
        mod = importlib.import_module("kernels.transcript_cuda")
    except ImportError:
        return False
    return bool(mod.is_available())


def get_backend(name: str) -> Backend:
    """``cpu``, ``cuda`` (error if no GPU is visible) or ``auto`` (cuda if visible)."""
    if name == "cpu":
        return CPU
    if name == "cuda":
        if not cuda_available():
            raise ValueError(
                "backend 'cuda' needs a visible CUDA GPU and the 'cuda' extra "
                "(pip install 'pouwnet[cuda]'); none was found"
            )
        return CUDA
    if name == "auto":
        return CUDA if cuda_available() else CPU
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
