"""Training on the network: every matmul of every step is a posted job (PROTOCOL §8).

Training is :func:`kernels.training.train` itself, given a matmul that
posts jobs; its ``on_step`` hook gets each step's weights hash (for the step's
``model_record``) and ``max_steps`` can stop it early.

:class:`NetworkMatmul` is the ``matmul`` it is given: each product is posted
with :class:`node.client.MarketClient`, waited on until a block claims it, and
its C is used only after Freivalds accepts it. A step's five products are
mostly a chain (1 → 2 → 3, 4 → 5), but 3 (gW2 = relu(P)ᵀ·δ2) and 4
(D = δ2·W2ᵀ) both only need δ2 and W2, so when job 3 is asked for, job 4 is
posted with it and the two are mined side by side.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consensus.hashing import tagged_hash
from consensus.keys import address_to_text
from consensus.transactions import ModelRecordPayload, encode_tx, signed_transaction
from kernels.training import (
    EpochStats,
    MatmulCall,
    TrainConfig,
    TrainResult,
    load_dataset,
    local_matmul,
    pad_to,
    train,
)
from node.client import MarketClient, posted_spec
from node.rpc_client import RpcCallError

JOBS_PER_STEP = 5
RECORD_FEE = 1_000


# ------------------------------------------------------------ the training loop


def total_steps(config: TrainConfig, max_steps: int | None) -> int:
    """How many steps :func:`kernels.training.train` will run."""
    x_tr, _, _, _ = load_dataset(config.dataset, config.seed)
    full = config.epochs * (x_tr.shape[0] // config.batch)
    return full if max_steps is None else min(full, max_steps)


# ------------------------------------------------------------ matmuls as jobs


@dataclass
class _Posted:
    job_id: bytes
    a: np.ndarray
    b: np.ndarray
    posted_at: float
    reused: bool = False


@dataclass
class JobTiming:
    job_id: bytes
    shape: tuple[int, int, int]
    wait_s: float  # post → claimed by a block
    result_s: float  # fetch C and Freivalds


@dataclass
class NetworkMatmul:
    """``matmul(a, b)`` by posting a job, waiting for a block to claim it and checking C.

    ``step_shape`` = (batch, hidden, classes) lets job 4 of a step be posted
    together with job 3 (see the module docstring); a job is only ever used
    for exactly the operands it was posted with (compared byte for byte).
    """

    client: MarketClient
    reward: int
    step_shape: tuple[int, int, int]
    tiles_mn_k: tuple[int, int, int]
    timeout: float = 300.0
    jobs_posted: int = 0
    jobs_reused: int = 0
    timings: list[JobTiming] = field(default_factory=list)
    _step_jobs: list[bytes] = field(default_factory=list)
    _calls: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    _ahead: _Posted | None = None

    def begin_step(self) -> None:
        self._step_jobs = []
        self._calls = []

    def step_job_ids(self) -> tuple[bytes, ...]:
        return tuple(self._step_jobs)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        index = len(self._calls)
        self._calls.append((a, b))
        ahead, self._ahead = self._ahead, None
        if ahead is not None and _same(ahead, a, b):
            posted = ahead
        else:
            posted = self._post(a, b)
            if index == 2:  # job 3: post job 4 beside it
                nxt = self._job4_operands()
                if nxt is not None:
                    self._ahead = self._post(*nxt)
        return self._collect(posted)

    def _job4_operands(self) -> tuple[np.ndarray, np.ndarray] | None:
        """D = δ2·W2ᵀ from job 3's B (δ2, padded) and job 2's B (W2, padded)."""
        batch, hidden, classes = self.step_shape
        m_mult, n_mult, k_mult = self.tiles_mn_k
        d2 = self._calls[2][1][:batch, :classes]
        w2 = self._calls[1][1][:hidden, :classes]
        return pad_to(d2, m_mult, k_mult), pad_to(np.ascontiguousarray(w2.T), k_mult, n_mult)

    def _post(self, a: np.ndarray, b: np.ndarray) -> _Posted:
        a = np.ascontiguousarray(a, dtype=np.int8)
        b = np.ascontiguousarray(b, dtype=np.int8)
        p = self.client.params
        # A step's matmuls are far below the minimum job: the client posts them
        # padded with zeros, and that padded job is the one to look up.
        job_id = posted_spec(a, b, p).job_id(p.rank, p.tile_h, p.tile_w)
        # A job's id is its operands': the same product posted before cannot be
        # posted again, but its verified result serves as well.
        try:
            existing = self.client.status(job_id)["status"]
        except RpcCallError as e:
            if "unknown job" not in str(e):
                raise
            existing = None
        if existing in ("open", "mined", "paid"):
            self.jobs_reused += 1
            return _Posted(job_id, a, b, time.monotonic(), reused=True)
        if existing is not None:
            raise RuntimeError(
                f"job {job_id.hex()[:16]} was {existing}: its operands cannot be reposted"
            )
        submitted = self.client.submit(a, b, reward=self.reward)
        self.jobs_posted += 1
        return _Posted(submitted.job_id, a, b, time.monotonic())

    def _collect(self, posted: _Posted) -> np.ndarray:
        self.client.wait(posted.job_id, timeout=self.timeout)
        claimed = time.monotonic()
        c = self.client.result(posted.job_id, posted.a, posted.b)
        self._step_jobs.append(posted.job_id)
        m, k = posted.a.shape
        self.timings.append(
            JobTiming(
                posted.job_id,
                (m, k, posted.b.shape[1]),
                claimed - posted.posted_at,
                time.monotonic() - claimed,
            )
        )
        return c


def _same(p: _Posted, a: np.ndarray, b: np.ndarray) -> bool:
    return (
        p.a.shape == a.shape
        and p.b.shape == b.shape
        and np.array_equal(p.a, a)
        and np.array_equal(p.b, b)
    )


# ------------------------------------------------------------ lineage records


def new_model_id(owner: bytes, config: TrainConfig) -> bytes:
    """A fresh id per run: the owner, what is trained, and 16 random bytes."""
    what = f"{config.dataset}/{config.hidden}/{config.epochs}/{config.batch}/{config.lr_shift}"
    return tagged_hash(
        "model-id", owner, what.encode(), config.seed.to_bytes(8, "little"), os.urandom(16)
    )


@dataclass
class LineageRecorder:
    """Sends one ``model_record`` per step, each after its predecessor is on chain.

    The mempool checks a transaction against the tip as if the sender's
    earlier pending transactions only paid their fees, so step i+1's record
    is refused while step i's is still pending: it waits for it. The wait is
    short, because the next step's job posts follow step i's record in nonce
    order, and they must be in a block before their jobs are mined.
    """

    client: MarketClient
    model_id: bytes
    dataset: str
    timeout: float = 120.0
    fee: int = RECORD_FEE
    parent: bytes = bytes(32)
    sent: list[str] = field(default_factory=list)

    def record(self, step: int, job_ids: tuple[bytes, ...], weights: bytes) -> str:
        payload = ModelRecordPayload(
            self.model_id, step, job_ids, weights, self.parent, self.dataset
        )
        deadline = time.monotonic() + self.timeout
        if step > 0:
            self._wait_steps(step, deadline)
        while True:
            account = self.client.rpc.call("getaccount", address_to_text(self.client.key.address))
            tx = signed_transaction(
                self.client.key,
                chain_id=self.client.params.chain_id,
                nonce=account["next_nonce"],
                fee=self.fee,
                payload=payload,
            )
            try:
                txid: str = self.client.rpc.call("sendtransaction", encode_tx(tx).hex())
                break
            except RpcCallError as e:
                # A reorg can put a job back to open, or the previous record
                # back in the mempool, for a block or two: wait, then retry.
                transient = ("not mined or paid", "skips ahead", "no such job", "no such model")
                if not any(t in str(e) for t in transient) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.parent = weights
        self.sent.append(txid)
        return txid

    def _wait_steps(self, count: int, deadline: float) -> None:
        while self.recorded() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"step {count - 1}'s model_record is not on chain yet")
            time.sleep(0.05)

    def recorded(self) -> int:
        try:
            return len(self.client.rpc.call("getmodel", self.model_id.hex())["steps"])
        except RpcCallError as e:
            if "unknown model" in str(e):
                return 0
            raise

    def wait_all(self, count: int) -> None:
        self._wait_steps(count, time.monotonic() + self.timeout)


# ------------------------------------------------------------ the whole run


@dataclass
class NetworkRun:
    model_id: bytes
    result: TrainResult
    local: TrainResult
    matmul: NetworkMatmul
    records: list[str]
    wall_s: float

    @property
    def bit_identical(self) -> bool:
        return (
            self.result.step_hashes == self.local.step_hashes
            and np.array_equal(self.result.weights.w1, self.local.weights.w1)
            and np.array_equal(self.result.weights.w2, self.local.weights.w2)
        )

    def summary(self) -> dict[str, Any]:
        waits = sorted(t.wait_s for t in self.matmul.timings)
        final = self.result.epochs[-1] if self.result.epochs else None
        return {
            "model_id": self.model_id.hex(),
            "steps": self.result.steps,
            "jobs_posted": self.matmul.jobs_posted,
            "jobs_reused": self.matmul.jobs_reused,
            "jobs_used": len(self.matmul.timings),
            "model_records": len(self.records),
            "epochs": [
                {
                    "epoch": e.epoch,
                    "loss": round(e.loss, 6),
                    "train_accuracy": e.train_accuracy,
                    "test_accuracy": e.test_accuracy,
                }
                for e in self.result.epochs
            ],
            "test_accuracy": final.test_accuracy if final else None,
            "weights_hash": self.result.step_hashes[-1].hex(),
            "local_weights_hash": self.local.step_hashes[-1].hex(),
            "bit_identical": self.bit_identical,
            "job_wait_s_p50": round(waits[len(waits) // 2], 3) if waits else None,
            "wall_s": round(self.wall_s, 2),
        }


def train_on_network(
    client: MarketClient,
    config: TrainConfig,
    reward: int,
    max_steps: int | None = None,
    on_step: Callable[[int, bytes], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    job_timeout: float = 300.0,
) -> NetworkRun:
    """Train with every product a verified job, record each step, then retrain locally."""
    started = time.monotonic()
    _, y_tr, _, y_te = load_dataset(config.dataset, config.seed)
    classes = int(max(y_tr.max(), y_te.max())) + 1
    t = config.tiles
    net = NetworkMatmul(
        client,
        reward,
        (config.batch, config.hidden, classes),
        (t.m_mult, t.n_mult, t.k_mult),
        job_timeout,
    )
    model_id = new_model_id(client.key.address, config)
    recorder = LineageRecorder(client, model_id, config.dataset, timeout=job_timeout)
    net.begin_step()

    def step_done(i: int, calls: list[MatmulCall], weights: bytes) -> None:
        recorder.record(i, net.step_job_ids(), weights)
        net.begin_step()
        if on_step is not None:
            on_step(i, weights)

    result = train(config, net, step_done, on_epoch, max_steps=max_steps)
    recorder.wait_all(result.steps)
    wall = time.monotonic() - started
    local = train(config, local_matmul, max_steps=max_steps)
    return NetworkRun(model_id, result, local, net, recorder.sent, wall)
