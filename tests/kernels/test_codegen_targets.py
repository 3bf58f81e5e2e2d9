"""The CPU kernels are exact on every code path the fleet can compile, not just this host's.

Numba compiles for the host, so an AVX-512 CI box would otherwise never run the
AVX2 microkernel that Zen 3 machines mine with (nor the x86-64 baseline a
generic build gets, nor, on a host with VBMI, the VNNI kernels as Cascade Lake
compiles them). Each case reads a rerun of the CPU kernels' exactness tests in a
child process compiled for an older target (``NUMBA_CPU_NAME`` and
``NUMBA_CPU_FEATURES``; tests/support/older_targets.py); the codegen test in that run
also checks that the target's own multiply-add instruction is the one in the
microkernel.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import older_targets
from tests.support.older_targets import ROOT, env_for, targets


@pytest.mark.parametrize("isa", sorted(targets()))
def test_kernels_exact_when_compiled_for_an_older_target(isa: str, tmp_path: Path) -> None:
    cpu, _ = targets()[isa]
    probe = subprocess.run(
        [sys.executable, "-c", "from kernels.isa import compile_target as t; print(t().isa)"],
        cwd=ROOT,
        env=env_for(isa, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.stdout.strip() == isa, probe.stderr
    run = older_targets.start().result(isa)
    tail = "\n".join(run.stdout.splitlines()[-30:])
    assert run.returncode == 0, f"kernels compiled for {cpu} ({isa}) failed:\n{tail}\n{run.stderr}"
    assert " passed" in tail and "failed" not in tail, tail


VNNI_PROBE = """
from numba import njit, types
from kernels import transcript_vnni as tv
from kernels.isa import multiply_adds

fresh = njit(tv._tile_packed.py_func)
sig = (types.int8[:, :, ::1], types.uint8[:, :, ::1], types.int32[:, ::1], types.int32[:, ::1],
       types.uint32[::1], types.boolean, types.int32[:, :, ::1])
fresh.compile(sig)  # compiled, never run: the host may lack the instructions
print(sorted(multiply_adds(fresh.inspect_asm(sig))))
pack = njit(tv._pack_permuted.py_func)  # the verifier's noise by byte permutes (VBMI)
sig = (types.uint32[:, ::1], types.intp, types.uint8[::1], types.uint8[::1], types.uint8[::1],
       types.intp, types.uint32[:, ::1], types.int32[:, ::1], types.uint32[::1])
pack.compile(sig)
print("permutes:", sorted({w for w in ("vpermb", "vpdpbusd") if w in pack.inspect_asm(sig)}))
from kernels import freivalds_vnni as fv  # Freivalds' products with x and with y = B·x
bx = njit(fv.times_x.py_func)
sig = (types.int8[:, ::1], types.int32[:, ::1])
bx.compile(sig)
print("freivalds x:", sorted(multiply_adds(bx.inspect_asm(sig))))
res = njit(fv.any_residual.py_func)
sig = (types.int8[:, ::1], types.int64[:, ::1], types.uint8[:, :, ::1], types.int32[:, ::1],
       types.int32[:, ::1])
res.compile(sig)
print("freivalds y:", sorted(multiply_adds(res.inspect_asm(sig))))
# C' and the recovery's C go out by non-temporal stores, each task's ended by sfence.
tiles = njit(tv._tiles_into.py_func)
sig = (types.int8[:, :, :, ::1], types.int32[:, :, ::1], types.uint8[:, :, :, ::1], types.intp,
       types.intp, types.boolean, types.intp, types.intp, types.int32[:, ::1],
       types.uint32[:, :, ::1], types.boolean)
tiles.compile(sig)
from kernels import recover as rc
paired = njit(rc._subtract_paired_into.py_func)
psig = (types.int32[:, ::1], types.uint32[:, ::1], types.uint32[:, :, ::1], types.int32[:, ::1])
paired.compile(psig)
for name, asm in (("tiles", tiles.inspect_asm(sig)), ("recovery", paired.inspect_asm(psig))):
    print(name, "stores:", sorted({w for w in ("vmovntdq", "sfence") if w in asm}))
"""


def test_vnni_kernel_compiles_to_int8_dot_products_on_zmm() -> None:
    """Hosts without AVX-512 VNNI (Zen 3 CI) cannot run the VNNI path, but still prove that
    it compiles to vpdpbusd on zmm for a VNNI CPU, the verifier's noise to vpermb for
    one with VBMI, Freivalds' byte-plane products to vpdpbusd on ymm (x) and zmm
    (y = B·x), and the tiles of C' and the recovery's C to non-temporal stores that each
    task ends with sfence (a seq_cst fence is a locked or, which x86 does not promise to
    order them by) (their exactness runs on such hosts)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("an x86-64 code path")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    env |= {"NUMBA_CPU_NAME": "icelake-server", "NUMBA_CPU_FEATURES": ""}
    run = subprocess.run(
        [sys.executable, "-c", VNNI_PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "('vpdpbusd', 'zmm')" in run.stdout, run.stdout
    assert "permutes: ['vpdpbusd', 'vpermb']" in run.stdout, run.stdout
    assert "freivalds x: [('vpdpbusd', 'ymm')]" in run.stdout, run.stdout
    assert "freivalds y: [('vpdpbusd', 'zmm')]" in run.stdout, run.stdout
    for kernel in ("tiles", "recovery"):
        assert f"{kernel} stores: ['sfence', 'vmovntdq']" in run.stdout, run.stdout


AMX_PROBE = """
import numpy as np
from numba import njit, types
from kernels import transcript_amx as tx

fresh = njit(tx._tile_packed.py_func)
sig = (types.int8[:, ::1], types.intp, types.int8[:, :, ::1], types.intp, types.int32[:, ::1],
       types.uint32[::1], types.boolean, types.int32[:, :, ::1])
fresh.compile(sig)  # compiled only: the AMX host runs it in test_transcript_cpu
asm = fresh.inspect_asm(sig)
print(sorted({w for w in ("ldtilecfg", "tileloadd", "tdpbssd", "tilestored", "tilerelease")
              if w in asm}))
"""


def test_amx_kernel_compiles_to_tile_dot_products() -> None:
    """The AMX-INT8 path (run on hardware only where the host has AMX: see
    kernels/transcript_amx.py) compiles, on any x86-64 host, for a Sapphire Rapids
    target, to a configured tdpbssd loop that stores C for the fold."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("an x86-64 code path")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    env |= {"NUMBA_CPU_NAME": "sapphirerapids", "NUMBA_CPU_FEATURES": ""}
    run = subprocess.run(
        [sys.executable, "-c", AMX_PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[0] == str(
        sorted(["ldtilecfg", "tileloadd", "tdpbssd", "tilestored", "tilerelease"])
    ), run.stdout


def test_amx_is_offered_only_where_the_os_grants_tiles() -> None:
    """arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) succeeds exactly on CPUs with AMX tiles;
    elsewhere the refusal is a clean False and the path is not offered."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("AMX permission is a Linux x86-64 system call")
    from kernels.transcript_amx import request_amx_permission
    from kernels.transcript_cpu import available_paths

    cpuinfo = Path("/proc/cpuinfo").read_text()
    has_tiles = any("amx_tile" in line.split() for line in cpuinfo.splitlines())
    assert request_amx_permission() is has_tiles
    if not has_tiles:
        assert "amx_int8" not in available_paths()
