"""The CUDA tickets against the CPU tickets and the blake3 library, bit for bit.

Three layers, as for the CUDA transcripts, so that the kernel is checked on machines
without a GPU:

* the kernel source runs under numba's CUDA simulator, in a subprocess
  (``NUMBA_ENABLE_CUDASIM`` must be set before ``numba.cuda`` is first imported, and
  this process has already imported the real target);
* the real kernel is compiled to PTX (needs NVVM, not a GPU), which checks that it
  types, lowers, rotates with funnel shifts and keeps its state out of local memory;
* on a machine with a GPU, the real kernel runs against ``all_tickets``.
"""

from __future__ import annotations

import numpy as np
import pytest

from kernels import tickets_cuda, transcript_cuda
from kernels.tickets import all_tickets, ticket_of, tickets_to_ints
from tests.support.cudasim import run_simulated

SIM_SHAPES = [(1, 1), (2, 3), (3, 5), (1, 130)]
"""Tile grids for the simulator (~10 ms a tile): (1, 130) spans two blocks of 128
threads, the second one mostly idle."""
ORIGINS = [(0, 0), (70_000, 65_536), (2**31 - 1, 2**32 - 3)]
"""Tile-index origins of a (2, 3) grid: indices past 16 bits, and up to 2^32 − 1 (tj)
and 2^31 (ti, where a signed 32-bit index would turn negative)."""

_SIM_SCRIPT = """
import sys
import numpy as np
from numba import cuda
from kernels import tickets_cuda as tc

assert tc.SIM, "simulator not enabled"
inp = np.load(sys.argv[1])
out = {}
for i in range(int(inp["count"])):
    key = inp[f"key{i}"].tobytes()
    out[f"tickets{i}"] = tc.all_tickets_gpu(inp[f"T{i}"], key)
    if i == 0:  # the device API, with its default origin and an explicit stream
        d = tc.all_tickets_device(cuda.to_device(inp["T0"]), key, cuda.stream())
        out["device0"] = d.copy_to_host()
for i in range(len(inp["origins"])):
    ti0, tj0 = (int(v) for v in inp["origins"][i])
    d_t = cuda.to_device(inp["T_origin"])
    d = tc.all_tickets_device(d_t, inp["key0"].tobytes(), origin=(ti0, tj0))
    out[f"origin{i}"] = d.copy_to_host()
errors = []
for args in (
    (inp["T0"], inp["key0"].tobytes()),  # a host array
    (cuda.to_device(inp["T0"]), b"short"),
    (cuda.to_device(inp["T0"][..., :8].copy()), inp["key0"].tobytes()),
):
    try:
        tc.all_tickets_device(*args)
        errors.append("no error")
    except ValueError as e:
        errors.append(str(e))
for origin in ((-1, 0), (0, 2**32 - 2)):
    try:
        tc.all_tickets_device(cuda.to_device(inp["T_origin"]), inp["key0"].tobytes(), origin=origin)
        errors.append("no error")
    except ValueError as e:
        errors.append(str(e))
out["errors"] = np.array(errors)
np.savez(sys.argv[2], **out)
"""


def _transcripts(rng: np.random.Generator, tm: int, tn: int) -> np.ndarray:
    return rng.integers(0, 2**32, size=(tm, tn, 16), dtype=np.uint64).astype(np.uint32)


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Inputs plus what the simulated kernel returned for them."""
    tmp = tmp_path_factory.mktemp("cudasim_tickets")
    rng = np.random.default_rng(20240612)
    inp: dict[str, np.ndarray] = {"count": np.array(len(SIM_SHAPES) + 1)}
    for i, (tm, tn) in enumerate(SIM_SHAPES):
        inp[f"T{i}"] = _transcripts(rng, tm, tn)
        inp[f"key{i}"] = np.frombuffer(rng.bytes(32), dtype=np.uint8)
    # All ones: every addition carries out of 32 bits.
    last = len(SIM_SHAPES)
    inp[f"T{last}"] = np.full((2, 2, 16), 0xFFFFFFFF, dtype=np.uint32)
    inp[f"key{last}"] = np.full(32, 0xFF, dtype=np.uint8)
    inp["T_origin"] = _transcripts(rng, 2, 3)
    inp["origins"] = np.array(ORIGINS, dtype=np.int64)
    out, elapsed = run_simulated(_SIM_SCRIPT, inp, tmp, timeout=120)
    assert elapsed < 30, f"the simulator run took {elapsed:.1f} s"
    return out


@pytest.mark.parametrize("case", range(len(SIM_SHAPES) + 1))
def test_simulated_kernel_matches_all_tickets(sim_run: dict[str, np.ndarray], case: int) -> None:
    T = sim_run[f"T{case}"]
    key = sim_run[f"key{case}"].tobytes()
    got = sim_run[f"tickets{case}"]
    assert got.dtype == np.uint32 and got.shape == (*T.shape[:2], 8)
    np.testing.assert_array_equal(got, all_tickets(T, key))
    # And the verifier's path, the blake3 library, on the first and last tiles.
    tm, tn = T.shape[:2]
    ints = tickets_to_ints(got)
    for ti, tj in {(0, 0), (tm - 1, tn - 1), (tm // 2, tn // 2)}:
        assert ints[ti * tn + tj] == ticket_of(T[ti, tj], key, ti, tj)


def test_simulated_device_api_matches(sim_run: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(
        sim_run["device0"], all_tickets(sim_run["T0"], sim_run["key0"].tobytes())
    )


@pytest.mark.parametrize("case", range(len(ORIGINS)), ids=[str(o) for o in ORIGINS])
def test_simulated_origin_hashes_large_tile_indices(
    sim_run: dict[str, np.ndarray], case: int
) -> None:
    T = sim_run["T_origin"]
    key = sim_run["key0"].tobytes()
    ti0, tj0 = ORIGINS[case]
    tm, tn = T.shape[:2]
    expected = [ticket_of(T[i, j], key, ti0 + i, tj0 + j) for i in range(tm) for j in range(tn)]
    assert tickets_to_ints(sim_run[f"origin{case}"]) == expected
    if case == 0:
        np.testing.assert_array_equal(sim_run["origin0"], all_tickets(T, key))


def test_simulated_device_api_names_bad_inputs(sim_run: dict[str, np.ndarray]) -> None:
    host, key, shape, negative, too_far = (str(e) for e in sim_run["errors"])
    assert "device array" in host
    assert "ticket key" in key
    assert "(tm, tn, 16)" in shape
    assert "32 bits" in negative and "32 bits" in too_far


T_OK = np.zeros((2, 3, 16), dtype=np.uint32)
KEY = bytes(range(32))


@pytest.mark.parametrize(
    ("T", "key", "match"),
    [
        (T_OK, b"\0" * 31, "ticket key must be 32 bytes"),
        (T_OK, "x" * 32, "ticket key must be 32 bytes"),
        (np.zeros((2, 3, 8), dtype=np.uint32), KEY, r"uint32 \(tm, tn, 16\)"),
        (np.zeros((6, 16), dtype=np.uint32), KEY, r"uint32 \(tm, tn, 16\)"),
        (np.zeros((2, 3, 16), dtype=np.int32), KEY, "got int32"),
        (np.zeros((2, 3, 16), dtype=np.uint64), KEY, "got uint64"),
        ([[[0] * 16]], KEY, "numpy array"),
    ],
    ids=["short key", "str key", "8 words", "2-D", "int32", "uint64", "list"],
)
def test_bad_inputs_are_named_before_the_gpu(T: np.ndarray, key: bytes, match: str) -> None:
    # Validation comes first: on this machine (no GPU, real target) any device call
    # would fail with a CUDA error instead.
    with pytest.raises(ValueError, match=match):
        tickets_cuda.all_tickets_gpu(T, key)


def test_ptx_for_sm90_keeps_the_state_in_registers() -> None:
    ptx = tickets_cuda.compile_ptx_for((9, 0))
    assert ".target sm_90" in ptx
    assert "shf.l.wrap.b32" in ptx  # 32-bit rotations, not 64-bit shifts
    assert ".local" not in ptx  # no state or message word spills to local memory


def test_ptx_for_sm80_builds() -> None:
    ptx = tickets_cuda.compile_ptx_for((8, 0))
    assert ".target sm_80" in ptx
    assert ".local" not in ptx


@pytest.mark.skipif(not transcript_cuda.is_available(), reason="no CUDA GPU visible")
def test_gpu_kernel_matches_all_tickets() -> None:
    rng = np.random.default_rng(11)
    T = _transcripts(rng, 64, 64)
    T[0, 0] = 0xFFFFFFFF
    key = rng.bytes(32)
    got = tickets_cuda.all_tickets_gpu(T, key)
    np.testing.assert_array_equal(got, all_tickets(T, key))
    assert tickets_to_ints(got[63, 63])[0] == ticket_of(T[63, 63], key, 63, 63)
    # A grid that is no multiple of the 128-thread block, and the device API's origin.
    T2 = _transcripts(rng, 3, 77)
    np.testing.assert_array_equal(tickets_cuda.all_tickets_gpu(T2, key), all_tickets(T2, key))
    from numba import cuda

    d = tickets_cuda.all_tickets_device(cuda.to_device(T2), key, origin=(70_000, 2**32 - 77))
    ints = tickets_to_ints(d.copy_to_host())
    assert ints[-1] == ticket_of(T2[2, 76], key, 70_002, 2**32 - 1)
