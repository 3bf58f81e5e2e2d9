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


def _builds(mod) -> list[tuple[str, numba.core.registry.CPUDispatcher]]:
    """(name, dispatcher) of every module-level compiled build, unwrapped from the guard."""
    out = []
    for name, obj in vars(mod).items():
        disp = obj._dispatcher if isinstance(obj, threads._Exclusive) else obj
        if isinstance(disp, numba.core.registry.CPUDispatcher):
            out.append((name, disp))
    return out


@pytest.mark.parametrize("module", _kernel_modules())
def test_every_build_has_a_cache_file_of_its_own(module):
    """Numba's on-disk cache files a function by name and line and keys it by signature
    and bytecode, not by its compile flags: two builds of one function (serial beside
    parallel) would share an entry, and a process would run whichever was cached first
    for both. Each build's function must be its own (``kernels.threads.own_build``)."""
    mod = importlib.import_module(f"kernels.{module}")
    seen: dict[tuple[str, str, int], tuple[str, dict]] = {}
    shared = []
    for name, disp in _builds(mod):
        f = disp.py_func
        where = (f.__module__, f.__qualname__, f.__code__.co_firstlineno)
        if where in seen and seen[where][1] != disp.targetoptions:
            shared.append((seen[where][0], name))
        seen.setdefault(where, (name, disp.targetoptions))
    assert shared == [], f"builds that share one cache entry: {shared}"


SERIAL_THEN_PARALLEL = """
import sys
import numpy as np
from kernels import noise
f = noise.derive_noise(bytes(32), 64, 64, 64)
x = np.zeros((64, 64), np.int8)
build = noise._add_noise_serial if sys.argv[1] == "serial" else noise._add_noise_parallel
out = build(x, np.ascontiguousarray(f.L.T), f.p, f.q)
assert np.array_equal(out, f.L[:, f.p] - f.L[:, f.q])
stats = build.stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


def test_the_parallel_noise_build_is_not_the_serial_one_from_the_cache(tmp_path):
    """The case that was wrong: with the serial noise build cached first (a node's
    verifier warm-up), a fresh process's parallel build loaded it from the cache and
    ran on one thread. Now it finds no entry of its own and compiles itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CACHE")}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "cache")

    def run(which: str) -> list[int]:
        done = subprocess.run(
            [sys.executable, "-c", SERIAL_THEN_PARALLEL, which],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return [int(v) for v in done.stdout.split()]

    assert run("serial") == [0, 1]  # compiled and cached
    assert run("parallel") == [0, 1], "the parallel build was loaded from the serial's entry"
    assert run("parallel") == [1, 0]  # its own entry, cached in turn
