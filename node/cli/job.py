"""`pouw job submit|status|result|challenge|cancel`: the compute market from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
import numpy as np

from consensus.params import NETWORKS
from node.amounts import BASE_UNITS, AmountType, amount_option, format_amount, with_amounts
from node.cli.node import _client, _load_wallet, _wallet_path
from node.client.rpc import RpcClient

if TYPE_CHECKING:  # the market client brings Numba and aiohttp: imported where it runs
    from node.client.market import MarketClient, SubmittedJob

NETWORK_CHOICE = click.Choice(sorted(NETWORKS))


NPY_MAGIC = b"\x93NUMPY"


def _load_npy(path: str, name: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except FileNotFoundError:
        raise ValueError(f"--{name}: {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"--{name}: {path} is a directory, not a .npy file") from None
    if magic != NPY_MAGIC:
        raise ValueError(
            f"--{name}: {path} is not a .npy file (write one with numpy.save(path, array))"
        )
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ValueError(f"--{name}: {path} is not a .npy array ({e})") from None
    if not isinstance(x, np.ndarray):
        raise ValueError(f"--{name}: {path} holds no array")
    return x


def _market(
    network: str,
    datadir: str | None,
    wallet: str | None,
    rpc_addr: str | None,
    block_time_ms: int | None,
) -> MarketClient:
    from consensus.params import network as network_params
    from consensus.params import with_block_time
    from node.client.market import MarketClient

    params = network_params(network)
    if block_time_ms:
        params = with_block_time(params, block_time_ms)
    key = _load_wallet(_wallet_path(network, datadir, wallet))
    return MarketClient(_client(network, datadir, rpc_addr), key, params)


T = TypeVar("T")


def renamed_option(new: T | None, old: T | None, new_name: str, old_name: str) -> T | None:
    """The value of an option that had another name: the old name still works (a hidden,
    deprecated alias, with a warning on stderr); both at once is a usage error."""
    if old is None:
        return new
    if new is not None:
        raise click.UsageError(f"{old_name} is the old name of {new_name}: give only {new_name}")
    click.echo(f"warning: {old_name} is deprecated, use {new_name}", err=True)
    return old


def common(f: Any) -> Any:
    for opt in reversed(
        [
            click.option("--network", type=NETWORK_CHOICE, default="devnet", show_default=True),
            click.option("--datadir", type=click.Path(file_okay=False), default=None),
            click.option(
                "--wallet",
                type=click.Path(dir_okay=False),
                default=None,
                help="Wallet key file [default: <datadir>/wallet.key].",
            ),
            click.option("--rpc", "rpc_addr", default=None, help="Node RPC host:port."),
            click.option(
                "--devnet-block-time-ms",
                "block_time_ms",
                type=int,
                default=None,
                help="The node's devnet block time, if it was changed.",
            ),
            click.option("--json", "as_json", is_flag=True),
        ]
    ):
        f = opt(f)
    return f


@click.group("job")
def job() -> None:
    """Post matrix products to the network and fetch verified results."""


@job.command("submit")
@common
@click.option("--a", "a_path", required=True, help="A as a .npy int array (m×k, int7).")
@click.option("--b", "b_path", required=True, help="B as a .npy int array (k×n, int7).")
@amount_option(
    "--reward", default=None, minimum=1, help="Reward escrowed for the miner [required]."
)
@click.option("--fee", "old_fee", type=AmountType(minimum=1), default=None, hidden=True)
@BASE_UNITS
@click.option(
    "--expiry",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Blocks until the job expires.",
)
@click.option("--wait", "wait_s", type=float, default=None, help="Wait up to S s until mined.")
def job_submit(
    network: str,
    datadir: str | None,
    wallet: str | None,
    rpc_addr: str | None,
    block_time_ms: int | None,
    as_json: bool,
    a_path: str,
    b_path: str,
    reward: int | None,
    old_fee: int | None,
    base_units: bool,
    expiry: int,
    wait_s: float | None,
) -> None:
    """Post A·B as a job (nothing is sent if the operands are invalid).

    A product below the network's minimum job is posted padded with zeros; the
    reward pays for the padded job. Pass the printed result_shape to `job result
    --shape` to get A·B without the padding.
    """
    reward = renamed_option(reward, old_fee, "--reward", "--fee")
    if reward is None:
        raise click.UsageError("Missing option '--reward'.")
    a, b = _load_npy(a_path, "a"), _load_npy(b_path, "b")
    client = _market(network, datadir, wallet, rpc_addr, block_time_ms)
    from node.client.market import PostInterrupted

    def summary(submitted: SubmittedJob) -> dict[str, Any]:
        spec = submitted.spec
        return {
            "job_id": submitted.job_id.hex(),
            "txid": submitted.txid,
            "posted_shape": f"{spec.m}x{spec.k}x{spec.n}",
            "result_shape": f"{a.shape[0]}x{b.shape[1]}",
            "reward": format_amount(reward, base_units),
        }

    try:
        submitted = client.submit(a, b, reward=reward, expiry_blocks=expiry)
    except PostInterrupted as e:  # Ctrl-C while it was sent: it was, and here is its id
        _interrupted(summary(e.submitted), as_json)
    # The job_post is sent: whatever ends the wait, the user gets the whole job id.
    try:
        out = summary(submitted)
        if wait_s is not None:
            out["status"] = client.wait(submitted.job_id, timeout=wait_s)["status"]
    except TimeoutError:
        out["status"] = "open"
        _emit(out, as_json)
        raise click.ClickException(
            f"job {out['job_id']} was posted but not mined within {wait_s:g} s; "
            f"follow it with `pouw job status {out['job_id']}`"
        ) from None
    except KeyboardInterrupt:
        _interrupted(summary(submitted), as_json)
    _emit(out, as_json)


def _interrupted(out: dict[str, Any], as_json: bool) -> NoReturn:
    """Ctrl-C once the job_post was sent: its whole id on stdout, how to follow or
    withdraw it on stderr, exit code 130."""
    out["status"] = "interrupted"
    _emit(out, as_json)
    click.echo(
        f"interrupted: job {out['job_id']} was posted; `pouw job status "
        f"{out['job_id']}` follows it, `pouw job cancel {out['job_id']}` withdraws it",
        err=True,
    )
    raise SystemExit(130) from None


def _emit(out: dict[str, Any], as_json: bool) -> None:
    click.echo(json.dumps(out) if as_json else "\n".join(f"{k}: {v}" for k, v in out.items()))


def resolve_job_id(rpc: RpcClient, text: str) -> str:
    """A full job id, or the one on-chain job whose id starts with ``text``."""
    prefix = text.lower()
    if not prefix or any(c not in "0123456789abcdef" for c in prefix) or len(prefix) > 64:
        raise ValueError(f"job id {text!r} is not hex (64 digits, or a unique prefix)")
    if len(prefix) == 64:
        return prefix
    matches = [j["job_id"] for j in rpc.call("listjobs") if j["job_id"].startswith(prefix)]
    if not matches:
        raise ValueError(f"no job on chain has an id starting with {text}")
    if len(matches) > 1:
        raise ValueError(f"{len(matches)} jobs have ids starting with {text}: give more digits")
    return str(matches[0])


def _parse_shape(text: str | None, rows: int, cols: int) -> tuple[int, int]:
    """``MxN`` as (M, N), within the posted rows×cols; None means all of it."""
    if text is None:
        return rows, cols
    try:
        m, n = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--shape {text!r} is not MxN") from None
    if not (0 < m <= rows and 0 < n <= cols):
        raise ValueError(f"--shape {text}: the posted result is {rows}x{cols}")
    return m, n


JOB_AMOUNTS = ("reward", "bond", "claim_bond")
"""The fields of a job's record (RPC getjob) that are amounts."""


@job.command("status")
@common
@click.argument("job_id")
@BASE_UNITS
def job_status(
    network: str,
    datadir: str | None,
    wallet: str | None,
    rpc_addr: str | None,
    block_time_ms: int | None,
    as_json: bool,
    job_id: str,
    base_units: bool,
) -> None:
    """The job's on-chain status (open, mined, paid, refunded, cancelled); its reward,
    and the claim's bond, in coins.

    JOB_ID is the job's id or a prefix of it that only one job has."""
    rpc = _client(network, datadir, rpc_addr)
    record = rpc.call("getjob", resolve_job_id(rpc, job_id))
    status = with_amounts(record, JOB_AMOUNTS, base_units)
    click.echo(json.dumps(status) if as_json else "\n".join(f"{k}: {v}" for k, v in status.items()))


@job.command("result")
@common
@click.argument("job_id")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="Where to write C as .npy (int32).",
)
@click.option(
    "--shape",
    "result_shape",
    default=None,
    help="MxN: keep only C's top-left M×N block, i.e. strip the padding that "
    "`job submit` added (it prints result_shape) [default: the whole posted C].",
)
def job_result(
    network: str,
    datadir: str | None,
    wallet: str | None,
    rpc_addr: str | None,
    block_time_ms: int | None,
    as_json: bool,
    job_id: str,
    out_path: str,
    result_shape: str | None,
) -> None:
    """Fetch C, check it with Freivalds, write it; a wrong C is reported and fraud-proved.

    C is there once a claim is in a block or, earlier, pending in the node's mempool; a
    wrong C under a pending claim is proved once a block holds the claim (up to 2 min).
    A C the network keeps back (exit code 4) is challenged: the claim must reveal random
    rows of it on chain or the job is refunded."""
    from node.client.market import ResultWithheld, WrongResult
    from node.relay.blobs import decode_matrix

    client = _market(network, datadir, wallet, rpc_addr, block_time_ms)
    job_id = resolve_job_id(client.rpc, job_id)
    jid = bytes.fromhex(job_id)
    ops = client.rpc.call("getoperands", job_id)
    a, b = decode_matrix(bytes.fromhex(ops["a"])), decode_matrix(bytes.fromhex(ops["b"]))
    rows, cols = _parse_shape(result_shape, a.shape[0], b.shape[1])
    try:
        c = client.result(jid, a, b)[:rows, :cols]
    except WrongResult as e:
        click.echo(
            json.dumps({"verified": False, "error": str(e), "fraud_txid": e.fraud_txid})
            if as_json
            else f"WRONG RESULT: {e}"
        )
        raise SystemExit(3) from None
    except ResultWithheld as e:
        click.echo(
            json.dumps(
                {
                    "verified": False,
                    "error": str(e),
                    "challenge_txid": e.challenge_txid,
                    "rows_unrevealed": list(e.rows),
                    "due": e.due,
                }
            )
            if as_json
            else f"NO RESULT: {e}"
        )
        raise SystemExit(4) from None
    np.save(Path(out_path), c)
    click.echo(
        json.dumps({"verified": True, "shape": list(c.shape), "out": out_path})
        if as_json
        else f"verified {c.shape[0]}x{c.shape[1]} result written to {out_path}"
    )


def _parse_rows(text: str | None) -> tuple[int, ...] | None:
    """--rows "3,17,40": the rows of C a challenge names; None draws them at random."""
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a comma-separated list of row numbers", param_hint="--rows"
        ) from None


@job.command("challenge")
@common
@click.argument("job_id")
@click.option(
    "--rows",
    "rows_text",
    default=None,
    help="Rows of C the claim must reveal, comma-separated (1 to 8) [default: 8 drawn at "
    "random with OS randomness].",
)
def job_challenge(
    network: str,
    datadir: str | None,
    wallet: str | None,
    rpc_addr: str | None,
    block_time_ms: int | None,
    as_json: bool,
    job_id: str,
    rows_text: str | None,
) -> None:
    """Ask the claim on your mined job to reveal rows of C on chain (result_challenge):
    unrevealed when the job falls due, the job is refunded. `job result` sends one by
    itself when it cannot fetch C.

    JOB_ID is the job's id or a prefix of it that only one job has."""
    rows = _parse_rows(rows_text)
    client = _market(network, datadir, wallet, rpc_addr, block_time_ms)
    job_id = resolve_job_id(client.rpc, job_id)
    txid, sent = client.challenge(bytes.fromhex(job_id), rows)
    click.echo(
        json.dumps({"job_id": job_id, "challenge_txid": txid, "rows": list(sent)})
        if as_json
        else f"job {job_id[:16]}: rows {list(sent)} challenged in tx {txid}"
    )


@job.command("cancel")
@common
@click.argument("job_id")
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Wait up to S seconds for the job's expiry height (the chain refuses a cancel "
    "before), then for the cancel to be mined.",
)
def job_cancel(
    network: str,
    datadir: str | None,
    wallet: str | None,
    rpc_addr: str | None,
    block_time_ms: int | None,
    as_json: bool,
    job_id: str,
    wait_s: float,
) -> None:
    """Refund the reward of your open job once it has expired unclaimed (job_cancel).

    JOB_ID is the job's id or a prefix of it that only one job has."""
    client = _market(network, datadir, wallet, rpc_addr, block_time_ms)
    job_id = resolve_job_id(client.rpc, job_id)
    jid = bytes.fromhex(job_id)
    status = client.status(jid)
    if status["status"] != "open":
        raise ValueError(f"job {job_id[:16]} is {status['status']}: only an open job is cancelled")
    deadline = time.monotonic() + wait_s
    while (height := client.rpc.call("getinfo")["height"]) < status["expiry"]:
        if time.monotonic() >= deadline:
            raise ValueError(
                f"job {job_id[:16]} is open until height {status['expiry']} (now {height}): "
                "cancel it after that, or pass --wait SECONDS"
            )
        time.sleep(0.5)
    out: dict[str, Any] = {"job_id": job_id, "cancel_txid": client.cancel(jid)}
    if wait_s > 0:
        left = max(1.0, deadline - time.monotonic())
        out["status"] = client.wait(jid, timeout=left, until=("cancelled",))["status"]
    click.echo(
        json.dumps(out)
        if as_json
        else f"job {job_id[:16]} cancelled in tx {out['cancel_txid']}"
        + ("" if "status" not in out else f" ({out['status']})")
    )
