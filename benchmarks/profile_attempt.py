"""Where a mining attempt's host time goes: cProfile over repeated attempts on a backend.

    python -m benchmarks.profile_attempt [--size N] [--attempts N] [--backend cpu|cuda]

On the CUDA backend a 2048³ attempt took 1.67 ms of wall time on an H200 for a 0.17 ms
product (docs/benchmarks.md): the rest is the host's Python around the kernels (noise
derived and uploaded, launches, device arrays, tickets brought back), which CUDA events
do not break down. This prints the functions that took the host's time, by their own
time and by their callees', over ``--attempts`` losing attempts (null job, operands
resident as the miner holds them) after one untimed attempt that loads the kernels.
benchmarks/gpu_check.sh runs it on a lent GPU; on the CPU backend it shows the Python
left around the compiled kernels.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys

import numpy as np


def profile_attempts(size: int, attempts: int, backend: str, top: int = 25) -> str:
    """The profile of ``attempts`` attempts on a ``size``³ job, as text."""
    from kernels.attempt import MiningParams, mining_attempt
    from kernels.memory import keep_freed_memory

    keep_freed_memory()  # as ``pouw`` runs attempts
    rng = np.random.default_rng(size)
    a = rng.integers(-64, 64, (size, size), dtype=np.int8)
    b = rng.integers(-64, 64, (size, size), dtype=np.int8)
    bt = np.ascontiguousarray(b.T)
    params = MiningParams()
    key = os.urandom(32)

    def attempt() -> None:
        seed_a, seed_b = os.urandom(32), os.urandom(32)
        mining_attempt(a, b, seed_a, seed_b, 1, params, backend, ticket_key=key, bt=bt)

    attempt()  # loads (or compiles) the kernels: not what an attempt costs
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(attempts):
        attempt()
    profiler.disable()
    out = io.StringIO()
    out.write(f"{attempts} attempts, {size}³, backend {backend}\n")
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_attempt", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--size", type=int, default=2048, help="side of the square job")
    parser.add_argument("--attempts", type=int, default=20, help="attempts profiled")
    parser.add_argument("--backend", choices=("cpu", "cuda"), default="cuda")
    parser.add_argument("--top", type=int, default=25, help="functions listed per order")
    args = parser.parse_args(argv)
    if args.size <= 0 or args.size % 128:
        parser.error("--size must be a positive multiple of 128")
    if args.attempts <= 0 or args.top <= 0:
        parser.error("--attempts and --top must be positive")
    try:
        text = profile_attempts(args.size, args.attempts, args.backend, args.top)
    except (ValueError, RuntimeError) as exc:  # no GPU, a backend that cannot run
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
