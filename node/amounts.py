"""Amounts as people read and type them: coins with a fixed number of decimals.

On chain every amount is an integer number of base units (COIN of them make a
coin); the CLI shows and accepts coins, or base units with ``--base-units``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import click
from click.core import ParameterSource

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


def with_amounts(
    row: dict[str, Any], fields: Iterable[str], in_base_units: bool = False
) -> dict[str, Any]:
    """``row`` with those of ``fields`` it holds as amount texts (a None stays None).

    A field may also be a rate in base units, a float (a fee per GMAC): it shows rounded
    to the nearest base unit, as amounts are.
    """
    out = dict(row)
    for field in fields:
        if out.get(field) is not None:
            out[field] = format_amount(round(out[field]), in_base_units)
    return out


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


# ---------------------------------------------------------------- the CLI's amounts

BASE_UNITS_PARAM = "base_units"
"""The name of the ``--base-units`` flag's parameter; an amount option reads it."""

BASE_UNITS = click.option(
    "--base-units",
    BASE_UNITS_PARAM,
    is_flag=True,
    # Eager: click processes it before every amount option and argument, whatever
    # their order on the command line, so AmountType knows which unit it parses.
    is_eager=True,
    help=f"Amounts in base units (1 coin = {COIN:,} base units) instead of coins.",
)


def base_units_given(ctx: click.Context | None) -> bool:
    """Whether ``--base-units`` was given to the command ``ctx`` runs."""
    return bool(ctx is not None and ctx.params.get(BASE_UNITS_PARAM))


class AmountType(click.ParamType):
    """An amount typed in coins, or in base units after ``--base-units``: its base units.

    A default is an int of base units (it reads the same in either unit); a value from
    the command line, the environment or a config file is text, parsed with
    :func:`parse_amount`. A bad one is a ValueError naming the parameter, which the
    ``pouw`` group prints as a one-line error.
    """

    name = "amount"

    def __init__(self, minimum: int = 0) -> None:
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        what = _name_of(param)
        in_base_units = base_units_given(ctx)
        source = ctx.get_parameter_source(param.name) if ctx and param and param.name else None
        if isinstance(value, int) and source is ParameterSource.DEFAULT:
            amount = value
        else:
            amount = parse_amount(str(value), what, in_base_units)
        if amount < self.minimum:
            least = format_amount(self.minimum, in_base_units)
            raise ValueError(f"{what} must be at least {least}")
        return amount


def _name_of(param: click.Parameter | None) -> str:
    """How an error names the parameter: ``--fee``, or an argument's name, ``amount``."""
    if isinstance(param, click.Option):
        return param.opts[0]
    return param.name if param is not None and param.name else "amount"


def amount_option(*decls: str, default: int | None, minimum: int = 0, help: str) -> Any:
    """A click option taking an amount in coins (base units with --base-units); the
    command also needs :data:`BASE_UNITS`. ``default`` is in base units."""
    shown = "" if default is None else f"  [default: {format_amount(default)}]"
    return click.option(
        *decls,
        type=AmountType(minimum),
        default=default,
        help=f"{help} In coins (base units with --base-units).{shown}",
    )
