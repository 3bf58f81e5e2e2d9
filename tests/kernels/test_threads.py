"""Parallel kernels called from several threads at once never crash the process.

Numba's ``workqueue`` threading layer (what a machine without OpenMP or TBB gets)
terminates the process when two threads enter parallel regions together; a node calls
its kernels from several threads. The probe below forces that layer in a fresh process.
"""

import importlib
import os
import pkgutil
import subprocess
import sys

import numba
import pytest

import kernels
from kernels import threads
from kernels.transcript_cpu import available_paths

# Three threads start together on a barrier and each calls a different parallel kernel
# (Freivalds' two regions, the operand transpose, the int7 range check) 40 times,
# checking every result against one computed before the threads start.
CONCURRENT_PROBE = """
import sys, threading
import numpy as np
from kernels import threads
from kernels.freivalds import freivalds_check
from kernels.layout import transposed
from kernels.validate import check_operand

g = np.random.default_rng(5)
a = g.integers(-64, 64, (512, 512), dtype=np.int8)
b = g.integers(-64, 64, (512, 512), dtype=np.int8)
c = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
wrong = c.copy(); wrong[100, 200] += 1
big = g.integers(-64, 64, (1024, 1024), dtype=np.int8)
bt = np.ascontiguousarray(big.T)
assert freivalds_check(a, b, c) and not freivalds_check(a, b, wrong)
assert np.array_equal(transposed(big), bt)
check_operand("A", big)

start = threading.Barrier(3)
failures = []

def run(name, call):
    start.wait()
    for _ in range(40):
        if not call():
            failures.append(name)

work = [
    ("freivalds", lambda: freivalds_check(a, b, c) and not freivalds_check(a, b, wrong)),
    ("transpose", lambda: np.array_equal(transposed(big), bt)),
    ("range check", lambda: check_operand("A", big) is None),
]
ts = [threading.Thread(target=run, args=w) for w in work]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(threads.threading_layer(), threads.layer_is_threadsafe(), sorted(set(failures)))
"""


def test_concurrent_kernels_on_the_workqueue_layer_neither_crash_nor_err():
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    run = subprocess.run(
        [sys.executable, "-c", CONCURRENT_PROBE],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Concurrent access" not in run.stderr
    assert run.stdout.split() == ["workqueue", "False", "[]"], run.stdout


def test_this_process_knows_whether_its_layer_is_threadsafe():
    layer = threads.threading_layer()
    assert layer == numba.threading_layer()
    assert threads.layer_is_threadsafe() is (layer in ("tbb", "omp"))


def _kernel_modules() -> list[str]:
    """Every module of kernels/ this host can import: all of them but the VNNI and AMX
    paths where the target lacks them (LLVM cannot compile those for other targets)."""
    paths = available_paths()
    skip = {"transcript_vnni": "avx512_vnni", "transcript_amx": "amx_int8"}
    return [
        m.name
        for m in pkgutil.iter_modules(kernels.__path__)
        if m.name not in skip or skip[m.name] in paths
    ]


@pytest.mark.parametrize("module", _kernel_modules())
def test_every_parallel_kernel_is_behind_the_guard(module):
    """A parallel kernel left unwrapped would crash a workqueue process the first time
    two threads reach it; every module-level parallel dispatcher must be wrapped."""
    mod = importlib.import_module(f"kernels.{module}")
    bare = [
        name
        for name, obj in vars(mod).items()
        if isinstance(obj, numba.core.registry.CPUDispatcher) and obj.targetoptions.get("parallel")
    ]
    assert bare == [], f"parallel kernels not wrapped in kernels.threads.exclusive: {bare}"


def test_a_node_on_an_unsafe_layer_says_what_to_install(monkeypatch, caplog):
    """The warm-up thread warns once the kernels are loaded, naming the layer and a fix."""
    from node import app

    monkeypatch.setattr(app, "warm_up", lambda: None)
    monkeypatch.setattr(app, "layer_is_threadsafe", lambda: False)
    monkeypatch.setattr(app, "threading_layer", lambda: "workqueue")
    with caplog.at_level("WARNING", logger="pouw.node"):
        app._warm_up()
    assert "workqueue threading layer is not thread-safe" in caplog.text
    assert "libgomp1" in caplog.text and "pip install tbb" in caplog.text
    assert f"LD_LIBRARY_PATH={sys.prefix}/lib" in caplog.text

    caplog.clear()
    monkeypatch.setattr(app, "layer_is_threadsafe", lambda: True)
    with caplog.at_level("WARNING", logger="pouw.node"):
        app._warm_up()
    assert caplog.text == ""
