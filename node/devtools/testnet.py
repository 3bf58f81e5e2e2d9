"""`pouw testnet`: N real `pouw node` processes on loopback, wired by a topology.

Each node gets its own datadir (``<root>/node-<i>``) with its log, a free
P2P and RPC port, and a prefunded devnet miner key. The launcher waits for
events (node.json written, peers connected), never for fixed times, and
always stops what it started: SIGTERM first, SIGKILL if a node hangs.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consensus.keys import PrivateKey, address_to_text
from node.client.rpc import RpcClient
from node.config import parse_hostport
from node.explorer import explorer_url

if TYPE_CHECKING:
    from node.devtools.netns import NetnsLab

TOPOLOGIES = ("full", "ring", "random")
TIE_WAIT_S = 1.0
"""settle(): how long equal-work tips may disagree before one more block is mined."""


def peers_for(i: int, n: int, topology: str, rng: random.Random) -> list[int]:
    """Which earlier-started nodes node ``i`` dials (connections are two-way)."""
    if topology == "full":
        return list(range(i))
    if topology == "ring":
        out = [i - 1] if i > 0 else []
        if i == n - 1 and n > 2:
            out.append(0)
        return out
    if topology == "random":
        return sorted(rng.sample(range(i), min(2, i)))
    raise ValueError(f"unknown topology {topology!r}; choose one of {', '.join(TOPOLOGIES)}")


LOAD_KERNELS_TIMEOUT_S = 900.0
"""How long the kernels may take to compile (a fresh machine with two slow cores)."""


def load_kernels() -> None:
    """Compile, or load from Numba's on-disk cache, what a devnet node runs first: the
    verifier's and the row hashing's kernels (``kernels.attempt.warm_up``) and a miner's
    losing attempt on the devnet null job."""
    from consensus.params import DEVNET
    from consensus.pow import mining_params, null_job
    from kernels.attempt import mining_attempt, warm_up

    warm_up()
    job = null_job(bytes(32), DEVNET)
    mining_attempt(
        job.a, job.b, bytes(32), bytes(32), 1, mining_params(DEVNET), ticket_key=bytes(32),
        bt=job.bt,
    )  # fmt: skip


MINER_LABEL = "testnet-miner-"


def miner_key(i: int) -> PrivateKey:
    return PrivateKey.from_label(f"{MINER_LABEL}{i}")


@dataclass
class TestnetNode:
    index: int
    datadir: Path
    proc: subprocess.Popen[bytes] | None = None
    p2p: str = ""
    rpc_addr: str = ""
    rpc: RpcClient | None = None
    started_at: float = field(default_factory=time.time)
    crashed: bool = False

    @property
    def name(self) -> str:
        return f"node-{self.index}"

    @property
    def explorer(self) -> str:
        """The block explorer this node serves on its RPC listener."""
        return explorer_url(*parse_hostport(self.rpc_addr, "rpc")) if self.rpc_addr else ""

    def call(self, method: str, *params: Any) -> Any:
        assert self.rpc is not None
        return self.rpc.call(method, *params)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Testnet:
    def __init__(
        self,
        root: Path,
        nodes: int,
        topology: str = "full",
        block_time_ms: int | None = None,
        mine: bool = True,
        seed: int = 1,
        extra_args: list[str] | None = None,
        netns: NetnsLab | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("--nodes must be at least 1")
        if topology not in TOPOLOGIES:
            raise ValueError(
                f"unknown topology {topology!r}; choose one of {', '.join(TOPOLOGIES)}"
            )
        self.root = root
        self.count = nodes
        self.topology = topology
        self.block_time_ms = block_time_ms
        self.mine = mine
        self.rng = random.Random(seed)
        self.extra_args = extra_args or []
        self.nodes: list[TestnetNode] = []
        self.started_at = time.time()
        self.netns = netns  # each node in its own network namespace (node/devtools/netns.py)

    # ------------------------------------------------------------ lifecycle

    def start(
        self, timeout: float = 120.0, on_progress: Callable[[str], None] | None = None
    ) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.mine:
            self._load_kernels(on_progress)
        try:
            if self.netns is not None:
                self.netns.setup(self.root)
            for i in range(self.count):
                node = TestnetNode(i, self.root / f"node-{i}")
                dial = [
                    self.nodes[j].p2p for j in peers_for(i, self.count, self.topology, self.rng)
                ]
                self._spawn(node, dial)
                self.nodes.append(node)
                self._wait_started(node, timeout)
                if on_progress:
                    on_progress(
                        f"{node.name} up: p2p {node.p2p}, rpc {node.rpc_addr}, "
                        f"explorer {node.explorer}"
                    )
            self._wait_connected(timeout)
        except BaseException:
            self.stop()
            raise

    def _load_kernels(self, on_progress: Callable[[str], None] | None) -> None:
        """Fill Numba's cache before any node starts. On a fresh machine every node would
        otherwise compile the same kernels at once (minutes on two cores), and while a
        node compiles, its calls into Numba on the event loop wait: RPC and peers stall
        for tens of seconds. Where the cache is filled this takes a second or two."""
        if on_progress:
            on_progress("loading the mining kernels (a machine's first run compiles them: 1-2 min)")
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", "from node.devtools.testnet import load_kernels as f; f()"],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=LOAD_KERNELS_TIMEOUT_S,
        )
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"loading the mining kernels failed:\n{tail}")
        if on_progress:
            on_progress(f"kernels ready in {time.monotonic() - started:.1f}s")

    def _spawn(self, node: TestnetNode, dial: list[str]) -> None:
        node.datadir.mkdir(parents=True, exist_ok=True)
        (node.datadir / "node.json").unlink(missing_ok=True)
        # In a namespace, P2P listens on the node's own veth address; RPC stays on
        # the namespace's loopback either way.
        host = self.netns.address(node.index) if self.netns is not None else "127.0.0.1"
        # The node holds its miner key, so it can claim the results of losing attempts.
        key_file = node.datadir / "miner.key"
        key_file.write_text(f"label:{MINER_LABEL}{node.index}\n")
        args = [
            sys.executable,
            "-m",
            "node.cli",
            "node",
            "--datadir",
            str(node.datadir),
            "--listen",
            f"{host}:0",
            "--rpc",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--miner-key",
            str(key_file),
        ]
        args.append("--mine" if self.mine else "--no-mine")
        args.append("--connect-only")  # address exchange must not add links to the topology
        if self.block_time_ms is not None:
            args += ["--devnet-block-time-ms", str(self.block_time_ms)]
        for p in dial:
            args += ["--peer", p]
        args += self.extra_args
        if self.netns is not None:
            args = self.netns.wrap(node.index, args)
        log = (node.datadir / "stdout.log").open("ab")
        node.proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            stdin=subprocess.DEVNULL,
            # A process group of its own: Ctrl-C reaches the launcher, which stops nodes in
            # order. Not a session of its own: Linux's autogroup scheduler shares the CPU
            # equally between sessions first, so each node's miner (niced) would yield the
            # CPU only to its own node and take it from the others' and the launcher's.
            process_group=0,
            preexec_fn=_die_with_launcher,
        )
        node.started_at = time.time()

    def _wait_started(self, node: TestnetNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        path = node.datadir / "node.json"
        while time.monotonic() < deadline:
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise RuntimeError(
                    f"{node.name} exited with code {node.proc.returncode}; "
                    f"see {node.datadir / 'stdout.log'}"
                )
            if path.exists():
                info = json.loads(path.read_text())
                if info.get("pid") == node.proc.pid:
                    node.p2p, node.rpc_addr = info["p2p"], info["rpc"]
                    node.rpc = RpcClient.for_datadir(node.datadir)
                    if self.netns is not None:
                        from node.devtools.netns import NamespacedRpc

                        node.rpc = NamespacedRpc(self.netns, node.index, node.rpc)  # type: ignore[assignment]
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{node.name} did not start within {timeout:.0f}s")

    def _wait_connected(self, timeout: float) -> None:
        """Every node has at least one peer (all of them, for one node: none)."""
        if self.count < 2:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len(n.call("getpeers")) >= 1 for n in self.nodes):
                return
            time.sleep(0.1)
        raise RuntimeError("nodes did not connect to each other in time")

    def stop(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            if node.alive():
                assert node.proc is not None
                node.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
                node.crashed = True
        if self.netns is not None:
            self.netns.teardown()

    def settle(self, timeout: float = 15.0) -> bool:
        """Stop every miner and wait until the live nodes share one tip; whether they do.

        A snapshot taken while blocks still arrive every few hundred ms often
        catches a node one block behind: the summary should show where the
        network converges, not a race.
        """
        live = [n for n in self.nodes if n.alive()]
        try:
            for n in live:
                n.call("setmining", False)
            deadline = time.monotonic() + timeout
            tie_since = time.monotonic()
            while time.monotonic() < deadline:
                infos = [n.call("getinfo") for n in live]
                if len({i["tip"] for i in infos}) <= 1:
                    return True
                if len({i["work"] for i in infos}) > 1:
                    tie_since = time.monotonic()  # a node is still catching up
                elif time.monotonic() - tie_since > TIE_WAIT_S:
                    # Two tips with equal work never resolve on their own (each node
                    # keeps the one it saw first): one more block breaks the tie.
                    self._mine_one_block(live[0], deadline)
                    tie_since = time.monotonic()
                time.sleep(0.1)
        except OSError:
            pass
        return False

    @staticmethod
    def _mine_one_block(node: TestnetNode, deadline: float) -> None:
        height = node.call("getinfo")["height"]
        node.call("setmining", True)
        try:
            while time.monotonic() < deadline and node.call("getinfo")["height"] <= height:
                time.sleep(0.05)
        finally:
            node.call("setmining", False)

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc is not None]

    # ------------------------------------------------------------ status

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for node in self.nodes:
            row: dict[str, Any] = {
                "node": node.name,
                "alive": node.alive(),
                "explorer": node.explorer,
            }
            if not node.alive():
                node.crashed = True
                rows.append(row)
                continue
            try:
                info = node.call("getinfo")
                mining = node.call("getmininginfo")
                tip = node.call("getblockbyheight", info["height"], False)
            except OSError as e:
                row["error"] = str(e)
                rows.append(row)
                continue
            row.update(
                height=info["height"],
                tip=info["tip"],
                peers=info["peers"],
                mempool=info["mempool"],
                hashrate=mining["hashrate_macs"],
                blocks_found=mining["blocks_found"],
                last_block_age_s=round(time.time() - tip["timestamp_ms"] / 1000, 1),
            )
            rows.append(row)
        return rows

    def summary(self) -> dict[str, Any]:
        rows = self.status()
        live = [r for r in rows if "height" in r]
        tips = {r["tip"] for r in live}
        mined_in_chain: dict[str, int] = {}
        if live:
            ref = next(n for n in self.nodes if n.alive())
            height = ref.call("getinfo")["height"]
            for h in range(1, height + 1):
                miner = ref.call("getblockbyheight", h, False)["miner"]
                mined_in_chain[miner] = mined_in_chain.get(miner, 0) + 1
        per_node = []
        stale = 0
        for node, row in zip(self.nodes, rows, strict=True):
            addr = address_to_text(miner_key(node.index).address)
            in_chain = mined_in_chain.get(addr, 0)
            found = int(row.get("blocks_found", in_chain))
            stale += max(0, found - in_chain)
            per_node.append(
                {
                    **row,
                    "blocks_in_chain": in_chain,
                    "uptime_s": round(time.time() - node.started_at, 1),
                }
            )
        mined = sum(int(r.get("blocks_found", 0)) for r in rows)
        return {
            "nodes": self.count,
            "topology": self.topology,
            "heights": [r.get("height") for r in rows],
            "one_tip": len(tips) == 1 and len(live) == len(rows),
            "tip": tips.pop() if len(tips) == 1 else None,
            "blocks_mined": mined,
            "stale_blocks": stale,
            "stale_rate": stale / mined if mined else 0.0,
            "uptime_s": round(time.time() - self.started_at, 1),
            "crashed": [n.name for n in self.nodes if n.crashed],
            "per_node": per_node,
            "datadir": str(self.root),
        }


PR_SET_PDEATHSIG = 1


def _die_with_launcher() -> None:
    """In the node's process, before it runs: on Linux, SIGTERM it when the launcher
    dies. A launcher that is killed (SIGKILL, a test's timeout) cannot stop its
    nodes in order, and they must not go on mining behind it."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
