"""Real `pouw node` processes: one node per datadir, and the README's two-node recipe works."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.framework import REPO, DocShell, NodeProcess, doc_commands, wait_until

pytestmark = pytest.mark.slow


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


def datadir_of(command: str, shell: DocShell) -> Path:
    """The --datadir a command names."""
    args = shlex.split(command)
    assert "--datadir" in args, f"no --datadir in {command!r}"
    return shell.path(args[args.index("--datadir") + 1])


def test_the_readme_second_node_commands_connect_to_the_first(shell: DocShell) -> None:
    commands = [c for h, c in doc_commands(REPO / "README.md") if h == "Running a node"]
    nodes = [c for c in commands if c.startswith(".venv/bin/pouw node")]
    assert len(nodes) == 2, nodes
    first_cmd, second_cmd = nodes
    devnet = shell.home / ".pouwnet" / "devnet"

    first = shell.start_node(first_cmd, devnet, "first")
    getinfo = shell.run(commands[commands.index(first_cmd) + 1], timeout=60)
    first_id = json.loads(getinfo.stdout)["node_id"]

    second_datadir = datadir_of(second_cmd, shell)
    assert second_datadir != devnet, "the second node needs a datadir of its own"
    second = shell.start_node(second_cmd, second_datadir, "second")
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
