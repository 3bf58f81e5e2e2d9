"""Fixtures several test folders share; the kits themselves live in tests/support."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from node.app import Node
from node.config import NodeConfig
from tests.support.chainkit import MID
from tests.support.framework import DocShell


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
