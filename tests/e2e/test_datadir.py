"""Real `pouw node` processes: one node per datadir, and the README's two-node recipe works."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.rpc_client import RpcClient
from tests.e2e.framework import NodeProcess, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_a_second_node_on_a_datadir_exits_with_one_line_and_the_first_runs_on(
    tmp_path: Path,
) -> None:
    datadir = tmp_path / "a"
    first = NodeProcess(datadir, [], "a").start()
    try:
        assert first.proc is not None
        info = (datadir / "node.json").read_text()
        second = subprocess.run(
            [sys.executable, "-m", "node.cli", "node", "--datadir", str(datadir)],
            capture_output=True,
            timeout=60,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert second.returncode != 0
        assert second.stderr.decode().splitlines() == [
            f"Error: datadir {datadir} is in use by another node (pid {first.proc.pid})"
        ]
        assert first.proc.poll() is None
        assert (datadir / "node.json").read_text() == info
        assert first.call("getinfo")["node_id"] == json.loads(info)["node_id"]
    finally:
        assert first.stop() == 0


# ------------------------------------------------------ the README recipe


def readme_commands() -> list[str]:
    """The commands of README.md's "Running a node" block, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Running a node", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "README.md: no sh block under 'Running a node'"
    commands = []
    for line in block.group(1).replace("\\\n", " ").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line)
    return commands


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A working directory whose .venv/bin/pouw is this checkout, and a fresh HOME."""
    work, home = tmp_path / "work", tmp_path / "home"
    (work / ".venv" / "bin").mkdir(parents=True)
    home.mkdir()
    pouw = work / ".venv" / "bin" / "pouw"
    pouw.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m node.cli "$@"\n')
    pouw.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POUW_")}
    env.update(HOME=str(home), PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    procs: list[subprocess.Popen[bytes]] = []
    yield {"cwd": work, "home": home, "env": env, "procs": procs}
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start(shell: dict[str, Any], command: str, datadir: Path, name: str) -> RpcClient:
    """Run one README command as written (``exec``: the node is the shell's own pid)."""
    log = (shell["home"] / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + command],
        cwd=shell["cwd"],
        env=shell["env"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    shell["procs"].append(proc)

    def started() -> bool:
        if proc.poll() is not None:
            tail = (shell["home"] / f"{name}.log").read_text(errors="replace")[-3000:]
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{tail}")
        return json.loads((datadir / "node.json").read_text())["pid"] == proc.pid

    wait_until(started, 60, f"{name} to start")
    rpc = RpcClient.for_datadir(datadir)
    wait_until(lambda: rpc.call("getinfo"), 30, f"{name} RPC")
    return rpc


def datadir_of(command: str, home: Path) -> Path:
    """The --datadir a command names, "~" being ``home``."""
    args = shlex.split(command)
    assert "--datadir" in args, f"no --datadir in {command!r}"
    value = args[args.index("--datadir") + 1]
    return home / value[2:] if value.startswith("~/") else Path(value)


def test_the_readme_second_node_commands_connect_to_the_first(shell: dict[str, Any]) -> None:
    commands = readme_commands()
    nodes = [c for c in commands if c.startswith(".venv/bin/pouw node")]
    assert len(nodes) == 2, nodes
    first_cmd, second_cmd = nodes
    devnet = shell["home"] / ".pouwnet" / "devnet"

    first = start(shell, first_cmd, devnet, "first")
    getinfo = subprocess.run(
        ["bash", "-c", commands[commands.index(first_cmd) + 1]],
        cwd=shell["cwd"],
        env=shell["env"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    first_id = json.loads(getinfo.stdout)["node_id"]

    second_datadir = datadir_of(second_cmd, shell["home"])
    assert second_datadir != devnet, "the second node needs a datadir of its own"
    second = start(shell, second_cmd, second_datadir, "second")
    wait_until(
        lambda: [p for p in second.call("getpeers") if p["node_id"] == first_id],
        60,
        "the second node to connect to the first",
    )
    second_id = second.call("getinfo")["node_id"]
    assert second_id != first_id
    wait_until(
        lambda: [p for p in first.call("getpeers") if p["node_id"] == second_id],
        30,
        "the first node to see the second",
    )
