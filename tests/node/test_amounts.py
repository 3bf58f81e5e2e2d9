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


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        (["job", "submit", "--a", "a.npy", "--b", "b.npy", "--reward", "1e5"], {},
         "--reward '1e5' is not an amount in coins (like 12.5)"),
        (["job", "submit", "--reward", "2.5", "--a", "a.npy", "--b", "b.npy", "--base-units"], {},
         "--reward '2.5' is not a whole number of base units"),
        (["train", "--reward", "0.000000001"], {}, "--reward '0.000000001' has more than 8"),
        (["train", "--reward", "0"], {}, "--reward must be at least 0.00000001"),
        (["train", "--base-units", "--reward", "0"], {}, "--reward must be at least 1"),
        (["wallet", "send", "pw" + "00" * 20, "1.5", "--base-units"], {},
         "amount '1.5' is not a whole number of base units"),
        (["wallet", "send", "pw" + "00" * 20, "15", "--base-units"],
         {"POUW_WALLET_SEND_FEE": "0.5"}, "--fee '0.5' is not a whole number of base units"),
    ],
)  # fmt: skip
def test_every_command_takes_amounts_in_coins_or_after_base_units_anywhere(
    args: list[str], env: dict[str, str], error: str
) -> None:
    """One amount type for every command: the same checks and one-line errors, in the unit
    that --base-units chooses wherever it stands, from the command line or the
    environment; nothing runs."""
    got = CliRunner().invoke(cli, args, env=env, auto_envvar_prefix="POUW")
    assert got.exit_code == 2
    [line] = got.stderr.splitlines()
    assert line.startswith(f"error: {error}")


@pytest.mark.parametrize(
    ("command", "option"),
    [
        (["train"], "--reward AMOUNT Reward escrowed per job. Built-in datasets only. In coins "
         "(base units with --base-units). [default: 0.00010000]"),
        (["wallet", "send"], "--fee AMOUNT The transaction's fee. In coins "
         "(base units with --base-units). [default: 0.00001000]"),
    ],
)  # fmt: skip
def test_an_amount_option_shows_its_unit_and_its_default_in_coins(
    command: list[str], option: str
) -> None:
    shown = " ".join(CliRunner().invoke(cli, [*command, "--help"]).stdout.split())
    assert option in shown
