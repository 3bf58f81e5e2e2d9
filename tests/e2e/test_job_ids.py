"""A posted job's id is never lost: a --wait timeout and Ctrl-C print it whole, `job
status` takes a unique prefix, and `pouw job cancel` withdraws the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from consensus.keys import PrivateKey, address_to_text
from consensus.market import job_id_of
from consensus.params import DEVNET, with_block_time
from consensus.transactions import JobPostPayload, encode_tx, signed_transaction
from tests.support.framework import REPO, NodeProcess, wait_until

pytestmark = pytest.mark.slow

POSTER = PrivateKey.from_label("devnet-3")
PARAMS = with_block_time(DEVNET, 400)
BT = ("--devnet-block-time-ms", "400")


def pouw(*args: str, datadir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args, "--datadir", str(datadir)],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )


def test_a_job_id_survives_a_timeout_and_ctrl_c_and_the_job_can_be_cancelled(
    tmp_path: Path,
) -> None:
    d = tmp_path / "node"
    node = NodeProcess(d, ["--devnet-block-time-ms", "400", "--threads", "1"], "node").start()
    try:
        assert pouw("wallet", "new", "--from-label", "devnet-3", datadir=d).returncode == 0
        rng = np.random.default_rng(3)
        for name, shape in (("a", (64, 64)), ("b", (64, 64))):
            np.save(tmp_path / f"{name}.npy", rng.integers(-64, 64, shape, dtype=np.int8))
        submit = [
            "job", "submit", "--a", str(tmp_path / "a.npy"), "--b", str(tmp_path / "b.npy"),
            "--reward", "0.0005", "--devnet-block-time-ms", "400",
        ]  # fmt: skip

        # Not mining: the wait times out, the whole id is printed, on stdout and stderr.
        timed_out = pouw(*submit, "--wait", "1", "--json", datadir=d)
        assert timed_out.returncode == 1, timed_out.stderr
        first = json.loads(timed_out.stdout)
        job_id = first["job_id"]
        assert len(job_id) == 64 and first["status"] == "open"
        assert timed_out.stderr.strip().splitlines() == [
            f"Error: job {job_id} was posted but not mined within 1 s; "
            f"follow it with `pouw job status {job_id}`"
        ]

        # Ctrl-C once the job_post is sent: the id is printed too.
        in_mempool = node.call("getmempool")["size"]
        np.save(tmp_path / "b.npy", rng.integers(-64, 64, (64, 64), dtype=np.int8))  # a new job
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", *submit, "--wait", "60", "--datadir", str(d)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        wait_until(lambda: node.call("getmempool")["size"] > in_mempool, 60, "the job_post")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        second_id = dict(line.split(": ", 1) for line in out.splitlines())["job_id"]
        assert len(second_id) == 64 and second_id != job_id
        assert f"interrupted: job {second_id} was posted" in err
        assert f"pouw job cancel {second_id}" in err

        # A job nobody can mine (nobody holds its operands) expires; its poster cancels it.
        height = node.height()
        post = JobPostPayload(512, 256, 512, b"\x01" * 32, b"\x02" * 32, 50_000, height + 2)
        nonce = node.call("getaccount", address_to_text(POSTER.address))["next_nonce"]
        tx = signed_transaction(
            POSTER, chain_id=PARAMS.chain_id, nonce=nonce, fee=1_000, payload=post
        )
        node.call("sendtransaction", encode_tx(tx).hex())
        job_id = job_id_of(POSTER.address, post, PARAMS).hex()
        early = pouw("job", "cancel", job_id, *BT, datadir=d)
        assert early.returncode != 0 and "unknown job" in early.stderr  # not in a block yet
        node.call("setmining", True)
        wait_until(lambda: node.call("getjob", job_id)["status"] == "open", 60, "the job_post")
        too_soon = pouw("job", "cancel", job_id, *BT, datadir=d)
        if too_soon.returncode != 0:  # asked before the expiry height: refused, nothing sent
            assert f"is open until height {height + 2}" in too_soon.stderr
            wait_until(lambda: node.height() >= height + 2, 60, "the job's expiry")
            cancel = pouw("job", "cancel", job_id[:12], *BT, "--wait", "60", "--json", datadir=d)
            assert cancel.returncode == 0, cancel.stderr
            assert json.loads(cancel.stdout)["job_id"] == job_id
            assert json.loads(cancel.stdout)["status"] == "cancelled"
        else:  # the chain had reached the expiry height already: the cancel was sent
            assert node.height() >= height + 2
            wait_until(
                lambda: node.call("getjob", job_id)["status"] == "cancelled", 60, "the cancel"
            )
        status = pouw("job", "status", job_id[:10], "--json", datadir=d)
        assert status.returncode == 0, status.stderr
        record = json.loads(status.stdout)
        assert record["status"] == "cancelled"
        assert record["poster"] == address_to_text(POSTER.address)

        unknown = pouw("job", "status", "ffffffffff", datadir=d)
        assert unknown.returncode != 0
        assert "no job on chain has an id starting with ffffffffff" in unknown.stderr
    finally:
        assert node.stop() == 0
