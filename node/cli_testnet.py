"""`pouw testnet`: start a local multi-node devnet and watch it."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from node.testnet import TOPOLOGIES, Testnet


def _table(rows: list[dict[str, Any]], elapsed: float) -> Table:
    t = Table(title=f"pouw testnet — {elapsed:.0f}s (Ctrl-C stops every node)")
    for col in ("node", "height", "tip", "peers", "mempool", "hashrate", "mined", "last block"):
        t.add_column(col, justify="right" if col not in ("node", "tip") else "left")
    for r in rows:
        if "height" not in r:
            t.add_row(
                r["node"],
                "-",
                "[red]down[/red]" if not r["alive"] else r.get("error", "?"),
                "-",
                "-",
                "-",
                "-",
                "-",
            )
            continue
        t.add_row(
            r["node"],
            str(r["height"]),
            r["tip"][:12],
            str(r["peers"]),
            str(r["mempool"]),
            f"{r['hashrate'] / 1e9:.2f} GMAC/s",
            str(r["blocks_found"]),
            f"{r['last_block_age_s']:.1f}s",
        )
    return t


@click.command("testnet")
@click.option("--nodes", type=click.IntRange(min=1, max=64), default=4, show_default=True)
@click.option("--topology", type=click.Choice(TOPOLOGIES), default="full", show_default=True)
@click.option(
    "--block-time",
    type=click.FloatRange(min=0.2),
    default=None,
    help="Target block interval in seconds [default: devnet's 2 s].",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop after this many seconds [default: run until Ctrl-C].",
)
@click.option(
    "--datadir",
    type=click.Path(file_okay=False),
    default=None,
    help="Root for the nodes' datadirs [default: a fresh temporary folder].",
)
@click.option("--no-mine", is_flag=True, help="Start the nodes without miners.")
@click.option("--json", "as_json", is_flag=True, help="No live table; print the summary as JSON.")
def testnet_cmd(
    nodes: int,
    topology: str,
    block_time: float | None,
    duration: float | None,
    datadir: str | None,
    no_mine: bool,
    as_json: bool,
) -> None:
    """Run NODES `pouw node` processes on loopback, mining a shared devnet."""
    root = Path(datadir) if datadir else Path(tempfile.mkdtemp(prefix="pouw-testnet-"))
    console = Console(stderr=True)
    net = Testnet(
        root,
        nodes,
        topology,
        block_time_ms=int(block_time * 1000) if block_time else None,
        mine=not no_mine,
    )
    if not as_json:
        console.print(f"starting {nodes} nodes ({topology}) under {root}")
    net.start(on_progress=None if as_json else console.print)
    started = time.monotonic()
    try:
        if as_json:
            while duration is None or time.monotonic() - started < duration:
                time.sleep(0.5)
        else:
            with Live(_table(net.status(), 0), console=console, refresh_per_second=2) as live:
                while duration is None or time.monotonic() - started < duration:
                    time.sleep(0.5)
                    live.update(_table(net.status(), time.monotonic() - started))
    except KeyboardInterrupt:
        pass
    summary = net.summary()
    net.stop()
    summary["crashed"] = [n.name for n in net.nodes if n.crashed]
    if as_json:
        click.echo(json.dumps(summary))
    else:
        console.print(
            f"stopped. heights {summary['heights']}, one tip: {summary['one_tip']}, "
            f"blocks mined {summary['blocks_mined']}, stale {summary['stale_blocks']}"
        )
        console.print(f"logs: {root}/node-*/node.log")
