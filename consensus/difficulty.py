"""Difficulty: ASERT retargeting and block work (PROTOCOL §7).

The target is a per-multiply-accumulate threshold: a ticket of a tile with
h·w·k MACs wins when ``ticket ≤ target · h·w·k``, so the expected work of a
block is ``2^256 // target`` MACs whatever the job's shape.

ASERT (absolutely scheduled exponentially rising targets, Bitcoin Cash's
aserti3-2d) sets every block's target from one anchor, the genesis block:

    target = anchor_target · 2^((Δt − T·Δh) / half_life)

where Δt and Δh are the parent's time and height since the anchor and T is the
block interval. A chain exactly on schedule keeps the anchor's target; every
half-life the chain falls behind schedule halves the difficulty. Because the
schedule is absolute, errors do not accumulate, and there is no window to game.
2^x for the fractional part uses aserti3-2d's cubic approximation in 16.16
fixed point, so every node computes the same integer.
"""

from __future__ import annotations

MAX_TARGET = (1 << 256) - 1
_RADIX_BITS = 16
_RADIX = 1 << _RADIX_BITS


def asert_target(
    anchor_target: int,
    anchor_timestamp: int,
    anchor_height: int,
    parent_timestamp: int,
    parent_height: int,
    block_time: int,
    half_life: int,
    max_target: int = MAX_TARGET,
) -> int:
    """Target of the block whose parent has the given timestamp and height."""
    if anchor_target <= 0 or anchor_target > max_target:
        raise ValueError("anchor target out of range")
    if block_time <= 0 or half_life <= 0:
        raise ValueError("block time and half-life must be positive")
    if parent_height < anchor_height:
        raise ValueError("parent is below the anchor")
    time_delta = parent_timestamp - anchor_timestamp
    height_delta = parent_height - anchor_height
    # Python's >> and // floor toward −∞ on negatives, which is what aserti3-2d's
    # arithmetic shift does too: behind schedule and ahead of it are symmetric.
    exponent = ((time_delta - block_time * height_delta) * _RADIX) // half_life
    shifts = exponent >> _RADIX_BITS
    frac = exponent & (_RADIX - 1)
    factor = _RADIX + (
        (195_766_423_245_049 * frac + 971_821_376 * frac**2 + 5_127 * frac**3 + (1 << 47)) >> 48
    )
    target = anchor_target * factor
    target = target << shifts if shifts >= 0 else target >> -shifts
    target >>= _RADIX_BITS
    return max(1, min(target, max_target))


def block_work(target: int) -> int:
    """Expected multiply-accumulates to find a block at ``target``: 2^256 // target."""
    if target <= 0:
        raise ValueError("target must be positive")
    return (1 << 256) // target


def target_for_work(macs_per_block: int) -> int:
    """The target at which a block takes ``macs_per_block`` MACs on average."""
    if macs_per_block <= 0:
        raise ValueError("work must be positive")
    return max(1, min(MAX_TARGET, (1 << 256) // macs_per_block))
