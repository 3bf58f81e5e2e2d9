"""`pouw testnet`: start a local multi-node devnet and watch it."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from consensus.params import DEVNET, with_block_time
from node.devtools.netns import NetnsLab, NetnsUnavailable, check_available, parse_groups
from node.devtools.testnet import TOPOLOGIES, Testnet, miner_key
from node.onboarding import banner


def _table(rows: list[dict[str, Any]], elapsed: float) -> Table:
    t = Table(title=f"pouw testnet — {elapsed:.0f}s (Ctrl-C stops every node)")
    columns = ("node", "height", "tip", "peers", "mempool", "hashrate", "mined", "last block")
    for col in (*columns, "explorer"):
        t.add_column(col, justify="left" if col in ("node", "tip", "explorer") else "right")
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
                _link(r["explorer"]),
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
            _link(r["explorer"]),
        )
    return t


def _link(url: str) -> str:
    """A URL the terminal shows as a link (where it can)."""
    return f"[link={url}]{url}[/link]" if url else "-"


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def parse_ms(text: str, what: str) -> float:
    """``"50ms"``, ``"0.05s"`` or ``"50"`` (milliseconds) → milliseconds."""
    t = text.strip().lower()
    try:
        if t.endswith("ms"):
            return float(t[:-2])
        if t.endswith("s"):
            return float(t[:-1]) * 1000
        return float(t)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a duration like 50ms") from None


def parse_pct(text: str) -> float:
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise ValueError(f"--loss: {text!r} is not a percentage like 1%") from None
    if not 0 <= value <= 100:
        raise ValueError(f"--loss: {text!r} is not between 0% and 100%")
    return value


def netns_options(f: Any) -> Any:
    """--netns, --delay, --jitter, --loss (shared with `pouw bench consensus`)."""
    f = click.option(
        "--loss", default="0%", show_default=True, help="netem packet loss (--netns)."
    )(f)
    f = click.option("--jitter", default="0ms", show_default=True, help="netem jitter (--netns).")(
        f
    )
    f = click.option(
        "--delay", default="0ms", show_default=True, help="netem one-way delay per node (--netns)."
    )(f)
    f = click.option(
        "--netns",
        "use_netns",
        is_flag=True,
        help="Each node in its own network namespace on a bridge (root, iproute2).",
    )(f)
    return f


def make_lab(nodes: int, use_netns: bool, delay: str, jitter: str, loss: str) -> NetnsLab | None:
    """A NetnsLab for --netns (checked to work here), or None; ValueError/NetnsUnavailable."""
    shaping = (parse_ms(delay, "--delay"), parse_ms(jitter, "--jitter"), parse_pct(loss))
    if not use_netns:
        if any(shaping):
            raise ValueError("--delay, --jitter and --loss need --netns")
        return None
    check_available()
    return ShapedLab(nodes, shaping)


class ShapedLab(NetnsLab):
    """A lab that applies its netem shaping as soon as it is set up."""

    def __init__(self, count: int, shaping: tuple[float, float, float]) -> None:
        super().__init__(count)
        self.shaping = shaping

    def setup(self, root: Path | None = None) -> None:
        super().setup(root)
        if any(self.shaping):
            try:
                self.shape(*self.shaping)
            except BaseException:
                self.teardown()
                raise


@click.group("testnet", invoke_without_command=True)
@click.option("--nodes", type=int, default=4, show_default=True, help="How many nodes (1-64).")
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
@netns_options
@click.option("--json", "as_json", is_flag=True, help="No live table; print the summary as JSON.")
@click.pass_context
def testnet_cmd(
    ctx: click.Context,
    nodes: int,
    topology: str,
    block_time: float | None,
    duration: float | None,
    datadir: str | None,
    no_mine: bool,
    use_netns: bool,
    delay: str,
    jitter: str,
    loss: str,
    as_json: bool,
) -> None:
    """Run NODES `pouw node` processes on loopback, mining a shared devnet.

    With --netns each node runs in its own network namespace (addresses
    10.77.0.x/24 that exist only there), optionally behind netem delay, jitter
    and loss; `pouw testnet partition ROOT --groups 0,1/2,3` and
    `pouw testnet heal ROOT` split and rejoin it while it runs.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not 1 <= nodes <= 64:
        _fail(f"--nodes must be between 1 and 64, got {nodes}")
    try:
        lab = make_lab(nodes, use_netns, delay, jitter, loss)
    except NetnsUnavailable as e:
        _fail(str(e), 1)
    except ValueError as e:
        _fail(str(e))
    root = Path(datadir) if datadir else Path(tempfile.mkdtemp(prefix="pouw-testnet-"))
    console = Console(stderr=True)
    net = Testnet(
        root,
        nodes,
        topology,
        block_time_ms=int(block_time * 1000) if block_time else None,
        mine=not no_mine,
        netns=lab,
    )
    if not as_json:
        console.print(f"starting {nodes} nodes ({topology}) under {root}")
    try:
        net.start(on_progress=None if as_json else console.print)
    except KeyboardInterrupt:
        _fail("interrupted while starting; every node was stopped", 130)
    except (RuntimeError, NetnsUnavailable) as e:
        _fail(str(e), 1)
    if not as_json:
        net_params = with_block_time(DEVNET, net.block_time_ms) if net.block_time_ms else DEVNET
        nodes_info = [
            (n.name, f"http://{n.rpc_addr}/rpc", miner_key(n.index).address) for n in net.nodes
        ]
        console.print(
            banner(net_params, None, nodes_info), markup=False, highlight=False, soft_wrap=True
        )
    started = time.monotonic()
    try:
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
        if not no_mine:
            net.settle()
        summary = net.summary()
        summary["pids"] = net.pids()
    finally:
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


@testnet_cmd.command("partition")
@click.argument("root", type=click.Path(file_okay=False, exists=True))
@click.option("--groups", required=True, help="Node groups that can reach each other: 0,1/2,3.")
def partition_cmd(root: str, groups: str) -> None:
    """Split a running --netns testnet (its --datadir ROOT) into groups."""
    try:
        lab = NetnsLab.load(Path(root))
        lab.partition(parse_groups(groups, lab.count))
    except (ValueError, NetnsUnavailable) as e:
        _fail(str(e))
    click.echo(f"partitioned: {groups}")


@testnet_cmd.command("heal")
@click.argument("root", type=click.Path(file_okay=False, exists=True))
def heal_cmd(root: str) -> None:
    """Rejoin every node of a partitioned --netns testnet."""
    try:
        NetnsLab.load(Path(root)).heal()
    except (ValueError, NetnsUnavailable) as e:
        _fail(str(e))
    click.echo("healed")
