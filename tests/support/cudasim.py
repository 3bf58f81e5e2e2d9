"""Run a script under numba's CUDA simulator, in a child process.

``NUMBA_ENABLE_CUDASIM`` must be set before ``numba.cuda`` is first imported, and a
test process has imported the real target already. The script gets the inputs' and
the outputs' ``.npz`` paths as ``sys.argv[1:3]`` and saves its results to the second.

A long run can be declared with :func:`in_background`: tests/conftest.py starts it
when the suite is collected, if a test selected uses the fixture that reads it, in the
background as the older targets' runs are (tests/support/background.py). The
simulator is one Python thread: on two cores it takes the core the rest of the suite
leaves idle, instead of ~40 s of the suite's own time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.support.background import BackgroundChild

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _command(script: str, tmp: Path) -> list[str]:
    return [sys.executable, "-c", script, str(tmp / "in.npz"), str(tmp / "out.npz")]


def _outputs(inp: dict[str, np.ndarray], tmp: Path) -> dict[str, np.ndarray]:
    with np.load(tmp / "out.npz") as out:
        return {**inp, **dict(out)}


def run_simulated(
    script: str, inp: dict[str, np.ndarray], tmp: Path, timeout: float
) -> tuple[dict[str, np.ndarray], float]:
    """(the inputs and what ``script`` saved, merged; the child's seconds) for ``inp``."""
    np.savez(tmp / "in.npz", **inp)  # type: ignore[arg-type]
    start = time.perf_counter()
    proc = subprocess.run(
        _command(script, tmp), cwd=REPO, env=_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-4000:]
    return _outputs(inp, tmp), elapsed


class BackgroundRun:
    """One simulator run of ``script`` on ``inputs()``, started ahead of its tests
    (:class:`tests.support.background.BackgroundChild`)."""

    def __init__(
        self, fixture: str, script: str, inputs: Callable[[], dict[str, np.ndarray]], timeout: float
    ) -> None:
        self.fixture = fixture
        self._script, self._inputs, self._timeout = script, inputs, timeout
        self._inp: dict[str, np.ndarray] | None = None
        self._child: BackgroundChild | None = None
        self._dir: Path | None = None

    def start(self, idle: bool = True) -> None:
        """Start the child (at the lowest priority if ``idle``); a second call does nothing."""
        if self._child is not None:
            return
        self._dir = Path(tempfile.mkdtemp(prefix="pouw-cudasim-"))
        self._inp = self._inputs()
        np.savez(self._dir / "in.npz", **self._inp)  # type: ignore[arg-type]
        # A Numba cache of its own: this child compiles CPU kernels too (the attempt's
        # noise and recovery), as the suite does on a fresh clone.
        env = _env() | {"NUMBA_CACHE_DIR": str(self._dir / "numba")}
        argv = _command(self._script, self._dir)
        self._child = BackgroundChild(self.fixture, argv, REPO, env, self._dir / "child", idle)

    def result(self) -> dict[str, np.ndarray]:
        """The inputs and what the script saved, merged: started now if it was not. The
        child then has ``timeout`` seconds more (it may have waited for an idle core)."""
        self.start(idle=False)
        assert self._child is not None and self._dir is not None and self._inp is not None
        run = self._child.result(self._timeout)
        assert run.returncode == 0, run.stderr[-4000:]
        return _outputs(self._inp, self._dir)

    def stop(self) -> None:
        """Kill the child if it still runs, and remove its files."""
        if self._child is not None:
            self._child.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


BACKGROUND: list[BackgroundRun] = []
"""Every run declared by the modules collected so far."""


def in_background(
    fixture: str, script: str, inputs: Callable[[], dict[str, np.ndarray]], timeout: float
) -> BackgroundRun:
    """Declare the run the fixture named ``fixture`` reads: started with the suite where
    a test selected uses that fixture (tests/conftest.py), else by its first reader."""
    run = BackgroundRun(fixture, script, inputs, timeout)
    BACKGROUND.append(run)
    return run


def start_background(fixtures: set[str]) -> None:
    """Start the declared runs that the fixtures named read."""
    for run in BACKGROUND:
        if run.fixture in fixtures:
            run.start()


def stop_background() -> None:
    for run in BACKGROUND:
        run.stop()
