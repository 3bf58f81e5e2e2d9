"""The market client posts a product below the minimum job padded with zeros, and
returns A·B without the padding only after Freivalds accepts the whole posted C."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from consensus.keys import PrivateKey
from consensus.market import job_id_of
from consensus.merkle import matrix_rows_root
from consensus.params import DEVNET
from consensus.transactions import FraudProofPayload, JobPostPayload, decode_tx
from node.client.market import MarketClient, WrongResult, posted_spec
from node.relay.blobs import decode_matrix, encode_matrix

POSTER = PrivateKey.from_label("devnet-5")
rng = np.random.default_rng(13)


class FakeNode:
    """The RPC calls the client makes, answered like a node whose miner computes
    the posted product (or, with ``corrupt``, gets one entry of it wrong)."""

    def __init__(self, corrupt: tuple[int, int] | None = None, balance: int = 10**12) -> None:
        self.corrupt = corrupt
        self.balance = balance
        self.blobs: dict[str, np.ndarray] = {}
        self.sent: list[Any] = []
        self.nonce = 0

    def call(self, method: str, *params: Any) -> Any:
        if method == "getaccount":
            return {"balance": self.balance, "next_nonce": self.nonce}
        if method == "getinfo":
            return {"height": 5}
        if method == "sendtransaction":
            self.sent.append(decode_tx(bytes.fromhex(params[0])).payload)
            self.nonce += 1
            return f"tx{self.nonce}"
        if method == "getjob":
            return {"status": "mined", "claim_id": "ab" * 32}
        raise AssertionError(f"unexpected RPC call {method}")

    def put_operand(self, blob: bytes, layout: str) -> bytes:
        x = decode_matrix(blob)
        rows = x if layout == "rows" else np.ascontiguousarray(x.T)  # what a node keeps
        root = matrix_rows_root(rows)
        self.blobs[root.hex()] = rows
        return root

    def get_result(self, job_id: bytes, timeout: float = 60.0) -> bytes:
        post = self.sent[0]
        a, bt = self.blobs[post.root_a.hex()], self.blobs[post.root_b.hex()]
        c = (a.astype(np.int64) @ bt.T.astype(np.int64)).astype(np.int32)
        if self.corrupt is not None:
            c[self.corrupt] += 1
        return encode_matrix(c)


def _tiny() -> tuple[np.ndarray, np.ndarray]:
    return (
        rng.integers(-64, 64, (64, 128), dtype=np.int8),
        rng.integers(-64, 64, (128, 32), dtype=np.int8),
    )


def test_a_tiny_product_is_posted_padded_and_its_result_is_exact():
    node = FakeNode()
    client = MarketClient(node, POSTER, DEVNET)  # type: ignore[arg-type]
    a, b = _tiny()
    job = client.submit(a, b, reward=10_000)
    (post,) = node.sent
    assert isinstance(post, JobPostPayload)
    assert (post.m, post.k, post.n) == DEVNET.min_job_shape
    assert DEVNET.job_too_small(post.m, post.k, post.n) is None
    assert job.job_id == job_id_of(POSTER.address, post, DEVNET)
    assert posted_spec(a, b, DEVNET, POSTER.address) == job.spec  # what train_net looks a job up by
    padded_a = node.blobs[post.root_a.hex()]
    assert np.array_equal(padded_a[:64, :128], a) and not padded_a[64:].any()
    c = client.result(job.job_id, a, b)
    assert c.shape == (64, 32) and c.dtype == np.int32
    assert np.array_equal(c, (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32))


def test_a_wrong_entry_in_the_padding_is_still_caught_and_fraud_proved():
    """The poster paid for the whole posted job: a miner may not skip the padding."""
    node = FakeNode(corrupt=(300, 400))  # outside the 64×32 block the user asked for
    client = MarketClient(node, POSTER, DEVNET)  # type: ignore[arg-type]
    a, b = _tiny()
    job = client.submit(a, b, reward=10_000)
    with pytest.raises(WrongResult, match=r"C\[300, 400\] is wrong; fraud proof sent"):
        client.result(job.job_id, a, b)
    proof = node.sent[-1]
    assert isinstance(proof, FraudProofPayload) and (proof.i, proof.j) == (300, 400)


def test_a_product_that_would_pad_past_the_largest_job_is_refused_before_posting():
    node = FakeNode()
    client = MarketClient(node, POSTER, DEVNET)  # type: ignore[arg-type]
    a = np.zeros((8, DEVNET.max_job_k + 1), dtype=np.int8)
    with pytest.raises(ValueError, match="larger than devnet allows"):
        client.submit(a, np.zeros((DEVNET.max_job_k + 1, 8), dtype=np.int8), reward=10)
    assert node.sent == []


def test_a_reward_the_balance_cannot_cover_is_refused_in_coins_before_posting():
    node = FakeNode(balance=150_000)
    client = MarketClient(node, POSTER, DEVNET)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as refused:
        client.submit(*_tiny(), reward=200_000)
    assert str(refused.value) == (
        "insufficient balance: 0.00150000 coins < reward 0.00200000 + fee 0.00001000"
    )
    assert node.sent == [] and node.blobs == {}


def test_ctrl_c_while_the_post_is_sent_still_reports_the_job_it_posted():
    """Ctrl-C that lands while the node admits the job_post cannot unsend it: the client
    finishes sending and raises PostInterrupted with the posted job, so that its id is
    printed (``pouw job submit`` exits 130 with it), instead of a bare KeyboardInterrupt
    that leaves a posted job nobody knows the id of."""
    import os
    import signal

    from node.client.market import PostInterrupted

    node = FakeNode()
    real_call = node.call

    def call(method: str, *params: Any) -> Any:
        if method == "sendtransaction":
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, mid-send
        return real_call(method, *params)

    node.call = call  # type: ignore[method-assign]
    client = MarketClient(node, POSTER, DEVNET)  # type: ignore[arg-type]
    try:
        client.submit(*_tiny(), reward=10_000)
    except PostInterrupted as e:
        posted = e.submitted
    except KeyboardInterrupt:  # caught here, or it would end the test session
        pytest.fail("a bare KeyboardInterrupt: the posted job's id is lost")
    else:
        pytest.fail("the Ctrl-C was swallowed")
    (post,) = node.sent
    assert posted.job_id == job_id_of(POSTER.address, post, DEVNET)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
