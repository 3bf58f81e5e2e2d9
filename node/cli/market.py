"""`pouw market`: what the compute market looks like from a node (the `getmarket` RPC)."""

from __future__ import annotations

import json
from typing import Any

import click

from consensus.params import NETWORKS
from node.cli.node import _client
from node.rpc.market import MAX_MARKET_ROWS


def _short(text: str | None, width: int = 16) -> str:
    return "-" if text is None else text[:width]


def _fee(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _burned(row: dict[str, Any]) -> str:
    """What a disproved claim cost its claimant: a job_result's bond, a block's coinbase."""
    return f"bond {row['bond']:,}" if row["claim_kind"] == "tx" else "coinbase"


def _section(title: str, header: str, lines: list[str], total: int | None = None) -> list[str]:
    shown = f"{len(lines)}" if total is None or total == len(lines) else f"{len(lines)} of {total}"
    out = [f"{title} ({shown})"]
    if lines:
        out += [f"  {header}", *(f"  {line}" for line in lines)]
    return out


def render_market(view: dict[str, Any]) -> str:
    """The getmarket view as text, a section per question a user asks of the market."""
    jobs = view["jobs"]
    out = [
        f"market at height {view['height']}: "
        + ", ".join(f"{count} {status}" for status, count in jobs.items())
    ]
    out += _section(
        "open jobs",
        f"{'job':16}  {'shape':>14}  {'fee':>10}  {'fee/GMAC':>10}  {'expiry':>7}  pending claim",
        [
            f"{r['job_id'][:16]}  {'x'.join(map(str, r['shape'])):>14}  {r['fee']:>10,}  "
            f"{_fee(r['fee_per_gmac']):>10}  {r['expiry']:>7}  "
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
        f"{'job':16}  {'claimant':42}  {'kind':5}  {'bond':>10}  {'due':>7}",
        [
            f"{r['job_id'][:16]}  {r['claimant']:42}  {r['claim_kind']:5}  {r['bond']:>10,}  "
            f"{r['due']:>7}"
            for r in view["pending_payment"]
        ],
        jobs["mined"],
    )
    out += _section(
        "recent payments",
        f"{'job':16}  {'claimant':42}  {'fee':>10}  {'bond':>10}  {'paid at':>7}",
        [
            f"{r['job_id'][:16]}  {r['claimant']:42}  {r['fee']:>10,}  {r['bond']:>10,}  "
            f"{r['due']:>7}"
            for r in view["recent_payments"]
        ],
        jobs["paid"],
    )
    out += _section(
        "fraud caught",
        f"{'job':16}  {'claimant':42}  {'kind':5}  {'burned':>16}  {'claimed at':>10}",
        [
            f"{r['job_id'][:16]}  {r['claimant']:42}  {r['claim_kind']:5}  "
            f"{_burned(r):>16}  "
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def market_cmd(
    network: str, datadir: str | None, rpc_addr: str | None, limit: int, as_json: bool
) -> None:
    """Open jobs (shape, fee, fee per GMAC, expiry, pending claim), the fee per GMAC of
    recent claims, claims pending payment, recent payments and fraud caught."""
    view = _client(network, datadir, rpc_addr).call("getmarket", limit)
    click.echo(json.dumps(view) if as_json else render_market(view))
