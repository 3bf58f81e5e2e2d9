"""`pouw bench kernels --isa`: every CPU kernel path the host runs, measured side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.kernels import paired_ratio, path_label
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
