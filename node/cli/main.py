"""The `pouw` command line.

Every command has --help; errors a user can cause (a bad argument, a bad
file, a missing GPU) print one line and exit non-zero, never a traceback.
"""

from __future__ import annotations

from typing import Any

import click

from consensus.errors import ConsensusError
from kernels.memory import keep_freed_memory
from node.cli.bench import bench
from node.cli.data import data_cmd, demo_cmd
from node.cli.job import job
from node.cli.market import market_cmd
from node.cli.node import node_cmd, rpc_cmd, wallet
from node.cli.testnet import testnet_cmd
from node.cli.train import model_cmd, train_cmd
from node.client.rpc import RpcCallError

EXIT_USAGE = 2
EXIT_FAILURE = 1


class PouwGroup(click.Group):
    """A click group that turns expected errors into a one-line message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except ValueError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        except ConsensusError as exc:  # e.g. a value no transaction can encode
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_USAGE)
        except RpcCallError as exc:
            click.echo(f"error: the node refused: {exc}", err=True)
            ctx.exit(EXIT_FAILURE)
        except (OSError, RuntimeError) as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_FAILURE)


@click.group(cls=PouwGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pouwnet", prog_name="pouw")
def cli() -> None:
    """pouwnet: a blockchain whose proof of work is useful matrix multiplication."""


cli.add_command(bench)
cli.add_command(node_cmd)
cli.add_command(wallet)
cli.add_command(rpc_cmd)
cli.add_command(testnet_cmd)
cli.add_command(job)
cli.add_command(market_cmd)
cli.add_command(train_cmd)
cli.add_command(model_cmd)
cli.add_command(data_cmd)
cli.add_command(demo_cmd)


def main() -> None:
    # Attempts reuse the pages of the last one instead of faulting in new ones
    # (kernels/memory.py): before anything allocates, so nodes and benchmarks run alike.
    keep_freed_memory()
    # POUW_<COMMAND>_<OPTION> (e.g. POUW_NODE_LOG_LEVEL) sets any option (node/config.py).
    cli.main(prog_name="pouw", auto_envvar_prefix="POUW")
