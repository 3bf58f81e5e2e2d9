"""`pouw train`, `pouw model lineage|publish`: training whose every matmul is a verified job."""

from __future__ import annotations

import json
from typing import Any

import click
from click.core import ParameterSource

from consensus.keys import PrivateKey
from consensus.params import NETWORKS
from kernels.training import DATASETS, EpochStats, TrainConfig
from node.amounts import BASE_UNITS, BASE_UNITS_PARAM, amount_option
from node.apps.data_train import fetch_train_publish
from node.cli.data import WAIT, data_client, model_publish_command
from node.cli.node import _client, _load_wallet, _wallet_path
from node.client.datashare import DataClient
from node.client.market import MarketClient

EXIT_NOT_IDENTICAL = 3


def _market(
    network: str,
    datadir: str | None,
    rpc_addr: str | None,
    wallet: str | None,
    from_label: str | None,
    block_time_ms: int | None,
) -> MarketClient:
    from consensus.params import network as network_params
    from consensus.params import with_block_time

    if wallet and from_label:
        raise ValueError("give --wallet or --from-label, not both")
    params = network_params(network)
    if block_time_ms:
        params = with_block_time(params, block_time_ms)
    key = (
        PrivateKey.from_label(from_label)
        if from_label
        else _load_wallet(_wallet_path(network, datadir, wallet))
    )
    return MarketClient(_client(network, datadir, rpc_addr), key, params)


def _where(f: Any) -> Any:
    for opt in reversed(
        [
            click.option("--network", type=click.Choice(sorted(NETWORKS)), default="devnet"),
            click.option("--datadir", type=click.Path(file_okay=False), default=None),
            click.option("--rpc", "rpc_addr", default=None, help="Node RPC host:port."),
            click.option("--json", "as_json", is_flag=True, help="Print one JSON object."),
        ]
    ):
        f = opt(f)
    return f


NETWORK_ONLY = ("reward", BASE_UNITS_PARAM, "job_timeout", "from_label")
DATASET_ONLY = ("host", "fetch_timeout", "no_publish", "wait_s")


def _parse_dataset(text: str) -> str | bytes:
    """A built-in dataset's name, or an on-chain dataset id (32 bytes)."""
    if text in DATASETS:
        return text
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ValueError(
            f"--dataset {text!r} is neither a built-in dataset ({', '.join(DATASETS)}) "
            "nor an on-chain dataset id (64 hex digits)"
        )
    return value


def _refuse(ctx: click.Context, names: tuple[str, ...], why: str) -> None:
    """ValueError if any of these options was given on the command line."""
    given = [
        p.opts[0]
        for p in ctx.command.params
        if p.name in names and ctx.get_parameter_source(p.name) is ParameterSource.COMMANDLINE
    ]
    if given:
        raise ValueError(f"{', '.join(given)}: {why}")


@click.command("train")
@click.option(
    "--dataset",
    default="breast_cancer",
    show_default=True,
    metavar="NAME|DATASET_ID",
    help=f"A built-in dataset ({', '.join(DATASETS)}), trained with every matmul posted as "
    "a market job; or the 64-hex id of an on-chain dataset you were granted, read (the read "
    "logged on chain) and trained on LOCALLY: private data is never posted as jobs.",
)
@click.option("--quick", is_flag=True, help="The quick preset (default: the full one).")
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many steps (the local comparison stops there too).",
)
@_where
@click.option("--wallet", type=click.Path(dir_okay=False), default=None, help="Wallet key file.")
@click.option(
    "--from-label", default=None, help="Use a public devnet key (e.g. devnet-3). Built-in only."
)
@amount_option(
    "--reward", default=10_000, minimum=1, help="Reward escrowed per job. Built-in datasets only."
)
@BASE_UNITS
@click.option(
    "--devnet-block-time-ms",
    "block_time_ms",
    type=int,
    default=None,
    help="The node's devnet block time, if it was changed.",
)
@click.option(
    "--job-timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="Seconds to wait for one job to be mined. Built-in datasets only.",
)
@click.option(
    "--host", default=None, help="Dataset id only: the hosting node's P2P host:port [our node]."
)
@click.option(
    "--fetch-timeout",
    type=click.FloatRange(min=1),
    default=120.0,
    show_default=True,
    help="Dataset id only: seconds to wait for the access_log and for the read.",
)
@click.option(
    "--no-publish", is_flag=True, help="Dataset id only: do not publish the model on chain."
)
@WAIT
@click.pass_context
def train_cmd(
    ctx: click.Context,
    dataset: str,
    quick: bool,
    max_steps: int | None,
    network: str,
    datadir: str | None,
    rpc_addr: str | None,
    as_json: bool,
    wallet: str | None,
    from_label: str | None,
    reward: int,
    base_units: bool,
    block_time_ms: int | None,
    job_timeout: float,
    host: str | None,
    fetch_timeout: float,
    no_publish: bool,
    wait_s: float,
) -> None:
    """Train the integer MLP on a built-in dataset through the network, or locally on an
    on-chain dataset you were granted.

    Built-in dataset: each step's five products (forward and backward) are
    posted to the network, mined, Freivalds-checked and used; a model_record
    transaction then records the step's job ids and weights hash. Afterwards the
    same model is trained locally: the final weights must be bit-identical
    (exit 3 if not).

    Dataset id: the wallet sends an access_log, reads the dataset from the host
    once it is confirmed, checks and decrypts it (a CSV: header row, numeric
    features, integer class label last), trains on this machine only, and
    publishes the model's weights hash with that read as its provenance
    (model_publish), unless --no-publish.
    """
    which = _parse_dataset(dataset)
    if isinstance(which, bytes):
        _refuse(ctx, NETWORK_ONLY, "only for training a built-in dataset on the network")
        _train_on_chain_dataset(
            data_client(network, datadir, wallet, rpc_addr, block_time_ms),
            which,
            host,
            fetch_timeout,
            quick,
            max_steps,
            not no_publish,
            wait_s,
            as_json,
        )
        return
    _refuse(ctx, DATASET_ONLY, "only for training on an on-chain dataset id")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from node.apps.train_net import JOBS_PER_STEP, RoundReport, total_steps, train_on_network

    config = TrainConfig.quick(dataset) if quick else TrainConfig.full(dataset)
    client = _market(network, datadir, rpc_addr, wallet, from_label, block_time_ms)
    client.rpc.call("getinfo")  # fail early, in one line, if the node is not there
    steps = total_steps(config, max_steps)
    progress_console = Console(stderr=True)

    def say(line: str) -> None:
        # Progress goes to stderr, also with --json: stdout holds only the result.
        if as_json:
            click.echo(line, err=True)
        else:
            progress.console.print(line, highlight=False)

    def show_round(r: RoundReport) -> None:
        say(
            f"step {r.step + 1}/{steps} round {r.round + 1}: {r.jobs} job(s) "
            f"({r.posted} posted) claimed in {r.claimed_s:.2f} s, verified in "
            f"{r.verified_s:.2f} s"
        )

    def show_epoch(e: EpochStats) -> None:
        say(
            f"epoch {e.epoch + 1}: loss {e.loss:.4f}  train {e.train_accuracy:.3f}  "
            f"test {e.test_accuracy:.3f}"
        )

    progress = Progress(
        TextColumn("[bold]training on the network"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        console=progress_console,
        disable=as_json,
    )
    try:
        with progress:
            task = progress.add_task("steps", total=steps)
            run = train_on_network(
                client,
                config,
                reward,
                max_steps,
                on_step=lambda i, _h: progress.advance(task),
                on_epoch=show_epoch,
                job_timeout=job_timeout,
                on_round=show_round,
                say=say,
            )
    except KeyboardInterrupt:
        click.echo("error: training interrupted", err=True)
        raise SystemExit(130) from None
    summary = {
        "dataset": dataset,
        "preset": "quick" if quick else "full",
        "max_steps": max_steps,
        "jobs_per_step": JOBS_PER_STEP,
        **run.summary(),
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        console = Console()
        console.print(
            f"final test accuracy {summary['test_accuracy']:.3f} after {run.result.steps} steps; "
            f"{summary['jobs_posted']} jobs posted ({summary['jobs_reused']} reused), "
            f"{summary['model_records']} model records, {summary['wall_s']:.1f} s"
        )
        if summary["posts_resent"] or summary["records_resent"]:
            console.print(
                f"sent again after the node let them go (a reorg): {summary['posts_resent']} "
                f"job posts, {summary['records_resent']} model records"
            )
        if summary["claims_undone"]:
            console.print(
                f"claims taken back by a reorg before their C was fetched, waited on again: "
                f"{summary['claims_undone']}"
            )
        console.print(f"model {summary['model_id']}")
        verdict = "bit-identical" if run.bit_identical else "DIFFERENT"
        console.print(
            f"network weights {summary['weights_hash'][:16]}… vs local "
            f"{summary['local_weights_hash'][:16]}…: {verdict}"
        )
    if not run.bit_identical:
        raise SystemExit(EXIT_NOT_IDENTICAL)


def _train_on_chain_dataset(
    client: DataClient,
    dataset_id: bytes,
    host: str | None,
    fetch_timeout: float,
    quick: bool,
    max_steps: int | None,
    publish: bool,
    wait_s: float,
    as_json: bool,
) -> None:
    say = (lambda _: None) if as_json else click.echo

    def show_epoch(e: EpochStats) -> None:
        say(
            f"epoch {e.epoch + 1}: loss {e.loss:.4f}  train {e.train_accuracy:.3f}  "
            f"test {e.test_accuracy:.3f}"
        )

    say(f"reading dataset {dataset_id.hex()[:16]}… (the read is logged on chain first)")
    out, _ = fetch_train_publish(
        client,
        dataset_id,
        host,
        fetch_timeout,
        quick=quick,
        max_steps=max_steps,
        publish=publish,
        wait_s=wait_s,
        on_epoch=show_epoch,
    )
    if as_json:
        click.echo(json.dumps(out))
        return
    say(
        f"read {out['bytes']} bytes ({out['rows']} rows): access_log in block "
        f"{out['access_log_height']}, request nonce {out['request_nonce']}"
    )
    say(
        f"trained locally ({out['preset']} preset, {out['steps']} steps): "
        f"test accuracy {out['test_accuracy']:.3f}"
    )
    say(f"weights {out['weights_hash']}")
    if out["model_id"] is None:
        say(
            "not published (--no-publish); to publish it: pouw model publish "
            f"--dataset {out['dataset_id']} --weights-hash {out['weights_hash']} "
            f"--access-log {out['request_nonce']}"
        )
        return
    where = "" if out["publish_height"] is None else f" in block {out['publish_height']}"
    say(f"published model {out['model_id']}{where} (txid {out['publish_txid']})")


@click.group("model")
def model_cmd() -> None:
    """Models trained on the network and their on-chain lineage."""


model_publish_command(model_cmd)


@model_cmd.command("lineage")
@click.argument("model_id")
@_where
def model_lineage(
    model_id: str, network: str, datadir: str | None, rpc_addr: str | None, as_json: bool
) -> None:
    """Every recorded step of MODEL_ID: its jobs, weights hash, parent and height."""
    try:
        if len(bytes.fromhex(model_id)) != 32:
            raise ValueError
    except ValueError:
        raise ValueError(f"model id {model_id!r} is not 64 hex digits") from None
    model = _client(network, datadir, rpc_addr).call("getmodel", model_id)
    if as_json:
        click.echo(json.dumps(model))
        return
    click.echo(f"model {model['model_id']}  owner {model['owner']}")
    for s in model["steps"]:
        click.echo(
            f"step {s['step']:>4}  height {s['height']:>6}  weights {s['weights_hash'][:16]}  "
            f"parent {s['parent_hash'][:16]}  jobs {' '.join(j[:16] for j in s['job_ids'])}"
        )
