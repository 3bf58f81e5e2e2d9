"""Every shell command in README.md and docs/*.md runs as written, so the docs cannot drift.

The commands run in README order in a fresh HOME against the devnet node the README
itself starts, placeholders (``JOB_ID``, ``DATASET``, ``pw<40 hex>``, …) filled from what
the earlier commands printed. Commands that run for minutes by design are named
below, each with what the test does instead:

- ``SHRUNK``: run with the substitutions listed (smaller sizes, shorter durations);
- ``PARSED_PREFIXES``: benchmarks and training through the network, whose options
  are parsed by click (types, ranges, choices) without running; tests/node/
  test_bench_chain.py, tests/node/test_cli.py, tests/e2e/test_bench.py and
  tests/e2e/test_train.py run them at small sizes;
- ``make`` targets run as ``make -n TARGET`` (the recipe exists and expands).

A command in the docs that none of these names runs as written; one that has a
placeholder the test does not know fails the test.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest

from consensus.keys import PrivateKey, address_to_text
from node.cli.main import cli
from node.client.rpc import RpcClient
from tests.support.framework import REPO, DocShell, doc_blocks, doc_commands, parse_output

pytestmark = pytest.mark.slow

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

SHRUNK: dict[str, list[tuple[str, str]]] = {
    ".venv/bin/pouw testnet --nodes 8 --topology ring --duration 60 --json": [
        ("--nodes 8", "--nodes 3"),
        ("--duration 60", "--duration 5"),
    ],
}
PARSED_PREFIXES = (
    ".venv/bin/pouw bench ",
    # Training through the network posts 5 jobs a step (minutes on a 2 s devnet);
    # tests/e2e/test_train.py runs it, and lineage of the model it records.
    ".venv/bin/pouw train --quick",
    ".venv/bin/pouw model lineage",
)
MAKE_PREFIX = "make "

RECIPIENT = address_to_text(PrivateKey.from_label("docs-recipient").address)
rng = np.random.default_rng(16)
A = rng.integers(-64, 64, (64, 128), dtype=np.int8)
B = rng.integers(-64, 64, (128, 32), dtype=np.int8)


def records_csv() -> str:
    """A dataset `pouw train --dataset` can learn: header, numeric features, label last."""
    lines = ["x0,x1,x2,label"]
    for i in range(200):
        label = i % 2
        x = rng.integers(0, 10, 3) + 20 * label
        lines.append(f"{x[0]},{x[1]},{x[2]},{label}")
    return "\n".join(lines) + "\n"


def all_commands() -> list[tuple[Path, str, str]]:
    return [(doc, heading, cmd) for doc in DOCS for heading, cmd in doc_commands(doc)]


def parse_only(argv: list[str]) -> None:
    """Parse ``pouw ARGV`` as click would, down to the leaf command, without running it."""
    ctx = click.Context(cli, info_name="pouw")
    command: click.Command = cli
    args = list(argv)
    while isinstance(command, click.Group):
        sub = command.get_command(ctx, args[0])
        assert sub is not None, f"pouw has no command {' '.join(argv[: len(argv) - len(args) + 1])}"
        ctx = click.Context(sub, info_name=args[0], parent=ctx)
        command, args = sub, args[1:]
    command.make_context(ctx.info_name, args, parent=ctx.parent)


class Placeholders:
    """What the docs leave for the reader to fill, filled from earlier commands' output."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {"pw<40 hex>": RECIPIENT}

    def fill(self, command: str) -> str:
        for name, value in self.values.items():
            command = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", value, command)
        code = command.split(" #")[0]  # a trailing comment is prose
        unknown = re.findall(r"\b[A-Z][A-Z_]{2,}\b|\bMxN\b|<[^>]*>", code)
        unknown = [u for u in unknown if not command.startswith(f"{u}=")]
        assert not unknown, f"{command!r}: the test cannot fill {unknown}"
        return command


def test_every_documented_command_is_known_to_this_test() -> None:
    commands = [c for _, _, c in all_commands()]
    for stale in SHRUNK:
        assert stale in commands, f"SHRUNK names {stale!r}, which no doc has any more"
    assert len(commands) > 30


# The README's devnet has 2 s blocks and the docs post two jobs and wait for eight
# transactions: about 2 min on a quiet machine, 5 on a busy one.
@pytest.mark.timeout(900)
def test_every_shell_command_in_the_docs_runs_as_written(shell: DocShell) -> None:
    # The README's node mines at nice 10; beside a busy test run it would get no CPU.
    # POUW_<COMMAND>_<OPTION> is the documented way to set an option from outside.
    shell.env["POUW_NODE_MINER_NICE"] = "0"
    np.save(shell.cwd / "A.npy", A)
    np.save(shell.cwd / "B.npy", B)
    (shell.cwd / "records.csv").write_text(records_csv())
    ph = Placeholders()
    after: dict[str, Callable[[dict[str, Any], str], None]] = {
        "job submit": lambda out, _: ph.values.update(
            JOB_ID=out["job_id"], MxN=out["result_shape"]
        ),
        "data register": lambda out, _: ph.values.update(DATASET=out["dataset_id"]),
        "data pubkey": lambda _, text: ph.values.update(RESEARCHER=text.strip()),
        "data fetch": lambda out, _: ph.values.update(
            NONCE=out["request_nonce"],
            HEX=hashlib.sha256((shell.cwd / "copy.csv").read_bytes()).hexdigest(),
        ),
    }
    nodes = 0
    ran: list[str] = []
    for doc, _heading, written in all_commands():
        if written.startswith(MAKE_PREFIX):
            target = shlex.split(written)[1]
            subprocess.run(
                ["make", "-n", target], cwd=REPO, check=True, capture_output=True, timeout=30
            )
            continue
        if written.startswith(PARSED_PREFIXES):
            parse_only(shlex.split(written.split("#")[0])[1:])
            continue
        command = written
        for old, new in SHRUNK.get(written, []):
            command = command.replace(old, new)
        command = ph.fill(command)
        if command.startswith(".venv/bin/pouw node"):
            args = shlex.split(command.split("#")[0])
            datadir = (
                shell.path(args[args.index("--datadir") + 1])
                if "--datadir" in args
                else shell.home / ".pouwnet" / "devnet"
            )
            shell.start_node(command, datadir, f"node{nodes}")
            nodes += 1
            continue
        started = time.monotonic()
        done = shell.run(command, timeout=240)
        print(f"{time.monotonic() - started:6.1f} s  {command}")  # shown with pytest -s
        ran.append(command)
        for key, hook in after.items():
            if f"pouw {key}" in command:
                hook(parse_output(done.stdout), done.stdout)
        if "pouw job result" in command:
            c = np.load(shell.cwd / "C.npy")
            assert (c == A.astype(np.int32) @ B.astype(np.int32)).all(), doc
    assert nodes == 2 and len(ran) >= 15

    # The Python snippets run too, against the same node.
    for doc in DOCS:
        for _, code in doc_blocks(doc, "python"):
            script = shell.cwd / "snippet.py"
            script.write_text(code)
            shell.run(f"{shlex.quote(sys.executable)} snippet.py", timeout=240)


def documented_methods() -> dict[str, tuple[list[str], bool]]:
    """docs/operations.md's table of RPC methods: name → (params, needs the token)."""
    text = (REPO / "docs" / "operations.md").read_text()
    table = text.split("### Methods", 1)[1].split("\n\n", 2)[1]
    methods: dict[str, tuple[list[str], bool]] = {}
    for row in table.splitlines()[2:]:
        name, params, token = (cell.strip() for cell in row.strip("|").split("|"))
        methods[name.strip("`")] = (
            [p.strip() for p in params.split(",") if p.strip()],
            token == "yes",
        )
    return methods


def test_the_documented_rpc_methods_are_what_the_node_answers(shell: DocShell) -> None:
    documented = documented_methods()
    command = next(c for _, c in doc_commands(REPO / "README.md") if " node " in f"{c} ")
    rpc: RpcClient = shell.start_node(command, shell.home / ".pouwnet" / "devnet", "node")
    listed = rpc.call("help")
    assert documented == {m["method"]: (m["params"], m["needs_token"]) for m in listed}
    by_name = {m["method"]: m for m in listed}
    assert by_name["getblock"]["params"] == ["block_hash", "[verbose]"]
    assert by_name["sendtransaction"]["needs_token"] and not by_name["getinfo"]["needs_token"]
    out = json.loads(shell.run(".venv/bin/pouw rpc help").stdout)
    assert out == listed
