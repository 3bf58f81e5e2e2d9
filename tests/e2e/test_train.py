"""Training on a real network: `pouw train` posts every matmul of every step as a job,
uses only verified results, records each step on chain, and ends with weights
bit-identical to the same training done locally."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from consensus.keys import PrivateKey, address_to_text
from kernels.training import TrainConfig, local_matmul, train
from tests.support.framework import NodeProcess, wait_until

BLOCK_MS = 200
MAX_STEPS = 3  # the quick preset is at 0.912 test accuracy after 3 steps (measured)
TRAINER = "devnet-5"


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory):
    """One poster node that does not mine, and two miners."""
    root = tmp_path_factory.mktemp("train")
    common = ["--devnet-block-time-ms", str(BLOCK_MS), "--threads", "1"]
    nodes: list[NodeProcess] = []
    try:
        poster = NodeProcess(root / "poster", common, "poster").start()
        nodes.append(poster)
        for i in range(2):
            miner = PrivateKey.from_label(f"train-miner-{i}")
            args = [*common, "--peer", poster.p2p, "--mine"]
            args += ["--miner-address", address_to_text(miner.address)]
            nodes.append(NodeProcess(root / f"miner-{i}", args, f"miner-{i}").start())
        wait_until(lambda: len(poster.call("getpeers")) == 2, 30, "the poster's two peers")
        yield nodes
    finally:
        for n in nodes:
            n.kill()


def _logs(nodes: list[NodeProcess]) -> str:
    """Each node's last log lines: where a job that was never claimed got stuck."""
    return "".join(f"\n--- {n.name}:\n{n.log_tail(80)}" for n in nodes)


def _pouw(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_train_on_the_network_is_bit_identical_and_its_lineage_is_on_chain(network):
    poster = network[0]
    where = ["--datadir", str(poster.datadir)]
    done = _pouw(
        "train",
        "--quick",
        "--dataset",
        "breast_cancer",
        "--max-steps",
        str(MAX_STEPS),
        "--from-label",
        TRAINER,
        "--devnet-block-time-ms",
        str(BLOCK_MS),
        "--job-timeout",
        "60",
        "--json",
        *where,
    )
    assert done.returncode == 0, done.stderr + _logs(network)
    run = json.loads(done.stdout)
    local = train(TrainConfig.quick("breast_cancer"), local_matmul, max_steps=MAX_STEPS)
    assert run["bit_identical"] is True
    assert run["weights_hash"] == local.step_hashes[-1].hex()
    assert run["steps"] == MAX_STEPS
    assert run["jobs_used"] == 5 * MAX_STEPS
    assert run["jobs_posted"] + run["jobs_reused"] == 5 * MAX_STEPS
    assert run["test_accuracy"] >= 0.90
    # Progress on stderr, also with --json: a line per dependency round of each step.
    rounds = [line for line in done.stderr.splitlines() if " round " in line]
    assert len(rounds) == 4 * MAX_STEPS, done.stderr
    assert rounds[2].startswith(f"step 1/{MAX_STEPS} round 3: 2 job(s)")

    shown = _pouw("model", "lineage", run["model_id"], "--json", *where)
    assert shown.returncode == 0, shown.stderr
    lineage = json.loads(shown.stdout)
    assert lineage["owner"] == address_to_text(PrivateKey.from_label(TRAINER).address)
    steps = lineage["steps"]
    assert [s["step"] for s in steps] == list(range(MAX_STEPS))
    assert [s["weights_hash"] for s in steps] == [h.hex() for h in local.step_hashes]
    parents = [bytes(32).hex()] + [h.hex() for h in local.step_hashes[:-1]]
    assert [s["parent_hash"] for s in steps] == parents
    seen: set[str] = set()
    for s in steps:
        assert len(s["job_ids"]) == 5
        seen.update(s["job_ids"])
        for job_id in s["job_ids"]:
            assert poster.call("getjob", job_id)["status"] in ("mined", "paid")
    assert len(seen) == 5 * MAX_STEPS

    text = _pouw("model", "lineage", run["model_id"], *where)
    assert text.returncode == 0 and text.stdout.count("\nstep ") == MAX_STEPS
    unknown = _pouw("model", "lineage", "ab" * 32, *where)
    assert unknown.returncode == 1 and "unknown model" in unknown.stderr
    assert "Traceback" not in unknown.stderr
