"""The CUDA backend against the NumPy reference, bit for bit.

Three layers, so that the consensus-critical kernel is checked on machines
without a GPU:

* the kernel source runs under numba's CUDA simulator, in a subprocess
  (``NUMBA_ENABLE_CUDASIM`` must be set before ``numba.cuda`` is first
  imported, and this process has already imported the real target);
* the real kernel is compiled to sm_90 PTX (needs NVVM, not a GPU), which
  checks that it types, lowers, uses ``dp4a`` and keeps its accumulators out
  of local memory;
* on a machine with a GPU, the real kernel runs against the reference.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kernels import transcript_cuda
from tests.support.reference import reference_transcripts

REPO = Path(__file__).resolve().parents[2]

# (m, k, n, r, h, w). The simulator runs ~10^5 operations a second, so sizes
# stay small; inactive hash tiles skip their arithmetic, so the thin 144-wide
# cases (two blocks along one axis) stay cheap.
SIM_CASES = [
    (32, 128, 32, 64, 16, 16),  # defaults, 2×2 hash tiles
    (16, 64, 32, 64, 16, 16),  # non-square, a single chunk
    (16, 72, 16, 4, 16, 16),  # r = 4: 18 chunks, so T slots 0 and 1 wrap (c % 16)
    (16, 256, 16, 128, 16, 16),  # r > 64: two staged k-slices per fold
    (144, 64, 16, 64, 16, 16),  # two blocks down m
    (16, 64, 144, 64, 16, 16),  # two blocks across n
    (16, 64, 32, 32, 8, 32),  # non-square hash tile (4 threads of 8×8)
    (32, 64, 32, 64, 32, 32),  # 16 threads per hash tile
]
PLAIN_CASES = {0, 1, 4}
"""Cases also run through plain_matmul (the simulator spends its time on barriers)."""

_SIM_SCRIPT = """
import sys
import numpy as np
from kernels import transcript_cuda as tc

assert tc._SIM, "simulator not enabled"
inp = np.load(sys.argv[1])
out = {}
for i in range(int(inp["count"])):
    r, h, w, plain = (int(v) for v in inp[f"rhwp{i}"])
    a, bt = inp[f"a{i}"], inp[f"bt{i}"]
    out[f"c{i}"], out[f"t{i}"] = tc.noisy_product(a, bt, r, h, w)
    if plain:
        out[f"p{i}"] = tc.plain_matmul(a, bt, r, h, w)
words = inp["words"]
out["dp4a"] = np.array(
    [tc._dp4a(x, y, np.int32(z)) for x, y, z in zip(words[0], words[1], words[2])],
    dtype=np.int32,
)
np.savez(sys.argv[2], **out)
"""


def _operands(rng: np.random.Generator, m: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.integers(-127, 127, size=(m, k), dtype=np.int8)  # A' lies in [-127, 126]
    bt = rng.integers(-127, 127, size=(n, k), dtype=np.int8)
    return a, bt


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Inputs of every SIM_CASE plus what the simulated kernel returned for them."""
    tmp = tmp_path_factory.mktemp("cudasim")
    rng = np.random.default_rng(20240611)
    inp: dict[str, np.ndarray] = {"count": np.array(len(SIM_CASES))}
    for i, (m, k, n, r, h, w) in enumerate(SIM_CASES):
        inp[f"a{i}"], inp[f"bt{i}"] = _operands(rng, m, k, n)
        inp[f"rhwp{i}"] = np.array([r, h, w, i in PLAIN_CASES])
    # dp4a fallback inputs: random words plus the extreme bytes.
    words = rng.integers(-(2**31), 2**31, size=(3, 64), dtype=np.int64).astype(np.int32)
    words[:2, :4] = np.array([0x81818181, 0x7F7F7F7F, 0x80808080, 0x817F0001], np.uint32).view(
        np.int32
    )
    words[2] %= 2**20  # keep the accumulator far from int32 overflow
    inp["words"] = words
    np.savez(tmp / "in.npz", **inp)  # type: ignore[arg-type]

    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _SIM_SCRIPT, str(tmp / "in.npz"), str(tmp / "out.npz")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(tmp / "out.npz") as out:
        return {**inp, **dict(out)}


@pytest.mark.parametrize("case", range(len(SIM_CASES)), ids=[str(c) for c in SIM_CASES])
def test_simulated_kernel_matches_reference(sim_run: dict[str, np.ndarray], case: int) -> None:
    m, _k, n, r, h, w = SIM_CASES[case]
    c_ref, t_ref = reference_transcripts(sim_run[f"a{case}"], sim_run[f"bt{case}"], r, h, w)
    c, t = sim_run[f"c{case}"], sim_run[f"t{case}"]
    assert c.dtype == np.int32 and c.shape == (m, n)
    assert t.dtype == np.uint32 and t.shape == (m // h, n // w, 16)
    np.testing.assert_array_equal(c, c_ref)
    np.testing.assert_array_equal(t, t_ref)
    if case in PLAIN_CASES:
        np.testing.assert_array_equal(sim_run[f"p{case}"], c_ref)


def test_simulated_dp4a_fallback(sim_run: dict[str, np.ndarray]) -> None:
    a, b, c = sim_run["words"]
    a8 = a.view(np.int8).reshape(-1, 4).astype(np.int64)  # little-endian bytes
    b8 = b.view(np.int8).reshape(-1, 4).astype(np.int64)
    expected = (c.astype(np.int64) + (a8 * b8).sum(axis=1)).astype(np.int32)
    np.testing.assert_array_equal(sim_run["dp4a"], expected)


@pytest.mark.parametrize(
    ("r", "h", "w", "name"),
    [(6, 16, 16, "r="), (64, 12, 16, "h="), (64, 16, 24, "w="), (64, 64, 64, "h=64, w=64")],
)
def test_unsupported_parameters_are_named(r: int, h: int, w: int, name: str) -> None:
    a = np.zeros((192, 192), np.int8)
    with pytest.raises(ValueError, match=name):
        transcript_cuda.noisy_product(a, a, r, h, w)


def test_ptx_for_sm90_uses_dp4a() -> None:
    ptx = transcript_cuda.compile_ptx_for((9, 0))
    assert ".target sm_90" in ptx
    assert "dp4a.s32.s32" in ptx
    assert "shfl.sync.bfly" in ptx  # the in-kernel fold's warp reduction
    # The 8×8 accumulators and operand registers must not spill to local memory.
    assert ".local" not in ptx


def test_ptx_of_plain_kernel_has_no_fold() -> None:
    ptx = transcript_cuda.compile_ptx_for((9, 0), fold=False)
    assert "dp4a.s32.s32" in ptx
    assert "shfl.sync" not in ptx


@pytest.mark.skipif(not transcript_cuda.is_available(), reason="no CUDA GPU visible")
def test_gpu_kernel_matches_reference() -> None:
    rng = np.random.default_rng(7)
    a, bt = _operands(rng, 256, 512, 256)
    c_ref, t_ref = reference_transcripts(a, bt, 64, 16, 16)
    c, t = transcript_cuda.noisy_product(a, bt, 64, 16, 16)
    np.testing.assert_array_equal(c, c_ref)
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_array_equal(transcript_cuda.plain_matmul(a, bt, 64, 16, 16), c_ref)
