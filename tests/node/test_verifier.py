"""The node's verification aids give consensus's verdicts: the proof-of-work memo and
the signature threads (consensus/ itself keeps no cache and starts no thread)."""

from __future__ import annotations

import dataclasses

import pytest

from consensus.errors import InvalidBlock
from consensus.keys import PrivateKey, verify_many
from consensus.pow import verify_pow
from node import verifier
from node.verifier import PARALLEL_VERIFY_MIN, ProofOfWorkMemo, SignatureVerifier
from tests.support.chainkit import MID, extend, new_chain


def test_the_memo_checks_a_proof_once_and_never_remembers_a_failure(monkeypatch):
    chain, clock = new_chain()
    blocks = extend(chain, clock, 3)
    calls: list[bytes] = []

    def counted(header, params):
        calls.append(header.hash)
        return verify_pow(header, params)

    monkeypatch.setattr(verifier, "verify_pow", counted)
    memo = ProofOfWorkMemo(MID, size=2)
    for block in blocks:
        assert memo.check(block.header) == verify_pow(block.header, MID)
    assert memo.check(blocks[-1].header) == verify_pow(blocks[-1].header, MID)
    assert len(calls) == 3  # the last one came from the memo
    memo.check(blocks[0].header)  # forgotten: the memo holds two
    assert len(calls) == 4

    forged = dataclasses.replace(blocks[1].header, target=1)  # no ticket is below 1
    for _ in range(2):
        with pytest.raises(InvalidBlock):
            memo.check(forged)
    assert calls[-2:] == [forged.hash, forged.hash]  # a failure is checked every time


def test_threads_give_each_verdict_in_order():
    keys = [PrivateKey.from_label(f"verifier-{i}") for i in range(3)]
    items = []
    for i in range(2 * PARALLEL_VERIFY_MIN + 1):
        message = i.to_bytes(8, "little")
        signer = keys[(i + 1) % 3] if i % 7 == 0 else keys[i % 3]  # every 7th: wrong key
        items.append((keys[i % 3].public_key.data, message, signer.sign(message)))
    threads = SignatureVerifier(threads=3)
    try:
        assert threads.verify_many(items) == verify_many(items)
        assert threads.verify_many(items).count(False) == len(range(0, len(items), 7))
    finally:
        threads.close()
