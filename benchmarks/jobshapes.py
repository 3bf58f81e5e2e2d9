"""`pouw bench job-shapes`: a miner's MAC/s on posted jobs of each shape against
its MAC/s on the null job, in the same run (PROTOCOL §8, minimum job shape).

Each shape is mined the way the node's miner thread does it: bursts of
``consensus.pow.mine`` with a stop deadline, a fresh extra-nonce per attempt and
a MAC counter per attempt, at a target nothing reaches (every attempt is paid
in full). Rates are MACs per second of the process's CPU time (all threads), so
other load on a shared machine does not count against one shape and not
another; the wall-clock rate is reported beside it. Per shape it also reports
what the node spends outside the kernel:

* ``attempt_ms`` (CPU time) and ``outside_kernel_ms``: per attempt, everything
  but the noisy product itself
  (header seed, noise, tickets, the Python loop): the overhead that made tiny
  jobs stall the chain;
* ``job_load_ms``: once per job, checking fetched operands against the job's
  roots (``Job.from_operands``: two Merkle trees);
* ``win_ms``: once per block found, recovering C, its result root and the
  proof's openings.

It runs on ``threads`` Numba threads (default 1): on a shared machine every
parallel launch of a multi-threaded attempt waits for all its threads to be
scheduled, which measures the other load rather than the miner.

Below-minimum shapes (``allowed`` false: consensus refuses them) are measured
too, to show what the minimum prevents.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.operands import random_operands
from consensus.blocks import noise_seeds
from consensus.chain import Chain
from consensus.keys import PrivateKey
from consensus.merkle import matrix_rows_root
from consensus.params import DEVNET, NetworkParams
from consensus.pow import Job, ResultCommitment, build_proof, mine, mining_params, null_job
from kernels.attempt import mining_attempt
from kernels.backends import get_backend
from kernels.noise import add_noise, add_noise_transposed, derive_noise

BENCH_POSTER = PrivateKey.from_label("bench job-shapes").address
"""Whose jobs these would be: the poster changes the job's id, not its cost."""
BELOW_MINIMUM = ((64, 128, 32), (16, 64, 16), (16, 4096, 1024), (2048, 64, 512), (256, 1024, 256))
"""Shapes consensus refuses: the issue's tiny job, the smallest tiling job, thin ones."""


def allowed_shapes(params: NetworkParams) -> list[tuple[int, int, int]]:
    """The minimum shape, and each dimension stretched alone (×2, and to its bound)."""
    m, k, n = params.min_job_shape
    big, big_k = params.max_job_dim, params.max_job_k
    shapes = [(m, k, n), (2 * m, k, n), (m, 2 * k, n), (m, k, 2 * n)]
    shapes += [(big, k, n), (m, big_k, n), (m, k, big)]
    return list(dict.fromkeys(shapes))


class _Deadline:
    """Stands in for the miner's stop event: set once the burst is over."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def is_set(self) -> bool:
        return time.monotonic() >= self.deadline


def _burst(
    job: Job, params: NetworkParams, chain: Chain, seconds: float
) -> tuple[int, float, float]:
    """MACs, CPU seconds and wall seconds of one burst of attempts on ``job``."""
    template, _ = chain.build_template((), bytes(20), job.spec, params.genesis_timestamp_ms + 1)
    template = dataclasses.replace(template, target=1)  # nothing wins: every attempt costs
    done = [0]

    def count(macs: int) -> None:
        done[0] += macs

    cpu, wall = time.process_time(), time.perf_counter()
    mine(template, job, params, stop=_Deadline(seconds), on_attempt=count)  # type: ignore[arg-type]
    return done[0], time.process_time() - cpu, time.perf_counter() - wall


def _best(fn: Callable[[], Any], repeats: int) -> float:
    """The least CPU time ``fn`` took (one thread: its running time, without waits)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best


def _overheads(job: Job, params: NetworkParams, attempt_s: float) -> dict[str, float]:
    """Per-attempt time outside the kernel; per-job and per-win costs (milliseconds)."""
    mp = mining_params(params)
    spec = job.spec
    seed_a, seed_b = noise_seeds(bytes(32), spec)
    noisy_a = add_noise(job.a, derive_noise(seed_a, spec.m, spec.k, mp.r))
    noisy_bt = add_noise_transposed(job.b, derive_noise(seed_b, spec.n, spec.k, mp.r))
    kernel = get_backend("cpu")
    kernel_s = _best(lambda: kernel.noisy_product(noisy_a, noisy_bt, mp.r, mp.h, mp.w), 5)
    load_s = _best(lambda: Job.from_operands(job.a, job.b, BENCH_POSTER), 3)

    def win() -> None:
        # A fresh commitment: the first attempt on a job computes its result_root.
        key = ResultCommitment(job).key_for(seed_a)
        res = mining_attempt(job.a, job.b, seed_a, seed_b, 1, mp, ticket_key=key, bt=job.bt)
        matrix_rows_root(res.c)
        build_proof(job, 0, 0, params)

    win_s = _best(win, 2) - attempt_s  # beyond the attempt itself
    return {
        "attempt_ms": round(attempt_s * 1e3, 3),
        "kernel_ms": round(kernel_s * 1e3, 3),
        "outside_kernel_ms": round(max(0.0, attempt_s - kernel_s) * 1e3, 3),
        "job_load_ms": round(load_s * 1e3, 3),
        "win_ms": round(max(0.0, win_s) * 1e3, 3),
    }


def bench_job_shapes(
    params: NetworkParams = DEVNET,
    burst_s: float = 0.5,
    rounds: int = 2,
    shapes: list[tuple[int, int, int]] | None = None,
    threads: int = 1,
    on_progress: Callable[[tuple[int, int, int]], None] | None = None,
) -> dict[str, Any]:
    """Measure the null job and every shape, alternating with the null job."""
    import numba

    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    chain = Chain(params, lambda: params.genesis_timestamp_ms)
    rng = np.random.default_rng(13)
    nj = null_job(chain.tip.hash, params)
    _burst(nj, params, chain, 0.1)  # load the compiled kernels
    todo = shapes or [*allowed_shapes(params), *BELOW_MINIMUM]
    null_cpu: list[float] = []
    null_wall: list[float] = []
    records: list[dict[str, Any]] = []
    for shape in todo:
        m, k, n = shape
        job = Job.from_operands(*random_operands(rng, m, k, n), BENCH_POSTER)
        _burst(job, params, chain, 0.05)
        cpu_rate = wall_rate = null_cpu_rate = null_wall_rate = 0.0
        attempt_s = float("inf")
        for _ in range(rounds):
            macs, cpu, wall = _burst(nj, params, chain, burst_s)
            null_cpu_rate = max(null_cpu_rate, macs / cpu)
            null_wall_rate = max(null_wall_rate, macs / wall)
            macs, cpu, wall = _burst(job, params, chain, burst_s)
            cpu_rate, wall_rate = max(cpu_rate, macs / cpu), max(wall_rate, macs / wall)
            attempt_s = min(attempt_s, cpu / max(1, macs // (m * k * n)))
        null_cpu.append(null_cpu_rate)
        null_wall.append(null_wall_rate)
        records.append(
            {
                "shape": [m, k, n],
                "macs": m * k * n,
                "allowed": params.job_too_small(m, k, n) is None,
                "gmacs_per_cpu_s": round(cpu_rate / 1e9, 3),
                "rate_vs_null": round(cpu_rate / null_cpu_rate, 3),
                "wall_rate_vs_null": round(wall_rate / null_wall_rate, 3),
                **_overheads(job, params, attempt_s),
            }
        )
        if on_progress:
            on_progress(shape)
    allowed: list[float] = [r["rate_vs_null"] for r in records if r["allowed"]]
    return {
        "bench": "job-shapes",
        "network": params.name,
        "backend": "cpu",
        "null_job_shape": list(params.null_job_shape),
        "min_job_shape": list(params.min_job_shape),
        "threads": threads,
        "burst_s": burst_s,
        "rounds": rounds,
        "null_gmacs_per_cpu_s": round(float(np.median(null_cpu)) / 1e9, 3),
        "null_gmacs_per_wall_s": round(float(np.median(null_wall)) / 1e9, 3),
        "worst_allowed_rate_vs_null": min(allowed) if allowed else None,
        "shapes": records,
    }
