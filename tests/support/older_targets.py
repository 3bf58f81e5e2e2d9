"""The CPU kernels' exactness tests rerun in child processes compiled for older targets.

Numba compiles for the host, so an AVX-512 CI box would otherwise never run the AVX2
microkernel that Zen 3 machines mine with (nor the x86-64 baseline a generic build
gets, nor, on a host with VBMI, the VNNI kernels as Cascade Lake compiles them). Each
target's run is a ``pytest`` child with ``NUMBA_CPU_NAME`` and ``NUMBA_CPU_FEATURES``
set and a Numba cache of its own; tests/kernels/test_codegen_targets.py reads the
results.

Each run is mostly one thread compiling every kernel from nothing: ~1.5 min apiece on
two cores, ~2.5 min for the three side by side. So tests/conftest.py starts them as
soon as the suite is collected, at the lowest CPU priority (Linux's SCHED_IDLE: they
take the cores the rest of the suite leaves idle and yield to anything else), and orders the
tests that read them last: by then they are done, and the suite is as long as it was
without them.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from llvmlite import binding

from kernels.isa import compile_target
from tests.support.background import BackgroundChild, RunResult

ROOT = Path(__file__).resolve().parents[2]

# The tests that compare the Numba CPU kernels bit for bit with the NumPy
# reference (the hypothesis search is left to the host run: it costs most).
EXACTNESS_TESTS = [
    "tests/kernels/test_transcript_cpu.py",
    "tests/kernels/test_tickets.py",
    "tests/kernels/test_blake3_lanes.py",
    "tests/kernels/test_attempt.py",
    "tests/kernels/test_noise.py",
    "tests/kernels/test_freivalds.py",
    "tests/kernels/test_recover.py",
]

_AVX2 = "+avx,+avx2,+fma,+bmi,+bmi2,+f16c,+popcnt,+sse4.2"
X86_TARGETS = {
    # Zen 3 / Haswell-class: AVX2 and FMA, no AVX-512 (vpmaddwd on ymm).
    "avx2": ("haswell", _AVX2),
    # Portable baseline code, what a distribution build for any x86-64 gets (pmaddwd on xmm).
    "sse2": ("generic", ""),
}
CASCADE_LAKE = (
    "cascadelake",
    _AVX2 + ",+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx512cd,+avx512vnni",
)
"""AVX-512 VNNI without VBMI's byte permute (Cascade Lake Xeons): the VNNI kernels with
the verifier's table packing. Run only on hosts that have those features."""
ARM_TARGETS = {"neon": ("generic", "")}

OLDER_TARGET_TEST = "test_kernels_exact_when_compiled_for_an_older_target"
"""The test (one per target) that reads the runs: tests/conftest.py starts them when the
suite is collected and puts this test last."""

RUN_TIMEOUT_S = 900.0
"""The longest a run may take once its results are asked for."""


PORTABLE_ISAS = frozenset(X86_TARGETS)
"""Targets on which every kernel takes the portable path, whatever else the CPU has: a
run for the ISA the suite itself compiles for would repeat the suite's own tests (an
AVX2 host runs the AVX2 microkernel already). The VNNI kernels branch on more
features (VBMI, AMX), so the Cascade Lake run stays even on an ``avx512_vnni`` host."""


def targets() -> dict[str, tuple[str, str]]:
    """The older targets this host can run: isa → (NUMBA_CPU_NAME, NUMBA_CPU_FEATURES)."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return ARM_TARGETS
    own = compile_target().isa
    found = {isa: t for isa, t in X86_TARGETS.items() if not (isa == own and own in PORTABLE_ISAS)}
    host = set(CASCADE_LAKE[1].replace("+", "").split(","))
    features = binding.get_host_cpu_features()
    if all(features.get(f, False) for f in host):
        found["avx512_vnni"] = CASCADE_LAKE
    return found


def env_for(isa: str, cache: Path) -> dict[str, str]:
    """This process's environment compiling for ``isa``'s target into the cache ``cache``."""
    cpu, features = targets()[isa]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    # A cache of its own: the run compiles everything for its target anyway, and runs
    # side by side must not rewrite each other's (or the host's) cache index.
    return env | {
        "NUMBA_CPU_NAME": cpu,
        "NUMBA_CPU_FEATURES": features,
        "NUMBA_CACHE_DIR": str(cache),
    }


class OlderTargetRuns:
    """Every older target's exactness run, started side by side in the background."""

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="pouw-older-targets-"))
        self._runs: dict[str, BackgroundChild] = {}
        for isa in sorted(targets()):
            cache = self._dir / f"numba-{isa}"
            cache.mkdir()
            argv = [
                sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "-k", "not hypothesis", *EXACTNESS_TESTS,
            ]  # fmt: skip
            self._runs[isa] = BackgroundChild(isa, argv, ROOT, env_for(isa, cache), self._dir / isa)

    def result(self, isa: str, timeout: float = RUN_TIMEOUT_S) -> RunResult:
        """Wait for ``isa``'s run (TimeoutError after ``timeout`` s, the run killed)."""
        return self._runs[isa].result(timeout)

    def stop(self) -> None:
        """Kill the runs still going and remove their files."""
        for run in self._runs.values():
            run.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


_runs: OlderTargetRuns | None = None


def start() -> OlderTargetRuns:
    """The runs of this test session, started on the first call."""
    global _runs
    if _runs is None:
        _runs = OlderTargetRuns()
    return _runs


def stop() -> None:
    """End this session's runs, if any were started."""
    global _runs
    if _runs is not None:
        _runs.stop()
        _runs = None
