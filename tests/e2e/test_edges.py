"""Around the edges: the example config starts a node, shell completion works."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.framework import REPO, NodeProcess

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "docs" / "node.example.toml"


def test_the_example_config_starts_a_node_with_its_values(tmp_path: Path) -> None:
    assert "docs/node.example.toml" in (REPO / "README.md").read_text()
    values = tomllib.loads(EXAMPLE.read_text())["node"]
    node = NodeProcess(tmp_path / "n", ["--config", str(EXAMPLE)], "example").start()
    try:
        assert node.call("getinfo")["network"] == values["network"]
        assert node.call("getmininginfo")["mining"] is values["mine"]
        assert node.p2p.startswith(values["listen"].rsplit(":", 1)[0] + ":")
    finally:
        assert node.stop() == 0


def test_shell_completion_is_what_the_docs_say() -> None:
    assert "_POUW_COMPLETE=bash_source" in (REPO / "docs" / "operations.md").read_text()
    env = dict(os.environ, PYTHONPATH=str(REPO), COMP_WORDS="pouw wal", COMP_CWORD="1")
    done = subprocess.run(
        [sys.executable, "-m", "node.cli"],
        env={**env, "_POUW_COMPLETE": "bash_complete"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split() == ["plain,wallet"]
    script = subprocess.run(
        [sys.executable, "-m", "node.cli"],
        env={**env, "_POUW_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "complete -o nosort -F _pouw_completion pouw" in script.stdout
