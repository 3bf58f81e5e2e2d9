"""Every fuzz target, bounded: its seeds and hand-made hostile inputs run directly (so a
failure names the input), then atheris runs it for FUZZ_RUNS inputs (``make fuzz``
runs them for minutes each)."""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from node.net.wire import Ping
from tests.fuzz.run import fuzz_target, hostile_of, load, seeds_of, target_names

FUZZ_RUNS = int(os.environ.get("FUZZ_RUNS", "3000"))
MY_TARGETS = {"frame", "handshake", "transaction", "header", "block", "pow", "blob", "fraud_proof"}


def test_every_decoder_a_peer_reaches_has_a_target() -> None:
    assert set(target_names()) >= MY_TARGETS


@pytest.mark.parametrize("name", target_names())
def test_seeds_and_hostile_inputs(name: str) -> None:
    module = load(name)
    seeds = seeds_of(module)
    hostile = hostile_of(module)
    if name in MY_TARGETS:
        assert seeds, f"{name} has no seed corpus"
        assert len(hostile) > 10 * len(seeds), f"{name}: {len(hostile)} hostile inputs"
    for i, data in enumerate(seeds + hostile):
        try:
            module.test_one_input(data)
        except Exception as e:
            kind = "seed" if i < len(seeds) else "hostile input"
            pytest.fail(f"{name}: {kind} {i} ({len(data)} bytes, {data[:64].hex()}…) raised {e!r}")
    print(f"{name}: {len(seeds)} seeds and {len(hostile)} hostile inputs run")


@pytest.mark.parametrize("name", target_names())
def test_atheris_finds_no_crash(name: str, tmp_path: Path) -> None:
    result = fuzz_target(name, FUZZ_RUNS, None, tmp_path / "corpus", tmp_path / "crashes")
    assert result.crashes == 0, f"{name} crashed; inputs kept: {result.artifacts}"
    assert result.runs >= FUZZ_RUNS, f"{name} ran only {result.runs} of {FUZZ_RUNS} inputs"
    print(f"{name}: {result.runs} inputs fuzzed in {result.seconds} s, no crash")


def test_the_harness_reports_a_crash_and_keeps_its_input(tmp_path: Path) -> None:
    result = fuzz_target(
        "tests.fuzz.broken_target", 200, None, tmp_path / "corpus", tmp_path / "crashes"
    )
    assert result.crashes == 1
    (artifact,) = result.artifacts
    assert Path(artifact).read_bytes()[:2] == b"\x92\x03"


def test_a_finished_run_stops_what_its_target_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libFuzzer ends a run with C exit(); the jsonrpc target's node (its kernel
    warm-up thread, its store, its temporary datadir) must still be stopped first."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    result = fuzz_target("jsonrpc", 50, None, tmp_path / "corpus", tmp_path / "crashes")
    assert result.crashes == 0, f"crashed at exit: {result}"
    assert result.runs >= 50, result
    assert not list(tmp_path.glob("fuzz-jsonrpc-*")), "the node's datadir was left behind"


def test_the_frame_target_flags_a_decoder_that_accepts_a_non_canonical_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = load("frame")
    widened = b"\x92\x03\xdd\x00\x00\x00\x01\x07"  # PING(7) with a 5-byte array header
    frame.test_one_input(widened)  # the real decoder refuses it

    def lenient(data: bytes, max_size: int) -> object:
        return Ping(msgpack.unpackb(data)[1][0])

    monkeypatch.setattr(frame, "decode_message", lenient)
    with pytest.raises(AssertionError, match="non-canonical"):
        frame.test_one_input(widened)


def test_the_seed_transactions_cover_every_payload_kind() -> None:
    """A transaction kind added without a seed would reach the fuzzers only by chance."""
    from consensus.transactions import PAYLOAD_TYPES
    from tests.support.corpus import payload_examples

    assert {type(p) for p in payload_examples()} == set(PAYLOAD_TYPES.values())


def test_the_seed_messages_cover_every_message_type() -> None:
    from node.net.wire import MESSAGE_TYPES
    from tests.support.corpus import messages

    assert {type(m) for m in messages()} == set(MESSAGE_TYPES.values())
