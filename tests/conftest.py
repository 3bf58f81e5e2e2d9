"""Fixtures several test folders share; the kits themselves live in tests/support."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from node.app import Node
from node.config import NodeConfig
from tests.support import cudasim, older_targets
from tests.support.chainkit import MID
from tests.support.framework import DocShell
from tests.support.older_targets import OLDER_TARGET_TEST


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    """A started in-process Node on the MID devnet (one attempt finds a block), stopped
    after the test. Modules that need another configuration define their own."""
    n = Node(NodeConfig(params=MID, datadir=tmp_path / "node"))
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


@pytest.fixture
def shell(tmp_path: Path) -> Iterator[DocShell]:
    """A fresh HOME and working directory whose .venv/bin/pouw is this checkout, so the
    docs' commands run as a user types them; the nodes it started are stopped after."""
    sh = DocShell(tmp_path)
    yield sh
    sh.close()


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as a terminal delivers it, even where the suite was started in the
    background (`make test &`, nohup): there SIGINT arrives ignored, every process the
    tests start inherits that, and the tests of what Ctrl-C does would see nothing.
    Python's own handler is not inherited: the processes started get SIGINT's default."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Start the older targets' kernel runs and the CUDA simulator's long runs now, in
    the background at the lowest CPU priority, and read the older targets last
    (tests/support/older_targets.py and tests/support/cudasim.py say why)."""
    readers = [item for item in items if item.name.startswith(OLDER_TARGET_TEST + "[")]
    if readers:
        items[:] = [item for item in items if item not in readers] + readers
    if config.option.collectonly:
        return
    if readers:
        older_targets.start()
    cudasim.start_background({name for item in items for name in getattr(item, "fixturenames", ())})


def pytest_unconfigure(config: pytest.Config) -> None:
    older_targets.stop()
    cudasim.stop_background()
