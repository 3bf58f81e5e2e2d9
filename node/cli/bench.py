"""`pouw bench …`: reproducible measurements that print JSON and draw plots."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from node.cli.testnet import make_lab, netns_options
from node.devtools.testnet import TOPOLOGIES

BACKEND_CHOICE = click.Choice(["cpu", "cuda", "auto"])


@click.group()
def bench() -> None:
    """Benchmarks (JSON on stdout with --json, PNG plots with --plot)."""


def _show(record: dict[str, object]) -> None:
    table = Table(title=f"pouw bench kernels — {record['m']}³, backend {record['backend']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in record.items():
        if key == "sgemm_blas":
            continue
        if isinstance(value, float):
            text = f"{value:.4g}" if not key.endswith("per_s") else f"{value / 1e9:.1f} G"
        else:
            text = str(value)
        table.add_row(key, text)
    Console().print(table)


@bench.command("kernels")
@click.option(
    "--size",
    type=click.IntRange(min=64),
    default=2048,
    show_default=True,
    help="Side of the square job (m = k = n); a multiple of 64.",
)
@click.option("--backend", type=BACKEND_CHOICE, default="cpu", show_default=True)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=None,
    help="Timed repeats per measure (default: more for small sizes).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Also measure sizes 256…2048 and draw them to this PNG.",
)
@click.option(
    "--isa",
    default=None,
    help="CPU kernel path to run (avx512_vnni, generic, amx_int8 where offered; 'all': every "
    "one this host can run, one record each). Default: the compile target's own.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (a list for --isa all)."
)
def bench_kernels_cmd(
    size: int,
    backend: str,
    repeats: int | None,
    plot_path: str | None,
    isa: str | None,
    as_json: bool,
) -> None:
    """Time one mining attempt against plain int8 matmul and numpy sgemm."""
    from benchmarks.kernels import PLOT_SIZES, bench_kernels, plot_kernels
    from kernels.transcript_cpu import available_paths

    if plot_path is not None:
        check_writable_file(plot_path, "--plot")  # now, not after minutes of measuring
    paths: list[str | None] = [isa]
    if isa == "all":
        paths = list(available_paths())
    elif isa is not None and isa not in available_paths():
        raise click.BadParameter(
            f"{isa!r} cannot run here; choose one of {', '.join(available_paths())} or all",
            param_hint="--isa",
        )
    sizes = [size] if plot_path is None else sorted({*PLOT_SIZES, size})
    records = []
    with Progress(disable=as_json or plot_path is None, transient=True) as progress:
        task = progress.add_task("measuring", total=len(sizes) * len(paths))
        for s in sizes:
            for path in paths:  # paths side by side per size: the same machine state
                records.append(bench_kernels(s, backend, repeats, path))
                progress.advance(task)
    if plot_path is not None:
        plot_kernels(records, plot_path)
    chosen = [r for r in records if r["m"] == size]
    if as_json:
        click.echo(json.dumps(chosen if isa == "all" else chosen[0]))
    else:
        for record in chosen:
            _show(record)
        if plot_path:
            click.echo(f"plot written to {plot_path}")


def check_writable_file(path: str, option: str) -> None:
    """ValueError naming ``option`` unless a file can be written at ``path``."""
    parent = Path(path).expanduser().absolute().parent
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{option} {path}: the folder {parent} is not writable")


@bench.command("gpu")
@click.option(
    "--size",
    type=click.IntRange(min=128),
    default=2048,
    show_default=True,
    help="Side of the square job (m = k = n); a multiple of 128.",
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=20, show_default=True, help="Timed repeats."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_gpu_cmd(size: int, repeats: int, as_json: bool) -> None:
    """Time the CUDA kernels with operands on the GPU against the peer int8 GEMM."""
    from benchmarks.gpu import bench_gpu

    if size % 128:
        raise click.BadParameter(f"{size} is not a multiple of 128", param_hint="--size")
    record = _measure(lambda: bench_gpu(size, repeats), ValueError)
    _print_record(record, as_json, f"pouw bench gpu — {size}³")


@bench.command("chain")
@click.option("--blocks", type=int, default=20, show_default=True, help="Blocks to import.")
@click.option(
    "--txs-per-block",
    type=int,
    default=400,
    show_default=True,
    help="Signed transfers in each block.",
)
@click.option(
    "--accounts",
    type=int,
    default=None,
    help="Prefunded senders (default: 1024, or more for larger blocks).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_chain_cmd(blocks: int, txs_per_block: int, accounts: int | None, as_json: bool) -> None:
    """Validate and apply real mined blocks in one process (signatures, PoUW, state)."""
    from benchmarks.chain import bench_chain

    with Progress(disable=as_json, transient=True) as progress:
        task = progress.add_task("mining blocks to import", total=blocks)
        record = bench_chain(
            blocks, txs_per_block, accounts, on_block=lambda: progress.advance(task)
        )
    _print_record(
        record,
        as_json,
        f"pouw bench chain — {record['blocks']} blocks × {record['txs_per_block']} transfers, "
        f"job {record['job_m']}×{record['job_k']}×{record['job_n']}",
    )


@bench.command("pipeline")
@click.option(
    "--txs",
    type=click.IntRange(min=250),
    default=4_000,
    show_default=True,
    help="Signed transfers (from 256 accounts) pushed through every stage.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_pipeline_cmd(txs: int, as_json: bool) -> None:
    """A node's CPU per transaction, stage by stage (decode, admit, relay, template, block)."""
    from benchmarks.pipeline import bench_pipeline
    from node import collector

    collector.tune()  # the node's collector settings: the stages are measured as it runs them
    with Progress(disable=as_json, transient=True) as progress:
        progress.add_task(f"timing {txs:,} transactions through every stage", total=None)
        record = bench_pipeline(txs)
    _print_record(record, as_json, f"pouw bench pipeline — µs per transaction, {txs:,} transfers")


@bench.command("template")
@click.option(
    "--txs",
    type=click.IntRange(min=1, max=20_000),
    default=17_000,
    show_default=True,
    help="Transfers in the node's pool, one per prefunded sender (at most a template's 20,000).",
)
@click.option(
    "--builds", type=click.IntRange(min=1), default=5, show_default=True,
    help="Fresh templates built, one after another.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_template_cmd(txs: int, builds: int, as_json: bool) -> None:
    """How long the event loop is held while a node builds a template from a full pool."""
    from benchmarks.template import bench_template

    with Progress(disable=as_json, transient=True) as progress:
        progress.add_task(f"filling a pool with {txs:,} transfers, building {builds}", total=None)
        record = _measure(lambda: bench_template(txs, builds), RuntimeError)
    shown = {k: v for k, v in record.items() if k != "per_build"}
    _print_record(
        record if as_json else shown, as_json, f"pouw bench template — {txs:,} pending transfers"
    )


def _print_record(record: dict[str, Any], as_json: bool, title: str) -> None:
    """The record as one JSON object, or as a table under ``title``."""
    if as_json:
        click.echo(json.dumps(record))
        return
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in _rows(record):
        text = f"{value:,.4g}" if isinstance(value, float) else str(value)
        table.add_row(key, text)
    Console().print(table)


def _rows(record: dict[str, Any]) -> list[tuple[str, Any]]:
    """The record's measures, a list of records (``bench gpu``'s candidates) one row per
    field of each, named ``key[i].field``."""
    rows: list[tuple[str, Any]] = []
    for key, value in record.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                rows.extend((f"{key}[{i}].{field}", v) for field, v in item.items())
        else:
            rows.append((key, value))
    return rows


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _measure(run: Callable[[], dict[str, Any]], *errors: type[Exception]) -> dict[str, Any]:
    """What ``run`` measured. Ctrl-C ends the command with exit code 130, one of
    ``errors`` with 1, each saying why on stderr (the benchmark has stopped its nodes)."""
    try:
        return run()
    except KeyboardInterrupt:
        _fail("interrupted; every node was stopped", 130)
    except errors as e:
        _fail(str(e), 1)


@bench.command("consensus")
@click.option("--nodes", type=int, default=4, show_default=True, help="Nodes in the testnet.")
@click.option(
    "--duration", type=click.FloatRange(min=1), default=30, show_default=True,
    help="Seconds of load.",
)  # fmt: skip
@click.option(
    "--warmup", type=click.FloatRange(min=0), default=0, show_default=True,
    help="Seconds of load and mining before the measured window (lets ASERT settle).",
)  # fmt: skip
@click.option(
    "--tx-rate",
    type=click.FloatRange(min=1),
    default=None,
    help="Transfers per second over all nodes [default: as fast as possible].",
)
@click.option(
    "--block-time",
    type=click.FloatRange(min=0.2),
    default=None,
    help="Target block interval in seconds [default: devnet's 2 s].",
)
@click.option("--topology", type=click.Choice(TOPOLOGIES), default="full", show_default=True)
@click.option(
    "--accounts", type=int, default=256, show_default=True,
    help="Prefunded devnet-i senders to use.",
)  # fmt: skip
@netns_options
@click.option(
    "--plot", "plot_dir", type=click.Path(file_okay=False), default=None,
    help="Write propagation_cdf.png and throughput.png here.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_consensus_cmd(
    nodes: int,
    duration: float,
    warmup: float,
    tx_rate: float | None,
    block_time: float | None,
    topology: str,
    accounts: int,
    use_netns: bool,
    delay: str,
    jitter: str,
    loss: str,
    plot_dir: str | None,
    as_json: bool,
) -> None:
    """Throughput, latency, propagation and stale blocks of a real testnet under load."""
    from benchmarks.consensus import bench_consensus
    from node.devtools.netns import NetnsUnavailable

    if not 1 <= nodes <= 64:
        _fail(f"--nodes must be between 1 and 64, got {nodes}")
    if plot_dir is not None:
        try:  # now, not after minutes of measuring
            Path(plot_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _fail(f"--plot {plot_dir}: cannot create it ({e.strerror})")
    try:
        lab = make_lab(nodes, use_netns, delay, jitter, loss)
    except NetnsUnavailable as e:
        _fail(str(e), 1)
    except ValueError as e:
        _fail(str(e))
    console = Console(stderr=True)
    record = _measure(
        lambda: bench_consensus(
            nodes,
            duration,
            tx_rate,
            block_time,
            topology,
            lab,
            accounts,
            plot_dir,
            on_progress=None if as_json else console.print,
            warmup=warmup,
        ),
        RuntimeError,
        ValueError,
        NetnsUnavailable,
    )
    _print_record(record, as_json, f"pouw bench consensus — {nodes} nodes, {duration:.0f}s")


@bench.command("sync")
@click.option("--blocks", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option(
    "--txs-per-block", type=click.IntRange(min=0), default=0, show_default=True,
    help="Signed transfers in each block.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_sync_cmd(blocks: int, txs_per_block: int, as_json: bool) -> None:
    """A fresh node syncs N real blocks from a peer: blocks per second."""
    from benchmarks.sync import bench_sync

    with Progress(disable=as_json, transient=True) as progress:
        build = progress.add_task("building blocks", total=blocks)
        sync = progress.add_task("syncing", total=blocks, start=False)

        def on_progress(phase: str, done: int) -> None:
            if phase == "build":
                progress.update(build, completed=done)
            else:
                progress.start_task(sync)
                progress.update(sync, completed=done)

        record = _measure(
            lambda: bench_sync(blocks, txs_per_block, on_progress=on_progress), RuntimeError
        )
    _print_record(record, as_json, f"pouw bench sync — {blocks} blocks")


@bench.command("market")
@click.option(
    "--nodes", type=click.IntRange(min=1, max=16), default=3, show_default=True,
    help="Mining nodes in the testnet.",
)  # fmt: skip
@click.option(
    "--duration", type=click.FloatRange(min=1), default=30, show_default=True,
    help="Seconds of the measured window (a stream of jobs is posted throughout).",
)  # fmt: skip
@click.option(
    "--warmup", type=click.FloatRange(min=1), default=10, show_default=True,
    help="Seconds of null-job mining that measure the network's MAC rate first.",
)  # fmt: skip
@click.option(
    "--offered-ratio", type=click.FloatRange(min=0.01), default=2.0, show_default=True,
    help="Job work offered in the window (a backlog posted before it, and the stream), "
    "as a multiple of the network's MAC rate.",
)  # fmt: skip
@click.option(
    "--shape", default=None,
    help="MxKxN of every job [default: 2048x4096x2048].",
)  # fmt: skip
@click.option(
    "--block-time-ms", type=click.IntRange(min=200), default=300, show_default=True,
    help="The testnet's devnet block time.",
)  # fmt: skip
@click.option(
    "--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
    help="Draw useful and total MAC/s over the window to this PNG.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_market_cmd(
    nodes: int,
    duration: float,
    warmup: float,
    offered_ratio: float,
    shape: str | None,
    block_time_ms: int,
    plot_path: str | None,
    as_json: bool,
) -> None:
    """A fresh testnet under a stream of posted jobs: the share of mined MACs that is
    useful (verified results) or duplicate, job latency, block interval."""
    from benchmarks.market import bench_market

    dims = _parse_shape(shape) if shape is not None else None
    console = Console(stderr=True)
    record = _measure(
        lambda: bench_market(
            nodes,
            duration,
            warmup,
            offered_ratio,
            dims,
            block_time_ms,
            plot_path,
            on_progress=None if as_json else console.print,
        ),
        RuntimeError,
        TimeoutError,
        OSError,
    )
    _print_record(record, as_json, f"pouw bench market — {nodes} nodes, {duration:g} s")


def _parse_shape(text: str) -> tuple[int, int, int]:
    try:
        m, k, n = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--shape {text!r} is not MxKxN") from None
    return m, k, n


@bench.command("job-shapes")
@click.option(
    "--burst-s", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
    help="Seconds per burst of attempts (the node's miner uses 0.5).",
)  # fmt: skip
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--threads", type=click.IntRange(min=1), default=1, show_default=True,
    help="Numba threads per attempt (more measure the machine's other load too).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_job_shapes_cmd(burst_s: float, rounds: int, threads: int, as_json: bool) -> None:
    """A miner's MAC/s on posted jobs of each shape over its null-job MAC/s (devnet, CPU)."""
    from benchmarks.jobshapes import bench_job_shapes

    record = bench_job_shapes(burst_s=burst_s, rounds=rounds, threads=threads)
    if as_json:
        click.echo(json.dumps(record))
        return
    table = Table(title="pouw bench job-shapes — rate on each job / rate on the null job")
    for column in ("shape", "allowed", "rate_vs_null", "attempt_ms", "outside_kernel_ms"):
        table.add_column(column, justify="right")
    for row in record["shapes"]:
        table.add_row(
            "x".join(map(str, row["shape"])),
            str(row["allowed"]),
            f"{row['rate_vs_null']:.3f}",
            f"{row['attempt_ms']:.2f}",
            f"{row['outside_kernel_ms']:.2f}",
        )
    Console().print(table)
