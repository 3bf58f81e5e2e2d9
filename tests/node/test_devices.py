"""`pouw node --devices`: a miner per GPU, each on its own posted jobs.

This machine has no GPU: the CLI's checks run against a GPU count the test sets, and the
pool of miners runs for real on the CPU backend (where a miner's device only names it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import kernels.backends
from consensus.keys import PrivateKey
from consensus.market import job_id_of
from consensus.pow import Job
from consensus.transactions import JobPostPayload, Transaction, signed_transaction
from node import collector
from node import miner as miner_module
from node.app import Node
from node.cli import node as node_cli
from node.config import NodeConfig, resolve_devices
from node.datadir import DatadirLock
from node.miner import Miner, MinerPool, MiningWork
from node.services import market as market_module
from tests.support.chainkit import ALICE, MID, new_chain, next_block
from tests.support.clikit import one_line_error, run
from tests.support.nodekit import until

MINER_KEY = PrivateKey.from_label("devnet-6")
M, K, N = MID.min_job_shape
rng = np.random.default_rng(2024)

# ------------------------------------------------------------ resolving --devices


@pytest.mark.parametrize(
    ("spec", "visible", "devices"),
    [
        ("all", 3, (0, 1, 2)),
        ("ALL", 1, (0,)),
        ("0,2", 3, (0, 2)),
        (" 2 , 0 ", 3, (2, 0)),  # the order named
        ("1", 2, (1,)),
        ([0, 2], 3, (0, 2)),  # a config file's list
        (1, 2, (1,)),  # … or integer
    ],
)
def test_devices_resolve_to_the_gpus_named(spec, visible, devices):
    assert resolve_devices(spec, visible) == devices


@pytest.mark.parametrize(
    ("spec", "visible", "words"),
    [
        ("0,x", 2, ["'0,x'", "comma-separated", "0,2"]),
        ("", 2, ["comma-separated"]),
        ("0,,1", 2, ["comma-separated"]),
        ("-1", 2, ["comma-separated"]),
        ("1,0,1", 2, ["GPU 1 is named twice"]),
        ("0,2", 2, ["no GPU 2", "2 GPUs are visible (0-1)"]),
        ("1", 1, ["no GPU 1", "1 GPU is visible (0)"]),
        ("all", 0, ["'all'", "no CUDA GPU is visible"]),
        ("0", 0, ["no CUDA GPU is visible"]),
    ],
)
def test_bad_devices_are_refused_naming_the_option(spec, visible, words):
    with pytest.raises(ValueError) as refused:
        resolve_devices(spec, visible)
    assert str(refused.value).startswith("--devices ")
    for word in words:
        assert word in str(refused.value)


# ------------------------------------------------------------ the command line


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node sees two CUDA GPUs (it checks --devices before it touches one)."""
    monkeypatch.setattr(kernels.backends, "cuda_available", lambda: True)
    monkeypatch.setattr(miner_module, "visible_gpu_count", lambda: 2)


def _refused(result: Any, *words: str) -> None:
    """A one-line error naming --devices, exit code 2 (a usage error), no node started."""
    assert result.exit_code == 2, result.output
    one_line_error(result, "--devices", *words)


def test_bad_devices_options_are_one_line_usage_errors(tmp_path, two_gpus):
    d = str(tmp_path / "d")
    cuda = ("node", "--datadir", d, "--backend", "cuda")
    _refused(run(*cuda, "--devices", "0,one"), "'0,one'", "comma-separated")
    _refused(run(*cuda, "--devices", "0,1,0"), "GPU 0 is named twice")
    _refused(run(*cuda, "--devices", "0,2"), "no GPU 2", "2 GPUs are visible")
    _refused(run("node", "--datadir", d, "--devices", "all"), "--backend cuda", "not cpu")
    _refused(run("node", "--datadir", d, "--backend", "cpu", "--devices", "0"), "not cpu")
    assert not (tmp_path / "d").exists(), "a refused node made its datadir"


def test_devices_all_without_a_visible_gpu_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setattr(kernels.backends, "cuda_available", lambda: False)  # (auto: the CPU)
    d = str(tmp_path / "d")
    _refused(run("node", "--datadir", d, "--backend", "auto", "--devices", "all"), "no CUDA GPU")
    _refused(run("node", "--datadir", d, "--backend", "auto", "--devices", "0"), "no CUDA GPU")


def test_devices_from_a_config_file_or_the_environment_are_checked_alike(tmp_path, two_gpus):
    config = tmp_path / "pouw.toml"
    config.write_text('backend = "cuda"\ndevices = [0, 5]\n')
    _refused(run("node", "--config", str(config)), "no GPU 5", "2 GPUs are visible")
    config.write_text('backend = "cuda"\ndevices = "1,1"\n')
    _refused(run("node", "--config", str(config)), "named twice")
    env = {"POUW_NODE_DEVICES": "3"}
    _refused(run("node", "--backend", "cuda", env=env), "no GPU 3")


def test_the_devices_named_reach_the_node_config(tmp_path, two_gpus, monkeypatch):
    """What `pouw node` resolves goes into NodeConfig: every visible GPU for `all`, the
    ones named otherwise, and None (one miner, as ever) without the option."""
    started: list[NodeConfig] = []

    async def run_node(config: NodeConfig, lock: DatadirLock) -> None:
        started.append(config)
        lock.release()

    monkeypatch.setattr(node_cli, "_run_node", run_node)
    monkeypatch.setattr(node_cli, "_setup_logging", lambda *_: None)
    monkeypatch.setattr(collector, "tune", lambda: None)
    config = tmp_path / "pouw.toml"
    config.write_text('backend = "cuda"\ndevices = [1]\n')
    d = str(tmp_path / "d")
    for args in (
        ["--backend", "cuda", "--devices", "all"],
        ["--backend", "auto", "--devices", "1,0"],
        ["--config", str(config)],
        ["--backend", "cuda"],
    ):
        result = run("node", "--datadir", d, *args)
        assert result.exit_code == 0, result.output
    assert [c.devices for c in started] == [(0, 1), (1, 0), (1,), None]


# ------------------------------------------------------------ the pool of miners


def _jobs(count: int) -> list[tuple[Job, Transaction, bytes]]:
    """``count`` minimum-shape jobs and the job_posts (by ALICE) that post them."""
    out = []
    for nonce in range(count):
        job = Job.from_operands(
            rng.integers(-64, 64, (M, K), dtype=np.int8),
            rng.integers(-64, 64, (K, N), dtype=np.int8),
            ALICE.address,
        )
        post = JobPostPayload(M, K, N, job.spec.root_a, job.spec.root_b, 9_000, 1_000)
        tx = signed_transaction(ALICE, chain_id=MID.chain_id, nonce=nonce, fee=10, payload=post)
        out.append((job, tx, job_id_of(ALICE.address, post, MID)))
    return out


async def _post_ready(node: Node, count: int) -> set[bytes]:
    """``count`` jobs posted in a block, their operands served and fetched by the node:
    ready to mine. Their ids."""
    jobs = _jobs(count)
    for job, _, _ in jobs:
        node.blobs.put_matrix(job.a)
        node.blobs.put_matrix(np.ascontiguousarray(job.b.T))
    chain, clock = new_chain()
    clock.now = max(clock.now, node.chain.tip.header.timestamp_ms)
    for h in node.chain.active[1:]:
        chain.add_block(node.chain.blocks[h])
    block = next_block(chain, clock, tuple(tx for _, tx, _ in jobs), miner=MINER_KEY)
    assert (await node.process_block(block, None)) is not None
    node.market._prefetch(node.market.open_jobs())  # as a miner's ask would
    await until(lambda: len(node.market.jobs) == count, 30)
    return {job_id for _, _, job_id in jobs}


def _id(work: MiningWork) -> bytes:
    return work.job.spec.job_id(MID.rank, MID.tile_h, MID.tile_w)


@pytest.fixture
async def gpu_node(tmp_path: Path):
    """A node configured to mine on "GPUs" 0 and 1, with the CPU backend (the CLI
    refuses that pair; the pool itself does not care which backend runs)."""
    config = NodeConfig(params=MID, datadir=tmp_path / "node", miner_key=MINER_KEY)
    n = Node(dataclasses.replace(config, devices=(0, 1), threads=1))
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


async def test_shares_of_the_work_never_hand_one_job_to_two_miners(gpu_node, monkeypatch):
    """Each miner asks through its own share: two asking at once get two different ready
    jobs; a retry (here allowed at once) never takes the job another miner holds, but
    its own; a third miner, with both jobs in hand, mines the null job meanwhile."""
    monkeypatch.setattr(market_module, "RETRY_AFTER_S", 0.0)
    node = gpu_node
    ids = await _post_ready(node, 2)
    busy: dict[int, frozenset[bytes]] = {}
    first, second = node.work.share(busy, 0), node.work.share(busy, 1)
    taken = await asyncio.gather(first.work(), second.work())
    assert {_id(w) for w in taken} == ids, "two miners asking at once got the same job"
    held_by_first = _id(taken[0])
    for _ in range(3):  # the second's attempts end first, again and again
        again = await second.work()
        assert not again.job.null and _id(again) != held_by_first
    # A third GPU finds both jobs in hand: it mines the null job meanwhile.
    third = node.work.share(busy, 2)
    assert (await third.work()).job.null
    # Once the first's attempt is over, its job is the first's to retry, or the third's.
    assert _id(await first.work()) == held_by_first
    busy[0] = frozenset()
    assert _id(await third.work()) == held_by_first


async def test_every_gpu_s_miner_takes_its_own_ready_job_at_once(gpu_node, monkeypatch):
    """With two jobs ready, the pool's two miner threads attempt both at the same time,
    one each; getmininginfo then lists each device's figures, which add up."""
    node = gpu_node
    info = await node.rpc.read("getmininginfo")
    assert [d["device"] for d in info["devices"]] == [0, 1] and not info["mining"]
    ids = await _post_ready(node, 2)
    both_in = threading.Barrier(2, timeout=20)
    taken: dict[int | None, bytes] = {}
    attempted = {0: threading.Event(), 1: threading.Event()}
    attempt = Miner._attempt

    def first_job_held(self: Miner, work: MiningWork, interruptible: bool = False) -> Any:
        done = attempted[self.device]  # type: ignore[index]
        if work.job.null or done.is_set():
            return attempt(self, work, interruptible)
        taken[self.device] = _id(work)
        both_in.wait()  # its first job, in hand while the other miner takes its own
        try:
            return attempt(self, work, interruptible)  # the real kernels, on the CPU
        finally:
            done.set()

    monkeypatch.setattr(Miner, "_attempt", first_job_held)
    node.start_mining()
    pool = node.miner
    assert isinstance(pool, MinerPool) and pool.devices == [0, 1]
    loop = asyncio.get_running_loop()
    for done in attempted.values():
        assert await loop.run_in_executor(None, done.wait, 30), "a miner attempted no job"
    assert set(taken.values()) == ids and set(taken) == {0, 1}, taken
    info = await node.rpc.read("getmininginfo")
    assert info["mining"] and [d["device"] for d in info["devices"]] == [0, 1]
    for key in ("macs_done", "macs_jobs", "jobs_attempted", "blocks_found"):
        assert info[key] == sum(d[key] for d in info["devices"]), key
    assert all(d["jobs_attempted"] >= 1 and d["mining"] for d in info["devices"])
    await node.stop_mining()
    assert not any(m.running for m in pool.miners)
    info = await node.rpc.read("getmininginfo")
    assert not info["mining"] and not any(d["mining"] for d in info["devices"])


async def test_a_pool_s_notifications_reach_every_miner():
    loop = asyncio.get_running_loop()

    async def no_work() -> MiningWork:
        raise AssertionError("not started")

    miners = [
        Miner(MID, loop, no_work, None, None, device=d)  # type: ignore[arg-type]
        for d in (0, 1, 2)
    ]
    pool = MinerPool(miners)
    pool.job_ready(2.0)
    assert all(m._ready_rate == 2.0 and m._new_tip.is_set() for m in miners)
    for m in miners:
        m._new_tip.clear()
    pool.post_arrived(3.0)
    assert all(m._post_rate == 3.0 and m._new_tip.is_set() for m in miners)
    for m in miners:
        m._new_tip.clear()
    pool.tip_changed()
    assert all(m._new_tip.is_set() for m in miners)
    await pool.stop()  # (none started)
    assert all(m._stop.is_set() for m in miners) and not pool.running
