"""A miner's attempts reuse the pages of the ones before instead of faulting in new ones."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from kernels.memory import keep_freed_memory

ROOT = Path(__file__).resolve().parents[2]

# Six 2048² attempts in a worker thread, as the miner runs them, posted jobs (recovery of
# C and its root) and null jobs alternating; prints whether the settings took and each
# attempt's minor page faults. As in a node, the kernels are loaded first, on a thread of
# their own (``kernels.attempt.warm_up``; mining waits for it), unless argv[1] says to
# load them on the miner's own thread, as a benchmark does.
PROBE = """
import os, resource, sys, threading
import numpy as np
from kernels.memory import keep_freed_memory
applied = keep_freed_memory()
from consensus.merkle import matrix_rows_root
from kernels.attempt import MiningParams, mining_attempt, warm_up
if sys.argv[1] == "apart":
    warming = threading.Thread(target=warm_up)
    warming.start()
    warming.join()

g = np.random.default_rng(1)
a = g.integers(-64, 64, (2048, 2048), dtype=np.int8)
b = g.integers(-64, 64, (2048, 2048), dtype=np.int8)
faults = []

def miner():
    for i in range(6):
        key = matrix_rows_root if i % 2 == 0 else os.urandom(32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        mining_attempt(a, b, os.urandom(32), os.urandom(32), 1, MiningParams(), ticket_key=key)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

t = threading.Thread(target=miner)
t.start()
t.join()
print(applied, *faults)
"""


def _on_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@pytest.mark.parametrize(
    ("threads", "load"),
    [(None, "apart"), ("1", "apart"), ("4", "apart"), ("2", "on_the_miner")],
    ids=["default threads", "1 thread", "4 threads", "kernels loaded by the miner"],
)
def test_attempts_after_the_first_fault_in_no_new_pages(threads: str | None, load: str):
    """Without the settings glibc unmaps or trims each attempt's 16 MiB blocks and the next
    attempt faults ~3,000-4,100 pages back in (measured on the dev VM); with them, once
    memory has reached its high-water mark, an attempt faults in none, whatever Numba's
    thread count and wherever the kernels were loaded (with one glibc arena per thread,
    1 or 4 threads, or kernels loaded on the miner's thread, faulted 4,097 pages back in
    every attempt on a 2-core VM where the default did not)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    if threads is not None:
        env["NUMBA_NUM_THREADS"] = threads
    run = subprocess.run(
        [sys.executable, "-c", PROBE, load],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    applied, *faults = run.stdout.split()
    assert applied == str(_on_glibc())
    if applied == "True":
        steady = [int(f) for f in faults[3:]]
        assert max(steady) < 256, faults


def test_the_settings_are_made_once_and_report_the_same():
    assert keep_freed_memory() is keep_freed_memory() is _on_glibc()
