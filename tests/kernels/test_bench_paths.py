"""`pouw bench kernels --isa`: every CPU kernel path the host runs, measured side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.kernels import paired_ratio, path_label, read_floor
from kernels.transcript_cpu import available_paths

ROOT = Path(__file__).resolve().parents[2]
BENCH = [sys.executable, "-m", "node.cli", "bench", "kernels", "--size", "128", "--repeats", "1"]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BENCH, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_isa_all_measures_every_path_the_host_can_run() -> None:
    run = _bench("--isa", "all", "--json")
    assert run.returncode == 0, run.stderr
    records = json.loads(run.stdout)
    assert [r["isa"] for r in records] == [path_label(p) for p in available_paths()]
    if len(available_paths()) > 1:  # the portable kernel, forced on a host with its own
        assert "generic" in [r["isa"] for r in records[1:]]
    for r in records:
        assert r["plain_s"] > 0 and r["attempt_s"] > 0 and r["attempt_vs_plain"] > 0
        assert r["attempt_vs_plain_cpu"] > 0
        # verification and Freivalds as CPU time too: wall clock on a shared box is noise
        assert r["verify_vs_attempt_cpu"] == r["verify_cpu_s"] / r["attempt_cpu_s"] > 0
        assert r["freivalds_vs_plain_cpu"] == r["freivalds_cpu_s"] / r["plain_cpu_s"] > 0
        # the best samples beside the medians, never in their place
        assert r["freivalds_vs_plain_min"] == r["freivalds_min_s"] / r["plain_min_s"] > 0
        assert r["freivalds_min_s"] <= r["freivalds_s"] and r["plain_min_s"] <= r["plain_s"]
        assert r["freivalds_vs_plain_cpu_min"] > 0
        # Freivalds beside the bare reading of what it reads: C (int32), A and B (int8)
        assert r["read_bytes"] == 128 * 128 * (4 + 1 + 1)
        assert r["read_gb_per_s"] == r["read_bytes"] / r["read_s"] / 1e9 > 0
        assert r["read_vs_plain"] == r["read_s"] / r["plain_s"] > 0
        assert r["freivalds_vs_read"] > 0


def test_the_read_floor_loads_every_byte_of_c_a_and_b() -> None:
    rng = np.random.default_rng(5)
    c = rng.integers(-(2**31), 2**31, (192, 64), dtype=np.int64).astype(np.int32)
    a = rng.integers(-64, 64, (192, 128), dtype=np.int8)
    b = rng.integers(-64, 64, (128, 64), dtype=np.int8)

    def xor_of_words() -> int:
        words = np.concatenate([x.reshape(-1).view(np.uint64) for x in (c, a, b)])
        return int(np.bitwise_xor.reduce(words))

    assert read_floor(c, a, b) == xor_of_words() != 0
    for x in (c, a, b):  # a bit flipped anywhere, the last byte included, is seen
        for at in (0, x.nbytes // 2, x.nbytes - 1):
            before = read_floor(c, a, b)
            x.reshape(-1).view(np.uint8)[at] ^= 0x40
            assert read_floor(c, a, b) == before ^ (0x40 << (8 * (at % 8))) == xor_of_words()
    # Runs that do not divide into the threads' blocks, and fewer words than blocks.
    c, a, b = (np.ascontiguousarray(x) for x in (c[:3, :34], a[:1, :8], b[:5, :8]))
    assert read_floor(c, a, b) == xor_of_words() != 0
    with pytest.raises(ValueError, match="C-contiguous"):
        read_floor(np.asfortranarray(c), a, b)


def test_isa_the_host_cannot_run_is_a_one_line_error() -> None:
    # An AMX host runs every path there is; no host runs a name it does not know.
    missing = [p for p in ("amx_int8", "avx512_vnni") if p not in available_paths()]
    isa = missing[0] if missing else "sse2"
    run = _bench("--isa", isa, "--json")
    assert run.returncode != 0 and not run.stdout
    assert isa in run.stderr and "generic" in run.stderr
    assert "Traceback" not in run.stderr


def test_attempt_vs_plain_is_steady_when_the_load_changes() -> None:
    """An attempt costs 1.25 products at any load; the machine gets three times slower
    halfway through. Paired samples still give 1.25; the attempt's median over the slow
    half against the product's over the fast one (how the two were sampled before) would
    give 3.75."""
    now = [0.0]
    calls = [0]

    def load() -> float:
        return 1.0 if calls[0] < 20 else 3.0

    def attempt() -> None:
        calls[0] += 1
        now[0] += 1.25 * load()

    def product() -> None:
        calls[0] += 1
        now[0] += 1.0 * load()

    ratio, attempt_times, product_times = paired_ratio(attempt, product, 15, lambda: now[0])
    assert ratio == 1.25
    assert len(attempt_times) == len(product_times) == 15
    assert max(attempt_times) / min(product_times) == 3.75  # the load did change mid-run
