"""`pouw train`'s use of the market, against a scripted client: a step's independent
products are posted together and waited on together, dependent ones only after
their inputs are verified, and Ctrl-C cancels the jobs still open."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from consensus.keys import PrivateKey
from consensus.params import DEVNET
from kernels.training import STEP_ROUNDS, TrainConfig, local_matmul, train
from node.apps.train_net import NetworkMatmul, RoundReport, train_on_network
from node.client.market import SubmittedJob, posted_spec
from node.client.rpc import RpcCallError

CONFIG = TrainConfig.quick("breast_cancer")
POLLS_TO_CLAIM = 3
"""The scripted chain: a job is unknown at its first look-up, open at its second,
claimed from its third on (a block took the post, then a claim)."""


class ScriptedClient:
    """A MarketClient whose chain is a script; it logs what training asks of it."""

    def __init__(self, interrupt_on_open: int | None = None) -> None:
        self.params = DEVNET
        self.key = PrivateKey.from_label("devnet-5")
        self.rpc = self
        self.height = 0
        self.events: list[tuple[str, int]] = []
        self.jobs: dict[bytes, dict[str, Any]] = {}
        self.order: list[bytes] = []
        self.interrupt_on_open = interrupt_on_open
        self.interrupted = False

    def number(self, job_id: bytes) -> int:
        return self.order.index(job_id) + 1

    def submit(self, a: np.ndarray, b: np.ndarray, reward: int, expiry_blocks: int) -> SubmittedJob:
        spec = posted_spec(a, b, self.params, self.key.address)
        job_id = spec.job_id(self.params.rank, self.params.tile_h, self.params.tile_w)
        assert job_id not in self.jobs, "a product was posted twice"
        self.jobs[job_id] = {"polls": 0, "status": "open", "expiry": self.height + expiry_blocks}
        self.order.append(job_id)
        self.events.append(("submit", self.number(job_id)))
        return SubmittedJob(job_id, "txid", spec)

    def status(self, job_id: bytes) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            raise RpcCallError(-32002, f"unknown job {job_id.hex()}")
        job["polls"] += 1
        if job["polls"] == 1:
            raise RpcCallError(-32002, f"unknown job {job_id.hex()}")
        if job["status"] == "open" and job["polls"] >= POLLS_TO_CLAIM and not self.interrupted:
            if self.number(job_id) == self.interrupt_on_open:
                self.interrupted = True  # Ctrl-C, once; nobody claims the open jobs after it
                raise KeyboardInterrupt
            job["status"] = "mined"
            self.events.append(("claimed", self.number(job_id)))
        return {"status": job["status"], "expiry": job["expiry"]}

    def result(self, job_id: bytes, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        assert self.jobs[job_id]["status"] == "mined"
        self.events.append(("result", self.number(job_id)))
        return local_matmul(a, b)

    def cancel(self, job_id: bytes) -> str:
        assert self.height >= self.jobs[job_id]["expiry"], "the chain refuses it before expiry"
        self.jobs[job_id]["status"] = "cancelled"
        self.events.append(("cancel", self.number(job_id)))
        return "cancel-txid"

    def transaction(self, txid: str) -> dict[str, Any]:
        return {"txid": txid, "confirmations": 0}  # the scripted node never lets a post go

    def call(self, method: str, *params: Any) -> Any:
        assert method == "getinfo", method
        self.height += 2  # blocks go by while the user waits
        return {"height": self.height}


def test_a_steps_independent_products_are_posted_and_awaited_together(monkeypatch):
    monkeypatch.setattr("node.apps.train_net.POLL_S", 0.0)
    client = ScriptedClient()
    rounds: list[RoundReport] = []
    net = NetworkMatmul(client, reward=10_000, on_round=rounds.append)  # type: ignore[arg-type]
    net.begin_step(0)
    result = train(CONFIG, net, max_steps=1)

    assert [r.jobs for r in rounds] == list(STEP_ROUNDS)
    e = client.events
    # Products 3 (Hᵀ·δ2) and 4 (δ2·W2ᵀ) go out before either is claimed...
    assert e.index(("submit", 4)) < e.index(("claimed", 3))
    # ...and are waited on together: neither result is fetched before both are claimed.
    assert max(e.index(("claimed", 3)), e.index(("claimed", 4))) < e.index(("result", 3))
    # ...while every other product waits for the verified results it is made of.
    assert e.index(("result", 1)) < e.index(("submit", 2))
    assert e.index(("result", 2)) < e.index(("submit", 3))
    assert e.index(("result", 4)) < e.index(("submit", 5))
    assert net.jobs_posted == 5 and len(net.step_job_ids()) == 5
    local = train(CONFIG, local_matmul, max_steps=1)
    assert result.step_hashes == local.step_hashes


def test_ctrl_c_cancels_the_open_jobs_once_they_expire_and_keeps_the_claimed(monkeypatch):
    monkeypatch.setattr("node.apps.train_net.POLL_S", 0.0)
    client = ScriptedClient(interrupt_on_open=3)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        train_on_network(
            client,  # type: ignore[arg-type]
            CONFIG,
            reward=10_000,
            max_steps=1,
            job_timeout=2,
            say=said.append,
        )
    cancelled = [n for what, n in client.events if what == "cancel"]
    assert sorted(cancelled) == [3, 4]
    assert [client.jobs[j]["status"] for j in client.order] == ["mined"] * 2 + ["cancelled"] * 2
    assert any("once they expire at height" in line for line in said)


class PendingClaimClient(ScriptedClient):
    """A chain whose miners' job_results stay in the mempool: no block ever holds a claim."""

    def status(self, job_id: bytes) -> dict[str, Any]:
        record = super().status(job_id)
        job = self.jobs[job_id]
        if job["status"] == "mined":  # the script's claim, only pending here
            job["status"] = "open"
            job["pending"] = True
        pending = "claim-txid" if job.get("pending") else None
        return {"status": job["status"], "expiry": record["expiry"], "pending_claim": pending}

    def result(self, job_id: bytes, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        assert self.jobs[job_id].get("pending"), "result asked before any claim"
        self.events.append(("result", self.number(job_id)))
        return local_matmul(a, b)


def test_a_round_goes_on_once_its_jobs_claims_are_pending_without_a_block(monkeypatch):
    """A job_result in the mempool already serves C: training fetches and checks it
    without waiting for a block to hold the claim."""
    monkeypatch.setattr("node.apps.train_net.POLL_S", 0.0)
    client = PendingClaimClient()
    net = NetworkMatmul(client, reward=10_000, timeout=5.0)  # type: ignore[arg-type]
    net.begin_step(0)
    result = train(CONFIG, net, max_steps=1)
    assert [n for what, n in client.events if what == "result"] == [1, 2, 3, 4, 5]
    assert result.step_hashes == train(CONFIG, local_matmul, max_steps=1).step_hashes
