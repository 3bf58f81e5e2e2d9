"""`pouw data register|grant|revoke|fetch|audit|pubkey`: secure data sharing (PROTOCOL §10).

The owner's data keys stay on the owner's machine, in ``dataset_keys/`` beside
the wallet; the node only ever sees encrypted chunks and sealed keys.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import click

from consensus.keys import PrivateKey, address, address_to_text, parse_address
from node.apps.data_train import fetch_train_publish, parse_csv
from node.cli.job import common, renamed_option
from node.cli.node import _client, _load_wallet, _wallet_path
from node.client.datashare import (
    DEFAULT_CHUNK_SIZE,
    UPLOAD_BATCH_BYTES,
    DataClient,
    DataShareError,
    check_dataset_size,
    read_dataset,
)


def data_client(
    network: str, datadir: str | None, wallet: str | None, rpc_addr: str | None, bt: int | None
) -> DataClient:
    """The wallet's DataClient on its node, from the common --network/--datadir/--wallet/
    --rpc/--devnet-block-time-ms options; its data keys live beside the wallet."""
    from consensus.params import network as network_params
    from consensus.params import with_block_time

    params = network_params(network)
    if bt:
        params = with_block_time(params, bt)
    path = _wallet_path(network, datadir, wallet)
    key = _load_wallet(path)
    return DataClient(
        _client(network, datadir, rpc_addr), key, params, path.parent / "dataset_keys"
    )


def _dataset_id(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ValueError(f"a dataset id is 64 hex digits, got {text!r}")
    return value


def _public_key(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ValueError(
            f"{text!r} is not a public key (64 hex digits); the grantee prints it with "
            "'pouw data pubkey'"
        )
    return value


def _emit(out: dict[str, Any], as_json: bool) -> None:
    click.echo(json.dumps(out) if as_json else "\n".join(f"{k}: {v}" for k, v in out.items()))


def _wait(client: DataClient, out: dict[str, Any], wait_s: float) -> None:
    if wait_s > 0:
        out["height"] = client.wait_confirmed(out["txid"], wait_s)


WAIT = click.option(
    "--wait",
    "wait_s",
    type=float,
    default=120.0,
    show_default=True,
    help="Wait up to S s for the transaction to be mined (0: do not wait).",
)


@click.group("data")
def data_cmd() -> None:
    """Share encrypted datasets: every read is authorized and logged on chain."""


@data_cmd.command("pubkey")
@common
def data_pubkey(network, datadir, wallet, rpc_addr, block_time_ms, as_json) -> None:
    """Print this wallet's public key, one line (an owner needs it to grant you access:
    `pouw data grant DATASET $(pouw data pubkey)`); --json adds the address."""
    key = _load_wallet(_wallet_path(network, datadir, wallet))
    if as_json:
        _emit({"public_key": key.public_key.hex(), "address": address_to_text(key.address)}, True)
    else:
        click.echo(key.public_key.hex())


@data_cmd.command("register")
@common
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--meta", default="{}", help="Public metadata, a JSON object (schema, name…).")
@click.option("--chunk-size", type=click.IntRange(1, 1 << 20), default=DEFAULT_CHUNK_SIZE)
@click.option(
    "--no-check",
    is_flag=True,
    help="Register a .csv as it is, without checking that `pouw train --dataset` can read "
    "it (header row, numeric features, integer class label last).",
)
@WAIT
def data_register(
    network,
    datadir,
    wallet,
    rpc_addr,
    block_time_ms,
    as_json,
    file,
    meta,
    chunk_size,
    no_check,
    wait_s,
) -> None:
    """Encrypt FILE, host its encrypted chunks on the node and register it on chain.

    A dataset holds at most 256 MiB and 4096 chunks (so smaller chunks lower the
    limit); the chunks are uploaded in batches of about 1 MiB.
    """
    from rich.progress import Progress

    try:
        if not isinstance(json.loads(meta), dict):
            raise ValueError
    except ValueError:
        raise ValueError(f"--meta must be a JSON object, got {meta!r}") from None
    size = Path(file).stat().st_size
    if not size:
        raise ValueError(f"{file} is empty")
    check_dataset_size(size, chunk_size)  # before reading a file too large to host
    data = Path(file).read_bytes()
    if Path(file).suffix.lower() == ".csv" and not no_check:
        # What `pouw train --dataset` will need, checked before anything is paid for.
        try:
            parse_csv(data)
        except ValueError as e:
            raise ValueError(
                f"{file}: {e} (training needs a header row, numeric features and an integer "
                "class label last; --no-check registers it as it is)"
            ) from None
    client = data_client(network, datadir, wallet, rpc_addr, block_time_ms)
    with Progress(disable=as_json or len(data) <= UPLOAD_BATCH_BYTES) as progress:
        task = progress.add_task("uploading encrypted chunks", total=None)
        out = client.register(
            data,
            meta,
            chunk_size,
            lambda done, total: progress.update(task, completed=done, total=total),
        )
    _wait(client, out, wait_s)
    _emit(out, as_json)


@data_cmd.command("grant")
@common
@click.argument("dataset")
@click.argument("public_key", metavar="GRANTEE")
@click.option(
    "--expires",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Blocks until the grant expires.",
)
@WAIT
def data_grant(
    network,
    datadir,
    wallet,
    rpc_addr,
    block_time_ms,
    as_json,
    dataset,
    public_key,
    expires,
    wait_s,
) -> None:
    """Grant GRANTEE (an address or a public key) read access to DATASET.

    The data key is sealed to the grantee's public key: for an address, the node
    finds it in a transaction the address has sent.
    """
    ds = _dataset_id(dataset)
    client = data_client(network, datadir, wallet, rpc_addr, block_time_ms)
    if len(public_key) == 64:
        pk = _public_key(public_key)
    else:
        who = address_to_text(parse_address(public_key))
        pk = bytes.fromhex(client.rpc.call("getpublickey", who))
    out = client.grant(ds, pk, expires)
    _wait(client, out, wait_s)
    _emit(out, as_json)


@data_cmd.command("revoke")
@common
@click.argument("dataset")
@click.argument("grantee")
@WAIT
def data_revoke(
    network, datadir, wallet, rpc_addr, block_time_ms, as_json, dataset, grantee, wait_s
) -> None:
    """Stop GRANTEE's (an address or public key) future reads of DATASET."""
    ds = _dataset_id(dataset)
    who = address(_public_key(grantee)) if len(grantee) == 64 else parse_address(grantee)
    client = data_client(network, datadir, wallet, rpc_addr, block_time_ms)
    out = client.revoke(ds, who)
    _wait(client, out, wait_s)
    _emit(out, as_json)


@data_cmd.command("fetch")
@common
@click.argument("dataset")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False))
@click.option("--host", default=None, help="Hosting node's P2P host:port [default: our node].")
@click.option(
    "--fetch-timeout",
    type=click.FloatRange(min=1),
    default=None,
    help="Seconds to wait for the access_log and for the read [default: 120].",
)
@click.option("--timeout", "old_timeout", type=click.FloatRange(min=1), default=None, hidden=True)
def data_fetch(
    network,
    datadir,
    wallet,
    rpc_addr,
    block_time_ms,
    as_json,
    dataset,
    out_path,
    host,
    fetch_timeout,
    old_timeout,
) -> None:
    """Log the read on chain, then download, verify and decrypt DATASET into --out."""
    timeout = renamed_option(fetch_timeout, old_timeout, "--fetch-timeout", "--timeout") or 120.0
    ds = _dataset_id(dataset)
    client = data_client(network, datadir, wallet, rpc_addr, block_time_ms)
    data, out = client.fetch(ds, host, timeout)
    Path(out_path).write_bytes(data)
    out["out"] = out_path
    _emit(out, as_json)


@data_cmd.command("audit")
@common
@click.argument("dataset")
def data_audit(network, datadir, wallet, rpc_addr, block_time_ms, as_json, dataset) -> None:
    """Who was granted, revoked and read DATASET, block by block."""
    audit = _client(network, datadir, rpc_addr).call("getaudit", _dataset_id(dataset).hex())
    if as_json:
        click.echo(json.dumps(audit))
        return
    click.echo(f"dataset {audit['dataset_id']}  owner {audit['owner']}")
    click.echo(f"{'height':>7}  {'event':<10}  {'by':<42}  detail")
    for e in audit["events"]:
        detail = ""
        if "grantee" in e:
            detail = f"grantee {e['grantee']}"
        if "expiry" in e:
            detail += f" until {e['expiry']}"
        if "request_nonce" in e:
            detail = f"request {e['request_nonce'][:16]}"
        if "model_id" in e:
            detail = f"model {e['model_id'][:16]} from {detail}"
        click.echo(f"{e['height']:>7}  {e['event']:<10}  {e['by']:<42}  {detail}")
    _echo_models(audit.get("models", []))
    click.echo(f"reads served by this node: {len(audit['served_reads'])}")
    for r in audit["served_reads"]:
        click.echo(f"  {r['reader']}  request {r['request_nonce'][:16]}  {r['chunks']} chunks")


def _echo_models(models: list[dict[str, Any]]) -> None:
    click.echo(f"models derived from it: {len(models)}")
    for m in models:
        click.echo(
            f"  {m['model_id'][:16]}  by {m['publisher']}  weights {m['weights_hash'][:16]}  "
            f"from request {m['access_log_nonce'][:16]}  height {m['height']}"
        )


def _hex32(text: str, what: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 32:
        raise ValueError(f"{what} is 64 hex digits, got {text!r}")
    return value


def model_publish_command(group: click.Group) -> None:
    """Add `publish` to the `pouw model` group (defined with the training commands)."""

    @group.command("publish")
    @common
    @click.option("--dataset", required=True, help="The dataset id the model was trained on.")
    @click.option("--weights-hash", required=True, help="The model's weights hash (64 hex).")
    @click.option(
        "--access-log",
        "access_log",
        required=True,
        help="The request nonce of your access_log of the dataset (printed by 'data fetch').",
    )
    @click.option(
        "--model-id",
        default=None,
        help="64 hex, the first 40 your address's [default: derived from the rest].",
    )
    @click.option("--meta", default="{}", help="Public metadata, a JSON object.")
    @WAIT
    def model_publish(
        network,
        datadir,
        wallet,
        rpc_addr,
        block_time_ms,
        as_json,
        dataset,
        weights_hash,
        access_log,
        model_id,
        meta,
        wait_s,
    ) -> None:
        """Publish a model trained on a dataset you read, with its provenance (on chain)."""
        json.loads(meta)  # refuse malformed metadata before paying a fee for it
        client = data_client(network, datadir, wallet, rpc_addr, block_time_ms)
        out = client.publish_model(
            _dataset_id(dataset),
            _hex32(weights_hash, "a weights hash"),
            _hex32(access_log, "an access_log request nonce"),
            None if model_id is None else _hex32(model_id, "a model id"),
            meta,
        )
        _wait(client, out, wait_s)
        _emit(out, as_json)


# ------------------------------------------------------------------ demo


def breast_cancer_csv() -> bytes:
    """scikit-learn's Wisconsin breast-cancer table (569 patients) as CSV bytes."""
    from sklearn.datasets import load_breast_cancer

    ds = load_breast_cancer()
    header = ",".join([*(n.replace(" ", "_") for n in ds.feature_names), "malignant"])
    rows = [
        ",".join([*(f"{v:.6g}" for v in x), str(int(t == 0))])
        for x, t in zip(ds.data, ds.target, strict=True)
    ]
    return ("\n".join([header, *rows]) + "\n").encode()


def run_healthcare_demo(client_for: Any, host: str, say: Any, workdir: Path) -> dict[str, Any]:
    """Hospital registers, grants a researcher, the researcher reads (logged), trains
    locally and publishes the model with its provenance, a stranger and then the revoked
    researcher are refused, and the audit shows it all."""
    hospital = client_for(PrivateKey.from_label("devnet-0"), workdir / "hospital")
    researcher = client_for(PrivateKey.from_label("devnet-1"), workdir / "researcher")
    stranger = client_for(PrivateKey.generate(), workdir / "stranger")
    data = breast_cancer_csv()
    reg = hospital.register(data, '{"name": "wisconsin breast cancer", "rows": 569}', 16384)
    ds = bytes.fromhex(reg["dataset_id"])
    hospital.wait_confirmed(reg["txid"], 120)
    say(f"hospital registered dataset {reg['dataset_id'][:16]} ({len(data)} bytes, encrypted)")
    grant = hospital.grant(ds, researcher.key.public_key.data, 1000)
    hospital.wait_confirmed(grant["txid"], 120)
    say(f"hospital granted {grant['grantee']} until block {grant['expiry_height']}")
    model, got = fetch_train_publish(researcher, ds, host, 120, quick=True)
    ok = got == data
    say(
        f"researcher read it: access_log in block {model['access_log_height']}, "
        f"decrypted matches: {ok}"
    )
    say(
        f"researcher trained locally (accuracy {model['test_accuracy']:.3f}) and published "
        f"model {model['model_id'][:16]}, weights {model['weights_hash'][:16]}, from that read"
    )
    refusals = []
    # The stranger presents the researcher's confirmed access_log to the host.
    audit = hospital.rpc.call("getaudit", ds.hex())
    used = bytes.fromhex(audit["access_logs"][0])
    try:
        asyncio.run(
            read_dataset(f"http://{host}", stranger.key, hospital.params.chain_id, ds, used)
        )
        refusals.append("stranger: SERVED (unexpected)")
    except DataShareError as e:
        refusals.append(f"stranger: {e}")
    revoke = hospital.revoke(ds, researcher.key.address)
    hospital.wait_confirmed(revoke["txid"], 120)
    say(f"hospital revoked {revoke['grantee']}")
    try:
        researcher.fetch(ds, host, 120)
        refusals.append("revoked researcher: SERVED (unexpected)")
    except DataShareError as e:
        refusals.append(f"revoked researcher: {e}")
    for line in refusals:
        say(f"refused, {line}")
    return {
        "dataset_id": ds.hex(),
        "read_matches": ok,
        "model": model,
        "refusals": refusals,
        "audit": hospital.rpc.call("getaudit", ds.hex()),
    }


@click.group("demo")
def demo_cmd() -> None:
    """Guided demonstrations on a throwaway local devnet node."""


@demo_cmd.command("healthcare")
@click.option("--json", "as_json", is_flag=True)
@click.option("--block-time-ms", type=click.IntRange(min=100), default=300, show_default=True)
def demo_healthcare(as_json: bool, block_time_ms: int) -> None:
    """A hospital shares a breast-cancer dataset with a researcher, every read on chain."""
    from consensus.params import network as network_params
    from consensus.params import with_block_time
    from node.devtools.testnet import Testnet

    params = with_block_time(network_params("devnet"), block_time_ms)
    say = (lambda _: None) if as_json else click.echo
    with tempfile.TemporaryDirectory(prefix="pouw-demo-") as tmp:
        net = Testnet(Path(tmp) / "net", 1, block_time_ms=block_time_ms)
        net.start(on_progress=say)
        try:
            node = net.nodes[0]
            assert node.rpc is not None
            rpc = node.rpc
            result = run_healthcare_demo(
                lambda key, d: DataClient(rpc, key, params, d / "dataset_keys"),
                node.p2p,
                say,
                Path(tmp),
            )
        finally:
            net.stop()
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo("\naudit (from the chain):")
    click.echo(f"{'height':>7}  {'event':<10}  {'by':<42}  detail")
    for e in result["audit"]["events"]:
        detail = e.get("grantee", "") or e.get("request_nonce", "")[:16]
        if "model_id" in e:
            detail = f"model {e['model_id'][:16]} from request {detail}"
        click.echo(f"{e['height']:>7}  {e['event']:<10}  {e['by']:<42}  {detail}")
    _echo_models(result["audit"]["models"])
    click.echo(f"reads served by the host: {len(result['audit']['served_reads'])}")
    if not result["read_matches"] or any("SERVED" in r for r in result["refusals"]):
        raise RuntimeError("the demo did not behave as it should")
