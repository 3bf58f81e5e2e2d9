"""benchmarks/profile_attempt.py: where an attempt's host time goes, by function."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from kernels import transcript_cuda

ROOT = Path(__file__).resolve().parents[2]


def _profile(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.profile_attempt", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_profile_counts_each_attempt_and_names_the_kernels_calls() -> None:
    run = _profile("--size", "256", "--attempts", "3", "--backend", "cpu", "--top", "40")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("3 attempts, 256³, backend cpu")
    # The untimed first attempt is not in it: mining_attempt ran 3 times, in both orders.
    calls = re.findall(r"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+ \S+\(mining_attempt\)$",
                       run.stdout, re.M)  # fmt: skip
    assert calls == ["3", "3"], run.stdout
    assert "derive_noise" in run.stdout and "Ordered by: cumulative time" in run.stdout


def test_a_cuda_profile_without_a_gpu_is_a_one_line_error() -> None:
    run = _profile("--size", "128", "--attempts", "1", "--backend", "cuda")
    if transcript_cuda.is_available():
        assert run.returncode == 0 and "backend cuda" in run.stdout, run.stderr
        return
    assert run.returncode == 1 and not run.stdout
    assert run.stderr.startswith("error: backend 'cuda' needs a visible CUDA GPU")
    assert "Traceback" not in run.stderr


def test_sizes_must_be_whole_blocks() -> None:
    run = _profile("--size", "200")
    assert run.returncode == 2 and "multiple of 128" in run.stderr
