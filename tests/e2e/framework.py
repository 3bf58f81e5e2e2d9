"""Real `pouw node` processes on loopback, as Bitcoin Core's functional tests do.

Every wait is on an observable event (a file appears, an RPC answer changes)
with a timeout; nothing sleeps for a fixed time to "let things settle".
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.rpc_client import RpcCallError, RpcClient

POLL_S = 0.05


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError, RpcCallError) as e:  # not there yet
            last_error = e
        time.sleep(POLL_S)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )


class NodeProcess:
    def __init__(self, datadir: Path, args: list[str], name: str) -> None:
        self.datadir = datadir
        self.args = args
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.rpc: RpcClient | None = None
        self.p2p = ""

    def start(self, timeout: float = 60.0) -> NodeProcess:
        self.datadir.mkdir(parents=True, exist_ok=True)
        (self.datadir / "node.json").unlink(missing_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        log = (self.datadir / "stderr.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "--datadir", str(self.datadir), *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        info = wait_until(self._info, timeout, f"{self.name} to start")
        self.p2p = info["p2p"]
        self.rpc = RpcClient.for_datadir(self.datadir)
        wait_until(lambda: self.call("getinfo"), timeout, f"{self.name} RPC")
        return self

    def _info(self) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )
        path = self.datadir / "node.json"
        if not path.exists():
            return None
        info: dict[str, Any] = json.loads(path.read_text())
        return info if info.get("pid") == self.proc.pid else None

    def call(self, method: str, *params: Any) -> Any:
        assert self.rpc is not None
        return self.rpc.call(method, *params)

    def height(self) -> int:
        return int(self.call("getinfo")["height"])

    def tip(self) -> str:
        return str(self.call("getinfo")["tip"])

    def log_tail(self, lines: int = 40) -> str:
        path = self.datadir / "stderr.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop within {timeout}s") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def sync_tips(nodes: list[NodeProcess], timeout: float, min_height: int = 0) -> str:
    """Wait until every node has the same tip at ≥ min_height; returns the tip."""

    def same() -> str | None:
        infos = [n.call("getinfo") for n in nodes]
        tips = {i["tip"] for i in infos}
        if len(tips) == 1 and min(i["height"] for i in infos) >= min_height:
            return tips.pop()
        return None

    return str(wait_until(same, timeout, f"{len(nodes)} nodes to share a tip at >= {min_height}"))
