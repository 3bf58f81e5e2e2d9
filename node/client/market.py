"""The compute-market client library: post a matmul, follow it, fetch a verified result.

    client = MarketClient.for_datadir(Path("~/.pouwnet/devnet").expanduser(), key)
    job = client.submit(a, b, reward=10_000)          # operands int8 in [-64, 63]
    client.wait(job.job_id, until=RESULT_AVAILABLE)   # a claim in a block or in the mempool
    c = client.result(job.job_id, a, b)               # Freivalds-checked A·B

A product below the network's minimum job shape is posted padded with zeros
(the reward pays for the padded job) and ``result`` strips the padding.

``result`` always checks C = A·B with Freivalds (false accept ≤ 2^-62) before
returning it. A wrong result makes the client post a fraud proof by itself
(the poster is refunded, the claimant loses its coinbase or its job_result's
bond) and raise :class:`WrongResult` saying so. A job claimed by a job_result
is fetched and checked the same way as one claimed by a block.

The result is there as soon as a job_result claiming the job is in the node's
mempool (its claimant stored C before sending it): Freivalds makes the chain
unnecessary for the client's answer, which saves about a block interval; the
chain is for payment and fraud. A wrong C under a claim still pending is proved
once a block holds the claim (``result`` waits for it).

A C that cannot be fetched (its claimant keeps it from the network) cannot be proved
wrong: ``result`` then sends a result_challenge for random rows of it (once per claim,
:meth:`MarketClient.challenge`) and raises :class:`ResultWithheld`; the claim must
reveal those rows on chain or the job is refunded. Asked again, ``result`` says which
rows are still unrevealed and the height at which the job is settled, and checks the
rows revealed so far against A·B: a claim may reveal rows of a wrong C (they match its
own result_root), and a wrong one is proved from the revealed row (:class:`WrongResult`).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from consensus.blocks import JobSpec
from consensus.keys import PrivateKey, address_to_text
from consensus.market import build_fraud_proof, fraud_proof_from_row, reveal_blocks
from consensus.merkle import matrix_cols_root, matrix_rows_root
from consensus.params import NetworkParams
from consensus.transactions import (
    MAX_CHALLENGE_ROWS,
    FraudProofPayload,
    JobCancelPayload,
    JobPostPayload,
    ResultChallengePayload,
    RevealedRow,
    encode_tx,
    signed_transaction,
)
from kernels.freivalds import freivalds_check, locate_error, wrong_entry
from kernels.layout import transposed
from kernels.params import OPERAND_MAX, OPERAND_MIN
from node.amounts import format_amount
from node.client.rpc import RpcCallError, RpcClient
from node.relay.blobs import decode_matrix, encode_matrix

DEFAULT_EXPIRY_BLOCKS = 200
PENDING_CLAIM = "pending_claim"
"""A state :meth:`MarketClient.wait` can wait for: the job is open and a job_result
claiming it waits in the node's mempool, so its claimant already serves C."""
RESULT_AVAILABLE = (PENDING_CLAIM, "mined", "paid")
"""The states in which :meth:`MarketClient.result` can fetch and check C."""


class WrongResult(Exception):
    """The network returned a wrong C; a fraud proof was sent (its txid is attached)."""

    def __init__(self, message: str, fraud_txid: str | None) -> None:
        super().__init__(message)
        self.fraud_txid = fraud_txid


class ResultWithheld(Exception):
    """The claim's C could not be had from the network; what the client did about it.

    ``challenge_txid`` is the result_challenge this call sent (None if it sent none: the
    claim was challenged already, or is not on chain yet); ``rows`` the rows of C the
    claim must still reveal; ``due`` the height at which the job is refunded if they are
    still unrevealed then (or paid, if they were all revealed).
    """

    def __init__(
        self,
        message: str,
        challenge_txid: str | None = None,
        rows: tuple[int, ...] = (),
        due: int | None = None,
    ) -> None:
        super().__init__(message)
        self.challenge_txid = challenge_txid
        self.rows = rows
        self.due = due


class NoResult(ValueError):
    """The job has no claim to fetch C by: none on chain and none pending (it is open,
    expired, cancelled…). A job seen claimed can be open again: a reorg that takes back
    the block with its claim leaves it open until another block, or a pending
    job_result, claims it."""


NO_RESULT_STATUS = 409
"""GET /result's answer for a job that nothing claims."""

UNAVAILABLE_STATUSES = (502, 503)
"""GET /result's answers when the node could not get a C matching the claim: its peers
did not serve it (503) or the matrix under the claim's root has the wrong size (502)."""


@dataclass(frozen=True)
class SubmittedJob:
    job_id: bytes
    txid: str
    spec: JobSpec


class PostInterrupted(KeyboardInterrupt):
    """Ctrl-C came while the job_post was being sent: it was sent all the same, and this
    says which job it posted (``submitted``), so that the caller can tell the user."""

    def __init__(self, submitted: SubmittedJob) -> None:
        super().__init__(f"interrupted once job {submitted.job_id.hex()} was posted")
        self.submitted = submitted


@contextlib.contextmanager
def _interrupt_held() -> Iterator[list[bool]]:
    """Hold Ctrl-C back until the block ends (in the main thread, with Python's own
    handler in place): ``held[0]`` says whether one came. Without it a Ctrl-C while the
    node admits the job_post leaves a posted job whose id nobody printed."""
    held = [False]
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield held
        return
    previous = signal.signal(signal.SIGINT, lambda *_: held.__setitem__(0, True))
    try:
        yield held
    finally:
        signal.signal(signal.SIGINT, previous)


def check_operands(a: np.ndarray, b: np.ndarray, params: NetworkParams) -> tuple[int, int, int]:
    """ValueError naming the problem unless A (m×k)·B (k×n) can be posted here, padded."""
    for name, x in (("A", a), ("B", b)):
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise ValueError(f"{name} must be a 2-D array")
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got {x.dtype}")
        if x.size == 0:
            raise ValueError(f"{name} is empty")
        if int(x.min()) < OPERAND_MIN or int(x.max()) > OPERAND_MAX:
            raise ValueError(
                f"{name} has values in [{int(x.min())}, {int(x.max())}], outside int7 "
                f"[{OPERAND_MIN}, {OPERAND_MAX}]"
            )
    m, k = a.shape
    kb, n = b.shape
    if k != kb:
        raise ValueError(f"shapes do not match: A is {m}x{k}, B is {kb}x{n}")
    pm, pk, pn = posted_shape(m, k, n, params)
    if max(pm, pn) > params.max_job_dim or pk > params.max_job_k:
        raise ValueError(f"job {m}x{k}x{n} is larger than {params.name} allows")
    return m, k, n


def posted_shape(m: int, k: int, n: int, params: NetworkParams) -> tuple[int, int, int]:
    """The shape an m×k×n product is posted as: each dimension rounded up to the
    mining tile (h, r, w) and to at least the network's minimum job shape."""
    min_m, min_k, min_n = params.min_job_shape
    return (
        max(-(-m // params.tile_h) * params.tile_h, min_m),
        max(-(-k // params.rank) * params.rank, min_k),
        max(-(-n // params.tile_w) * params.tile_w, min_n),
    )


def padded_operands(
    a: np.ndarray, b: np.ndarray, params: NetworkParams
) -> tuple[np.ndarray, np.ndarray]:
    """A and B (int8) with zero rows and columns up to :func:`posted_shape`.

    The zeros add nothing to any sum, so the posted product's top-left m×n
    block is exactly A·B and the rest of it is zero.
    """
    m, k = a.shape
    n = b.shape[1]
    pm, pk, pn = posted_shape(m, k, n, params)
    a8 = np.zeros((pm, pk), dtype=np.int8)
    a8[:m, :k] = a
    b8 = np.zeros((pk, pn), dtype=np.int8)
    b8[:k, :n] = b
    return a8, b8


def posted_spec(a: np.ndarray, b: np.ndarray, params: NetworkParams, poster: bytes) -> JobSpec:
    """The job that :meth:`MarketClient.submit` posts for A·B as ``poster`` (its id names
    the job)."""
    a8, b8 = padded_operands(a, b, params)
    m, k = a8.shape
    return JobSpec(poster, m, k, b8.shape[1], matrix_rows_root(a8), matrix_cols_root(b8))


class MarketClient:
    def __init__(self, rpc: RpcClient, key: PrivateKey, params: NetworkParams) -> None:
        self.rpc = rpc
        self.key = key
        self.params = params
        # Challenges this client sent (job id → txid, rows): shown, not resent, until a
        # block holds them.
        self._challenged: dict[bytes, tuple[str, tuple[int, ...]]] = {}

    @classmethod
    def for_datadir(cls, datadir: Path, key: PrivateKey, params: NetworkParams) -> MarketClient:
        return cls(RpcClient.for_datadir(datadir), key, params)

    # ------------------------------------------------------------ submit

    def submit(
        self,
        a: np.ndarray,
        b: np.ndarray,
        reward: int,
        expiry_blocks: int = DEFAULT_EXPIRY_BLOCKS,
        fee: int = 1_000,
    ) -> SubmittedJob:
        """Upload the operands to our node and post the job; no tx is sent on bad input.

        A product smaller than the network's minimum job (or not a multiple of
        the mining tile) is posted padded with zeros (:func:`padded_operands`);
        ``reward`` pays for the padded job's MACs, and :meth:`result` strips
        the padding again.
        """
        check_operands(a, b, self.params)
        if reward <= 0:
            raise ValueError("the reward must be positive")
        a8, b8 = padded_operands(a, b, self.params)
        m, k = a8.shape
        n = b8.shape[1]
        account = self.rpc.call("getaccount", address_to_text(self.key.address))
        if account["balance"] < reward + fee:
            raise ValueError(
                f"insufficient balance: {format_amount(account['balance'])} coins < reward "
                f"{format_amount(reward)} + fee {format_amount(fee)}"
            )
        # Row-chunked blobs: their ids are the job's roots (node.blobs.matrix_rows). B goes
        # as Bᵀ, whose rows are the columns the node keeps: transposed once, here, for
        # its root and the upload both, instead of here and again on the node.
        # Both uploads at once, and the roots to check them by computed meanwhile: the node
        # stores one operand while the other travels.
        bt = transposed(b8)
        with ThreadPoolExecutor(1, thread_name_prefix="upload") as uploads:
            upload_b = uploads.submit(self.rpc.put_operand, encode_matrix(bt), "rows")
            root_a = self.rpc.put_operand(encode_matrix(a8), "rows")
            spec = JobSpec(self.key.address, m, k, n, matrix_rows_root(a8), matrix_rows_root(bt))
            root_b = upload_b.result()
        if (root_a, root_b) != (spec.root_a, spec.root_b):
            raise RuntimeError("the node stored the operands under other roots")
        height = self.rpc.call("getinfo")["height"]
        payload = JobPostPayload(m, k, n, spec.root_a, spec.root_b, reward, height + expiry_blocks)
        tx = signed_transaction(
            self.key,
            chain_id=self.params.chain_id,
            nonce=account["next_nonce"],
            fee=fee,
            payload=payload,
        )
        job_id = spec.job_id(self.params.rank, self.params.tile_h, self.params.tile_w)
        with _interrupt_held() as interrupted:
            txid = self.rpc.call("sendtransaction", encode_tx(tx).hex())
        submitted = SubmittedJob(job_id, txid, spec)
        if interrupted[0]:
            raise PostInterrupted(submitted)
        return submitted

    # ------------------------------------------------------------ follow

    def status(self, job_id: bytes) -> dict[str, Any]:
        """The job's on-chain record (status: open, mined, paid, refunded, cancelled); while
        open, ``pending_claim``: the txid of a job_result in the node's mempool claiming it."""
        status: dict[str, Any] = self.rpc.call("getjob", job_id.hex())
        return status

    def wait(
        self,
        job_id: bytes,
        timeout: float = 300.0,
        until: tuple[str, ...] = ("mined", "paid", "refunded"),
        poll_s: float = 0.1,
    ) -> dict[str, Any]:
        """The job's record once its status is one of ``until``, polling ``getjob`` every
        ``poll_s``; TimeoutError after ``timeout`` seconds. ``until`` may name
        :data:`PENDING_CLAIM`, an open job a pending job_result claims:
        ``until=RESULT_AVAILABLE`` returns as soon as :meth:`result` can fetch C."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                st = self.status(job_id)
                if st["status"] in until or (PENDING_CLAIM in until and _pending(st)):
                    return st
            except Exception as e:  # not yet in a block: the node does not know the job
                if "unknown job" not in str(e):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id.hex()} not {'/'.join(until)} in {timeout}s")
            time.sleep(poll_s)

    def cancel(self, job_id: bytes, fee: int = 1_000) -> str:
        """Send a job_cancel for our expired, unmined job (its escrow comes back); returns
        the txid. ValueError, and nothing sent, when it is not ours, not open, or not
        expired yet (until then a miner may be computing it in good faith)."""
        st = self.status(job_id)
        if st["poster"] != address_to_text(self.key.address):
            raise ValueError(f"job {job_id.hex()} was posted by {st['poster']}, not this wallet")
        if st["status"] != "open":
            raise ValueError(f"job {job_id.hex()} is {st['status']}: only an open job is cancelled")
        height = self.rpc.call("getinfo")["height"]
        if height < st["expiry"]:
            raise ValueError(
                f"job {job_id.hex()} is open until height {st['expiry']} (now {height}): "
                "it can be cancelled once a block above that height is mined"
            )
        return self.send(JobCancelPayload(job_id), fee)

    def send(self, payload: Any, fee: int) -> str:
        """Sign ``payload`` with our key at our account's next nonce and send it; its txid."""
        account = self.rpc.call("getaccount", address_to_text(self.key.address))
        tx = signed_transaction(
            self.key,
            chain_id=self.params.chain_id,
            nonce=account["next_nonce"],
            fee=fee,
            payload=payload,
        )
        txid: str = self.rpc.call("sendtransaction", encode_tx(tx).hex())
        return txid

    # ------------------------------------------------------------ result

    def result(
        self,
        job_id: bytes,
        a: np.ndarray,
        b: np.ndarray,
        fraud_wait_s: float = 120.0,
        fetch_timeout_s: float = 60.0,
    ) -> np.ndarray:
        """C = A·B from the network, checked with Freivalds; fraud proof on a wrong C.

        ``a`` and ``b`` are the operands given to :meth:`submit`: the whole
        posted (padded) product is checked, padding included, and A·B is
        returned without it. A job claimed on chain or by a job_result still
        pending in the mempool has a result; :class:`NoResult` for one nothing claims
        (a reorg may have taken its claim back since it was seen). A wrong C under a
        pending claim cannot be proved until the claim is in a block: this waits up to
        ``fraud_wait_s`` for that, checks the C the chain's claim committed to
        and proves it wrong (or returns it if that claim is another, right one);
        WrongResult without a fraud proof if no block takes the claim in time.

        A C the node cannot get within ``fetch_timeout_s`` (its claimant keeps it from
        the network) raises :class:`ResultWithheld`; if the claim is on chain and not yet
        challenged, this first sends a result_challenge for up to eight random rows of
        the product (:meth:`challenge`): the claim must then reveal them, opened against
        its result_root, or the job is refunded as if a fraud proof had been sent.
        """
        st = self.status(job_id)
        if st["status"] not in ("mined", "paid") and not _pending(st):
            raise NoResult(f"job {job_id.hex()[:16]} has no result: it is {st['status']}")
        a8, b8 = padded_operands(a, b, self.params)
        c, where = self._fetch_checked(job_id, a8, b8, fetch_timeout_s, a.shape[0])
        if where is not None and _pending(st):
            try:
                st = self.wait(job_id, fraud_wait_s)
            except TimeoutError:
                raise WrongResult(
                    f"the miner's C[{where[0]}, {where[1]}] is wrong; its claim "
                    f"({_CLAIM_NAMES.get(str(st.get('pending_claim_kind')), 'job_result')} "
                    f"{st['pending_claim'][:16]}) is not recorded on chain after "
                    f"{fraud_wait_s:g} s, so no fraud proof can be sent yet: call result "
                    "again once the job is mined (wait) to send one",
                    None,
                ) from None
            # the chain's claim may be another
            c, where = self._fetch_checked(job_id, a8, b8, fetch_timeout_s, a.shape[0])
        if where is None:
            return np.ascontiguousarray(c[: a.shape[0], : b.shape[1]])  # padding stripped
        if st["status"] == "refunded":  # while we waited for the claim's block
            raise WrongResult(f"C{list(where)} is wrong; a fraud proof already refunded it", None)
        if st["status"] != "mined":
            raise WrongResult(f"C{list(where)} is wrong but the challenge window has closed", None)
        proof = build_fraud_proof(bytes.fromhex(st["claim_id"]), job_id, a8, b8, c, *where)
        raise self._prove(proof, f"the miner's C[{where[0]}, {where[1]}] is wrong")

    def _prove(self, proof: FraudProofPayload, what: str) -> WrongResult:
        """Send ``proof``; the WrongResult saying ``what`` is wrong and which fraud proof is
        on its way: this one, or ours already waiting in the node's mempool (a second
        could never apply, and the node refuses it)."""
        try:
            txid = self.send(proof, 1_000)
        except RpcCallError as e:
            pending = _PENDING_PROOF.search(str(e))
            if pending is None:
                raise
            txid = pending.group(1)
            return WrongResult(f"{what}; a fraud proof of it already waits in tx {txid}", txid)
        return WrongResult(f"{what}; fraud proof sent in tx {txid}", txid)

    def challenge(
        self,
        job_id: bytes,
        rows: tuple[int, ...] | None = None,
        fee: int = 1_000,
        rows_used: int | None = None,
    ) -> tuple[str, tuple[int, ...]]:
        """Send a result_challenge: the claim on our job must reveal ``rows`` of C on chain
        (default: ``MAX_CHALLENGE_ROWS`` rows drawn with OS randomness among the first
        ``rows_used``, all rows by default) within ``reveal_blocks`` blocks, or the job is
        refunded. Returns (txid, rows). ValueError, and nothing sent, when the job is not
        ours, has no claim on chain, was challenged already, or a row is out of range."""
        st = self.status(job_id)
        name = job_id.hex()[:16]
        if st["status"] != "mined":
            raise ValueError(
                f"job {name} is {st['status']}: only a claim recorded on chain (the job "
                "mined, its challenge window open) can be challenged"
            )
        if st["poster"] != address_to_text(self.key.address):
            raise ValueError(
                f"job {name} was posted by {st['poster']}: only its poster may challenge"
            )
        if st.get("challenge"):
            raise ValueError(
                f"job {name}: its claim was challenged already (rows still unrevealed: "
                f"{st['challenge']['rows_unrevealed']})"
            )
        m = int(st["m"])
        if rows is None:
            pool = range(m if rows_used is None else max(1, min(rows_used, m)))
            rows = tuple(
                sorted(secrets.SystemRandom().sample(pool, min(MAX_CHALLENGE_ROWS, len(pool))))
            )
        rows = tuple(int(i) for i in rows)
        if not 1 <= len(rows) <= MAX_CHALLENGE_ROWS or len(set(rows)) != len(rows):
            raise ValueError(
                f"a challenge names 1 to {MAX_CHALLENGE_ROWS} distinct rows, got {rows}"
            )
        if any(not 0 <= i < m for i in rows):
            raise ValueError(f"rows {rows}: the product has rows 0 to {m - 1}")
        payload = ResultChallengePayload(bytes.fromhex(st["claim_id"]), job_id, rows)
        txid = self.send(payload, fee)
        self._challenged[job_id] = (txid, rows)
        return txid, rows

    def _withheld(
        self,
        job_id: bytes,
        reason: str,
        rows_used: int | None,
        a8: np.ndarray,
        b8: np.ndarray,
    ) -> ResultWithheld | WrongResult:
        """What to raise when C cannot be fetched: a challenge is sent first where the
        claim is on chain and neither we nor anyone has challenged it yet. Once it was
        challenged, the rows the claim revealed on chain are checked against A8·B8: a
        wrong one is proved (:class:`WrongResult`, fraud proof sent); revealing rows of a
        made-up C that match its own result_root would otherwise be paid."""
        st = self.status(job_id)
        name = job_id.hex()[:16]
        head = f"the result of job {name} cannot be had ({reason})"
        if st["status"] == "open":
            return ResultWithheld(
                f"{head}; its claim is not recorded on chain yet, so it cannot be challenged: "
                "call result again once the job is mined"
            )
        if st["status"] != "mined":
            return ResultWithheld(f"{head}; the job is {st['status']}")
        due = int(st["due"])
        asked = st.get("challenge")
        if asked is not None:
            self._challenged.pop(job_id, None)  # on chain now: the chain says the rest
            wrong = self._check_revealed(job_id, st["claim_id"], a8, b8)
            if wrong is not None:
                return wrong
            left = tuple(asked["rows_unrevealed"])
            if left:
                return ResultWithheld(
                    f"{head}; its claim was challenged and has not revealed rows {list(left)} "
                    f"yet: unless it does, the job is refunded at height {due}",
                    None,
                    left,
                    due,
                )
            return ResultWithheld(
                f"{head}; its claim revealed the rows it was challenged for and they match "
                f"A·B, so it is paid at height {due}, but its C is still not served",
                None,
                (),
                due,
            )
        sent = self._challenged.get(job_id)
        if sent is not None:  # ours waits in the mempool: a second one would be refused
            txid, rows = sent
            return ResultWithheld(
                f"{head}; our result_challenge {txid[:16]} for rows {list(rows)} is not in a "
                "block yet",
                None,
                rows,
                due,
            )
        try:
            txid, rows = self.challenge(job_id, rows_used=rows_used)
        except (ValueError, RpcCallError) as e:
            return ResultWithheld(f"{head}; no challenge could be sent: {e}", None, (), due)
        return ResultWithheld(
            f"{head}; result_challenge {txid} sent for rows {list(rows)}: once it is in a "
            f"block the claim has {reveal_blocks(self.params)} blocks (until height {due} at "
            "least) to reveal them, or the job is refunded",
            txid,
            rows,
            due,
        )

    def _check_revealed(
        self, job_id: bytes, claim_id: str, a8: np.ndarray, b8: np.ndarray
    ) -> WrongResult | None:
        """The rows of C the claim ``claim_id`` has revealed on chain (``getrevealedrows``)
        checked against A8·B8, O(kn) a row: the first wrong one is proved with its own
        branch (a fraud proof sent) and returned as :class:`WrongResult`; None when every
        revealed row is right (or the job's claim is no longer ``claim_id``)."""
        got = self.rpc.call("getrevealedrows", job_id.hex())
        if got.get("claim_id") != claim_id:
            return None  # settled or reorganised away since the status was read
        m, n = a8.shape[0], b8.shape[1]
        for r in got["rows"]:
            try:
                row = RevealedRow(
                    int(r["index"]),
                    bytes.fromhex(r["row"]),
                    tuple(bytes.fromhex(h) for h in r["branch"]),
                )
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"the node's revealed rows are malformed: {e!r}") from None
            if not 0 <= row.index < m or len(row.row) != 4 * n:
                raise ValueError(
                    f"the node's revealed row {row.index} is not a row of the {m}x{n} result"
                )
            claimed = np.frombuffer(row.row, dtype="<i4")
            hit = wrong_entry(a8, b8, row.index, claimed)
            if hit is None:
                continue
            j, right = hit
            got_value = int(claimed[j])
            proof = fraud_proof_from_row(bytes.fromhex(claim_id), job_id, a8, b8, row, j)
            return self._prove(
                proof,
                f"the claim on job {job_id.hex()[:16]} revealed row {row.index} of its C on "
                f"chain (tx {r['txid'][:16]}) and it is wrong: C[{row.index}, {j}] = "
                f"{got_value}, A·B has {right}",
            )
        return None

    def _fetch_checked(
        self,
        job_id: bytes,
        a8: np.ndarray,
        b8: np.ndarray,
        timeout_s: float = 60.0,
        rows_used: int | None = None,
    ) -> tuple[np.ndarray, tuple[int, int] | None]:
        """The node's C for the posted product A8·B8 and a wrong entry of it, None if
        Freivalds accepts C (or its alarm was false: no entry is wrong). ResultWithheld
        (a challenge sent where one can be) when the node cannot get C in ``timeout_s``;
        ``rows_used``: the rows of C the poster asked for (the rest is padding)."""
        try:
            blob = self.rpc.get_result(job_id, timeout_s)
        except RpcCallError as e:
            if e.code == NO_RESULT_STATUS:  # its claim was taken back since the status
                raise NoResult(f"job {job_id.hex()[:16]}: {e}") from None
            if e.code not in UNAVAILABLE_STATUSES:
                raise
            raise self._withheld(job_id, str(e), rows_used, a8, b8) from None
        c = decode_matrix(blob)
        if c.dtype != np.int32 or c.shape != (a8.shape[0], b8.shape[1]):
            raise ValueError(f"the result has shape {c.shape} and dtype {c.dtype}")
        if freivalds_check(a8, b8, c):
            return c, None
        return c, locate_error(a8, b8, c)


_CLAIM_NAMES = {"block": "the tip block", "tx": "job_result"}
_PENDING_PROOF = re.compile(
    r"this sender's fraud_proof of job [0-9a-f]+ is already pending: transaction ([0-9a-f]{64})"
)
"""The node's refusal of a fraud proof because one of ours of the job waits in its mempool."""


def _pending(status: dict[str, Any]) -> bool:
    """Whether a job's record (getjob) is open with a claim pending: the tip's header (the
    chain records it with the next block) or a job_result in the mempool."""
    return status["status"] == "open" and bool(status.get("pending_claim"))
