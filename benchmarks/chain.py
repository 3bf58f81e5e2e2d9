"""`pouw bench chain`: how fast one process validates and applies real blocks.

Phase 1 (not timed) builds N blocks on a producer chain: M signed transfers
per block from many prefunded senders, each block mined for real with the CPU
kernels at the devnet's null-job size. The target is easy enough that every
tile wins, and timestamps follow the 2 s schedule so ASERT keeps it there.
The blocks are then encoded to wire bytes and decoded again, as a peer would
receive them, so phase 2 starts from fresh objects that share nothing (no
cached txid, encoding or signature result) with the producer.

Phase 2 (timed) imports the N blocks into a fresh ``Chain`` with ``add_block``:
header rules, PoUW verification, every signature, nonces, balances and the
state root. A block's signatures are verified together on ``verify_threads``
threads (libsodium runs without the GIL). ``sig_verify_per_s`` is the
one-core ceiling: raw PyNaCl verification of one signature in a tight loop.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import nacl.signing

from consensus.blocks import Block, decode_block, encode_block
from consensus.chain import Chain
from consensus.keys import PrivateKey
from consensus.params import DEVNET, NetworkParams
from consensus.pow import mine, null_job, verify_pow
from consensus.transactions import (
    UNSIGNED,
    Transaction,
    TransferPayload,
    kind_of,
    signing_digest,
)
from node.verifier import SignatureVerifier

MIN_ACCOUNTS = 1_024
"""Prefunded senders: many, so one block's transfers come from many accounts."""
TRANSFER_AMOUNT = 1_000
TRANSFER_FEE = 10
LABEL_PREFIX = "bench-"
MINER_LABEL = "bench-miner"


def bench_params(accounts: int, base: NetworkParams = DEVNET) -> NetworkParams:
    """``base`` with ``accounts`` prefunded labels and a target at which every tile wins.

    The ticket threshold is ``target·h·w·k`` (capped at 2^256 − 1), so this
    target makes the first attempt of every block win.
    """
    k = base.null_job_shape[1]
    return dataclasses.replace(
        base,
        name=f"{base.name}-bench",
        genesis_target=(1 << 256) // (base.tile_h * base.tile_w * k),
        prefunded_labels=tuple(f"{LABEL_PREFIX}{i}" for i in range(accounts)),
    )


class _Clock:
    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def __call__(self) -> int:
        return self.now


@dataclasses.dataclass(frozen=True)
class _Sender:
    public: bytes
    address: bytes
    signer: nacl.signing.SigningKey


def _senders(params: NetworkParams) -> list[_Sender]:
    out = []
    for label in params.prefunded_labels:
        key = PrivateKey.from_label(label)
        signer = nacl.signing.SigningKey(key.seed)
        public = bytes(signer.verify_key)
        out.append(_Sender(public, key.public_key.address, signer))
    return out


def _transfer(sender: _Sender, to: bytes, nonce: int, chain_id: int) -> Transaction:
    payload = TransferPayload(to, TRANSFER_AMOUNT)
    unsigned = Transaction(
        chain_id, kind_of(payload), sender.public, nonce, TRANSFER_FEE, payload, UNSIGNED
    )
    signature = sender.signer.sign(signing_digest(unsigned)).signature
    return Transaction(
        chain_id, unsigned.kind, sender.public, nonce, TRANSFER_FEE, payload, signature
    )


def build_blocks(
    params: NetworkParams,
    blocks: int,
    txs_per_block: int,
    on_block: Callable[[], None] | None = None,
) -> list[bytes]:
    """Phase 1: N mined blocks of M transfers each, as wire bytes."""
    clock = _Clock(params.genesis_timestamp_ms)
    producer = Chain(params, clock)
    senders = _senders(params)
    nonces = [0] * len(senders)
    miner = PrivateKey.from_label(MINER_LABEL).address
    out: list[bytes] = []
    cursor = 0
    for _ in range(blocks):
        txs = []
        for _ in range(txs_per_block):
            # Every sender in turn; the recipient is never the sender itself.
            s = cursor % len(senders)
            offset = 1 + (cursor // len(senders)) % (len(senders) - 1)
            to = senders[(s + offset) % len(senders)].address
            txs.append(_transfer(senders[s], to, nonces[s], params.chain_id))
            nonces[s] += 1
            cursor += 1
        clock.now += params.block_time_ms
        job = null_job(producer.tip.hash, params)
        template, included = producer.build_template(txs, miner, job.spec, clock.now)
        if len(included) != len(txs):
            raise RuntimeError(f"only {len(included)} of {len(txs)} transfers applied")
        mined = mine(template, job, params, max_attempts=4)
        if mined is None:
            raise RuntimeError("no tile won at a target where every tile should win")
        block = Block(mined.header, included)
        producer.add_block(block)
        out.append(encode_block(block))
        if on_block is not None:
            on_block()
    return out


def measure_sig_verify(seconds: float = 0.5) -> float:
    """Raw PyNaCl ``VerifyKey.verify`` per second, one signature in a tight loop."""
    signer = nacl.signing.SigningKey(os.urandom(32))
    message = os.urandom(32)
    signature = signer.sign(message).signature
    vk = signer.verify_key
    count = 0
    t0 = time.perf_counter()
    while True:
        for _ in range(200):
            vk.verify(message, signature)
        count += 200
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return count / elapsed


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3 if times else 0.0


def bench_chain(
    blocks: int,
    txs_per_block: int,
    accounts: int | None = None,
    on_block: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Build N blocks (phase 1), import them into a fresh chain (phase 2); the JSON record.

    ``on_block`` is called once per block built in phase 1 (a progress bar).
    """
    if blocks < 1:
        raise ValueError(f"--blocks must be at least 1, got {blocks}")
    if txs_per_block < 0:
        raise ValueError(f"--txs-per-block must be at least 0, got {txs_per_block}")
    n_accounts = accounts if accounts is not None else max(MIN_ACCOUNTS, txs_per_block)
    if n_accounts < 2:
        raise ValueError("transfers need at least 2 accounts")
    params = bench_params(n_accounts)
    wire = build_blocks(params, blocks, txs_per_block, on_block)

    decode_times = []
    received = []
    for data in wire:
        t0 = time.perf_counter()
        received.append(decode_block(data))
        decode_times.append(time.perf_counter() - t0)

    # Far enough ahead that no block is "too far in the future".
    clock = _Clock(params.genesis_timestamp_ms + (blocks + 1) * params.block_time_ms)
    chain = Chain(params, clock)
    verifier = SignatureVerifier()
    chain.verify_signatures = verifier.verify_many  # a node's, across cores
    # Warm-up: loading the compiled verification kernels is not what we measure.
    verify_pow(dataclasses.replace(received[0].header), params)
    block_times = []
    t_start = time.perf_counter()
    for block in received:
        t0 = time.perf_counter()
        result = chain.add_block(block)
        block_times.append(time.perf_counter() - t0)
        if result.status != "connected":
            raise RuntimeError(f"block {block.header.height} did not connect: {result.status}")
    total_s = time.perf_counter() - t_start
    verifier.close()
    if chain.height != blocks:
        raise RuntimeError(f"the fresh chain reached height {chain.height}, expected {blocks}")

    verify_times = []
    for block in received:
        header = dataclasses.replace(block.header)  # a copy without the cached header seed
        t0 = time.perf_counter()
        verify_pow(header, params)
        verify_times.append(time.perf_counter() - t0)

    m, k, n = params.null_job_shape
    total_txs = blocks * txs_per_block
    return {
        "blocks": blocks,
        "txs_per_block": txs_per_block,
        "height": chain.height,
        "seconds": total_s,
        "blocks_per_s": blocks / total_s,
        "txs_per_s": total_txs / total_s,
        "apply_ms_per_block": _median_ms(block_times),
        "verify_ticket_ms": _median_ms(verify_times),
        "decode_ms_per_block": _median_ms(decode_times),
        "sig_verify_per_s": measure_sig_verify(),
        "block_bytes": statistics.median(len(w) for w in wire),
        "accounts": n_accounts,
        "network": DEVNET.name,
        "job_m": m,
        "job_k": k,
        "job_n": n,
        "rank": params.rank,
        "tile_h": params.tile_h,
        "tile_w": params.tile_w,
        "verify_threads": verifier.threads,
    }
