"""Run a script under numba's CUDA simulator, in a child process.

``NUMBA_ENABLE_CUDASIM`` must be set before ``numba.cuda`` is first imported, and a
test process has imported the real target already. The script gets the inputs' and
the outputs' ``.npz`` paths as ``sys.argv[1:3]`` and saves its results to the second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def run_simulated(
    script: str, inp: dict[str, np.ndarray], tmp: Path, timeout: float
) -> tuple[dict[str, np.ndarray], float]:
    """(the inputs and what ``script`` saved, merged; the child's seconds) for ``inp``."""
    np.savez(tmp / "in.npz", **inp)  # type: ignore[arg-type]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp / "in.npz"), str(tmp / "out.npz")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(tmp / "out.npz") as out:
        return {**inp, **dict(out)}, elapsed
