"""`pouw bench gpu`: the CUDA kernels with their operands resident on the GPU.

A mining attempt on a GPU is: add the attempt's noise to the job's A and Bᵀ (which stay
on the device), run the noisy product with its in-kernel folds, and hash every tile's
ticket there (C' and T stay on the device unless asked for). This measures that device
work with CUDA events, each figure the median of repeats, against a peer baseline timed
in the same run: the int8 GEMM of the same shape through PyTorch (``torch._int_mm``,
cuBLASLt), where PyTorch is installed. It also checks, in the same run, that the
tensor-core kernel, the dp4a kernel and the peer GEMM agree bit for bit, and that the
noise the device adds is the host's.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from kernels.attempt import MiningParams
from kernels.noise import add_noise, add_noise_transposed, derive_noise
from kernels.params import TRANSCRIPT_WORDS


def _event_median(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``fn``'s device work (CUDA events around it), after a warm-up."""
    from numba import cuda

    fn()
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = cuda.event(), cuda.event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)  # ms from start to end
    return statistics.median(times)


def _torch_int_mm(d_a32: Any, d_bt32: Any, d_plain: Any, repeats: int) -> dict[str, Any]:
    """The peer int8 GEMM on the same device operands (torch views of them, no copies),
    and whether its product equals ours (``d_plain``, int32 m×n), bit for bit."""
    try:
        import torch
    except ImportError:
        return {"int8_gemm_impl": None, "int8_gemm_s": None}
    a = torch.as_tensor(d_a32, device="cuda").view(torch.int8)
    bt = torch.as_tensor(d_bt32, device="cuda").view(torch.int8)

    def run() -> Any:
        return torch._int_mm(a, bt.t())  # Bᵀ's rows are B's columns: k-major both

    same = bool(torch.equal(run(), torch.as_tensor(d_plain, device="cuda")))
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return {
        "int8_gemm_impl": f"torch._int_mm (torch {torch.__version__})",
        "int8_gemm_s": statistics.median(times),
        "int8_gemm_matches_plain": same,
    }


def _candidates(
    d_a: Any, d_bt: Any, d_c: Any, d_t: Any, r: int, h: int, w: int, c_ref: Any, t_ref: Any
) -> list[tuple[Callable[[], object] | None, dict[str, Any]]]:
    """Each cp.async candidate (``transcript_mma.CANDIDATES``) as a launch on the bench's
    operands, run once and its C' and T checked against ``c_ref`` and ``t_ref``, with its
    record naming it; no launch where (r, h, w) does not fit it or it failed to set up
    or run (``error`` says why)."""
    from kernels import transcript_mma as mma

    out: list[tuple[Callable[[], object] | None, dict[str, Any]]] = []
    for shape, stages in mma.CANDIDATES:
        fields: dict[str, Any] = {
            "block": f"{shape!r}, {stages} stages",
            "dynamic_shared_bytes": mma.dynamic_shared_bytes(shape, h, w, r, stages),
        }
        why = mma.supported(r, h, w, shape)
        launch: Callable[[], object] | None = None
        if why is not None:
            fields["error"] = why
        else:
            try:
                launch = mma.launcher(shape, stages, h, w, r, (d_a, d_bt, d_c, d_t))
                launch()
                fields["bit_identical"] = bool(
                    np.array_equal(d_c.copy_to_host(), c_ref)
                    and np.array_equal(d_t.copy_to_host(), t_ref)
                )
            except Exception as exc:  # an unproven kernel must not cost the bench its figures
                fields["error"] = f"{type(exc).__name__}: {exc}"[:300]
                launch = None
        out.append((launch, fields))
    return out


def bench_gpu(size: int, repeats: int = 20) -> dict[str, Any]:
    """Device figures of one square job of side ``size`` (see the module docstring)."""
    from numba import cuda

    from kernels import tickets_cuda
    from kernels import transcript_cuda as tc
    from kernels.attempt import mining_attempt

    if not tc.is_available():
        raise ValueError("pouw bench gpu needs a visible CUDA GPU; none was found")
    params = MiningParams()
    r, h, w = params.r, params.h, params.w
    if size <= 0 or size % 128:
        raise ValueError("--size must be a positive multiple of 128")
    m = k = n = size
    rng = np.random.default_rng(size)
    a = rng.integers(-64, 64, (m, k), dtype=np.int8)
    b = rng.integers(-64, 64, (k, n), dtype=np.int8)
    bt = np.ascontiguousarray(b.T)
    seed_a, seed_b = os.urandom(32), os.urandom(32)
    noise_a, noise_b = derive_noise(seed_a, m, k, r), derive_noise(seed_b, n, k, r)

    # A' and B'ᵀ built on the host by the CPU path's own functions: what the device's
    # noise must give, and the operands every kernel below is timed on.
    a_noisy, bt_noisy = add_noise(a, noise_a), add_noise_transposed(b, noise_b)
    d_a, d_bt = cuda.to_device(a.view(np.int32)), cuda.to_device(bt.view(np.int32))
    d_an, d_bn = cuda.to_device(a_noisy.view(np.int32)), cuda.to_device(bt_noisy.view(np.int32))
    d_xa, d_xb = cuda.device_array_like(d_a), cuda.device_array_like(d_bt)
    d_c = cuda.device_array((m, n), np.int32)
    d_t = cuda.device_array((m // h, n // w, TRANSCRIPT_WORDS), np.uint32)
    ticket_key = os.urandom(32)

    def noise() -> None:
        dev_a, dev_b = tc.upload_noise(noise_a, noise_b)
        tc.add_noise_device(d_a, dev_a, d_xa)
        tc.add_noise_device(d_bt, dev_b, d_xb)

    def product(kernel: str, fold: bool) -> Callable[[], object]:
        return lambda: tc.launch(d_an, d_bn, d_c, d_t, r, h, w, fold, kernel)

    def tickets() -> None:
        tickets_cuda.all_tickets_device(d_t, ticket_key)

    def attempt() -> None:  # the miner's device path, job resident, tickets brought back
        _, held = tc.noisy_product_deferred(a, noise_a, b, noise_b, r, h, w, bt=bt)
        held.tickets(ticket_key)

    kernel = tc.kernel_for(r, h, w)
    # Bit-identity in this run: the device's noise, the two kernels' C' and T, the plain
    # product's C.
    noise()
    identical = bool(
        np.array_equal(d_xa.copy_to_host().view(np.int8), a_noisy)
        and np.array_equal(d_xb.copy_to_host().view(np.int8), bt_noisy)
    )
    product("dp4a", True)()
    c_dp4a, t_dp4a = d_c.copy_to_host(), d_t.copy_to_host()
    product(kernel, True)()
    identical = identical and bool(
        np.array_equal(d_c.copy_to_host(), c_dp4a) and np.array_equal(d_t.copy_to_host(), t_dp4a)
    )
    product(kernel, False)()
    d_plain = cuda.device_array_like(d_c)
    d_plain.copy_to_device(d_c)
    identical = identical and bool(np.array_equal(d_plain.copy_to_host(), c_dp4a))
    candidates = _candidates(d_an, d_bn, d_c, d_t, r, h, w, c_dp4a, t_dp4a)
    del c_dp4a, t_dp4a

    dev = cuda.get_current_device()
    name = getattr(dev, "name", "")
    rec: dict[str, Any] = {
        "gpu": name.decode() if isinstance(name, bytes) else str(name),
        "compute_capability": ".".join(map(str, dev.compute_capability)),
        "m": m,
        "k": k,
        "n": n,
        "r": r,
        "h": h,
        "w": w,
        "kernel": kernel,
        "repeats": repeats,
        "kernels_bit_identical": identical,
    }
    rec["noise_s"] = _event_median(noise, repeats)
    rec["tickets_s"] = _event_median(tickets, repeats)
    rec["attempt_kernel_s"] = _event_median(attempt, repeats)
    rec["fold_product_s"] = _event_median(product(kernel, True), repeats)
    rec["plain_kernel_s"] = _event_median(product(kernel, False), repeats)
    dp4a_reps = max(3, repeats // 4)
    rec["dp4a_fold_product_s"] = _event_median(product("dp4a", True), dp4a_reps)
    rec["dp4a_plain_s"] = _event_median(product("dp4a", False), dp4a_reps)
    ops = 2.0 * m * k * n
    for launch, fields in candidates:
        if launch is not None:
            fields["fold_product_s"] = _event_median(launch, repeats)
            fields["fold_product_tops"] = ops / fields["fold_product_s"] / 1e12
            fields["vs_fold_product"] = fields["fold_product_s"] / rec["fold_product_s"]
    rec["candidates"] = [fields for _, fields in candidates]
    rec.update(_torch_int_mm(d_an, d_bn, d_plain, repeats))
    for key in (
        "attempt_kernel_s",
        "fold_product_s",
        "plain_kernel_s",
        "dp4a_fold_product_s",
        "dp4a_plain_s",
    ):
        rec[key.removesuffix("_s") + "_tops"] = ops / rec[key] / 1e12
    if rec["int8_gemm_s"] is not None:
        rec["int8_gemm_tops"] = ops / rec["int8_gemm_s"] / 1e12
        rec["attempt_vs_int8_gemm"] = rec["attempt_kernel_s"] / rec["int8_gemm_s"]
        rec["plain_vs_int8_gemm"] = rec["plain_kernel_s"] / rec["int8_gemm_s"]
    rec["attempt_vs_plain"] = rec["attempt_kernel_s"] / rec["plain_kernel_s"]
    rec["dp4a_vs_fold_product"] = rec["dp4a_fold_product_s"] / rec["fold_product_s"]

    # The whole attempt as the miner runs it: the noise derived on the host too, the
    # winners picked, wall clock.
    mining_attempt(a, b, seed_a, seed_b, 1, params, "cuda", ticket_key=ticket_key, bt=bt)
    times = []
    for _ in range(max(3, repeats // 4)):
        t0 = time.perf_counter()
        mining_attempt(a, b, seed_a, seed_b, 1, params, "cuda", ticket_key=ticket_key, bt=bt)
        times.append(time.perf_counter() - t0)
    rec["attempt_wall_s"] = statistics.median(times)
    rec["attempt_wall_vs_attempt_kernel"] = rec["attempt_wall_s"] / rec["attempt_kernel_s"]
    return rec
