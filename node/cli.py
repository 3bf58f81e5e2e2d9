"""The `pouw` command line.

Every command has --help; errors a user can cause (a bad argument, a bad
file, a missing GPU) print one line and exit non-zero, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from node.cli_bench import bench

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
        except (OSError, RuntimeError) as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(EXIT_FAILURE)


@click.group(cls=PouwGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pouwnet", prog_name="pouw")
def cli() -> None:
    """pouwnet: a blockchain whose proof of work is useful matrix multiplication."""


cli.add_command(bench)


def main() -> None:
    cli.main(prog_name="pouw")


if __name__ == "__main__":
    sys.exit(main())
