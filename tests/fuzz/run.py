"""Run the fuzz targets with atheris (coverage-guided, libFuzzer underneath).

    python -m tests.fuzz.run [--target NAME ...] [--runs N] [--seconds S] [--json]

Each target (``tests/fuzz/targets/fuzz_<name>.py``) runs in its own process (atheris
fuzzes one target per process), starting from its seed corpus, until ``--runs``
inputs or ``--seconds`` have passed. The decoders it reaches (``consensus``,
``node``) are instrumented for coverage at import. Per target it prints the inputs
run and the crashes; a crash's input is kept under ``--artifacts``.

A target module defines ``test_one_input(data: bytes) -> None``, which raises only
on a bug, and optionally ``seeds() -> list[bytes]`` (valid inputs to start from),
``hostile_inputs() -> list[bytes]`` (hand-made attacks beyond the mutations of its
seeds) and ``SELECTOR_BYTES`` (leading bytes that choose a decoder, left out of
mutation).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

TARGETS_DIR = Path(__file__).parent / "targets"
INSTRUMENTED = ["consensus", "node", "tests.fuzz.targets"]
"""Packages whose code atheris instruments for coverage (kernels/ holds Numba code,
which must stay as written)."""
INPUT_TIMEOUT_S = 20
"""One input running longer than this is a hang: a crash."""
RSS_LIMIT_MB = 4096


@dataclass
class TargetResult:
    target: str
    runs: int
    crashes: int
    seconds: float
    artifacts: list[str]
    returncode: int


def target_names() -> list[str]:
    """Every target under tests/fuzz/targets, by name (``fuzz_<name>.py``)."""
    return sorted(p.stem.removeprefix("fuzz_") for p in TARGETS_DIR.glob("fuzz_*.py"))


def load(name: str) -> ModuleType:
    """The target module ``name`` (or, given a dotted module path, that module)."""
    return importlib.import_module(name if "." in name else f"tests.fuzz.targets.fuzz_{name}")


def seeds_of(module: ModuleType) -> list[bytes]:
    seeds = getattr(module, "seeds", None)
    return list(seeds()) if seeds is not None else []


def hostile_of(module: ModuleType) -> list[bytes]:
    """The target's hand-made attacks plus the mutations of each of its seeds."""
    from tests.support.corpus import hostile

    keep = getattr(module, "SELECTOR_BYTES", 0)
    found = list(getattr(module, "hostile_inputs", list)())
    for seed in seeds_of(module):
        found += hostile(seed[keep:], prefix=seed[:keep])
    return found


def write_corpus(name: str, directory: Path) -> int:
    """Write the target's seeds into ``directory`` (kept across runs); how many."""
    directory.mkdir(parents=True, exist_ok=True)
    seeds = seeds_of(load(name))
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    return len(seeds)


def fuzz_target(
    name: str, runs: int | None, seconds: int | None, corpus: Path, artifacts: Path
) -> TargetResult:
    """Fuzz one target in a child process; what it ran and whether it crashed."""
    write_corpus(name, corpus)
    artifacts.mkdir(parents=True, exist_ok=True)
    before = set(artifacts.iterdir())
    cmd = [sys.executable, "-m", "tests.fuzz.run", "--child", name, str(corpus)]
    cmd += [f"-artifact_prefix={artifacts}/", f"-timeout={INPUT_TIMEOUT_S}"]
    cmd += [f"-rss_limit_mb={RSS_LIMIT_MB}", "-print_final_stats=1"]
    if runs is not None:
        cmd.append(f"-runs={runs}")
    if seconds is not None:
        cmd.append(f"-max_total_time={seconds}")
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False)
    elapsed = time.monotonic() - started
    found = sorted(str(p) for p in set(artifacts.iterdir()) - before)
    done = re.findall(r"stat::number_of_executed_units:\s*(\d+)", proc.stderr)
    progress = re.findall(r"^#(\d+)\s", proc.stderr, re.MULTILINE)
    executed = int(done[-1]) if done else int(progress[-1]) if progress else 0
    crashes = len(found) or int(proc.returncode != 0)
    if crashes:
        sys.stderr.write(proc.stderr[-6000:])
    return TargetResult(name, executed, crashes, round(elapsed, 1), found, proc.returncode)


_on_c_exit: list[object] = []
"""The C exit handler below, kept alive for as long as the process runs."""


def _run_python_exit_handlers_at_c_exit() -> None:
    """Have the C library's ``exit`` run Python's ``atexit`` functions first.

    libFuzzer ends a finished run with C ``exit(0)``, which never returns to Python,
    so Python's ``atexit`` functions (a target's teardown: the jsonrpc target stops
    its node and joins its threads) were skipped, and the libraries' C exit handlers
    ran with the target's threads still at work: LLVM's static objects were
    destroyed under the node's kernel warm-up thread, a crash libFuzzer reported as
    a "deadly signal" after "Done N runs". C exit handlers run last registered
    first, so this is registered once the target and its libraries are loaded, and
    before libFuzzer's own. A library can still register a handler later (C++
    registers a function's static object when the function first runs), so a
    target must not leave a thread working when an input returns. A crash or
    timeout leaves by ``_Exit`` and skips this.
    """
    import atexit
    import ctypes

    def run(_: object) -> None:
        atexit._run_exitfuncs()

    handler = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(run)
    _on_c_exit.append(handler)
    # glibc's atexit() is __cxa_atexit(handler, argument, owning shared object).
    if ctypes.CDLL(None).__cxa_atexit(handler, None, None) != 0:
        raise OSError("the C library refused the fuzz target's exit handler")


def _child(argv: list[str]) -> None:
    """In the child: instrument the decoders, load the target and hand over to libFuzzer."""
    import atheris

    name, libfuzzer_args = argv[0], argv[1:]
    with atheris.instrument_imports(include=INSTRUMENTED):
        module = load(name)
    _run_python_exit_handlers_at_c_exit()
    atheris.Setup([sys.argv[0], *libfuzzer_args], module.test_one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run", description=__doc__)
    parser.add_argument("--target", action="append", choices=target_names(), help="repeatable")
    parser.add_argument("--runs", type=int, help="inputs per target")
    parser.add_argument("--seconds", type=int, help="time per target")
    parser.add_argument("--corpus", type=Path, help="corpus folder (kept; default: temporary)")
    parser.add_argument("--artifacts", type=Path, default=Path(".fuzz/crashes"))
    parser.add_argument("--json", action="store_true", help="print one JSON summary")
    args = parser.parse_args(argv)
    if args.runs is None and args.seconds is None:
        parser.error("give --runs, --seconds or both")
    with tempfile.TemporaryDirectory(prefix="pouw-fuzz-") as tmp:
        corpus_root = args.corpus or Path(tmp)
        results = []
        for name in args.target or target_names():
            result = fuzz_target(
                name, args.runs, args.seconds, corpus_root / name, args.artifacts / name
            )
            results.append(result)
            if not args.json:
                print(
                    f"{name:16} {result.runs:>10,} inputs  {result.crashes} crashes  "
                    f"{result.seconds:>7.1f} s  {' '.join(result.artifacts)}",
                    flush=True,
                )
    summary = {
        "targets": [asdict(r) for r in results],
        "inputs": sum(r.runs for r in results),
        "crashes": sum(r.crashes for r in results),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"total: {summary['inputs']:,} inputs, {summary['crashes']} crashes")
    return 1 if summary["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
