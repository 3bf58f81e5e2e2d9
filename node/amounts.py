"""Amounts as people read and type them: coins with a fixed number of decimals.

On chain every amount is an integer number of base units (COIN of them make a
coin); the CLI shows and accepts coins, or base units with ``--base-units``.
"""

from __future__ import annotations

import re

from consensus.encoding import U64_MAX
from consensus.params import COIN, COIN_DECIMALS

_COINS = re.compile(r"(\d+)(?:\.(\d*))?|\.(\d+)")


def format_amount(base_units: int, in_base_units: bool = False) -> str:
    """``150000000`` → ``"1.50000000"`` (always COIN_DECIMALS decimals); the integer itself
    with ``in_base_units``."""
    if in_base_units:
        return str(base_units)
    sign = "-" if base_units < 0 else ""
    whole, frac = divmod(abs(base_units), COIN)
    return f"{sign}{whole}.{frac:0{COIN_DECIMALS}d}"


def parse_amount(text: str, what: str, in_base_units: bool = False) -> int:
    """``"1.5"`` → 150000000 base units (``"150"`` → 150 with ``in_base_units``).

    ValueError naming ``what`` for anything else: a sign, more than COIN_DECIMALS
    decimals, a fraction of a base unit, more than fits in a u64.
    """
    text = text.strip().replace("_", "")
    if in_base_units:
        if not text.isdigit():
            raise ValueError(f"{what} {text!r} is not a whole number of base units")
        value = int(text)
    else:
        match = _COINS.fullmatch(text)
        if match is None:
            raise ValueError(f"{what} {text!r} is not an amount in coins (like 12.5)")
        whole = match.group(1) or "0"
        frac = match.group(2) or match.group(3) or ""
        if len(frac) > COIN_DECIMALS:
            raise ValueError(
                f"{what} {text!r} has more than {COIN_DECIMALS} decimals "
                f"(1 base unit is {format_amount(1)} coins)"
            )
        value = int(whole) * COIN + int(frac.ljust(COIN_DECIMALS, "0"))
    if value > U64_MAX:
        largest = format_amount(U64_MAX, in_base_units)
        raise ValueError(f"{what} {text} is more than the largest amount, {largest}")
    return value
