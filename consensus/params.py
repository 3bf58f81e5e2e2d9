"""Network parameters: devnet, testnet and main (PROTOCOL §7, §8, §11).

Each network has its own chain_id (signed into every transaction, so a
transaction cannot be replayed on another network) and its own genesis.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from consensus.difficulty import target_for_work

COIN_DECIMALS = 8
"""Amounts are shown and typed in coins with this many decimals."""
COIN = 10**COIN_DECIMALS
"""Base units per coin."""


@dataclass(frozen=True)
class NetworkParams:
    name: str
    chain_id: int
    block_time_ms: int
    asert_half_life_ms: int
    genesis_target: int
    genesis_timestamp_ms: int
    # mining parameters (consensus): noise rank and hash tile
    rank: int
    tile_h: int
    tile_w: int
    # the job every idle miner falls back to, and the bounds on any job
    null_job_shape: tuple[int, int, int]
    min_job_shape: tuple[int, int, int]
    """Each of a job's m, k, n is at least this (PROTOCOL §8): below it a miner's
    per-attempt overhead and thin-matrix kernels run it far slower than the null job."""
    max_job_dim: int
    max_job_k: int
    # economics
    block_reward: int
    coinbase_maturity: int
    challenge_window: int
    claim_bond_ratio: int
    """A job_result claim locks bond = the job's reward × this, returned at settlement and
    burned by a valid fraud proof (PROTOCOL §8)."""
    # limits
    max_block_bytes: int
    max_future_drift_ms: int
    median_time_span: int
    prefunded_labels: tuple[str, ...]
    prefund_amount: int
    genesis_nonce: int = 0
    """Distinguishes devnets run with overridden parameters: a different genesis."""

    def __post_init__(self) -> None:
        if self.coinbase_maturity < self.challenge_window:
            # A fraud proof must still find the miner's coinbase to forfeit (PROTOCOL §8).
            raise ValueError("coinbase maturity must be at least the challenge window")
        if self.claim_bond_ratio < 1:
            # A proven wrong result must cost its claimant at least what it tried to take.
            raise ValueError("a claim's bond must be at least the job's reward (ratio >= 1)")
        if any(lo > d for lo, d in zip(self.min_job_shape, self.null_job_shape, strict=True)):
            raise ValueError("the null job must meet the minimum job shape")

    @property
    def min_job_macs(self) -> int:
        """The least work a job can ask for: the product of the minimum shape."""
        m, k, n = self.min_job_shape
        return m * k * n

    def job_too_small(self, m: int, k: int, n: int) -> str | None:
        """Why an m×k×n job is below this network's minimum, or None if it is not."""
        min_m, min_k, min_n = self.min_job_shape
        if m >= min_m and k >= min_k and n >= min_n:
            return None
        return (
            f"job {m}x{k}x{n} is below the minimum {min_m}x{min_k}x{min_n} "
            f"(m, k, n each at least that): pad it or pack small products into one job"
        )


def _devnet_labels(count: int) -> tuple[str, ...]:
    return tuple(f"devnet-{i}" for i in range(count))


DEVNET = NetworkParams(
    name="devnet",
    chain_id=0x70770001,
    block_time_ms=2_000,
    asert_half_life_ms=60_000,
    genesis_target=target_for_work(50 * 10**9),
    genesis_timestamp_ms=1_790_000_000_000,
    rank=64,
    tile_h=16,
    tile_w=16,
    null_job_shape=(512, 256, 512),
    min_job_shape=(512, 256, 512),
    max_job_dim=4_096,
    max_job_k=4_096,
    block_reward=50 * COIN,
    coinbase_maturity=10,
    challenge_window=10,
    claim_bond_ratio=1,
    max_block_bytes=8 * 1024 * 1024,
    max_future_drift_ms=15_000,
    median_time_span=11,
    prefunded_labels=_devnet_labels(256),
    prefund_amount=1_000_000 * COIN,
)

TESTNET = NetworkParams(
    name="testnet",
    chain_id=0x70770002,
    block_time_ms=30_000,
    asert_half_life_ms=3_600_000,
    genesis_target=target_for_work(10**12),
    genesis_timestamp_ms=1_790_000_000_000,
    rank=64,
    tile_h=16,
    tile_w=16,
    null_job_shape=(1_024, 2_048, 1_024),
    min_job_shape=(1_024, 2_048, 1_024),
    max_job_dim=16_384,
    max_job_k=65_536,
    block_reward=50 * COIN,
    coinbase_maturity=60,
    challenge_window=60,
    claim_bond_ratio=1,
    max_block_bytes=8 * 1024 * 1024,
    max_future_drift_ms=120_000,
    median_time_span=11,
    prefunded_labels=_devnet_labels(16),
    prefund_amount=1_000 * COIN,
)

MAIN = NetworkParams(
    name="main",
    chain_id=0x70770000,
    block_time_ms=60_000,
    asert_half_life_ms=2 * 86_400_000,
    genesis_target=target_for_work(10**15),
    genesis_timestamp_ms=1_790_000_000_000,
    rank=64,
    tile_h=16,
    tile_w=16,
    null_job_shape=(2_048, 2_048, 2_048),
    min_job_shape=(2_048, 2_048, 2_048),
    max_job_dim=16_384,
    max_job_k=65_536,
    block_reward=50 * COIN,
    coinbase_maturity=100,
    challenge_window=100,
    claim_bond_ratio=1,
    max_block_bytes=8 * 1024 * 1024,
    max_future_drift_ms=120_000,
    median_time_span=11,
    prefunded_labels=(),
    prefund_amount=0,
)

NETWORKS = {p.name: p for p in (DEVNET, TESTNET, MAIN)}


def with_block_time(params: NetworkParams, block_time_ms: int) -> NetworkParams:
    """A devnet with another block interval, and so another genesis and chain.

    The genesis commits to the interval (its nonce), so nodes started with
    different intervals refuse each other at the handshake instead of forking.
    The challenge window (and the coinbase maturity with it) keeps its length in
    time: ceil(10 × 2000 / block_time_ms) blocks, at least 10.
    """
    if params.name != "devnet":
        raise ValueError("only the devnet's block time can be changed")
    if block_time_ms < 200:
        raise ValueError("block time must be at least 200 ms")
    scale = block_time_ms / params.block_time_ms
    # The challenge window is the client's time to check a claim: it keeps its length
    # in time, so on faster blocks it spans more of them (never fewer), and the coinbase
    # maturity stays at least the window.
    window = max(
        params.challenge_window, -(-params.challenge_window * params.block_time_ms // block_time_ms)
    )
    return dataclasses.replace(
        params,
        block_time_ms=block_time_ms,
        challenge_window=window,
        coinbase_maturity=max(params.coinbase_maturity, window),
        asert_half_life_ms=params.asert_half_life_ms * block_time_ms // params.block_time_ms,
        genesis_target=max(1, int(params.genesis_target / scale)),
        genesis_nonce=block_time_ms,
    )


def network(name: str) -> NetworkParams:
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}")
    return NETWORKS[name]
