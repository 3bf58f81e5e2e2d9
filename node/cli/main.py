"""The `pouw` command line.

Every command has --help; errors a user can cause (a bad argument, a bad
file, a missing GPU) print one line and exit non-zero, never a traceback.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from typing import Any

import click

from consensus.errors import ConsensusError
from kernels.memory import keep_freed_memory
from node.client.rpc import RpcCallError

EXIT_USAGE = 2
EXIT_FAILURE = 1

COMMANDS = {
    "bench": "node.cli.bench:bench",
    "node": "node.cli.node:node_cmd",
    "wallet": "node.cli.node:wallet",
    "rpc": "node.cli.node:rpc_cmd",
    "testnet": "node.cli.testnet:testnet_cmd",
    "job": "node.cli.job:job",
    "market": "node.cli.market:market_cmd",
    "train": "node.cli.train:train_cmd",
    "model": "node.cli.train:model_cmd",
    "data": "node.cli.data:data_cmd",
    "demo": "node.cli.data:demo_cmd",
}
"""Each command of ``pouw`` and where it lives, imported only when it runs (or --help
lists it): ``pouw wallet address`` need not load Numba, the kernels and aiohttp's
server to print a line."""


class PouwGroup(click.Group):
    """A click group that loads its commands on first use (``COMMANDS``) and turns
    expected errors into a one-line message."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name].split(":")
            command = getattr(importlib.import_module(module), attr)
            if not isinstance(command, click.Command) or command.name != cmd_name:
                raise RuntimeError(f"{COMMANDS[cmd_name]} is not the command {cmd_name!r}")
            self.add_command(command)
        return self.commands.get(cmd_name)

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


REDELIVER_S = 0.02
"""How long after a Ctrl-C dropped in a finalizer it is delivered again."""


def keep_interrupts() -> None:
    """Never lose a Ctrl-C in a finalizer.

    Python raises KeyboardInterrupt wherever the main thread is when SIGINT comes. Raised
    inside a weakref callback or a ``__del__`` (a thread pool's cleanup, run by the
    garbage collector at any moment), it is printed as "Exception ignored" and dropped:
    ``pouw job submit --wait 60`` then went on waiting. This hook delivers it again,
    to the code the finalizer interrupted; other unraisable exceptions go to the hook
    there was before. The signal is raised again from another thread, a moment later:
    raised here, its handler would run at once, inside the hook, and be dropped the
    same way."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            again = threading.Timer(REDELIVER_S, signal.raise_signal, (signal.SIGINT,))
            again.daemon = True
            again.start()
            return
        previous(unraisable)

    sys.unraisablehook = hook


def main() -> None:
    keep_interrupts()
    # Attempts reuse the pages of the last one instead of faulting in new ones
    # (kernels/memory.py): before anything allocates, so nodes and benchmarks run alike.
    keep_freed_memory()
    # POUW_<COMMAND>_<OPTION> (e.g. POUW_NODE_LOG_LEVEL) sets any option (node/config.py).
    cli.main(prog_name="pouw", auto_envvar_prefix="POUW")
