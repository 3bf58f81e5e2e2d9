"""Training on the network: every matmul of every step is a posted job (PROTOCOL §8).

Training is :func:`kernels.training.train` itself, given a matmul that
posts jobs; its ``on_step`` hook gets each step's weights hash (for the step's
``model_record``) and ``max_steps`` can stop it early.

:class:`NetworkMatmul` is the ``matmul`` it is given. A step's five products
come in four dependency rounds ({X·W1}, {H·W2}, {Hᵀ·δ2, δ2·W2ᵀ}, {Xᵀ·δ1}:
:data:`kernels.training.STEP_ROUNDS`); each round's products are posted
together with :class:`node.client.market.MarketClient`, waited on together until
claimed (a job_result pending in the mempool will do: its claimant serves C), and
used only after Freivalds accepts each C. So a round costs about one block
interval (the posts' block) plus a job's compute, not one lottery win per product.

A transaction of ours that our node lets go before a block holds it is sent again,
as a wallet rebroadcasts: a step's ``model_record`` is valid only while its jobs are
claimed, so a reorg that puts one back to open drops it from the mempool, and with it
every later transaction of ours (the next step's job posts), which then wait on a
nonce nobody will fill. A job whose post is gone is posted again (same operands,
same job id, the next nonce); a record that is gone is sent again once its jobs are
claimed again. A job whose claim a reorg takes back between the moment it is seen
claimed and the fetch of its C is waited on again until a block claims it anew.

Ctrl-C (KeyboardInterrupt) while a round's jobs are open sends a job_cancel
for each once the chain takes it (after the job's expiry height, which
training sets just past its job timeout), so the escrow comes back.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from consensus.datashare import owned_id
from consensus.hashing import tagged_hash
from consensus.transactions import ModelRecordPayload
from kernels.training import (
    EpochStats,
    MatmulCall,
    TrainConfig,
    TrainResult,
    load_dataset,
    local_matmul,
    train,
)
from node.client.market import MarketClient, NoResult, posted_spec
from node.client.rpc import RpcCallError

JOBS_PER_STEP = 5
RECORD_FEE = 1_000
POLL_S = 0.1
"""How often a round's open jobs are looked up while waiting for their claims."""
CLAIMED = ("mined", "paid")


# ------------------------------------------------------------ the training loop


def total_steps(config: TrainConfig, max_steps: int | None) -> int:
    """How many steps :func:`kernels.training.train` will run."""
    x_tr, _, _, _ = load_dataset(config.dataset, config.seed)
    full = config.epochs * (x_tr.shape[0] // config.batch)
    return full if max_steps is None else min(full, max_steps)


def expiry_blocks_for(job_timeout: float, block_time_ms: int) -> int:
    """A job's expiry, in blocks: just past the time training waits for it.

    Long enough that a job waited on is still claimable, short enough that a
    job left open by Ctrl-C can soon be cancelled (the chain refuses a
    job_cancel before expiry)."""
    return math.ceil(job_timeout * 1000 / block_time_ms) + 2


# ------------------------------------------------------------ matmuls as jobs


@dataclass
class _Posted:
    job_id: bytes
    a: np.ndarray
    b: np.ndarray
    posted_at: float
    reused: bool = False
    txid: str | None = None
    """The job_post we sent (None for a job reused from before)."""


def dropped(client: MarketClient, txid: str) -> bool:
    """Whether our node let our transaction go: in no block of its chain and not in its
    mempool (``RpcClient.transaction``)."""
    return client.rpc.transaction(txid) is None


@dataclass
class JobTiming:
    job_id: bytes
    shape: tuple[int, int, int]
    wait_s: float  # post → claimed on chain
    result_s: float  # fetch C and Freivalds


@dataclass
class RoundReport:
    """One dependency round of a step, for progress lines."""

    step: int
    round: int
    jobs: int
    posted: int
    claimed_s: float  # post → every job of the round claimed
    verified_s: float  # then: every C fetched and Freivalds-checked


@dataclass
class NetworkMatmul:
    """``matmul(a, b)`` and ``matmul.many(pairs)`` by posting jobs, waiting for their
    claims and checking every C; a round's jobs are posted and waited on together.

    A job is only ever used for exactly the operands it was posted with (its
    id commits to them and to its poster); a product this key posted before is reused,
    not reposted.
    """

    client: MarketClient
    reward: int
    timeout: float = 300.0
    expiry_blocks: int = 200
    on_round: Callable[[RoundReport], None] | None = None
    jobs_posted: int = 0
    jobs_reused: int = 0
    posts_resent: int = 0
    claims_undone: int = 0
    """Claims a reorg took back after the round saw them, before their C was fetched."""
    step: int = 0
    timings: list[JobTiming] = field(default_factory=list)
    _step_jobs: list[bytes] = field(default_factory=list)
    _round: int = 0
    _open: dict[bytes, _Posted] = field(default_factory=dict)

    def begin_step(self, step: int) -> None:
        self.step = step
        self._step_jobs = []
        self._round = 0

    def step_job_ids(self) -> tuple[bytes, ...]:
        return tuple(self._step_jobs)

    def open_job_ids(self) -> list[bytes]:
        """Jobs we posted whose results we have not collected yet."""
        return [p.job_id for p in self._open.values() if not p.reused]

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        (c,) = self.many([(a, b)])
        return c

    def many(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Post every product of a round, then wait for all of them together."""
        started = time.monotonic()
        posted: list[_Posted] = []
        for a, b in pairs:
            a = np.ascontiguousarray(a, dtype=np.int8)
            b = np.ascontiguousarray(b, dtype=np.int8)
            p = self._open.get(self._job_id(a, b))
            posted.append(p if p is not None else self._post(a, b))
        claimed_at = self._wait_claimed(posted)
        claimed = time.monotonic()
        out = [self._collect(p, claimed_at[p.job_id]) for p in posted]
        if self.on_round is not None:
            self.on_round(
                RoundReport(
                    self.step,
                    self._round,
                    len(posted),
                    sum(not p.reused for p in posted),
                    claimed - started,
                    time.monotonic() - claimed,
                )
            )
        self._round += 1
        return out

    def _job_id(self, a: np.ndarray, b: np.ndarray) -> bytes:
        p = self.client.params
        # A step's matmuls are far below the minimum job: the client posts them
        # padded with zeros, and that padded job is the one to look up.
        return posted_spec(a, b, p, self.client.key.address).job_id(p.rank, p.tile_h, p.tile_w)

    def _post(self, a: np.ndarray, b: np.ndarray) -> _Posted:
        job_id = self._job_id(a, b)
        # A job's id is its poster's and its operands': the same product we posted
        # before cannot be posted again, but its verified result serves as well.
        existing = self._status(job_id)
        if existing in ("open", *CLAIMED):
            self.jobs_reused += 1
            posted = _Posted(job_id, a, b, time.monotonic(), reused=True)
        elif existing is not None:
            raise RuntimeError(
                f"job {job_id.hex()[:16]} was {existing}: its operands cannot be reposted"
            )
        else:
            submitted = self.client.submit(
                a, b, reward=self.reward, expiry_blocks=self.expiry_blocks
            )
            self.jobs_posted += 1
            posted = _Posted(submitted.job_id, a, b, time.monotonic(), txid=submitted.txid)
        self._open[job_id] = posted
        return posted

    def _record(self, job_id: bytes) -> dict[str, Any] | None:
        """The job's record on chain, None while no block holds its post."""
        try:
            record: dict[str, Any] = self.client.status(job_id)
        except RpcCallError as e:
            if "unknown job" not in str(e):
                raise
            return None
        return record

    def _status(self, job_id: bytes) -> str | None:
        """The job's status on chain, None while no block holds its post."""
        record = self._record(job_id)
        return None if record is None else str(record["status"])

    def _wait_claimed(
        self, posted: list[_Posted], since: float | None = None
    ) -> dict[bytes, float]:
        """When each job was seen claimed, in a block or by a pending job_result (its C
        can be fetched and checked either way); all are polled together, and a post our
        node let go is sent again. The timeout counts from the oldest post, or ``since``."""
        waiting = {p.job_id: p for p in posted}
        seen: dict[bytes, float] = {}
        while True:
            for job_id in list(waiting):
                record = self._record(job_id)
                if record is None:
                    self._post_again_if_dropped(waiting[job_id])
                elif record["status"] in CLAIMED or record.get("pending_claim"):
                    seen[job_id] = time.monotonic()
                    del waiting[job_id]
            if not waiting:
                return seen
            oldest = since if since is not None else min(p.posted_at for p in waiting.values())
            if time.monotonic() - oldest > self.timeout:
                names = ", ".join(j.hex()[:16] for j in waiting)
                raise TimeoutError(f"jobs {names} not claimed in {self.timeout:g}s")
            time.sleep(POLL_S)

    def _post_again_if_dropped(self, posted: _Posted) -> None:
        """Post the job again if our node let its job_post go before a block held it
        (see the module docstring); the wait for its claim still counts from the first."""
        if posted.txid is None or not dropped(self.client, posted.txid):
            return
        if self._record(posted.job_id) is not None:
            return  # a block took the post meanwhile
        submitted = self.client.submit(
            posted.a, posted.b, reward=self.reward, expiry_blocks=self.expiry_blocks
        )
        posted.txid = submitted.txid
        self.posts_resent += 1

    def _collect(self, posted: _Posted, claimed_at: float) -> np.ndarray:
        while True:
            try:
                c = self.client.result(posted.job_id, posted.a, posted.b)
                break
            except NoResult:  # a reorg took its claim back: the job is open until re-claimed
                if self._status(posted.job_id) != "open":
                    raise  # refunded, cancelled: no claim is coming
                self.claims_undone += 1
                claimed_at = self._wait_claimed([posted], since=time.monotonic())[posted.job_id]
        self._open.pop(posted.job_id, None)
        self._step_jobs.append(posted.job_id)
        m, k = posted.a.shape
        self.timings.append(
            JobTiming(
                posted.job_id,
                (m, k, posted.b.shape[1]),
                claimed_at - posted.posted_at,
                time.monotonic() - claimed_at,
            )
        )
        return c


def cancel_jobs(
    client: MarketClient,
    job_ids: list[bytes],
    say: Callable[[str], None],
    poll_s: float = 0.5,
) -> list[str]:
    """Cancel our still-open jobs, waiting for their expiry if needed; the txids sent.

    The chain refuses a job_cancel until the job has expired, so this waits
    for that height (announced through ``say``); a KeyboardInterrupt while it
    waits leaves the jobs open. Jobs already claimed are left to their claim.
    """
    records = {}
    for job_id in job_ids:
        try:
            rec = client.status(job_id)
        except RpcCallError as e:
            if "unknown job" not in str(e):
                raise
            say(f"job {job_id.hex()[:16]} is not in a block yet: it cannot be cancelled")
            continue
        if rec["status"] == "open":
            records[job_id] = rec
    if not records:
        return []
    last_expiry = max(rec["expiry"] for rec in records.values())
    height = client.rpc.call("getinfo")["height"]
    if height < last_expiry:
        say(
            f"cancelling {len(records)} open jobs once they expire at height {last_expiry} "
            f"(now {height}): {' '.join(j.hex() for j in records)}; Ctrl-C again leaves "
            "them open (later: pouw job cancel JOB_ID)"
        )
    sent = []
    for job_id, rec in sorted(records.items(), key=lambda kv: kv[1]["expiry"]):
        while client.rpc.call("getinfo")["height"] < rec["expiry"]:
            time.sleep(poll_s)
        if client.status(job_id)["status"] != "open":
            continue  # claimed in the meantime: its result is paid for, not refunded
        sent.append(client.cancel(job_id))
        say(f"job {job_id.hex()[:16]} cancelled: its reward comes back")
    return sent


# ------------------------------------------------------------ lineage records


def new_model_id(owner: bytes, config: TrainConfig) -> bytes:
    """A fresh id per run: the owner's address (consensus asks it), then a digest of what
    is trained and 16 random bytes."""
    what = f"{config.dataset}/{config.hidden}/{config.epochs}/{config.batch}/{config.lr_shift}"
    return owned_id(
        owner,
        tagged_hash(
            "model-id", owner, what.encode(), config.seed.to_bytes(8, "little"), os.urandom(16)
        ),
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
    resent: int = 0
    _last: ModelRecordPayload | None = None

    def record(self, step: int, job_ids: tuple[bytes, ...], weights: bytes) -> str:
        payload = ModelRecordPayload(
            self.model_id, step, job_ids, weights, self.parent, self.dataset
        )
        deadline = time.monotonic() + self.timeout
        if step > 0:
            self._wait_steps(step, deadline)
        txid = self._send(payload, deadline)
        self.parent = weights
        self._last = payload
        self.sent.append(txid)
        return txid

    def _send(self, payload: ModelRecordPayload, deadline: float) -> str:
        while True:
            try:
                return self.client.send(payload, self.fee)
            except RpcCallError as e:
                # A reorg can put a job back to open, or the previous record
                # back in the mempool, for a block or two: wait, then retry.
                transient = ("not mined or paid", "skips ahead", "no such job", "no such model")
                if not any(t in str(e) for t in transient) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _wait_steps(self, count: int, deadline: float) -> None:
        """Until ``count`` steps are recorded on chain; our last record is sent again if
        our node let it go (see the module docstring)."""
        while self.recorded() < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"step {count - 1}'s model_record is not on chain yet")
            last = self._last
            if last is not None and dropped(self.client, self.sent[-1]):
                if self.recorded() < count:  # (a block may have taken it meanwhile)
                    self.sent[-1] = self._send(last, deadline)
                    self.resent += 1
                continue
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
    recorder: LineageRecorder
    wall_s: float

    @property
    def records(self) -> list[str]:
        """The model_records' txids, one per step (the last sent of each)."""
        return self.recorder.sent

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
            "posts_resent": self.matmul.posts_resent,
            "claims_undone": self.matmul.claims_undone,
            "model_records": len(self.records),
            "records_resent": self.recorder.resent,
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
    on_round: Callable[[RoundReport], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> NetworkRun:
    """Train with every product a verified job, record each step, then retrain locally.

    On KeyboardInterrupt the jobs still open are cancelled (:func:`cancel_jobs`)
    before it propagates."""
    started = time.monotonic()
    net = NetworkMatmul(
        client,
        reward,
        job_timeout,
        expiry_blocks_for(job_timeout, client.params.block_time_ms),
        on_round,
    )
    model_id = new_model_id(client.key.address, config)
    recorder = LineageRecorder(client, model_id, config.dataset, timeout=job_timeout)
    net.begin_step(0)

    def step_done(i: int, calls: list[MatmulCall], weights: bytes) -> None:
        recorder.record(i, net.step_job_ids(), weights)
        net.begin_step(i + 1)
        if on_step is not None:
            on_step(i, weights)

    try:
        result = train(config, net, step_done, on_epoch, max_steps=max_steps)
    except KeyboardInterrupt:
        cancel_jobs(client, net.open_job_ids(), say)
        raise
    recorder.wait_all(result.steps)
    wall = time.monotonic() - started
    local = train(config, local_matmul, max_steps=max_steps)
    return NetworkRun(model_id, result, local, net, recorder, wall)
