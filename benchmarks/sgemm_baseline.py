"""numpy float32 matmul timing, run in a subprocess with a clean BLAS environment.

This machine sets OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which halve
OpenBLAS's speed; a baseline measured under them would flatter our kernels.
The parent process starts this module with both variables removed and reads
one JSON line: the median time and the BLAS kernel threadpoolctl saw.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

BLAS_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _measure(m: int, k: int, n: int, repeats: int) -> dict[str, object]:
    import numpy as np
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(0)
    a = rng.integers(-64, 64, (m, k)).astype(np.float32)
    b = rng.integers(-64, 64, (k, n)).astype(np.float32)
    a @ b  # first call initialises the BLAS thread pool
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    blas = [
        {k2: info.get(k2) for k2 in ("internal_api", "version", "architecture", "num_threads")}
        for info in threadpool_info()
        if info.get("user_api") == "blas"
    ]
    return {"sgemm_s": statistics.median(times), "blas": blas}


def measure_sgemm(m: int, k: int, n: int, repeats: int) -> dict[str, object]:
    """Run the measurement in a child process with the BLAS variables unset."""
    env = {key: val for key, val in os.environ.items() if key not in BLAS_ENV_VARS}
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.sgemm_baseline", str(m), str(k), str(n), str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    dims = [int(x) for x in sys.argv[1:5]]
    print(json.dumps(_measure(*dims)))
