"""The node's verification aids: its proof-of-work memo and its signature threads.

consensus/ holds no caches and starts no threads: its ``Chain`` checks a
header's proof with ``Chain.check_pow`` and a block's signatures with
``Chain.verify_signatures``, plain functions by default. A node replaces them
with these, which give the same verdicts, only sooner.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from consensus.blocks import BlockHeader
from consensus.keys import SignedItem, verify_many
from consensus.params import NetworkParams
from consensus.pow import verify_pow

POW_MEMO_SIZE = 20_000
"""Headers whose proof the memo remembers, the oldest forgotten first."""

PARALLEL_VERIFY_MIN = 64
"""Below this many signatures they are verified on the calling thread: handing work
to the pool would cost more than it saves."""


class ProofOfWorkMemo:
    """The proofs of work this node has checked, for its header index.

    A node checks a header's proof when the header arrives (headers-first sync,
    a compact block) and again when its block is added: a proof that passed is
    remembered by the header's hash (which covers the proof), so the second
    check is free. Only successes are remembered. One memo serves one network.
    """

    def __init__(self, params: NetworkParams, size: int = POW_MEMO_SIZE) -> None:
        self.params = params
        self.size = size
        self._tickets: OrderedDict[bytes, int] = OrderedDict()

    def check(self, header: BlockHeader) -> int:
        """``verify_pow(header, params)``: the ticket, or InvalidBlock naming the rule."""
        ticket = self._tickets.get(header.hash)
        if ticket is not None:
            return ticket
        ticket = verify_pow(header, self.params)
        self._tickets[header.hash] = ticket
        while len(self._tickets) > self.size:
            self._tickets.popitem(last=False)
        return ticket


def verify_threads() -> int:
    """How many threads a long list of signatures is verified on (the caller's included)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class SignatureVerifier:
    """``consensus.keys.verify_many`` across the machine's cores.

    PyNaCl has no batch verification, but libsodium runs without the GIL, so a
    long list is split across threads: each verdict is the one ``verify_many``
    gives, only several are computed at once.
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads if threads is not None else verify_threads()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        """Threads beside the caller's, made on first use.

        Re-made in a forked child, whose copy of the parent's pool has no threads.
        """
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(
                    max_workers=max(1, self.threads - 1), thread_name_prefix="verify"
                )
                self._pool_pid = os.getpid()
            return self._pool

    def verify_many(self, items: Sequence[SignedItem]) -> list[bool]:
        """One verdict per (public key, message, signature), in order."""
        workers = self.threads
        if workers < 2 or len(items) < PARALLEL_VERIFY_MIN:
            return verify_many(items)
        size = -(-len(items) // workers)
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        try:
            futures = [self._executor().submit(verify_many, chunk) for chunk in chunks[1:]]
        except RuntimeError:  # the interpreter is shutting down: no new threads
            return verify_many(items)
        results = verify_many(chunks[0])  # the caller takes the first share itself
        for future in futures:
            results.extend(future.result())
        return results

    def close(self) -> None:
        """Let the threads go (a later call makes new ones)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None
