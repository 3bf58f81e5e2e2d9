"""`pouw node`, `pouw wallet …` and `pouw rpc …`."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import click

from consensus.keys import PrivateKey, address_to_text, parse_address
from consensus.params import NETWORKS
from consensus.transactions import TransferPayload, encode_tx, signed_transaction
from node import collector
from node.amounts import BASE_UNITS, AmountType, amount_option, with_amounts
from node.client.rpc import RpcCallError, RpcClient
from node.config import (
    NodeConfig,
    default_datadir,
    load_config_file,
    parse_devices,
    parse_hostport,
    resolve_devices,
)
from node.datadir import DatadirInUse, DatadirLock
from node.onboarding import banner, prefunded_accounts

NETWORK_CHOICE = click.Choice(sorted(NETWORKS))
DEFAULT_FEE = 1_000  # base units: well above the relay minimum for a transfer


def _datadir(network: str, datadir: str | None) -> Path:
    return Path(datadir).expanduser() if datadir else default_datadir(network)


LOG_FILE_BYTES = 16 * 1024 * 1024
"""node.log rolls over to node.log.1 … node.log.3 at this size: at most 64 MiB of logs."""
LOG_FILE_BACKUPS = 3


def _setup_logging(datadir: Path, level: str) -> None:
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    root.setLevel(level.upper())
    to_file = RotatingFileHandler(
        datadir / "node.log", maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS
    )
    for handler in (logging.StreamHandler(sys.stderr), to_file):
        handler.setFormatter(fmt)
        root.addHandler(handler)


class DevicesType(click.ParamType):
    """``--devices``: its text, checked in the command (one line naming the option, as
    the other checks there); a config file's list of indices (``devices = [0, 2]``) or
    single index reads as the same text."""

    name = "devices"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return str(value)


def _mining_devices(spec: str | None, backend: str) -> tuple[int, ...] | None:
    """The GPUs ``--devices`` names, of those visible now; None without it (one miner, as
    ever). ValueError naming the option if it is malformed, names a GPU twice or one not
    visible, or comes with ``--backend cpu``."""
    if spec is None:
        return None
    parse_devices(spec)  # a malformed list is one whatever the backend
    if backend == "cpu":
        raise ValueError(
            f"--devices {spec!r} names GPUs to mine on: it needs --backend cuda (or auto), not cpu"
        )
    from node.miner import visible_gpu_count

    return resolve_devices(spec, visible_gpu_count())


class ConfigDefaults(click.Command):
    """Fill unset options from ``--config FILE`` before click applies defaults."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> click.Context:
        for i, arg in enumerate(args):
            path = None
            if arg == "--config" and i + 1 < len(args):
                path = args[i + 1]
            elif arg.startswith("--config="):
                path = arg.split("=", 1)[1]
            if path:
                try:
                    values = load_config_file(Path(path))
                except ValueError as e:
                    raise click.UsageError(str(e)) from None
                extra["default_map"] = self._by_param_name(path, values)
        return super().make_context(info_name, args, parent, **extra)

    def _by_param_name(self, path: str, values: dict[str, Any]) -> dict[str, Any]:
        """Config keys are long flag names (``rpc``, ``peer``); click's default_map
        wants parameter names (``rpc_addr``, ``peers``). Unknown keys are errors,
        so a typo is not silently ignored."""
        names: dict[str, str] = {}
        for param in self.params:
            if isinstance(param, click.Option) and param.name and param.name != "config_file":
                names[param.name] = param.name
                for flag in param.opts:
                    if flag.startswith("--"):
                        names[flag[2:].replace("-", "_")] = param.name
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key not in names:
                raise click.UsageError(f"config file {path}: unknown option {key!r}")
            out[names[key]] = value
        return out


@click.command("node", cls=ConfigDefaults)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help='TOML file with option defaults (keys like listen = "127.0.0.1:9444").',
)
@click.option("--network", type=NETWORK_CHOICE, default="devnet", show_default=True)
@click.option(
    "--datadir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the chain, logs and cookie live [default: ~/.pouwnet/<network>].",
)
@click.option(
    "--listen",
    default="127.0.0.1:0",
    show_default=True,
    help="P2P address host:port (port 0 picks a free one).",
)
@click.option(
    "--rpc",
    "rpc_addr",
    default="127.0.0.1:0",
    show_default=True,
    help="JSON-RPC address host:port.",
)
@click.option(
    "--rpc-allow-host",
    "rpc_allow_hosts",
    multiple=True,
    help="Another Host name the RPC answers to (repeatable), e.g. a reverse proxy's; "
    "by default only the --rpc address (and loopback names on loopback).",
)
@click.option("--peer", "peers", multiple=True, help="Bootstrap peer host:port (repeatable).")
@click.option(
    "--connect-only",
    is_flag=True,
    help="Dial only the --peer addresses, never addresses learned from peers "
    "(inbound connections are still accepted).",
)
@click.option("--mine/--no-mine", default=False, show_default=True)
@click.option("--miner-address", default=None, help="Address that receives block rewards.")
@click.option(
    "--miner-key",
    type=click.Path(dir_okay=False),
    default=None,
    help="Wallet key file of the miner: its address receives block rewards and it signs "
    "the job_result claims of results that won no block [default: the node key, unless "
    "--miner-address names another address; then results are not claimed by transaction].",
)
@click.option(
    "--backend", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True
)
@click.option(
    "--devices",
    type=DevicesType(),
    metavar="all|N[,N...]",
    default=None,
    help="GPUs to mine on with --backend cuda (or auto): all, or indices such as 0,2; "
    "each gets a mining thread of its own and its own posted jobs "
    "[default: one miner, on GPU 0 with cuda].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=None,
    help="CPU threads for the mining kernels (default: all cores).",
)
@click.option(
    "--miner-nice",
    type=click.IntRange(0, 19),
    default=10,
    show_default=True,
    help="Niceness of the mining threads, so validating and relaying blocks and "
    "transactions always get the CPU first.",
)
@click.option("--max-outbound", type=click.IntRange(min=0), default=8, show_default=True)
@click.option("--max-inbound", type=click.IntRange(min=0), default=32, show_default=True)
@click.option(
    "--devnet-block-time-ms",
    type=click.IntRange(min=200),
    default=None,
    help="Devnet only: another block interval (a different genesis and chain).",
)
@click.option(
    "--dishonest-results",
    is_flag=True,
    hidden=True,
    help="TESTS ONLY: commit a wrong product on posted jobs.",
)
@click.option(
    "--withhold-results",
    is_flag=True,
    hidden=True,
    help="TESTS ONLY: claim posted jobs but never serve their product nor answer challenges.",
)
@click.option(
    "--reveal-withheld",
    is_flag=True,
    hidden=True,
    help="TESTS ONLY: with --withhold-results, answer result challenges all the same.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
)
def node_cmd(
    config_file: str | None,
    network: str,
    datadir: str | None,
    listen: str,
    rpc_addr: str,
    rpc_allow_hosts: tuple[str, ...],
    peers: tuple[str, ...],
    connect_only: bool,
    mine: bool,
    miner_address: str | None,
    miner_key: str | None,
    backend: str,
    devices: str | None,
    threads: int | None,
    miner_nice: int,
    max_outbound: int,
    max_inbound: int,
    devnet_block_time_ms: int | None,
    dishonest_results: bool,
    withhold_results: bool,
    reveal_withheld: bool,
    log_level: str,
) -> None:
    """Run a node in the foreground until Ctrl-C or SIGTERM."""
    from consensus.params import network as network_params
    from consensus.params import with_block_time
    from kernels.backends import get_backend
    from node.net.httpguard import parse_allowed_host  # aiohttp: the node's own import

    params = network_params(network)
    if devnet_block_time_ms is not None:
        params = with_block_time(params, devnet_block_time_ms)
    mining_devices = _mining_devices(devices, backend)  # checked now, as the backend is
    get_backend(backend)  # a missing GPU is a clear error now, not in the miner thread
    key = None
    if miner_key is not None:
        try:
            key = _load_wallet(Path(miner_key).expanduser())
        except ValueError as e:
            raise click.ClickException(f"--miner-key: {e}") from None
        if miner_address and parse_address(miner_address) != key.address:
            raise click.ClickException("--miner-address names another address than --miner-key's")
    config = NodeConfig(
        params=params,
        datadir=_datadir(network, datadir),
        listen=parse_hostport(listen, "--listen"),
        rpc=parse_hostport(rpc_addr, "--rpc"),
        rpc_allow_hosts=tuple(parse_allowed_host(h) for h in rpc_allow_hosts),
        peers=[parse_hostport(p, "--peer") for p in peers],
        connect_only=connect_only,
        mine=mine,
        miner_address=parse_address(miner_address) if miner_address else None,
        miner_key=key,
        backend=backend,
        devices=mining_devices,
        threads=threads,
        miner_nice=miner_nice,
        max_outbound=max_outbound,
        max_inbound=max_inbound,
        log_level=log_level,
        dishonest_results=dishonest_results,
        withhold_results=withhold_results,
        reveal_withheld=reveal_withheld,
        progress=sys.stderr.isatty(),
    )
    if threads:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    # The lock comes first: a second node on this datadir must not even open its log.
    lock = DatadirLock(config.datadir)
    try:
        lock.acquire()
    except DatadirInUse as e:
        raise click.ClickException(str(e)) from None
    _setup_logging(config.datadir, log_level)
    collector.tune()
    asyncio.run(_run_node(config, lock))


async def _run_node(config: NodeConfig, lock: DatadirLock) -> None:
    from node.app import Node

    node = Node(config, lock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.request_stop)
    await node.start()
    rpc_url = f"http://{config.rpc[0]}:{node.rpc_port}/rpc"
    # Mining rewards go to --miner-address, else to the node key's (<datadir>/node_key) address.
    click.echo(banner(config.params, node.chain.state.balance, [("", rpc_url, node.miner_address)]))
    click.echo(f"explorer: {node.explorer_url}")
    collector.freeze()  # the loaded chain stays; the collector need not walk it again
    await node.wait_stopped()
    await node.stop()


# ---------------------------------------------------------------- wallet


def _wallet_path(network: str, datadir: str | None, wallet: str | None) -> Path:
    return Path(wallet).expanduser() if wallet else _datadir(network, datadir) / "wallet.key"


def _load_wallet(path: Path) -> PrivateKey:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ValueError(f"no wallet at {path}: create one with 'pouw wallet new'") from None
    if text.startswith("label:"):
        return PrivateKey.from_label(text[6:])
    try:
        return PrivateKey.from_seed(bytes.fromhex(text))
    except ValueError:
        raise ValueError(f"{path} is not a wallet file (expected a 64-hex-digit seed)") from None


def wallet_options(f: Any) -> Any:
    f = click.option("--network", type=NETWORK_CHOICE, default="devnet", show_default=True)(f)
    f = click.option("--datadir", type=click.Path(file_okay=False), default=None)(f)
    f = click.option(
        "--wallet",
        type=click.Path(dir_okay=False),
        default=None,
        help="Wallet key file [default: <datadir>/wallet.key].",
    )(f)
    return f


@click.group("wallet")
def wallet() -> None:
    """Keys and payments (a wallet is one Ed25519 key in a file readable by you only)."""


@wallet.command("new")
@wallet_options
@click.option("--force", is_flag=True, help="Overwrite an existing wallet file.")
@click.option(
    "--from-label",
    default=None,
    help="Derive a public devnet key: devnet-0 … devnet-255 are prefunded "
    "(`pouw wallet accounts` lists them).",
)
@click.option("--json", "as_json", is_flag=True)
def wallet_new(
    network: str,
    datadir: str | None,
    wallet: str | None,
    force: bool,
    from_label: str | None,
    as_json: bool,
) -> None:
    """Create a wallet key and print its address."""
    path = _wallet_path(network, datadir, wallet)
    if path.exists() and not force:
        raise ValueError(f"{path} already exists (use --force to replace it)")
    from consensus.params import network as network_params

    labels = network_params(network).prefunded_labels
    if from_label and from_label not in labels:
        funded = f"{labels[0]} … {labels[-1]}" if labels else "none"
        click.echo(
            f"warning: {from_label!r} is not a prefunded label on {network} ({funded}): "
            "this key holds no coins until someone sends it some",
            err=True,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    key = PrivateKey.from_label(from_label) if from_label else PrivateKey.generate()
    path.write_text(f"label:{from_label}" if from_label else key.seed.hex())
    path.chmod(0o600)
    _out(
        {"address": address_to_text(key.address), "wallet": str(path)},
        as_json,
        f"{address_to_text(key.address)}  (saved to {path})",
    )


@wallet.command("address")
@wallet_options
@click.option("--json", "as_json", is_flag=True)
def wallet_address(network: str, datadir: str | None, wallet: str | None, as_json: bool) -> None:
    """Print the wallet's address."""
    key = _load_wallet(_wallet_path(network, datadir, wallet))
    text = address_to_text(key.address)
    _out({"address": text}, as_json, text)


@wallet.command("accounts")
@click.option("--network", type=NETWORK_CHOICE, default="devnet", show_default=True)
@BASE_UNITS
@click.option("--json", "as_json", is_flag=True)
def wallet_accounts(network: str, base_units: bool, as_json: bool) -> None:
    """The network's prefunded accounts (public test keys) and their genesis balances."""
    from consensus.params import network as network_params

    rows = prefunded_accounts(network_params(network), None, base_units)
    if as_json:
        click.echo(json.dumps(rows))
    for row in rows if not as_json else []:
        click.echo(f"{row['label']:<12} {row['address']}  {row['balance']}")


@wallet.command("balance")
@wallet_options
@click.option("--rpc", "rpc_addr", default=None, help="Node RPC host:port [default: from datadir].")
@click.option("--address", default=None, help="Any address instead of the wallet's.")
@BASE_UNITS
@click.option("--json", "as_json", is_flag=True)
def wallet_balance(
    network: str,
    datadir: str | None,
    wallet: str | None,
    rpc_addr: str | None,
    address: str | None,
    base_units: bool,
    as_json: bool,
) -> None:
    """Balance, nonce and immature coinbase of an account, in coins, from a running node."""
    addr = address or address_to_text(_load_wallet(_wallet_path(network, datadir, wallet)).address)
    found = _client(network, datadir, rpc_addr).call("getaccount", addr)
    account = with_amounts(found, ("balance", "immature"), base_units)
    unit = "base units" if base_units else "coins"
    _out(
        account,
        as_json,
        f"{account['balance']} {unit} (nonce {account['nonce']}, immature {account['immature']})",
    )


@wallet.command("send")
@wallet_options
@click.argument("to")
@click.argument("amount", type=AmountType(minimum=1))
@amount_option("--fee", default=DEFAULT_FEE, help="The transaction's fee.")
@BASE_UNITS
@click.option("--rpc", "rpc_addr", default=None, help="Node RPC host:port [default: from datadir].")
@click.option("--json", "as_json", is_flag=True)
def wallet_send(
    network: str,
    datadir: str | None,
    wallet: str | None,
    to: str,
    amount: int,
    fee: int,
    base_units: bool,
    rpc_addr: str | None,
    as_json: bool,
) -> None:
    """Send AMOUNT coins (e.g. 12.5; base units with --base-units) to address TO."""
    from consensus.params import network as network_params

    key = _load_wallet(_wallet_path(network, datadir, wallet))
    recipient = parse_address(to)
    client = _client(network, datadir, rpc_addr)
    account = client.call("getaccount", address_to_text(key.address))
    tx = signed_transaction(
        key,
        chain_id=network_params(network).chain_id,
        nonce=account["next_nonce"],
        fee=fee,
        payload=TransferPayload(recipient, amount),
    )
    txid = client.call("sendtransaction", encode_tx(tx).hex())
    _out({"txid": txid}, as_json, txid)


# ---------------------------------------------------------------- rpc


@click.command("rpc")
@click.option("--network", type=NETWORK_CHOICE, default="devnet", show_default=True)
@click.option("--datadir", type=click.Path(file_okay=False), default=None)
@click.option("--rpc", "rpc_addr", default=None, help="Node RPC host:port [default: from datadir].")
@click.argument("method")
@click.argument("params", nargs=-1)
def rpc_cmd(
    network: str, datadir: str | None, rpc_addr: str | None, method: str, params: tuple[str, ...]
) -> None:
    """Call METHOD with PARAMS (each parsed as JSON when it is valid JSON) and print JSON."""
    values = []
    for p in params:
        try:
            values.append(json.loads(p))
        except json.JSONDecodeError:
            values.append(p)
    result = _client(network, datadir, rpc_addr).call(method, *values)
    click.echo(json.dumps(result, indent=2))


def _client(network: str, datadir: str | None, rpc_addr: str | None) -> RpcClient:
    if rpc_addr is not None:
        parse_hostport(rpc_addr, "--rpc")
    return RpcClient.for_datadir(_datadir(network, datadir), rpc_addr)


def _out(obj: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(obj) if as_json else text)


__all__ = ["RpcCallError", "node_cmd", "rpc_cmd", "wallet"]
