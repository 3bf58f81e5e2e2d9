"""Network faults for local testnets: one Linux network namespace per node.

Layout (``tag`` is unique per testnet, e.g. ``pw12345``)::

    ns <tag>-br   bridge br0 (and br1, br2 … while partitioned), no addresses
      ├─ veth <tag>b0  ⇄  eth0 in ns <tag>-n0   10.77.0.1/24, lo
      ├─ veth <tag>b1  ⇄  eth0 in ns <tag>-n1   10.77.0.2/24, lo
      └─ …

Every address lives inside the namespaces this module creates, so nothing in
the host's own network (routes, addresses, firewall) is touched, and two labs
never collide. A node listens for P2P on its ``eth0`` address and for RPC on
its namespace's loopback; the controller reaches that RPC from a thread that
has entered the node's namespace (``setns``), never through a host address.

Faults:
- ``shape``: tc netem delay/jitter/loss on each node's ``eth0`` egress, so a
  packet between two nodes crosses netem once per direction (RTT = 2·delay).
- ``partition``: the bridge-side veths of each group move to a bridge of their
  own: a clean L2 split, packets between groups vanish as on a cut cable.
  ``heal`` moves them all back to ``br0``; TCP connections that survived the
  split resume, and the nodes redial the ones that timed out.

The lab's description is written to ``<root>/netns.json`` so that another
process (``pouw testnet partition ROOT …``) can apply faults to a running
testnet. ``teardown`` deletes the namespaces, which removes every veth,
bridge and qdisc with them.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

SUBNET = "10.77.0"
"""/24 prefix of the node addresses; they exist only inside the lab's namespaces."""
STATE_FILE = "netns.json"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be used here (not root, no iproute2, no kernel support)."""


def check_available() -> None:
    """Raise NetnsUnavailable with a one-line reason unless ``ip netns`` works here."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("--netns needs root (network namespaces, veth, tc netem)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise NetnsUnavailable(f"--netns needs iproute2 ('{tool}' not found on PATH)")
    probe = f"pwprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except NetnsUnavailable as e:
        raise NetnsUnavailable(f"--netns: 'ip netns add' fails here: {e}") from None
    _ip("netns", "del", probe, check=False)


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        raise NetnsUnavailable(f"{' '.join(argv)}: {msg[-1] if msg else proc.returncode}")
    return proc


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(["ip", *args], check)


def parse_groups(text: str, count: int) -> list[list[int]]:
    """``"0,1/2,3"`` → [[0, 1], [2, 3]]; every index in range and in one group only."""
    groups: list[list[int]] = []
    seen: set[int] = set()
    for part in text.split("/"):
        try:
            group = [int(x) for x in part.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"groups: {part!r} is not a list of node indexes like 0,1") from None
        for i in group:
            if not 0 <= i < count:
                raise ValueError(f"groups: node {i} is not in 0..{count - 1}")
            if i in seen:
                raise ValueError(f"groups: node {i} is in two groups")
            seen.add(i)
        if group:
            groups.append(group)
    if len(groups) < 2:
        raise ValueError("groups: a partition needs at least two groups, e.g. 0,1/2,3")
    return groups


@dataclass
class NetnsLab:
    """The namespaces, veths and bridges of one testnet; ``setup`` … ``teardown``."""

    count: int
    tag: str = field(default_factory=lambda: f"pw{os.getpid() % 100_000}")
    created: bool = False
    _executors: dict[int, ThreadPoolExecutor] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------ names

    @property
    def bridge_ns(self) -> str:
        return f"{self.tag}-br"

    def node_ns(self, i: int) -> str:
        return f"{self.tag}-n{i}"

    def _veth(self, i: int) -> str:
        return f"{self.tag}b{i}"  # ≤ 15 characters: the kernel's interface name limit

    def address(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def wrap(self, i: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside node ``i``'s namespace (``ip netns exec`` execs: same pid)."""
        return ["ip", "netns", "exec", self.node_ns(i), *argv]

    # ------------------------------------------------------------ lifecycle

    def setup(self, root: Path | None = None) -> None:
        check_available()
        self.created = True
        try:
            _ip("netns", "add", self.bridge_ns)
            _ip("-n", self.bridge_ns, "link", "set", "lo", "up")
            self._bridge(0)
            for i in range(self.count):
                ns = self.node_ns(i)
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip(
                    "link", "add", self._veth(i), "netns", self.bridge_ns,
                    "type", "veth", "peer", "name", "eth0", "netns", ns,
                )  # fmt: skip
                _ip("-n", self.bridge_ns, "link", "set", self._veth(i), "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
            if root is not None:
                (root / STATE_FILE).write_text(json.dumps({"tag": self.tag, "count": self.count}))
        except BaseException:
            self.teardown()
            raise

    def _bridge(self, g: int) -> str:
        name = f"br{g}"
        if _ip("-n", self.bridge_ns, "link", "show", name, check=False).returncode != 0:
            _ip("-n", self.bridge_ns, "link", "add", name, "type", "bridge")
            _ip("-n", self.bridge_ns, "link", "set", name, "up")
        return name

    def teardown(self) -> None:
        """Delete every namespace of the lab (idempotent); veths and qdiscs go with them."""
        for ex in self._executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()
        for ns in [self.node_ns(i) for i in range(self.count)] + [self.bridge_ns]:
            _ip("netns", "del", ns, check=False)
        self.created = False

    @classmethod
    def load(cls, root: Path) -> NetnsLab:
        """The lab of a running testnet, from the state its launcher wrote."""
        path = root / STATE_FILE
        try:
            info = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{root} has no {STATE_FILE}: was it started with --netns?") from None
        return cls(count=int(info["count"]), tag=str(info["tag"]), created=True)

    # ------------------------------------------------------------ faults

    def shape(self, delay_ms: float = 0, jitter_ms: float = 0, loss_pct: float = 0) -> None:
        """netem on every node's egress (replaces any earlier shaping)."""
        for i in range(self.count):
            args = ["tc", "-n", self.node_ns(i), "qdisc", "replace", "dev", "eth0", "root"]
            args += ["netem", "limit", "100000"]
            if delay_ms or jitter_ms:
                args += ["delay", f"{delay_ms}ms"]
                if jitter_ms:
                    args += [f"{jitter_ms}ms", "distribution", "normal"]
            if loss_pct:
                args += ["loss", f"{loss_pct}%"]
            try:
                _run(args)
            except NetnsUnavailable as e:
                if "unknown" in str(e).lower():
                    raise NetnsUnavailable(
                        "--delay/--jitter/--loss need tc netem, which this kernel lacks "
                        "(no sch_netem qdisc)"
                    ) from None
                raise

    def partition(self, groups: list[list[int]]) -> None:
        """Each group on a bridge of its own; nodes in no group are isolated alone."""
        listed = {i for g in groups for i in g}
        groups = groups + [[i] for i in range(self.count) if i not in listed]
        for g, members in enumerate(groups):
            bridge = self._bridge(g)
            for i in members:
                _ip("-n", self.bridge_ns, "link", "set", self._veth(i), "master", bridge)

    def heal(self) -> None:
        for i in range(self.count):
            _ip("-n", self.bridge_ns, "link", "set", self._veth(i), "master", "br0")

    # ------------------------------------------------------------ reaching a node

    def run_in(self, i: int, fn: Callable[[], T]) -> T:
        """Call ``fn`` on a thread that lives in node ``i``'s namespace (its sockets do too)."""
        ex = self._executors.get(i)
        if ex is None:
            ex = ThreadPoolExecutor(
                1,
                thread_name_prefix=f"netns-{i}",
                initializer=enter_netns,
                initargs=(self.node_ns(i),),
            )
            self._executors[i] = ex
        return ex.submit(fn).result()


def enter_netns(name: str) -> None:
    """Move the calling thread (only it) into network namespace ``name``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NamespacedRpc:
    """An RpcClient whose calls are made from inside a node's namespace."""

    def __init__(self, lab: NetnsLab, index: int, inner: Any) -> None:
        self.lab = lab
        self.index = index
        self.inner = inner
        self.url = inner.url
        self.token = inner.token

    def call(self, method: str, *params: Any) -> Any:
        return self.lab.run_in(self.index, lambda: self.inner.call(method, *params))
