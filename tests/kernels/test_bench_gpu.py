"""`pouw bench gpu`: the CUDA kernels, operands resident, against the peer int8 GEMM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kernels import transcript_cuda, transcript_mma

ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "bench", "gpu", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_size_must_be_whole_blocks() -> None:
    run = _bench("--size", "200", "--json")
    assert run.returncode == 2 and not run.stdout
    assert "multiple of 128" in run.stderr and "--size" in run.stderr


def test_gpu_bench_measures_and_checks_the_kernels_or_says_why_not() -> None:
    """On a host with a GPU: the record, its kernels bit-identical to each other (and to
    the peer GEMM where PyTorch is there); without one: a one-line error, exit 1."""
    run = _bench("--size", "256", "--repeats", "2", "--json")
    if not transcript_cuda.is_available():
        assert run.returncode == 1 and not run.stdout
        assert "needs a visible CUDA GPU" in run.stderr and "Traceback" not in run.stderr
        return
    assert run.returncode == 0, run.stderr
    rec = json.loads(run.stdout)
    assert rec["kernel"] == "mma" and rec["kernels_bit_identical"] is True
    assert rec["attempt_kernel_s"] > 0 and rec["dp4a_fold_product_s"] > 0
    assert rec["dp4a_vs_fold_product"] == rec["dp4a_fold_product_s"] / rec["fold_product_s"]
    # Each cp.async candidate is timed only where it ran, and then gave the same C' and T.
    assert len(rec["candidates"]) == len(transcript_mma.CANDIDATES)
    for cand in rec["candidates"]:
        assert ("fold_product_s" in cand) is ("error" not in cand), cand
        if "fold_product_s" in cand:
            assert cand["bit_identical"] is True
            assert cand["vs_fold_product"] == cand["fold_product_s"] / rec["fold_product_s"]
    if rec["int8_gemm_s"] is not None:
        assert rec["int8_gemm_matches_plain"] is True
        assert rec["attempt_vs_int8_gemm"] == rec["attempt_kernel_s"] / rec["int8_gemm_s"]
