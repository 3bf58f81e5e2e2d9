"""Node configuration: CLI flags, a TOML file and POUW_* environment variables.

Precedence (highest first): command-line flag, environment variable
(``POUW_<FLAG>``, handled by click), config file, default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.keys import PrivateKey
from consensus.params import NetworkParams


def parse_hostport(text: str, what: str = "address") -> tuple[str, int]:
    """'host:port' → (host, port); ValueError with a readable reason otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{what} {text!r} is not host:port")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{what} {text!r} has a non-numeric port") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{what} {text!r} has a port outside 0..65535")
    return host.strip("[]"), port


def default_datadir(net: str) -> Path:
    return Path.home() / ".pouwnet" / net


@dataclass
class NodeConfig:
    params: NetworkParams
    datadir: Path
    listen: tuple[str, int] = ("127.0.0.1", 0)
    rpc: tuple[str, int] = ("127.0.0.1", 0)
    rpc_allow_hosts: tuple[str, ...] = ()  # more Host names the RPC answers (a proxy's, a LAN name)
    peers: list[tuple[str, int]] = field(default_factory=list)
    connect_only: bool = False  # dial only `peers`, never addresses learned from them
    mine: bool = False
    miner_address: bytes | None = None
    miner_key: PrivateKey | None = None  # receives block rewards and signs job_result claims
    backend: str = "cpu"
    threads: int | None = None
    miner_nice: int = 10  # the mining thread's niceness: validation and relay come first
    max_outbound: int = 8
    max_inbound: int = 32
    log_level: str = "INFO"
    progress: bool = False  # draw a sync progress bar on stderr (a terminal)
    dishonest_results: bool = False  # tests only: commit a wrong C on posted jobs
    withhold_results: bool = False  # tests only: claim posted jobs but never serve C


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML config file; keys are the long flag names with '_' for '-'."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config file {path} is not valid TOML: {e}") from None
    node = data.get("node", data)
    if not isinstance(node, dict):
        raise ValueError(f"config file {path}: [node] must be a table")
    return {str(k).replace("-", "_"): v for k, v in node.items()}
