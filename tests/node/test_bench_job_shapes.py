"""`pouw bench job-shapes` runs a shape through the whole measurement (bursts on the
null job and the posted job, then a winning attempt's extra cost) and says which
shapes the network admits."""

from __future__ import annotations

from benchmarks.jobshapes import bench_job_shapes
from consensus.params import DEVNET


def test_a_shape_is_measured_against_the_null_job_with_its_win_cost() -> None:
    allowed, below = DEVNET.min_job_shape, (256, 256, 256)
    record = bench_job_shapes(DEVNET, burst_s=0.05, rounds=1, shapes=[allowed, below])
    by_shape = {tuple(r["shape"]): r for r in record["shapes"]}
    assert by_shape[allowed]["allowed"] and not by_shape[below]["allowed"]
    assert record["worst_allowed_rate_vs_null"] == by_shape[allowed]["rate_vs_null"] > 0
    for r in record["shapes"]:
        assert r["gmacs_per_cpu_s"] > 0 and r["attempt_ms"] > 0
        # A win computes C's result_root and builds the proof on top of the attempt.
        assert r["win_ms"] >= 0 and r["job_load_ms"] > 0
