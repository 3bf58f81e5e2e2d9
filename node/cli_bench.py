"""`pouw bench …`: reproducible measurements that print JSON and draw plots."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_kernels_cmd(
    size: int, backend: str, repeats: int | None, plot_path: str | None, as_json: bool
) -> None:
    """Time one mining attempt against plain int8 matmul and numpy sgemm."""
    from benchmarks.kernels import PLOT_SIZES, bench_kernels, plot_kernels

    if plot_path is None:
        record = bench_kernels(size, backend, repeats)
    else:
        sizes = sorted({s for s in PLOT_SIZES if s != size} | {size})
        records = []
        with Progress(disable=as_json, transient=True) as progress:
            task = progress.add_task("measuring sizes", total=len(sizes))
            for s in sizes:
                records.append(bench_kernels(s, backend, repeats))
                progress.advance(task)
        plot_kernels(records, plot_path)
        record = next(r for r in records if r["m"] == size)
    if as_json:
        click.echo(json.dumps(record))
    else:
        _show(record)
        if plot_path:
            click.echo(f"plot written to {plot_path}")


def _show_chain(record: dict[str, object]) -> None:
    table = Table(
        title=(
            f"pouw bench chain — {record['blocks']} blocks × {record['txs_per_block']} transfers, "
            f"job {record['job_m']}×{record['job_k']}×{record['job_n']}"
        )
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in record.items():
        text = f"{value:,.4g}" if isinstance(value, float) else str(value)
        table.add_row(key, text)
    Console().print(table)


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
    if as_json:
        click.echo(json.dumps(record))
    else:
        _show_chain(record)
