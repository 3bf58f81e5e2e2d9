"""A Ctrl-C that lands in a finalizer is not lost: `pouw job submit --wait 60` once went
on waiting after Ctrl-C because Python raised the KeyboardInterrupt inside a thread
pool's weakref callback, where it was printed as "Exception ignored" and dropped."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.framework import REPO

SCRIPT = """
import os, signal, sys, time, weakref
if sys.argv[1] == "kept":
    from node.cli.main import keep_interrupts
    keep_interrupts()
class Pool: pass
def cleanup(_):  # a finalizer that Ctrl-C interrupts
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)
pool = Pool(); ref = weakref.ref(pool, cleanup); del pool
time.sleep(3)
print("still waiting after Ctrl-C")
"""


@pytest.mark.parametrize("mode", ["python", "kept"])
def test_a_ctrl_c_raised_in_a_finalizer_still_interrupts_the_command(mode):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    if mode == "python":  # what Python does on its own: the interrupt is dropped
        assert done.returncode == 0 and "still waiting after Ctrl-C" in done.stdout
        assert "Exception ignored" in done.stderr
    else:
        assert done.returncode != 0 and "still waiting" not in done.stdout
        assert done.stderr.rstrip().endswith("KeyboardInterrupt")
