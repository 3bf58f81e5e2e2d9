"""`pouw testnet` as a user runs it: a real 4-node devnet that mines, converges
and leaves nothing running behind it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.framework import wait_until

pytestmark = pytest.mark.slow


def _pouw(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _running(pid: int) -> bool:
    """A live (not zombie) process with this pid, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _node_pids(root: Path, count: int) -> list[int] | None:
    """The pids of a testnet's nodes under ``root`` once each has written its node.json."""
    infos = [root / f"node-{i}" / "node.json" for i in range(count)]
    if not all(p.exists() for p in infos):
        return None
    return [int(json.loads(p.read_text())["pid"]) for p in infos]


def test_four_node_testnet_mines_converges_and_stops_every_node(tmp_path: Path) -> None:
    root = tmp_path / "net"
    run = _pouw(
        "testnet", "--nodes", "4", "--duration", "6", "--block-time", "0.5",
        "--datadir", str(root), "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["nodes"] == 4 and len(summary["pids"]) == 4
    assert summary["one_tip"], summary["heights"]
    assert min(summary["heights"]) > 0
    assert summary["crashed"] == []
    assert not [pid for pid in summary["pids"] if _running(pid)]
    for i in range(4):
        assert not (root / f"node-{i}" / "node.json").exists()  # each node shut down cleanly


def test_a_mining_testnet_loads_the_kernels_once_before_any_node_starts(tmp_path: Path) -> None:
    """On a fresh machine four nodes compiling the same kernels at once took minutes, and
    a node compiling stalls its RPC: the launcher fills Numba's cache first, once."""
    run = _pouw("testnet", "--nodes", "2", "--duration", "1", "--datadir", str(tmp_path / "t"))
    assert run.returncode == 0, run.stderr
    log = run.stderr
    loading, ready = log.find("loading the mining kernels"), log.find("kernels ready in")
    assert 0 <= loading < ready < log.find("node-0 up"), log
    assert log.count("loading the mining kernels") == 1
    idle = _pouw("testnet", "--nodes", "1", "--duration", "1", "--no-mine")
    assert idle.returncode == 0 and "node-0 up" in idle.stderr, idle.stderr
    assert "mining kernels" not in idle.stderr  # nodes that do not mine need none


def test_zero_nodes_is_a_one_line_usage_error() -> None:
    run = _pouw("testnet", "--nodes", "0", "--json", timeout=60)
    assert run.returncode == 2
    assert run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1
    assert "--nodes" in run.stderr


def test_netns_without_root_or_iproute2_is_a_one_line_error() -> None:
    if os.geteuid() == 0 and os.path.exists("/usr/sbin/ip"):
        pytest.skip("root with iproute2 here: --netns works (tests/node/test_netns.py covers it)")
    run = _pouw("testnet", "--nodes", "2", "--netns", "--json", timeout=60)
    assert run.returncode == 1
    assert len(run.stderr.strip().splitlines()) == 1
    assert "--netns" in run.stderr


def test_the_live_table_links_each_nodes_explorer(tmp_path: Path) -> None:
    from rich.console import Console

    from node.cli.testnet import _table
    from node.devtools.testnet import TestnetNode

    node = TestnetNode(0, tmp_path, rpc_addr="127.0.0.1:18444")
    assert node.explorer == "http://127.0.0.1:18444/"
    assert TestnetNode(1, tmp_path, rpc_addr="0.0.0.0:18445").explorer == "http://127.0.0.1:18445/"
    row = {
        "node": node.name, "alive": True, "explorer": node.explorer, "height": 3,
        "tip": "ab" * 32, "peers": 1, "mempool": 0, "hashrate": 1e9, "blocks_found": 1,
        "last_block_age_s": 0.5,
    }  # fmt: skip
    console = Console(record=True, width=200)
    console.print(_table([row, {"node": "node-1", "alive": False, "explorer": ""}], 1.0))
    text = console.export_text()
    assert "http://127.0.0.1:18444/" in text
    assert "explorer" in text


POUW = [sys.executable, "-m", "node.cli"]


def test_a_killed_launcher_leaves_no_node_running(tmp_path: Path) -> None:
    """SIGKILL gives `pouw testnet` no chance to stop its nodes: they stop themselves."""
    root = tmp_path / "net"
    launcher = subprocess.Popen(
        [*POUW, "testnet", "--nodes", "2", "--duration", "120", "--datadir", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pids = wait_until(lambda: _node_pids(root, 2), 120, "both nodes to start")
        assert all(_running(pid) for pid in pids)
        launcher.kill()
        launcher.wait(timeout=30)
        wait_until(lambda: not any(_running(pid) for pid in pids), 60, "the nodes to stop")
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=30)


def test_ctrl_c_stops_the_nodes_in_order_and_they_share_the_launchers_session(
    tmp_path: Path,
) -> None:
    """A terminal's Ctrl-C (SIGINT to the launcher's process group) reaches the launcher
    alone, which stops every node cleanly. The nodes are in the launcher's session: Linux's
    autogroup scheduler shares the CPU between sessions first, so a node in a session of
    its own would take an equal share whatever its miner's niceness."""
    root = tmp_path / "net"
    launcher = subprocess.Popen(
        [*POUW, "testnet", "--nodes", "2", "--duration", "120", "--datadir", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # as a terminal's foreground job: its own group to signal
    )
    try:
        pids = wait_until(lambda: _node_pids(root, 2), 120, "both nodes to start")
        for pid in pids:
            assert os.getsid(pid) == os.getsid(launcher.pid)
            assert os.getpgid(pid) != os.getpgid(launcher.pid)
        os.killpg(launcher.pid, signal.SIGINT)
        launcher.wait(timeout=60)
        assert not any(_running(pid) for pid in pids)
        for i in range(2):  # each node shut down cleanly, not killed
            assert not (root / f"node-{i}" / "node.json").exists()
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=30)
