#!/bin/bash
# The GPU checks in one run, for a machine with a CUDA GPU (a rig, or a short lease):
#
#   benchmarks/gpu_check.sh [OUTDIR] [WHEELDIR]
#
# 1. the CUDA tests (tensor-core fragment layout against mma_reference, both kernels
#    against the NumPy reference, the tickets kernel against all_tickets, a whole CUDA
#    attempt against the CPU one, bench gpu);
# 2. `pouw bench gpu` at 2048³ and 8192³ (device work, dp4a, torch._int_mm, same run);
# 3. `pouw bench kernels --backend cuda` at 2048³ (the attempt as the miner runs it),
#    and where its host time goes (benchmarks/profile_attempt.py, cProfile);
# 4. where the host CPU has AMX-INT8: the CPU kernel tests (they run every path the
#    host offers, AMX included), `pouw bench kernels --isa all` and where a CPU
#    attempt's time goes beside its product (profile_attempt --backend cpu).
#
# machine.txt records the GPU and the host CPU's cores, threads per core and clocks:
# what a share of either's peak is computed from.
#
# Results land in OUTDIR (default ./gpu-check) as JSON and logs; every step has its own
# time limit, so one that hangs costs its limit, not the run, and GPU_CHECK_BUDGET
# (seconds, default 1800) caps the whole: a step gets at most what is left of it, and
# one with under 10 s left is skipped, saying so. Run from the repository
# root with pouwnet importable (installed, or PYTHONPATH=.). WHEELDIR, if given, holds
# wheels to install first into /tmp/gpu-check-site (a machine with no package index:
# blake3, pynacl, cffi, pycparser, pytest-asyncio; numpy<2.5 where numba-cuda 0.30 meets
# numpy 2.5, whose np.row_stack it still uses).
set -u
OUT=${1:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -n "${2:-}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu-check-site "$2"/*.whl || exit 3
    export PYTHONPATH="$PWD:/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}"
fi
T0=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-1800}
step() { echo "== $1 (at $(($(date +%s) - T0)) s)"; }
# lim N: the seconds a step may take, N or what is left of the budget if less.
lim() {
    local left=$((BUDGET - ($(date +%s) - T0)))
    if [ "$left" -lt 10 ]; then
        echo "   skipped: the budget (GPU_CHECK_BUDGET=$BUDGET s) is spent" >&2
        return 1
    fi
    echo $((left < $1 ? left : $1))
}

step "machine"
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    lscpu | grep -E "Model name|^CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|MHz|L2 cache|L3 cache"
    grep -o -w 'amx_[a-z0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '
    echo
    "$PY" -c "import numba, numba_cuda, numpy; print('numba', numba.__version__,
'numba-cuda', numba_cuda.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

step "CUDA tests"
L=$(lim 360) && timeout "$L" "$PY" -m pytest -q -p no:cacheprovider -rs \
    tests/kernels/test_transcript_cuda.py tests/kernels/test_tickets_cuda.py \
    tests/kernels/test_bench_gpu.py \
    -k "gpu or bench" 2>&1 | tee "$OUT/cuda-tests.txt" | tail -15

for size in 2048 8192; do
    step "bench gpu $size"
    L=$(lim 240) && timeout "$L" "$PY" -m node.cli bench gpu --size "$size" --json \
        >"$OUT/bench-gpu-$size.json" 2>"$OUT/bench-gpu-$size.err"
    cat "$OUT/bench-gpu-$size.json" "$OUT/bench-gpu-$size.err" | tail -c 1500
done

step "bench kernels --backend cuda 2048"
L=$(lim 150) && timeout "$L" "$PY" -m node.cli bench kernels --backend cuda --size 2048 --json \
    >"$OUT/bench-kernels-cuda.json" 2>"$OUT/bench-kernels-cuda.err"
tail -c 800 "$OUT/bench-kernels-cuda.err"

step "profile: a 2048³ attempt's host time on the CUDA backend"
L=$(lim 90) && timeout "$L" "$PY" -m benchmarks.profile_attempt --size 2048 --attempts 20 \
    --backend cuda >"$OUT/profile-attempt-cuda.txt" 2>&1
head -40 "$OUT/profile-attempt-cuda.txt"

if grep -q -w amx_int8 /proc/cpuinfo; then
    step "AMX: CPU kernel tests"
    L=$(lim 300) && timeout "$L" "$PY" -m pytest -q -p no:cacheprovider \
        tests/kernels/test_transcript_cpu.py tests/kernels/test_codegen_targets.py \
        tests/kernels/test_bench_paths.py tests/kernels/test_threads.py \
        2>&1 | tee "$OUT/amx-tests.txt" | tail -8
    step "AMX: bench kernels --isa all"
    L=$(lim 150) && timeout "$L" "$PY" -m node.cli bench kernels --isa all --size 2048 --json \
        >"$OUT/bench-kernels-isa-all.json" 2>"$OUT/bench-kernels-isa-all.err"
    tail -c 800 "$OUT/bench-kernels-isa-all.err"
    # attempt_vs_plain was 1.22 in wall time there and 1.009 in CPU time: where the
    # attempt's time goes beside its product (what runs on one thread while the others wait).
    step "AMX host: a 2048³ attempt's time on the CPU backend (default path)"
    L=$(lim 90) && timeout "$L" "$PY" -m benchmarks.profile_attempt --size 2048 --attempts 20 \
        --backend cpu >"$OUT/profile-attempt-cpu.txt" 2>&1
    head -40 "$OUT/profile-attempt-cpu.txt"
fi
step "done"
