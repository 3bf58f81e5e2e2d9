"""`pouw market`: what the compute market looks like from a node (the `getmarket` RPC)."""

from __future__ import annotations

import json
from typing import Any

import click

from consensus.params import NETWORKS
from node.amounts import BASE_UNITS, with_amounts
from node.cli.node import _client
from node.rpc.limits import MAX_MARKET_ROWS


def _short(text: str | None, width: int = 16) -> str:
    return "-" if text is None else text[:width]


ROW_AMOUNTS = ("fee", "fee_per_gmac", "bond")
"""The fields of a getmarket row that are amounts (the fee per GMAC, a rate of them)."""

ROW_SECTIONS = ("open_jobs", "recent_claims", "pending_payment", "recent_payments", "fraud_caught")


def market_amounts(view: dict[str, Any], in_base_units: bool) -> dict[str, Any]:
    """The getmarket view with its amounts as texts in coins (or base units), as the
    wallet shows them: fees, bonds, fees per GMAC."""
    out = dict(view)
    for section in ROW_SECTIONS:
        out[section] = [with_amounts(row, ROW_AMOUNTS, in_base_units) for row in view[section]]
    out["claim_fee_per_gmac"] = with_amounts(
        view["claim_fee_per_gmac"], ("min", "median", "max"), in_base_units
    )
    return out


def _fee(value: str | None) -> str:
    return "-" if value is None else value


def _burned(row: dict[str, Any]) -> str:
    """What a disproved claim cost its claimant: a job_result's bond, a block's coinbase."""
    return f"bond {row['bond']}" if row["claim_kind"] == "tx" else "coinbase"


def _section(title: str, header: str, lines: list[str], total: int | None = None) -> list[str]:
    shown = f"{len(lines)}" if total is None or total == len(lines) else f"{len(lines)} of {total}"
    out = [f"{title} ({shown})"]
    if lines:
        out += [f"  {header}", *(f"  {line}" for line in lines)]
    return out


def render_market(view: dict[str, Any], in_base_units: bool = False) -> str:
    """The getmarket view (its amounts as texts: :func:`market_amounts`) as text, a
    section per question a user asks of the market."""
    jobs = view["jobs"]
    unit = "base units" if in_base_units else "coins"
    out = [
        f"market at height {view['height']} (amounts in {unit}): "
        + ", ".join(f"{count} {status}" for status, count in jobs.items())
    ]
    out += _section(
        "open jobs",
        f"{'job':16}  {'shape':>14}  {'fee':>14}  {'fee/GMAC':>14}  {'expiry':>7}  pending claim",
        [
            f"{r['job_id'][:16]}  {'x'.join(map(str, r['shape'])):>14}  {r['fee']:>14}  "
            f"{_fee(r['fee_per_gmac']):>14}  {r['expiry']:>7}  "
            + ("expired" if r["expired"] else _short(r["pending_claim"]))
            for r in view["open_jobs"]
        ],
        jobs["open"],
    )
    fees = view["claim_fee_per_gmac"]
    out.append(
        f"fee per GMAC of the last {fees['count']} claims: min {_fee(fees['min'])}, "
        f"median {_fee(fees['median'])}, max {_fee(fees['max'])}"
    )
    out += _section(
        "claims pending payment",
        f"{'job':16}  {'claimant':42}  {'kind':5}  {'bond':>14}  {'due':>7}",
        [
            f"{r['job_id'][:16]}  {r['claimant']:42}  {r['claim_kind']:5}  {r['bond']:>14}  "
            f"{r['due']:>7}"
            for r in view["pending_payment"]
        ],
        jobs["mined"],
    )
    out += _section(
        "recent payments",
        f"{'job':16}  {'claimant':42}  {'fee':>14}  {'bond':>14}  {'paid at':>7}",
        [
            f"{r['job_id'][:16]}  {r['claimant']:42}  {r['fee']:>14}  {r['bond']:>14}  "
            f"{r['due']:>7}"
            for r in view["recent_payments"]
        ],
        jobs["paid"],
    )
    out += _section(
        "fraud caught",
        f"{'job':16}  {'claimant':42}  {'kind':5}  {'burned':>19}  {'claimed at':>10}",
        [
            f"{r['job_id'][:16]}  {r['claimant']:42}  {r['claim_kind']:5}  "
            f"{_burned(r):>19}  "
            f"{r['claim_height']:>10}"
            for r in view["fraud_caught"]
        ],
        jobs["refunded"],
    )
    return "\n".join(out)


@click.command("market")
@click.option("--network", type=click.Choice(sorted(NETWORKS)), default="devnet", show_default=True)
@click.option("--datadir", type=click.Path(file_okay=False), default=None)
@click.option("--rpc", "rpc_addr", default=None, help="Node RPC host:port.")
@click.option(
    "--limit",
    type=click.IntRange(1, MAX_MARKET_ROWS),
    default=20,
    show_default=True,
    help="Rows per section.",
)
@BASE_UNITS
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def market_cmd(
    network: str,
    datadir: str | None,
    rpc_addr: str | None,
    limit: int,
    base_units: bool,
    as_json: bool,
) -> None:
    """Open jobs (shape, fee, fee per GMAC, expiry, pending claim), the fee per GMAC of
    recent claims, claims pending payment, recent payments and fraud caught; amounts
    in coins."""
    found = _client(network, datadir, rpc_addr).call("getmarket", limit)
    view = market_amounts(found, base_units)
    click.echo(json.dumps(view) if as_json else render_market(view, base_units))
