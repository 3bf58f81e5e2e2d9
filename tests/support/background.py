"""A child process run in the background while the suite goes on, read by a test later.

The older targets' kernel runs (tests/support/older_targets.py) and the CUDA
simulator's long runs (tests/support/cudasim.py) are started when the suite is
collected (tests/conftest.py), at the lowest CPU priority, so that they take only the
core the suite leaves idle; each has a Numba cache of its own (two processes compiling
one parallel kernel into one cache at once can pair a gufunc's two cache files from
different compiles: numba/numba#10128, a segfault on the next load).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunResult:
    """How a run ended: its return code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def lowest_priority() -> None:
    """This process at Linux's SCHED_IDLE (and nice 19 where there is none)."""
    # SCHED_IDLE where there is one: nice 19 alone still took ~12 % of a core from each
    # e2e miner (they run at nice 10), and a market test's block gap went past its bound.
    os.nice(19)
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


class BackgroundChild:
    """``argv`` started now in ``cwd`` with ``env``, its output in ``files``.out and .err
    (files, not pipes: nobody reads a pipe while the suite runs, and a full one would
    stall the child), at the lowest priority if ``idle``."""

    def __init__(
        self, name: str, argv: list[str], cwd: Path, env: dict[str, str], files: Path,
        idle: bool = True,
    ) -> None:  # fmt: skip
        self.name = name
        self._out, self._err = files.with_suffix(".out"), files.with_suffix(".err")
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self._proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                preexec_fn=lowest_priority if idle else None,
            )  # fmt: skip

    def result(self, timeout: float) -> RunResult:
        """Wait for the child (TimeoutError after ``timeout`` s, the child killed)."""
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(f"the {self.name} run took longer than {timeout:.0f} s") from None
        return RunResult(
            self._proc.returncode,
            self._out.read_text(errors="replace"),
            self._err.read_text(errors="replace"),
        )

    def stop(self) -> None:
        """Kill the child if it still runs."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
