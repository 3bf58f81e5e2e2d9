"""Node configuration: CLI flags, a TOML file and POUW_* environment variables.

Precedence (highest first): command-line flag, environment variable
(``POUW_<FLAG>``, handled by click), config file, default.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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


DeviceSpec = Literal["all"] | tuple[int, ...]
"""``--devices`` as given: every visible GPU, or these indices (in the order named)."""


def parse_devices(spec: str | int | Sequence[int]) -> DeviceSpec:
    """``--devices`` (``all``, or GPU indices such as ``0,2``; a config file may also give
    an integer or a list of them) → ``"all"`` or the indices; ValueError naming the
    option otherwise. Which GPUs are visible is ``resolve_devices``'s business."""
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return "all"
    shown = _shown(spec)
    parts = spec.split(",") if isinstance(spec, str) else _as_list(spec)
    indices: list[int] = []
    for part in parts:
        text = str(part).strip()
        if not text.isdigit() or not text.isascii():
            raise ValueError(
                f"--devices {shown!r}: give 'all' or a comma-separated list of GPU indices "
                "(0 or more), such as 0,2"
            )
        index = int(text)
        if index in indices:
            raise ValueError(f"--devices {shown!r}: GPU {index} is named twice")
        indices.append(index)
    return tuple(indices)


def _as_list(spec: int | Sequence[int]) -> list[Any]:
    return [spec] if isinstance(spec, int) else list(spec)


def _shown(spec: str | int | Sequence[int]) -> str:
    """``--devices`` as the user gave it, for an error."""
    return spec if isinstance(spec, str) else ",".join(str(i) for i in _as_list(spec))


def resolve_devices(spec: str | int | Sequence[int], visible_count: int) -> tuple[int, ...]:
    """The GPUs ``--devices`` names, of the ``visible_count`` visible ones (indices as
    CUDA numbers them: those CUDA_VISIBLE_DEVICES leaves, from 0); ValueError naming the
    option if it is malformed, names a GPU twice or one that is not visible."""
    parsed = parse_devices(spec)
    shown = _shown(spec)
    if visible_count <= 0:
        raise ValueError(
            f"--devices {shown!r}: no CUDA GPU is visible (a driver, the 'cuda' extra, "
            "CUDA_VISIBLE_DEVICES)"
        )
    if parsed == "all":
        return tuple(range(visible_count))
    for index in parsed:
        if index >= visible_count:
            visible = (
                "1 GPU is visible (0)"
                if visible_count == 1
                else f"{visible_count} GPUs are visible (0-{visible_count - 1})"
            )
            raise ValueError(f"--devices {shown!r}: there is no GPU {index}: {visible}")
    return parsed


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
    devices: tuple[int, ...] | None = None
    """The GPUs to mine on, a mining thread each (``--devices``); None: one miner on the
    mining thread's current device, as without the option."""
    threads: int | None = None
    miner_nice: int = 10  # the mining thread's niceness: validation and relay come first
    max_outbound: int = 8
    max_inbound: int = 32
    log_level: str = "INFO"
    progress: bool = False  # draw a sync progress bar on stderr (a terminal)
    dishonest_results: bool = False  # tests only: commit a wrong C on posted jobs
    withhold_results: bool = False  # tests only: claim posted jobs but never serve C
    reveal_withheld: bool = False  # tests only: withheld C kept in memory to answer challenges


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
