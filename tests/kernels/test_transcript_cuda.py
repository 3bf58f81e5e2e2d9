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

import functools
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from kernels import transcript_cuda, transcript_mma
from tests.support.cudasim import in_background
from tests.support.reference import reference_transcripts

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

assert tc.SIM, "simulator not enabled"
inp = np.load(sys.argv[1])
out = {}
for i in range(int(inp["count"])):
    r, h, w, plain = (int(v) for v in inp[f"rhwp{i}"])
    a, bt = inp[f"a{i}"], inp[f"bt{i}"]
    out[f"c{i}"], out[f"t{i}"] = tc.noisy_product(a, bt, r, h, w, kernel="dp4a")
    if plain:
        out[f"p{i}"] = tc.plain_matmul(a, bt, r, h, w, kernel="dp4a")
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


def _sim_inputs() -> dict[str, np.ndarray]:
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
    return inp


_SIM = in_background("sim_run", _SIM_SCRIPT, _sim_inputs, timeout=120)


@pytest.fixture(scope="module")
def sim_run() -> dict[str, np.ndarray]:
    """Inputs of every SIM_CASE plus what the simulated kernel returned for them."""
    return _SIM.result()


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
    ptx = transcript_cuda.compile_ptx_for((9, 0), kernel="dp4a")
    assert ".target sm_90" in ptx
    assert "dp4a.s32.s32" in ptx
    assert "shfl.sync.bfly" in ptx  # the in-kernel fold's warp reduction
    # The 8×8 accumulators and operand registers must not spill to local memory.
    assert ".local" not in ptx


def test_ptx_of_plain_kernel_has_no_fold() -> None:
    ptx = transcript_cuda.compile_ptx_for((9, 0), fold=False, kernel="dp4a")
    assert "dp4a.s32.s32" in ptx
    assert "shfl.sync" not in ptx


@pytest.mark.skipif(not transcript_cuda.is_available(), reason="no CUDA GPU visible")
def test_gpu_kernel_matches_reference() -> None:
    rng = np.random.default_rng(7)
    a, bt = _operands(rng, 256, 512, 256)
    c_ref, t_ref = reference_transcripts(a, bt, 64, 16, 16)
    for kernel in ("dp4a", "mma"):
        c, t = transcript_cuda.noisy_product(a, bt, 64, 16, 16, kernel=kernel)
        np.testing.assert_array_equal(c, c_ref, err_msg=kernel)
        np.testing.assert_array_equal(t, t_ref, err_msg=kernel)
        plain = transcript_cuda.plain_matmul(a, bt, 64, 16, 16, kernel=kernel)
        np.testing.assert_array_equal(plain, c_ref, err_msg=kernel)


# --------------------------------------------------------------- the tensor-core kernel

# (m, k, n, r, h, w, shape): one-warp blocks (the simulator spends its time on barriers:
# 16 warps cost 16 times as much); the kernel's own 16-warp block runs in the attempt below.
MMA_CASES = [
    (32, 128, 16, 64, 16, 16, "1x1"),  # two staged k-slices per fold, two hash tiles down
    (16, 544, 16, 32, 16, 8, "1x1"),  # r = 32: 17 chunks, T slot 0 wraps; 16×8 tiles
    (48, 64, 32, 64, 16, 16, "1x1"),  # three blocks down, two across
    # The cp.async pipeline (stage buffers filled without registers, N − 1 in flight):
    (16, 256, 16, 32, 16, 8, "1x1 p3"),  # 8 stages through 3 buffers, round and round
    (48, 64, 16, 64, 16, 16, "2x1 p4"),  # 1 stage, 4 buffers: empty groups; the last
    # block's second half of rows lies past m = 48: not read (here a read past the
    # operand's rows raises)
    (16, 192, 16, 32, 16, 8, "1x1 p3 dynamic"),  # the buffers in the launch's dynamic
    # shared memory, B's after A's: 6 stages through 3 buffers
]

_MMA_SIM_SCRIPT = """
import sys
import numpy as np
from numba import cuda
from kernels import transcript_cuda as tc, transcript_mma as tm

assert tm.SIM, "simulator not enabled"
shapes = {"block": tm.BLOCK, "1x1": tm.Shape(1, 1, 16, 16), "2x1": tm.Shape(2, 1, 16, 16)}
inp = np.load(sys.argv[1], allow_pickle=False)
out = {}
for i in range(int(inp["count"])):
    r, h, w = (int(v) for v in inp[f"rhw{i}"])
    name, *how = str(inp[f"shape{i}"]).split()
    shape = shapes[name]
    a, bt = inp[f"a{i}"], inp[f"bt{i}"]
    d_c = cuda.device_array((a.shape[0], bt.shape[0]), np.int32)
    # Garbage in T: the kernel folds from zero in shared memory and writes every word.
    d_t = cuda.to_device(np.full((a.shape[0] // h, bt.shape[0] // w, 16), 0xDEADBEEF, np.uint32))
    args = (cuda.to_device(a.view(np.int32)), cuda.to_device(bt.view(np.int32)), d_c, d_t)
    if how:
        tm.launcher(shape, int(how[0][1:]), h, w, r, args, dynamic="dynamic" in how)()
    else:
        tm.kernel(shape.key(), h, w, r, True)[tm.grid(shape, a.shape[0], bt.shape[0]),
                                             shape.threads](*args)
    out[f"c{i}"], out[f"t{i}"] = d_c.copy_to_host(), d_t.copy_to_host()
# The dp4a kernel through launch, onto garbage too (case 0).
r, h, w = (int(v) for v in inp["rhw0"])
a, bt = inp["a0"], inp["bt0"]
d_c = cuda.device_array((a.shape[0], bt.shape[0]), np.int32)
d_t = cuda.to_device(np.full((a.shape[0] // h, bt.shape[0] // w, 16), 0xDEADBEEF, np.uint32))
tc.launch(cuda.to_device(a.view(np.int32)), cuda.to_device(bt.view(np.int32)), d_c, d_t,
          r, h, w, kernel="dp4a")
out["dp4a_c0"], out["dp4a_t0"] = d_c.copy_to_host(), d_t.copy_to_host()
# A whole attempt on the CUDA backend: the noise added on the device, the product by
# strips, the tickets hashed there, C' and T fetched only when asked for.
from kernels.attempt import MiningParams, mining_attempt
from kernels.backends import CUDA

a, b = inp["clean_a"], inp["clean_b"]
calls = []
got = mining_attempt(a, b, bytes(32), bytes(range(32)), 2**241, MiningParams(), CUDA,
                     ticket_key=lambda c: bytes(c.tobytes()[:32]),
                     between_strips=lambda: calls.append(1))
out["strip_calls"] = np.array(len(calls))
out["att_tickets"], out["att_c"] = got.tickets, got.c
out["att_t"], out["att_c_noisy"] = got.transcripts, got.c_noisy
out["att_winners"] = np.array(got.winners, dtype=np.int64).reshape(-1, 2)
np.savez(sys.argv[2], **out)
"""


def _mma_sim_inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261204)
    inp: dict[str, np.ndarray] = {"count": np.array(len(MMA_CASES))}
    for i, (m, k, n, r, h, w, shape) in enumerate(MMA_CASES):
        inp[f"a{i}"], inp[f"bt{i}"] = _operands(rng, m, k, n)
        inp[f"rhw{i}"] = np.array([r, h, w])
        inp[f"shape{i}"] = np.array(shape)
    # Extremes of A' and B' in the first case: -127 meets -127, 126 meets -127.
    inp["a0"][0] = -127
    inp["bt0"][:2] = -127
    inp["a0"][1] = 126
    inp["clean_a"] = rng.integers(-64, 64, size=(32, 64), dtype=np.int8)  # two tile rows
    inp["clean_b"] = rng.integers(-64, 64, size=(64, 16), dtype=np.int8)
    return inp


_MMA_SIM = in_background("mma_sim_run", _MMA_SIM_SCRIPT, _mma_sim_inputs, timeout=240)


@pytest.fixture(scope="module")
def mma_sim_run() -> dict[str, np.ndarray]:
    """Inputs of every MMA_CASE and the attempt plus what the simulated kernels returned."""
    return _MMA_SIM.result()


@pytest.mark.parametrize("case", range(len(MMA_CASES)), ids=[str(c) for c in MMA_CASES])
def test_simulated_tensor_core_kernel_matches_reference(
    mma_sim_run: dict[str, np.ndarray], case: int
) -> None:
    _m, _k, _n, r, h, w, _shape = MMA_CASES[case]
    c_ref, t_ref = reference_transcripts(mma_sim_run[f"a{case}"], mma_sim_run[f"bt{case}"], r, h, w)
    np.testing.assert_array_equal(mma_sim_run[f"c{case}"], c_ref)
    np.testing.assert_array_equal(mma_sim_run[f"t{case}"], t_ref)
    if case == 0:  # the dp4a kernel also overwrote a T full of garbage
        np.testing.assert_array_equal(mma_sim_run["dp4a_c0"], c_ref)
        np.testing.assert_array_equal(mma_sim_run["dp4a_t0"], t_ref)


def test_simulated_attempt_on_the_cuda_backend_is_the_cpu_attempt(
    mma_sim_run: dict[str, np.ndarray],
) -> None:
    """mining_attempt on the CUDA backend (noise added on the device, the product by
    strips, tickets hashed there, C' and T kept there; the key a function of C, so C is
    recovered first) gives the CPU backend's tickets, winners, transcripts, C' and C."""
    from kernels.attempt import MiningParams, mining_attempt

    a, b = mma_sim_run["clean_a"], mma_sim_run["clean_b"]
    cpu = mining_attempt(
        a,
        b,
        bytes(32),
        bytes(range(32)),
        2**241,
        MiningParams(),
        "cpu",
        ticket_key=lambda c: bytes(c.tobytes()[:32]),
    )
    np.testing.assert_array_equal(mma_sim_run["att_tickets"], cpu.tickets)
    np.testing.assert_array_equal(mma_sim_run["att_c"], cpu.c)
    np.testing.assert_array_equal(mma_sim_run["att_t"], cpu.transcripts)
    np.testing.assert_array_equal(mma_sim_run["att_c_noisy"], cpu.c_noisy)
    # About half the tiles win at this target (ticket ≤ 2^241·h·w·k = 2^255).
    assert [tuple(w) for w in mma_sim_run["att_winners"].tolist()] == cpu.winners
    assert int(mma_sim_run["strip_calls"]) == 1  # two tile rows, two strips


def test_fragment_layout_reference_is_the_matrix_product() -> None:
    """mma_reference's registers map to distinct matrix entries, and D = A·B + C there."""
    rng = np.random.default_rng(3)
    a_regs = rng.integers(-(2**31), 2**31, size=(32, 4), dtype=np.int64).astype(np.int32)
    b_regs = rng.integers(-(2**31), 2**31, size=(32, 2), dtype=np.int64).astype(np.int32)
    c_regs = rng.integers(-(2**20), 2**20, size=(32, 4), dtype=np.int32)
    d, a, b = transcript_mma.mma_reference(a_regs, b_regs, c_regs)
    # Every byte of every register lands once: the matrices hold exactly the bytes passed.
    assert sorted(a.ravel().tolist()) == sorted(a_regs.view(np.int8).ravel().tolist())
    assert sorted(b.ravel().tolist()) == sorted(b_regs.view(np.int8).ravel().tolist())
    assert a[0, :4].tolist() == a_regs[0:1].view(np.int8)[0, :4].tolist()  # a0 of lane 0
    assert a[9, 20:24].tolist() == a_regs[5:6].view(np.int8)[0, 12:16].tolist()  # a3, g=1 t=1
    assert b[20:24, 3].tolist() == b_regs[13:14].view(np.int8)[0, 4:8].tolist()  # b1, g=3 t=1
    prod = a @ b
    assert d[6, 0] == prod[1, 4] + c_regs[6, 0]  # lane 6: g = 1, t = 2
    assert d[6, 3] == prod[9, 5] + c_regs[6, 3]


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
def test_tensor_core_kernel_compiles_to_mma_in_registers(cc: tuple[int, int]) -> None:
    ptx = _mma_ptx(cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx
    # 2×4 fragments a warp (32×32), two k-steps a 64-byte stage.
    assert ptx.count("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32") == 16
    # The reduce-scatter fold of the warp's 4 hash tiles: 2 + 1 halving shuffles, then 3.
    assert ptx.count("shfl.sync.bfly") == 6
    assert ".local" not in ptx  # accumulators and fragments stay in registers


@functools.cache
def _mma_ptx(cc: tuple[int, int], block: tuple[transcript_mma.Shape, int] | None = None) -> str:
    """The tensor-core kernel's PTX (seconds each): compiled once for the tests below."""
    return transcript_cuda.compile_ptx_for(cc, kernel="mma", block=block)


CANDIDATE_IDS = [f"{s.warps_m}x{s.warps_n} p{p}" for s, p in transcript_mma.CANDIDATES]


@pytest.mark.parametrize("cc", [(8, 0), (9, 0)])
@pytest.mark.parametrize("candidate", transcript_mma.CANDIDATES, ids=CANDIDATE_IDS)
def test_pipelined_candidates_copy_asynchronously_into_aligned_shared_memory(
    cc: tuple[int, int], candidate: tuple[transcript_mma.Shape, int]
) -> None:
    shape, stages = candidate
    ptx = _mma_ptx(cc, candidate)
    # A's and B's rows of a stage, 16 bytes a copy: so many a thread, in every place that
    # issues a stage (the loop's, the prologue's once or unrolled).
    per_stage = (shape.bm + shape.bn) * 4 // shape.threads
    copies = ptx.count("cp.async.cg.shared.global")
    assert copies >= 2 * per_stage and copies % per_stage == 0, copies
    assert f"cp.async.wait_group {stages - 2};" in ptx
    assert ptx.count("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32") == 16
    assert ".local" not in ptx
    # The fragments are read with shared-memory loads, not generic ones, from either kind
    # of buffer, and nothing else goes through a generic address.
    assert ptx.count("ld.shared.u32") >= 48 and "ld.u32" not in ptx and "st.u32" not in ptx
    static = [
        int(size)
        for align, size in re.findall(r"\.shared \.align (\d+) \.b8 \w+\[(\d+)\]", ptx)
        if int(align) == 16
    ]
    extern = re.findall(r"\.extern \.shared \.align (\d+) \.b8 \w+\[\]", ptx)
    stage_bytes = stages * (shape.bm + shape.bn) * (16 + 4) * 4  # 64-byte k-stages, padded
    assert transcript_mma.stage_bytes(shape, 64, stages) == stage_bytes
    if transcript_mma.dynamic_shared_bytes(shape, 16, 16, 64, stages):
        assert stage_bytes > transcript_mma.STATIC_SHARED_MAX - 4096  # the transcripts' 4 KiB
        assert extern == ["16"] and not static  # one 16-byte aligned buffer, sized at launch
    else:
        assert sum(static) == stage_bytes and not extern
    # The default kernel is untouched by the pipeline's code: no cp.async in it.
    assert "cp.async" not in _mma_ptx(cc)


def test_dynamic_shared_memory_is_asked_for_only_past_the_static_limit() -> None:
    small, big = transcript_mma.Shape(4, 2, 32, 32), transcript_mma.Shape(4, 4, 32, 32)
    assert transcript_mma.dynamic_shared_bytes(small, 16, 16, 64, 0) == 0
    # 3 × 192 rows × 80 bytes = 46,080 + 2,048 of transcripts: static, 48,128 ≤ 49,152.
    assert transcript_mma.dynamic_shared_bytes(small, 16, 16, 64, 3) == 0
    # With 32×32 hash tiles, a quarter of the transcripts: still static.
    assert transcript_mma.dynamic_shared_bytes(small, 32, 32, 64, 3) == 0
    assert transcript_mma.dynamic_shared_bytes(small, 16, 16, 64, 4) == 4 * 192 * 80
    assert transcript_mma.dynamic_shared_bytes(big, 16, 16, 64, 3) == 3 * 256 * 80
    for shape, stages in transcript_mma.CANDIDATES:  # each fits an H100/H200's block
        dyn = transcript_mma.dynamic_shared_bytes(shape, 16, 16, 64, stages)
        assert dyn + 4096 <= transcript_mma.SM90_SHARED_MAX
    with pytest.raises(ValueError, match="dynamic shared memory"):
        transcript_mma.kernel_source(big, 16, 16, 64, True, 0, dynamic=True)
    with pytest.raises(ValueError, match=r"cp\.async pipelines"):
        transcript_mma.launcher(big, 0, 16, 16, 64, ())


def _ptxas(ptx: str, arch: str, tmp_path: Path) -> tuple[int, int, int]:
    """(registers, spill store bytes, shared bytes) of ``ptx`` by ptxas, from the CUDA
    toolkit wheel the cuda extra installs (what the driver's JIT does on a GPU)."""
    import nvidia.cuda_nvcc

    ptxas = Path(next(iter(nvidia.cuda_nvcc.__path__))) / "bin" / "ptxas"
    src = tmp_path / f"{arch}.ptx"
    src.write_text(ptx)
    run = subprocess.run(
        [str(ptxas), f"-arch={arch}", "-v", str(src), "-o", str(tmp_path / f"{arch}.cubin")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    info = run.stdout + run.stderr
    regs = re.search(r"Used (\d+) registers", info)
    spill = re.search(r"(\d+) bytes spill stores", info)
    smem = re.search(r"(\d+) bytes smem", info)
    assert regs and spill and smem, info
    return int(regs[1]), int(spill[1]), int(smem[1])


@pytest.mark.parametrize(
    "block",
    [(transcript_mma.BLOCK, 0), *transcript_mma.CANDIDATES],
    ids=["launches", *CANDIDATE_IDS],
)
def test_tensor_core_blocks_fit_an_sm_without_spilling(
    block: tuple[transcript_mma.Shape, int], tmp_path: Path
) -> None:
    """The launches' block and the cp.async candidates keep their accumulators in
    registers, no spill, within an SM's 65,536 registers: one block of 512 threads a
    Hopper SM, two of 256 (so that one block's barrier leaves the other working); and
    within the static 48 KiB of shared memory a block may have, the stage buffers
    of those that need more in dynamic shared memory, within the 227 KiB a block may
    have on sm_90."""
    shape, stages = block
    per_sm = 65_536 // (128 * shape.threads)  # the blocks an SM holds at 128 registers
    ptx = _mma_ptx((9, 0), None if block == (transcript_mma.BLOCK, 0) else block)
    regs, spill, smem = _ptxas(ptx, "sm_90", tmp_path)
    assert spill == 0
    assert regs * shape.threads * per_sm <= 65_536
    assert smem <= transcript_mma.STATIC_SHARED_MAX
    dyn = transcript_mma.dynamic_shared_bytes(shape, 16, 16, 64, stages)
    assert smem + dyn <= transcript_mma.SM90_SHARED_MAX


def test_tensor_core_plain_kernel_has_no_fold() -> None:
    plain = transcript_cuda.compile_ptx_for((9, 0), kernel="mma", fold=False)
    assert "shfl.sync" not in plain and "mma.sync" in plain


def test_kernel_choice_follows_the_parameters() -> None:
    assert transcript_cuda.kernel_for(64, 16, 16) == "mma"
    assert transcript_cuda.kernel_for(32, 32, 32) == "mma"
    assert transcript_cuda.kernel_for(4, 16, 16) == "dp4a"  # r = 4 < one k32 step
    assert transcript_cuda.kernel_for(64, 8, 16) == "dp4a"  # h = 8 < one m16 fragment
    with pytest.raises(ValueError, match="r=4"):
        transcript_cuda.kernel_for(4, 16, 16, "mma")
    with pytest.raises(ValueError, match="unknown CUDA kernel"):
        transcript_cuda.kernel_for(64, 16, 16, "wgmma")


@pytest.mark.skipif(not transcript_cuda.is_available(), reason="no CUDA GPU visible")
def test_gpu_tensor_cores_use_the_reference_fragment_layout() -> None:
    rng = np.random.default_rng(11)
    for _ in range(4):
        a_regs = rng.integers(-(2**31), 2**31, size=(32, 4), dtype=np.int64).astype(np.int32)
        b_regs = rng.integers(-(2**31), 2**31, size=(32, 2), dtype=np.int64).astype(np.int32)
        c_regs = rng.integers(-(2**20), 2**20, size=(32, 4), dtype=np.int32)
        d_ref, _, _ = transcript_mma.mma_reference(a_regs, b_regs, c_regs)
        np.testing.assert_array_equal(transcript_mma.mma_on_device(a_regs, b_regs, c_regs), d_ref)


@pytest.mark.skipif(not transcript_cuda.is_available(), reason="no CUDA GPU visible")
@pytest.mark.parametrize(
    ("m", "k", "n", "r", "h", "w"),
    [(272, 320, 208, 64, 16, 16), (128, 2048, 256, 32, 32, 32), (64, 64, 64, 64, 16, 8)],
)
def test_gpu_tensor_core_kernel_matches_reference(
    m: int, k: int, n: int, r: int, h: int, w: int
) -> None:
    rng = np.random.default_rng(m + k + n)
    a, bt = _operands(rng, m, k, n)
    a[0], bt[0] = -127, -127
    c_ref, t_ref = reference_transcripts(a, bt, r, h, w)
    c, t = transcript_cuda.noisy_product(a, bt, r, h, w, kernel="mma")
    np.testing.assert_array_equal(c, c_ref)
    np.testing.assert_array_equal(t, t_ref)


@pytest.mark.skipif(not transcript_cuda.is_available(), reason="no CUDA GPU visible")
@pytest.mark.parametrize("candidate", transcript_mma.CANDIDATES, ids=CANDIDATE_IDS)
def test_gpu_pipelined_candidates_match_reference(
    candidate: tuple[transcript_mma.Shape, int],
) -> None:
    """Each cp.async candidate, dynamic shared memory allowed where it needs it, on
    rows and columns that end inside its blocks."""
    from numba import cuda

    shape, stages = candidate
    rng = np.random.default_rng(stages)
    a, bt = _operands(rng, 272, 1088, 208)
    a[0], bt[0] = -127, -127
    c_ref, t_ref = reference_transcripts(a, bt, 64, 16, 16)
    d_c = cuda.device_array((272, 208), np.int32)
    d_t = cuda.to_device(np.full((17, 13, 16), 0xDEADBEEF, np.uint32))
    args = (cuda.to_device(a.view(np.int32)), cuda.to_device(bt.view(np.int32)), d_c, d_t)
    transcript_mma.launcher(shape, stages, 16, 16, 64, args)()
    np.testing.assert_array_equal(d_c.copy_to_host(), c_ref)
    np.testing.assert_array_equal(d_t.copy_to_host(), t_ref)


@pytest.mark.skipif(not transcript_cuda.is_available(), reason="no CUDA GPU visible")
def test_gpu_attempt_from_clean_operands_matches_the_cpu() -> None:
    from kernels.backends import CPU, CUDA
    from kernels.noise import derive_noise

    rng = np.random.default_rng(5)
    a = rng.integers(-64, 64, size=(512, 1024), dtype=np.int8)
    b = rng.integers(-64, 64, size=(1024, 384), dtype=np.int8)
    na, nb = derive_noise(b"a" * 32, 512, 1024, 64), derive_noise(b"b" * 32, 384, 1024, 64)
    for between in (None, lambda: None):
        c, t = CUDA.noisy_product_from_clean(a, na, b, nb, 64, 16, 16, between)
        c_cpu, t_cpu = CPU.noisy_product_from_clean(a, na, b, nb, 64, 16, 16)
        np.testing.assert_array_equal(c, c_cpu)
        np.testing.assert_array_equal(t, t_cpu)


@pytest.mark.skipif(not transcript_cuda.is_available(), reason="no CUDA GPU visible")
def test_gpu_mining_attempt_equals_the_cpu_one() -> None:
    """A whole attempt on the CUDA backend (C' left on the device until C is recovered):
    the CPU backend's transcripts, tickets, winners, C' and C."""
    from kernels.attempt import MiningParams, mining_attempt

    rng = np.random.default_rng(9)
    a = rng.integers(-64, 64, size=(256, 512), dtype=np.int8)
    b = rng.integers(-64, 64, size=(512, 128), dtype=np.int8)
    args = (a, b, b"s" * 32, b"t" * 32, 2**200, MiningParams())
    gpu = mining_attempt(*args, "cuda", ticket_key=b"k" * 32)
    cpu = mining_attempt(*args, "cpu", ticket_key=b"k" * 32)
    np.testing.assert_array_equal(gpu.transcripts, cpu.transcripts)
    np.testing.assert_array_equal(gpu.tickets, cpu.tickets)
    assert gpu.winners == cpu.winners
    np.testing.assert_array_equal(gpu.c, cpu.c)
    np.testing.assert_array_equal(gpu.c_noisy, cpu.c_noisy)
