"""Which instruction set the CPU kernels are compiled for, and what it must look like.

Numba compiles for the host CPU unless ``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``
say otherwise (``generic`` gives portable baseline code). Machines this project
runs on differ (AVX2-only Zen 3, AVX-512 VNNI and AMX Xeons, laptops of any
kind), so benchmarks report the instruction set they ran with, and the codegen
test checks the multiply-add the target's features call for, on every host.
"""

from __future__ import annotations

import functools
import platform
import re
from dataclasses import dataclass

from llvmlite import binding
from numba.core import config

_MADD = re.compile(r"\b(v?pmaddwd|v?pdpwssds?|v?pdpbusds?|sdot|smlal2?|smull2?|sadalp)\b")


@dataclass(frozen=True)
class CompileTarget:
    """The CPU name and feature set Numba generates machine code for."""

    cpu: str
    features: frozenset[str]
    """Enabled LLVM features, without the leading ``+`` (e.g. ``avx2``, ``avx512vnni``)."""
    explicit: bool = True
    """False for a named CPU with an empty feature string: LLVM then uses that
    CPU's own defaults, which only its name tells."""

    @property
    def isa(self) -> str:
        """The widest integer multiply-add family the target has, as a short name.

        ``avx512_vnni`` (int8 vpdpbusd on zmm), ``avx512`` (vpmaddwd on
        zmm), ``avx_vnni`` (VEX vpdpwssd on ymm), ``avx2`` (vpmaddwd on ymm),
        ``sse2`` (pmaddwd on xmm: the x86-64 baseline), ``neon_dotprod`` / ``neon``
        on 64-bit ARM, else the machine's name.
        """
        if not self.explicit:
            return self.cpu
        f = self.features
        machine = platform.machine().lower()
        if machine in ("x86_64", "amd64", "i686", "x86"):
            if "avx512vnni" in f and "avx512bw" in f:
                return "avx512_vnni"
            if "avx512bw" in f:
                return "avx512"
            if "avxvnni" in f:
                return "avx_vnni"
            if "avx2" in f:
                return "avx2"
            return "sse2"
        if machine in ("aarch64", "arm64"):
            return "neon_dotprod" if "dotprod" in f else "neon"
        return machine

    @property
    def multiply_add(self) -> tuple[frozenset[str], frozenset[str]]:
        """(instructions, registers) the microkernel's multiply-add must use on this target.

        Any one of the instructions on any one of the registers proves the
        product is vectorised as the ISA allows; which one LLVM picks within a
        family (e.g. 256-bit vectors on CPUs that prefer them) is its choice.
        """
        isa = self.isa
        table = {
            "avx512_vnni": ({"vpdpbusd"}, {"zmm"}),
            "avx512": ({"vpmaddwd"}, {"ymm", "zmm"}),
            "avx_vnni": ({"vpdpwssd", "vpmaddwd"}, {"ymm"}),
            "avx2": ({"vpmaddwd"}, {"ymm"}),
            "sse2": ({"pmaddwd"}, {"xmm"}),
            "neon_dotprod": ({"sdot", "smlal", "smlal2", "smull", "smull2", "sadalp"}, {"v"}),
            "neon": ({"smlal", "smlal2", "smull", "smull2", "sadalp"}, {"v"}),
        }
        instructions, registers = table.get(isa, (set(), set()))
        return frozenset(instructions), frozenset(registers)


@functools.cache
def compile_target() -> CompileTarget:
    """The target Numba compiles for in this process (host, or the NUMBA_CPU_* override).

    Found once per process (asking LLVM for the host's features takes ~0.4 ms, and
    Freivalds' check asks on every call): Numba reads the override at import.
    """
    # Numba sets these attributes at import from the environment (mypy cannot see them).
    cpu_name: str | None = getattr(config, "CPU_NAME", None)
    cpu_features: str | None = getattr(config, "CPU_FEATURES", None)
    cpu = cpu_name or binding.get_host_cpu_name()
    # A CPU named without features still gets the host's features from Numba
    # (``generic`` alone implies none): report what it really compiles for.
    host = cpu_features is None
    raw = binding.get_host_cpu_features().flatten() if host else str(cpu_features)
    features = frozenset(f[1:] for f in raw.split(",") if f.startswith("+"))
    return CompileTarget(cpu=cpu, features=features, explicit=bool(raw) or cpu == "generic")


def multiply_adds(asm: str) -> set[tuple[str, str]]:
    """The (multiply-add instruction, register kind) pairs found in an assembly listing."""
    found: set[tuple[str, str]] = set()
    for line in asm.splitlines():
        m = _MADD.search(line)
        if m is None:
            continue
        regs = re.findall(r"\b([xyz]mm)\d+\b|\b(v)\d+\.", line)
        for xmm, vreg in regs:
            found.add((m.group(1), xmm or vreg))
    return found
