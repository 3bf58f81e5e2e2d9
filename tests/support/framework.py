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

from node.client.rpc import RpcCallError, RpcClient

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


# ------------------------------------------------ the docs' shell commands, as written

REPO = Path(__file__).resolve().parents[2]


def doc_blocks(path: Path, lang: str) -> list[tuple[str, str]]:
    """(section heading, text) of every ```lang block of a markdown file, in order."""
    blocks: list[tuple[str, str]] = []
    heading, block, in_block = "", "", False
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith("```"):
            if in_block:
                blocks.append((heading, block))
                in_block = False
            elif line.strip() == "```" + lang:
                block, in_block = "", True
        elif in_block:
            block += line
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    return blocks


def doc_commands(path: Path) -> list[tuple[str, str]]:
    """(section heading, command) for every command in a markdown file's ```sh blocks:
    continuation lines joined, blank and comment-only lines dropped."""
    return [
        (heading, line.strip())
        for heading, block in doc_blocks(path, "sh")
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def parse_output(text: str) -> dict[str, Any]:
    """A command's output as a dict: one JSON object, or ``key: value`` lines."""
    text = text.strip()
    if text.startswith("{"):
        value: dict[str, Any] = json.loads(text)
        return value
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, sep, value_text = line.partition(": ")
        if sep:
            out[key.strip()] = value_text.strip()
    return out


class DocShell:
    """A working directory whose ``.venv/bin/pouw`` is this checkout and a fresh HOME,
    so that the README's commands run there exactly as a user types them."""

    def __init__(self, root: Path) -> None:
        self.cwd, self.home = root / "work", root / "home"
        (self.cwd / ".venv" / "bin").mkdir(parents=True)
        self.home.mkdir()
        pouw = self.cwd / ".venv" / "bin" / "pouw"
        pouw.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m node.cli "$@"\n')
        pouw.chmod(0o755)
        env = {k: v for k, v in os.environ.items() if not k.startswith("POUW_")}
        env.update(HOME=str(self.home), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []

    def path(self, text: str) -> Path:
        """A path as the shell would read it: ``~`` is HOME, relative is under the cwd."""
        if text.startswith("~/"):
            return self.home / text[2:]
        return self.cwd / text

    def run(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one command line in bash; AssertionError with its output if it fails."""
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"{command!r} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def start_node(self, command: str, datadir: Path, name: str) -> RpcClient:
        """Start a `pouw node` command line (``exec``: the node is the shell's own pid) and
        wait until its RPC answers."""
        log_path = self.home / f"{name}.log"
        proc = subprocess.Popen(
            ["bash", "-c", "exec " + command],
            cwd=self.cwd,
            env=self.env,
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)

        def started() -> bool:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{tail}")
            return json.loads((datadir / "node.json").read_text())["pid"] == proc.pid

        wait_until(started, 60, f"{name} to start")
        rpc = RpcClient.for_datadir(datadir)
        wait_until(lambda: rpc.call("getinfo"), 30, f"{name} RPC")
        return rpc

    def close(self) -> None:
        """SIGTERM every process it started; SIGKILL those still running after 30 s."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
