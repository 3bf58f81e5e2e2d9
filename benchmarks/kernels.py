"""`pouw bench kernels`: one mining attempt against plain matmul and sgemm.

Every figure is a median over repeats, and every target is a ratio to a
baseline measured in the same run, because the machines this runs on are
shared and noisy.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import get_num_threads, njit, prange

from benchmarks.sgemm_baseline import measure_sgemm
from consensus.merkle import matrix_rows_root
from kernels.attempt import MiningParams, mining_attempt, verify_tile_ticket
from kernels.backends import get_backend
from kernels.freivalds import freivalds_check
from kernels.isa import compile_target
from kernels.memory import kept
from kernels.noise import derive_noise
from kernels.recover import recover_product
from kernels.threads import exclusive, threading_layer
from kernels.transcript_cpu import GENERIC, active_path, available_paths, select_path

PLOT_SIZES = (256, 512, 768, 1024, 1536, 2048)


def _median_time(
    fn: Callable[[], Any], repeats: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    fn()  # warm-up: JIT compilation and caches are not what we measure
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def _best_of(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _paired_per_call_times(
    long_fn: Callable[[], Any],
    short_fn: Callable[[], Any],
    samples: int,
    clock: Callable[[], float],
) -> tuple[list[float], list[float]]:
    """Per-call times of two operations, sampled alternately and in samples of equal length.

    A ratio of two medians from one run compares like with like only if both saw the same
    load for the same stretches of time. Sampled alternately, a change in the machine's
    load hits both; and each sample of ``short_fn`` is a batch of back-to-back calls as long
    as one ``long_fn`` call (per-call time = batch / calls; operands hot in cache for both,
    as they are for each repeated call of ``long_fn``), so one scheduler slice lost to
    another process costs a sample of either about the same, instead of several times a
    1 ms call and a few percent of a 25 ms one. (A busy box still costs the short one more:
    each of its parallel regions waits for all its threads to get a core.) Batches also
    make CPU time honest: Linux adds another thread's CPU time to the process's only at a
    scheduler tick or switch (``thread_group_cputime``), so ``process_time`` over a call of
    a millisecond or two counts the calling thread and a lottery of the workers' ticks.
    """
    long_fn()  # warm-up: JIT compilation and caches are not what we measure
    short_fn()
    # Batch size from wall-clock bests (CPU time of a short call is what cannot be trusted).
    calls = max(1, round(_best_of(long_fn, 3) / max(_best_of(short_fn, 3), 1e-6)))
    long_times, short_times = [], []
    for _ in range(samples):
        t0 = clock()
        long_fn()
        long_times.append(clock() - t0)
        t0 = clock()
        for _ in range(calls):
            short_fn()
        short_times.append((clock() - t0) / calls)
    return long_times, short_times


def paired_ratio(
    long_fn: Callable[[], Any],
    short_fn: Callable[[], Any],
    samples: int,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, list[float], list[float]]:
    """(median over pairs of long/short, long's per-call times, short's) from alternate samples
    (:func:`_paired_per_call_times`): each ratio compares two calls made under the same load,
    so a change in the machine's load between pairs moves neither the ratio nor its median."""
    long_times, short_times = _paired_per_call_times(long_fn, short_fn, samples, clock)
    ratios = [x / y for x, y in zip(long_times, short_times, strict=True)]
    return statistics.median(ratios), long_times, short_times


@njit(nogil=True, cache=True)
def _xor_run(words: np.ndarray) -> np.uint64:
    """The XOR of a 1-D uint64 run, in vector registers."""
    s = np.uint64(0)
    for i in range(words.shape[0]):
        s ^= words[i]
    return s


@exclusive
@njit(parallel=True, nogil=True, cache=True)
def _xor_words(x: np.ndarray, y: np.ndarray, z: np.ndarray, blocks: int) -> np.uint64:
    """The XOR of every word of x, y and z (uint64, 1-D), each cut into ``blocks`` runs
    read in parallel: every byte loaded once, nothing written.

    Each run is a call of :func:`_xor_run`: the same loop written inside the prange body
    compiled to scalar loads, ~17× slower on a Zen 4 core (4.6 against 77 GB/s from L3),
    and the floor then sat above the Freivalds check it is meant to bound."""
    folds = np.zeros(3 * blocks, dtype=np.uint64)
    for t in prange(3 * blocks):
        words = x if t < blocks else y if t < 2 * blocks else z
        n = words.shape[0]
        step = (n + blocks - 1) // blocks
        b = t % blocks
        folds[t] = _xor_run(words[min(n, b * step) : min(n, (b + 1) * step)])
    acc = np.uint64(0)
    for t in range(3 * blocks):
        acc ^= folds[t]
    return acc


def read_floor(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> int:
    """Read every byte of C, A and B once, on every thread (the XOR of their 8-byte
    words, so no load can be left out): the least any check that reads its operands
    once can cost, Freivalds' included. Each must be C-contiguous, whole words long."""
    if not all(x.flags.c_contiguous for x in (c, a, b)):
        raise ValueError("the read floor reads C-contiguous operands (a copy is no floor)")
    wc, wa, wb = (x.reshape(-1).view(np.uint64) for x in (c, a, b))
    return int(_xor_words(wc, wa, wb, 4 * get_num_threads()))


def _repeats_for(size: int) -> int:
    return max(3, min(15, int(4 * (2048 / size) ** 2)))


def path_label(path: str) -> str:
    """The ``isa`` a record names for a CPU kernel path.

    The portable path is named by what it compiles to (``avx2``, ``sse2``…) where
    the target has no kernel of its own, and ``generic`` where it does (forced).
    """
    target = compile_target().isa
    return target if path == GENERIC and target not in available_paths() else path


def bench_kernels(
    size: int, backend: str = "cpu", repeats: int | None = None, isa: str | None = None
) -> dict[str, Any]:
    """Measure one square job of side ``size`` and return the JSON record.

    ``isa`` forces a CPU kernel path (:func:`kernels.transcript_cpu.available_paths`)
    for this measure, miner and verifier alike; by default the target's own runs.
    """
    if isa is None:
        return _bench_kernels(size, backend, repeats)
    if backend != "cpu":
        raise ValueError(f"--isa chooses a CPU kernel path; backend {backend!r} has none")
    previous = select_path(isa)
    try:
        return _bench_kernels(size, backend, repeats)
    finally:
        select_path(previous)


def _bench_kernels(size: int, backend: str, repeats: int | None) -> dict[str, Any]:
    params = MiningParams()
    if size <= 0 or size % max(params.r, params.h, params.w):
        raise ValueError(f"--size must be a positive multiple of {max(params.r, params.h)}")
    be = get_backend(backend)
    reps = repeats or _repeats_for(size)
    m = k = n = size
    rng = np.random.default_rng(size)
    a = rng.integers(-64, 64, (m, k), dtype=np.int8)
    b = rng.integers(-64, 64, (k, n), dtype=np.int8)
    bt = np.ascontiguousarray(b.T)
    seed_a, seed_b, key = os.urandom(32), os.urandom(32), os.urandom(32)
    target = 1  # nothing wins: we measure the full cost of a losing attempt

    sgemm = measure_sgemm(m, k, n, reps)
    # bt: a miner's job holds B's transpose too (consensus.pow.Job), and mine() passes it.
    result = mining_attempt(a, b, seed_a, seed_b, target, params, be, ticket_key=key, bt=bt)
    c = result.c
    if not freivalds_check(a, b, c):
        raise RuntimeError("the recovered product failed Freivalds: the kernel is wrong")

    def plain() -> Any:
        return be.plain_matmul(a, bt, params.r, params.h, params.w)

    def freivalds() -> Any:
        return freivalds_check(a, b, c)

    # The plain product and Freivalds in alternate samples of the same length, the same
    # number of each (see _paired_per_call_times): freivalds_vs_plain compares the two
    # under the same load. More samples than the other measures get: Freivalds' batches
    # are short enough that a few preempted ones would otherwise move the median.
    pair_reps = max(30, reps)
    plain_times, freivalds_times = _paired_per_call_times(
        plain, freivalds, pair_reps, time.perf_counter
    )
    plain_cpu_times, freivalds_cpu_times = _paired_per_call_times(
        plain, freivalds, pair_reps, time.process_time
    )
    plain_s, freivalds_s = statistics.median(plain_times), statistics.median(freivalds_times)
    # Freivalds against reading its operands once, paired the same way: how much of its
    # time is arithmetic, and the floor memory sets under freivalds_vs_plain on this host.
    read_bytes = c.nbytes + a.nbytes + b.nbytes
    freivalds_vs_read, _, read_times = paired_ratio(
        freivalds, lambda: read_floor(c, a, b), pair_reps
    )
    read_s = statistics.median(read_times)

    def attempt() -> Any:
        return mining_attempt(a, b, seed_a, seed_b, target, params, be, ticket_key=key, bt=bt)

    # The attempt and the plain product alternately too, and their ratio the median of the
    # pairs' ratios: measured minutes apart, a load change on a shared box moved it by ±0.1.
    pairs = max(15, reps)
    attempt_vs_plain, attempt_times, _ = paired_ratio(attempt, plain, pairs)
    attempt_vs_plain_cpu, attempt_cpu_times, _ = paired_ratio(
        attempt, plain, pairs, time.process_time
    )
    # The attempt timed is a losing one without recovery: what each further extra-nonce of
    # a job costs. C is the same for every attempt on a job, so a miner recovers it and
    # commits its rows once (attempt_with_result_root_s below).
    attempt_s = statistics.median(attempt_times)
    # CPU seconds of this process (all threads): on a shared machine, time spent waiting
    # for a core inflates wall-clock ratios but not these.
    plain_cpu_s = statistics.median(plain_cpu_times)
    attempt_cpu_s = statistics.median(attempt_cpu_times)
    ti, tj = m // params.h // 2, n // params.w // 2
    rows = np.ascontiguousarray(a[ti * params.h : (ti + 1) * params.h])
    cols = np.ascontiguousarray(bt[tj * params.w : (tj + 1) * params.w])
    verify_s = _median_time(
        lambda: verify_tile_ticket(
            rows, cols, ti, tj, seed_a, seed_b, 2**255, params, ticket_key=key
        ),
        max(50, reps),
    )
    verify_cpu_s = _median_time(
        lambda: verify_tile_ticket(
            rows, cols, ti, tj, seed_a, seed_b, 2**255, params, ticket_key=key
        ),
        max(50, reps),
        time.process_time,
    )
    # The ticket key is bound to result_root: on a posted job the miner recovers C
    # and commits its rows before it hashes a ticket (once per job); the null job
    # commits zero and pays neither, i.e. costs attempt_s.
    result_root_s = _median_time(lambda: matrix_rows_root(c), reps)
    # The recovery alone (on the host, whatever the backend: a GPU's C' is fetched first),
    # from this attempt's C' with its operands warm: the rest of a posted job's extra cost.
    c_noisy = np.ascontiguousarray(result.c_noisy)
    noise_a, noise_b = derive_noise(seed_a, m, k, params.r), derive_noise(seed_b, n, k, params.r)
    if not np.array_equal(recover_product(c_noisy, a, b, noise_a, noise_b), c):
        raise RuntimeError("the recovery gave another C than the attempt: the kernel is wrong")
    recovery_s = _median_time(lambda: recover_product(c_noisy, a, b, noise_a, noise_b), reps)

    def attempt_with_result_root() -> Any:
        return mining_attempt(
            a, b, seed_a, seed_b, target, params, be, ticket_key=matrix_rows_root, bt=bt
        )

    # Alternately with the losing attempt, as attempt_vs_plain: timed apart, a few medians
    # of 4 swung the ratio by ±0.1 between runs, more than a change of 4 % moves it.
    with_root_vs_attempt, with_root_times, _ = paired_ratio(
        attempt_with_result_root, attempt, pairs
    )
    with_root_s = statistics.median(with_root_times)
    sgemm_s = float(sgemm["sgemm_s"])  # type: ignore[arg-type]
    device: dict[str, Any] = {}
    if be.name == "cuda":  # the device work alone, beside the peer int8 GEMM (same run)
        from benchmarks.gpu import bench_gpu

        shape = {"m", "k", "n", "r", "h", "w"}
        device = {f"device_{k}": v for k, v in bench_gpu(size).items() if k not in shape}
        if device.get("device_attempt_vs_int8_gemm") is not None:
            device["attempt_vs_int8_gemm"] = device["device_attempt_vs_int8_gemm"]
    return device | {
        "backend": be.name,
        # The CPU kernel path that ran, named by its instruction set (host or NUMBA_CPU_*):
        # figures from different machines are only comparable with it beside them.
        "isa": path_label(active_path()) if be.name == "cpu" else be.name,
        "cpu": compile_target().cpu,
        # Numba's threading layer: on workqueue, parallel kernels run one at a time.
        "threading_layer": threading_layer(),
        # Whether freed blocks stay mapped for the next call (kernels/memory.py; `pouw` sets it).
        "freed_memory_kept": kept(),
        "m": m,
        "k": k,
        "n": n,
        "r": params.r,
        "h": params.h,
        "w": params.w,
        "repeats": reps,
        "sgemm_s": sgemm_s,
        "sgemm_blas": sgemm["blas"],
        "plain_s": plain_s,
        "attempt_s": attempt_s,
        "verify_s": verify_s,
        "freivalds_s": freivalds_s,
        "attempt_vs_sgemm": attempt_s / sgemm_s,
        "attempt_vs_plain": attempt_vs_plain,
        "plain_cpu_s": plain_cpu_s,
        "attempt_cpu_s": attempt_cpu_s,
        "attempt_vs_plain_cpu": attempt_vs_plain_cpu,
        "verify_vs_attempt": verify_s / attempt_s,
        "verify_cpu_s": verify_cpu_s,
        "verify_vs_attempt_cpu": verify_cpu_s / attempt_cpu_s,
        "result_root_s": result_root_s,
        "result_root_vs_attempt": result_root_s / attempt_s,
        "recovery_s": recovery_s,
        "recovery_vs_attempt": recovery_s / attempt_s,
        "attempt_with_result_root_s": with_root_s,
        "attempt_with_result_root_vs_attempt": with_root_vs_attempt,
        "freivalds_vs_plain": freivalds_s / plain_s,
        "read_bytes": read_bytes,
        "read_s": read_s,
        "read_gb_per_s": read_bytes / read_s / 1e9,
        "read_vs_plain": read_s / plain_s,
        "freivalds_vs_read": freivalds_vs_read,
        "freivalds_cpu_s": statistics.median(freivalds_cpu_times),
        "freivalds_vs_plain_cpu": statistics.median(freivalds_cpu_times) / plain_cpu_s,
        # Best samples, beside the medians (not instead): what the two reach undisturbed.
        "plain_min_s": min(plain_times),
        "freivalds_min_s": min(freivalds_times),
        "freivalds_vs_plain_min": min(freivalds_times) / min(plain_times),
        "freivalds_vs_plain_cpu_min": min(freivalds_cpu_times) / min(plain_cpu_times),
        "macs_per_s": m * k * n / attempt_s,
        "plain_macs_per_s": m * k * n / plain_s,
        "sgemm_macs_per_s": m * k * n / sgemm_s,
    }


def plot_kernels(records: list[dict[str, Any]], path: str) -> None:
    """Throughput and overhead ratios across sizes, one line per measure and kernel path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = list(dict.fromkeys(r["isa"] for r in records))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for isa in paths:
        mine = [r for r in records if r["isa"] == isa]
        sizes = [r["m"] for r in mine]
        for key, label in (
            ("macs_per_s", "mining attempt"),
            ("plain_macs_per_s", "plain int8 matmul (ours)"),
        ):
            ax1.plot(sizes, [r[key] / 1e9 for r in mine], marker="o", label=f"{label}, {isa}")
        for key in ("attempt_vs_plain", "attempt_vs_sgemm"):
            ax2.plot(sizes, [r[key] for r in mine], marker="o", label=f"{key}, {isa}")
    first = [r for r in records if r["isa"] == paths[0]]
    ax1.plot(
        [r["m"] for r in first],
        [r["sgemm_macs_per_s"] / 1e9 for r in first],
        marker="o",
        label="numpy sgemm (clean BLAS env)",
    )
    ax1.set_xlabel("matrix side (m = k = n)")
    ax1.set_ylabel("GMAC/s")
    ax1.set_title(f"throughput ({records[0]['backend']})")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.axhline(1.10, color="grey", linestyle="--", linewidth=0.8, label="1.10 target")
    ax2.axhline(1.0, color="grey", linestyle=":", linewidth=0.8, label="1.0 target")
    ax2.set_xlabel("matrix side (m = k = n)")
    ax2.set_ylabel("time ratio")
    ax2.set_title("attempt overhead")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
