"""What a user needs when a devnet starts: its prefunded keys, where rewards go, the RPC.

Like anvil or hardhat, a devnet node prints a few of its public, prefunded accounts
(anyone may spend them: they are derived from their labels) and how to use them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consensus.keys import PrivateKey, address_to_text
from consensus.params import NetworkParams
from node.amounts import format_amount

SHOWN_ACCOUNTS = 4
"""Prefunded accounts a banner shows; `pouw wallet accounts` lists them all."""


def prefunded_accounts(
    params: NetworkParams,
    balance_of: Callable[[bytes], int] | None,
    base_units: bool = False,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """label, address and balance of the network's prefunded accounts (the genesis
    balance unless ``balance_of`` gives the current one)."""
    rows = []
    for label in params.prefunded_labels[:limit]:
        addr = PrivateKey.from_label(label).address
        balance = balance_of(addr) if balance_of else params.prefund_amount
        rows.append(
            {
                "label": label,
                "address": address_to_text(addr),
                "balance": format_amount(balance, base_units),
            }
        )
    return rows


def banner(
    params: NetworkParams,
    balance_of: Callable[[bytes], int] | None,
    nodes: list[tuple[str, str, bytes]],
) -> str:
    """The lines a node or a testnet prints at start: per node (name, RPC URL, reward
    address) where it answers and where its mining rewards go, then a few prefunded
    accounts (the current balance if ``balance_of`` gives it, else the genesis one)."""
    lines = []
    for name, rpc_url, reward in nodes:
        prefix = f"{name}: " if name else ""
        lines.append(f"{prefix}RPC {rpc_url}, mining rewards to {address_to_text(reward)}")
    labels = params.prefunded_labels
    if labels:
        lines.append(f"{len(labels)} prefunded accounts (public test keys), balances in coins:")
        for row in prefunded_accounts(params, balance_of, limit=SHOWN_ACCOUNTS):
            lines.append(f"  {row['label']:<10} {row['address']}  {row['balance']}")
        lines.append(
            f"  … to {labels[-1]}: `pouw wallet accounts` lists them all, "
            f"`pouw wallet new --from-label {labels[0]}` makes one your wallet"
        )
    return "\n".join(lines)
