"""Amounts in coins with 8 decimals, as the CLI shows and accepts them."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from consensus.keys import PrivateKey, address_to_text
from consensus.params import COIN, DEVNET
from node.amounts import format_amount, parse_amount
from node.cli.main import cli


def test_coins_are_shown_with_a_fixed_number_of_decimals() -> None:
    assert COIN == 10**8
    assert format_amount(150_000_000) == "1.50000000"
    assert format_amount(1) == "0.00000001"
    assert format_amount(DEVNET.prefund_amount) == "1000000.00000000"
    assert format_amount(1_234, in_base_units=True) == "1234"


@pytest.mark.parametrize(
    ("text", "base"),
    [
        ("1", COIN),
        ("12.5", 1_250_000_000),
        (".5", COIN // 2),
        ("0.00000001", 1),
        ("1_000", 1000 * COIN),
    ],
)
def test_coins_typed_are_exact_base_units(text: str, base: int) -> None:
    assert parse_amount(text, "amount") == base


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("-1", "not an amount in coins"),
        ("1e5", "not an amount in coins"),
        ("0.000000001", "more than 8 decimals"),
        ("200000000000", "more than the largest amount"),
    ],
)
def test_a_bad_amount_names_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_amount(text, "amount")


def test_base_units_are_whole_numbers() -> None:
    assert parse_amount("150", "--fee", in_base_units=True) == 150
    with pytest.raises(ValueError, match=r"--fee '1\.5' is not a whole number of base units"):
        parse_amount("1.5", "--fee", in_base_units=True)


def test_wallet_accounts_lists_every_prefunded_devnet_key_with_its_balance() -> None:
    out = CliRunner().invoke(cli, ["wallet", "accounts"]).stdout.splitlines()
    assert len(out) == len(DEVNET.prefunded_labels) == 256
    address = address_to_text(PrivateKey.from_label("devnet-7").address)
    assert out[7].split() == ["devnet-7", address, "1000000.00000000"]


def test_an_unfunded_label_is_named_as_such(tmp_path) -> None:
    runner = CliRunner()
    funded = runner.invoke(
        cli, ["wallet", "new", "--from-label", "devnet-3", "--wallet", str(tmp_path / "a")]
    )
    assert funded.exit_code == 0 and funded.stderr == ""
    typo = runner.invoke(
        cli, ["wallet", "new", "--from-label", "devnet3", "--wallet", str(tmp_path / "b")]
    )
    assert typo.exit_code == 0
    assert "'devnet3' is not a prefunded label on devnet (devnet-0 … devnet-255)" in typo.stderr
    assert "holds no coins" in typo.stderr
