"""A whole mining attempt against the NumPy reference, recovery, and verification."""

import functools
import sys
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import transcript_cpu
from kernels.attempt import MiningParams, mining_attempt, tile_transcript, verify_tile_ticket
from kernels.backends import ModuleBackend, get_backend
from kernels.tickets import ticket_of
from tests.support.reference import reference_attempt

SEED_A = bytes(range(32))
SEED_B = bytes(range(32, 64))
KEY = bytes(range(64, 96))  # the ticket key (consensus binds it to result_root)
EASY = 2**256 // (16 * 16 * 256)  # every ticket of a k=256 job wins
rng = np.random.default_rng(7)


def _operands(kind, m, k, n):
    if kind == "random":
        return (
            rng.integers(-64, 64, (m, k), dtype=np.int8),
            rng.integers(-64, 64, (k, n), dtype=np.int8),
        )
    if kind == "min":
        return np.full((m, k), -64, np.int8), np.full((k, n), -64, np.int8)
    if kind == "max":
        return np.full((m, k), 63, np.int8), np.full((k, n), 63, np.int8)
    if kind == "zeros":
        return np.zeros((m, k), np.int8), np.zeros((k, n), np.int8)
    if kind == "low_rank":  # rank-1 operands: the noise still forces full work
        u = rng.integers(-7, 8, (m, 1))
        v = rng.integers(-7, 8, (1, k))
        x = rng.integers(-7, 8, (k, 1))
        y = rng.integers(-7, 8, (1, n))
        return (u @ v).astype(np.int8), (x @ y).astype(np.int8)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["random", "min", "max", "zeros", "low_rank"])
@pytest.mark.parametrize(("m", "k", "n"), [(32, 256, 32), (48, 128, 16), (16, 64, 80)])
def test_attempt_matches_reference(kind, m, k, n):
    a, b = _operands(kind, m, k, n)
    res = mining_attempt(a, b, SEED_A, SEED_B, target=1, ticket_key=KEY)
    c, _, transcripts = reference_attempt(a, b, SEED_A, SEED_B, 64, 16, 16)
    assert np.array_equal(res.c, c), "recovered product differs from A·B"
    assert np.array_equal(res.c, (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32))
    assert np.array_equal(res.transcripts, transcripts)
    assert res.winners == []


@settings(max_examples=12, deadline=None)
@given(
    tm=st.integers(1, 3),
    tn=st.integers(1, 3),
    chunks=st.integers(1, 4),
    r=st.sampled_from([16, 32, 64]),
    seed=st.binary(min_size=32, max_size=32),
)
def test_attempt_matches_reference_over_shapes(tm, tn, chunks, r, seed):
    m, n, k = 16 * tm, 16 * tn, r * chunks
    a, b = _operands("random", m, k, n)
    params = MiningParams(r=r)
    res = mining_attempt(a, b, seed, SEED_B, 1, params, ticket_key=KEY)
    c, _, transcripts = reference_attempt(a, b, seed, SEED_B, r, 16, 16)
    assert np.array_equal(res.c, c) and np.array_equal(res.transcripts, transcripts)


@pytest.mark.parametrize(
    ("r", "k"), [(4, 128), (8, 64), (16, 128), (32, 192), (64, 128), (4, 72), (16, 80)]
)
def test_attempt_matches_reference_at_every_rank_the_packings_take(r, k):
    """On VBMI targets A' is packed by byte permutes of each row's L (zero-padded to 64
    bytes when r < 64) where 64 | k, from tables elsewhere (the last two shapes): both
    give the reference's product and transcripts, with all noise entries in play."""
    a, b = _operands("random", 48, k, 32)
    params = MiningParams(r=r)
    res = mining_attempt(a, b, SEED_A, SEED_B, 1, params, ticket_key=KEY)
    c, _, transcripts = reference_attempt(a, b, SEED_A, SEED_B, r, 16, 16)
    assert np.array_equal(res.c, c) and np.array_equal(res.transcripts, transcripts)


@pytest.mark.parametrize(
    ("m", "k", "n", "r", "w"),
    [(32, 256, 48, 64, 16), (32, 128, 64, 32, 32), (16, 192, 32, 4, 16), (16, 72, 16, 4, 16)],
)
def test_an_attempt_given_b_transposed_is_the_same_attempt(m, k, n, r, w):
    """A miner's job holds Bᵀ too, and the VNNI path on VBMI targets packs B' from its rows
    by byte permutes where 64 | k (the last shape: from B's rows, as without it): on every
    path the attempt gives the same C', transcripts and tickets as from B alone, and the
    reference's product and transcripts, tiles of two panels (w = 32) included."""
    previous = transcript_cpu.active_path()
    a, b = _operands("random", m, k, n)
    b[0, 0], b[-1, -1], b[k // 2, 0] = -64, 63, -64  # extremes: B' reaches ±127
    bt = np.ascontiguousarray(b.T)
    params = MiningParams(r=r, w=w)
    c, _, transcripts = reference_attempt(a, b, SEED_A, SEED_B, r, 16, w)
    try:
        for path in transcript_cpu.available_paths():
            transcript_cpu.select_path(path)
            alone = mining_attempt(a, b, SEED_A, SEED_B, 1, params, ticket_key=KEY)
            given = mining_attempt(a, b, SEED_A, SEED_B, 1, params, ticket_key=KEY, bt=bt)
            assert np.array_equal(given.c_noisy, alone.c_noisy), path
            assert np.array_equal(given.transcripts, transcripts), path
            assert np.array_equal(given.tickets, alone.tickets), path
            assert np.array_equal(given.c, c), path
    finally:
        transcript_cpu.select_path(previous)


def test_a_b_transposed_of_the_wrong_shape_or_type_is_named():
    a, b = _operands("random", 16, 128, 32)
    with pytest.raises(ValueError, match=r"^Bᵀ is 32x64 but B is 128x32"):
        mining_attempt(a, b, SEED_A, SEED_B, 1, ticket_key=KEY, bt=np.zeros((32, 64), np.int8))
    with pytest.raises(ValueError, match=r"^Bᵀ must have dtype int8"):
        mining_attempt(a, b, SEED_A, SEED_B, 1, ticket_key=KEY, bt=b.T.astype(np.int16))


def test_a_backend_module_with_only_noisy_product_matches_the_reference(monkeypatch):
    """A kernel module with only ``noisy_product`` (the CUDA one's API) still gets the
    reference's transcripts: the backend builds A' and B'ᵀ for it."""
    shim = types.ModuleType("shim_kernels")
    shim.noisy_product = transcript_cpu.noisy_product
    monkeypatch.setitem(sys.modules, "shim_kernels", shim)
    a, b = _operands("random", 32, 128, 48)
    res = mining_attempt(
        a, b, SEED_A, SEED_B, 1, backend=ModuleBackend("shim", "shim_kernels"), ticket_key=KEY
    )
    c, _, transcripts = reference_attempt(a, b, SEED_A, SEED_B, 64, 16, 16)
    assert np.array_equal(res.transcripts, transcripts) and np.array_equal(res.c, c)


class _PlainBackend:
    """A backend that is not a kernel module: only the Backend protocol's two products."""

    name = "plain"

    def noisy_product(self, a_noisy, bt_noisy, r, h, w):
        return transcript_cpu.noisy_product(a_noisy, bt_noisy, r, h, w)

    def plain_matmul(self, a, bt, r, h, w):
        return transcript_cpu.plain_matmul(a, bt, r, h, w)


def _only_noisy_product(monkeypatch):
    shim = types.ModuleType("strip_shim")
    shim.noisy_product = transcript_cpu.noisy_product
    monkeypatch.setitem(sys.modules, "strip_shim", shim)
    return ModuleBackend("shim", "strip_shim")


@pytest.mark.parametrize("backend", ["cpu", "module with only noisy_product", "not a module"])
@pytest.mark.parametrize(("m", "between"), [(16, 0), (48, 2), (80, 2), (128, 3)])
def test_an_attempt_by_strips_with_other_work_between_them_matches_the_reference(
    monkeypatch, backend, m, between
):
    """An attempt computed by row strips, with another whole attempt run between every
    two of them (what a miner does when a better-paying job arrives), gives the reference's
    C' transcripts and C, and so does the attempt run in between; the strips are whole
    tiles, one call between each two (none for a single tile row)."""
    be = {
        "cpu": "cpu",
        "module with only noisy_product": _only_noisy_product(monkeypatch),
        "not a module": _PlainBackend(),
    }[backend]
    a, b = _operands("random", m, 128, 48)
    other_a, other_b = _operands("random", 32, 192, 32)
    inner: list = []

    def between_strips():
        inner.append(mining_attempt(other_a, other_b, SEED_B, SEED_A, 1, ticket_key=KEY))

    res = mining_attempt(
        a, b, SEED_A, SEED_B, 1, backend=be, ticket_key=KEY, between_strips=between_strips
    )
    c, _, transcripts = reference_attempt(a, b, SEED_A, SEED_B, 64, 16, 16)
    assert np.array_equal(res.transcripts, transcripts) and np.array_equal(res.c, c)
    assert len(inner) == between
    other_c, _, other_t = reference_attempt(other_a, other_b, SEED_B, SEED_A, 64, 16, 16)
    for r in inner:
        assert np.array_equal(r.transcripts, other_t) and np.array_equal(r.c, other_c)


def test_attempt_on_a_misaligned_or_fortran_a_matches_the_reference():
    """The miner reads A as 32-bit words while it packs A' from it: a buffer off by
    one byte, or a Fortran-ordered A, gives the reference's transcripts all the same."""
    a, b = _operands("random", 48, 256, 32)
    buf = bytearray(1) + a.tobytes()
    moved = np.frombuffer(buf, np.int8, count=a.size, offset=1).reshape(a.shape)
    assert moved.ctypes.data % 4
    c, _, transcripts = reference_attempt(a, b, SEED_A, SEED_B, 64, 16, 16)
    for operand in (moved, np.asfortranarray(a)):
        res = mining_attempt(operand, b, SEED_A, SEED_B, 1, ticket_key=KEY)
        assert np.array_equal(res.transcripts, transcripts) and np.array_equal(res.c, c)


def test_noise_changes_the_transcript_but_not_the_product():
    a, b = _operands("random", 32, 128, 32)
    r1 = mining_attempt(a, b, SEED_A, SEED_B, 1, ticket_key=KEY)
    r2 = mining_attempt(a, b, SEED_B, SEED_A, 1, ticket_key=KEY)
    assert np.array_equal(r1.c, r2.c)
    assert not np.array_equal(r1.transcripts, r2.transcripts)


def test_a_key_bound_to_the_product_is_taken_from_the_recovered_c():
    """A key given as a function of C: C is recovered first, exactly A·B, and the
    tickets are those of the key it returns (what a miner on a posted job does)."""
    a, b = _operands("random", 32, 128, 48)
    seen = []

    def key_of(c):
        seen.append(c.copy())
        return bytes(31) + bytes([int(c[0, 0]) & 0xFF])

    bound = mining_attempt(a, b, SEED_A, SEED_B, EASY, ticket_key=key_of)
    expected_c = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)
    assert len(seen) == 1 and np.array_equal(seen[0], expected_c)
    assert np.array_equal(bound.c, expected_c)
    fixed = mining_attempt(a, b, SEED_A, SEED_B, EASY, ticket_key=key_of(expected_c))
    assert np.array_equal(bound.tickets, fixed.tickets)
    other = mining_attempt(a, b, SEED_A, SEED_B, EASY, ticket_key=KEY)
    assert np.array_equal(bound.transcripts, other.transcripts)
    assert not np.any(np.all(bound.tickets == other.tickets, axis=2)), (
        "the key changes every ticket"
    )


def test_bad_ticket_key_is_named():
    a, b = _operands("random", 16, 64, 16)
    with pytest.raises(ValueError, match="ticket key must be 32 bytes"):
        mining_attempt(a, b, SEED_A, SEED_B, 1, ticket_key=b"short")


def test_single_tile_verification_reproduces_the_miners_transcript_and_ticket():
    a, b = _operands("random", 64, 256, 48)
    res = mining_attempt(a, b, SEED_A, SEED_B, EASY, ticket_key=KEY)
    assert len(res.winners) == 12  # at this target every tile wins
    for ti, tj in [(0, 0), (3, 2), (1, 1)]:
        rows, cols = a[16 * ti : 16 * ti + 16], np.ascontiguousarray(b[:, 16 * tj : 16 * tj + 16].T)
        T = tile_transcript(rows, cols, ti, tj, SEED_A, SEED_B)
        assert np.array_equal(T, res.transcripts[ti, tj])
        assert ticket_of(T, KEY, ti, tj) == res.ticket(ti, tj)
        assert verify_tile_ticket(
            rows, cols, ti, tj, SEED_A, SEED_B, EASY, ticket_key=KEY
        ) == res.ticket(ti, tj)


def _one_calls(w, k, r):
    """The one-call verifiers (VNNI paths) the target can run on this shape: the noise
    added by the transposed table, and (VBMI: Ice Lake, Zen 4) by byte permutes."""
    from kernels.transcript_cpu import AMX, VNNI, active_path

    if active_path() not in (VNNI, AMX):
        return []
    from kernels import transcript_vnni as vnni

    found = [vnni.noisy_tile_transcript]
    if vnni.permutable(16, r, k, w):
        found.append(vnni.noisy_tile_transcript_permuted)
    return found


def _streams(ti, tj, w, k, r):
    from kernels.noise import factor_stream, permutation_stream

    return (
        factor_stream(SEED_A, 16 * ti, 16, r),
        permutation_stream(SEED_A, k),
        factor_stream(SEED_B, w * tj, w, r),
        permutation_stream(SEED_B, k),
    )


@pytest.mark.parametrize("kind", ["random", "min", "max", "zeros", "low_rank"])
@pytest.mark.parametrize(
    ("w", "k", "r"),
    [
        (16, 2048, 64),
        (8, 256, 64),
        (24, 128, 4),
        (32, 64, 8),
        (16, 96, 8),
        (16, 256, 4),
        (16, 192, 16),
        (48, 128, 32),
    ],
)
def test_one_call_verifier_equals_the_noisy_strips(kind, w, k, r):
    """The verifier's one compiled call (clean rows + raw noise streams, VNNI paths) gives
    the transcript of the noisy strips through the miner's tile routine, bit for bit."""
    from kernels.noise import (
        NoiseFactors,
        add_noise,
        derive_factor_rows,
        derive_permutation,
        factor_stream,
        permutation_stream,
    )
    from kernels.transcript_cpu import AMX, VNNI, active_path, noisy_tile_transcript, single_tile

    a, b = _operands(kind, 16, k, w)
    cols = np.ascontiguousarray(b.T)
    ti, tj = 5, 3
    T = noisy_tile_transcript(
        a,
        cols,
        factor_stream(SEED_A, 16 * ti, 16, r),
        permutation_stream(SEED_A, k),
        factor_stream(SEED_B, w * tj, w, r),
        permutation_stream(SEED_B, k),
        r,
    )
    if active_path() not in (VNNI, AMX):
        assert T is None  # the caller builds the strips itself
        return
    pa, qa = derive_permutation(SEED_A, k, r)
    pb, qb = derive_permutation(SEED_B, k, r)
    a_noisy = add_noise(a, NoiseFactors(derive_factor_rows(SEED_A, 16 * ti, 16, r), pa, qa))
    b_noisy = add_noise(cols, NoiseFactors(derive_factor_rows(SEED_B, w * tj, w, r), pb, qb))
    expected = single_tile(a_noisy, b_noisy, r)[1]
    assert np.array_equal(T, expected)
    # Both one-call verifiers the target can run, whichever the wrapper picked.
    streams = _streams(ti, tj, w, k, r)
    for one_call in _one_calls(w, k, r):
        T = np.zeros(16, np.uint32)
        assert one_call(a, cols, *streams, r, T)
        assert np.array_equal(T, expected), one_call.__name__
        if one_call.__name__ == "noisy_tile_transcript_permuted":  # also from the seeds
            from kernels import transcript_vnni as vnni

            T = np.zeros(16, np.uint32)
            seeds = np.frombuffer(SEED_A + SEED_B, dtype=np.uint32)
            assert vnni.noisy_tile_transcript_seeded(a, cols, seeds, ti, tj, r, T)
            assert np.array_equal(T, expected)


def _strips_transcript(a, cols, ti, tj, r):
    """The transcript of tile (ti, tj) through the noisy strips, built in NumPy from the
    library's XOF, and the miner's tile routine."""
    from kernels.noise import NoiseFactors, add_noise, derive_factor_rows, derive_permutation
    from kernels.transcript_cpu import single_tile

    h, k = a.shape
    w = cols.shape[0]
    pa, qa = derive_permutation(SEED_A, k, r)
    pb, qb = derive_permutation(SEED_B, k, r)
    a_noisy = add_noise(a, NoiseFactors(derive_factor_rows(SEED_A, h * ti, h, r), pa, qa))
    b_noisy = add_noise(cols, NoiseFactors(derive_factor_rows(SEED_B, w * tj, w, r), pb, qb))
    return single_tile(a_noisy, b_noisy, r)[1]


@pytest.mark.parametrize("kind", ["random", "min", "max", "zeros", "low_rank"])
@pytest.mark.parametrize(
    ("h", "w", "k", "r"),
    [
        (16, 16, 2048, 64),
        (16, 8, 256, 64),
        (3, 5, 64, 2),  # L rows start mid-block: 64 ∤ h·r
        (8, 24, 128, 4),
        (5, 17, 96, 8),  # a second, partial panel of B
        (12, 40, 256, 128),
        (1, 1, 2, 2),
    ],
)
def test_portable_one_call_verifier_equals_the_noisy_strips(kind, h, w, k, r):
    """On the portable path (AVX2 hosts, and any other) the verifier reads the tile's
    noise streams and packs A' and B' from the clean rows in one compiled call, for any
    tile shape: the transcript equals the noisy strips' through the miner's tile routine,
    bit for bit, at tile indices whose rows of L start anywhere in an XOF block."""
    previous = transcript_cpu.select_path(transcript_cpu.GENERIC)
    try:
        a, b = _operands(kind, h, k, w)
        cols = np.ascontiguousarray(b.T)
        for ti, tj in [(0, 0), (5, 3), (7, 11), (123457, 99991)]:
            expected = _strips_transcript(a, cols, ti, tj, r)
            T = transcript_cpu.noisy_tile_transcript_seeded(a, cols, SEED_A, SEED_B, ti, tj, r)
            assert T is not None and np.array_equal(T, expected), (ti, tj)
            params = MiningParams(r=r, h=h, w=w)
            assert np.array_equal(tile_transcript(a, cols, ti, tj, SEED_A, SEED_B, params), T)
    finally:
        transcript_cpu.select_path(previous)


def test_a_tile_whose_noise_lies_near_the_streams_end_is_verified_alike():
    """The compiled calls address the L stream in 64-bit integers: on every path, a tile
    index whose rows of L reach byte 2^62 goes to the library's XOF instead, and either
    way the transcript is the noisy strips'."""
    a, b = _operands("random", 16, 128, 16)
    cols = np.ascontiguousarray(b.T)
    last = (1 << 62) // (16 * 64)  # tile last − 1's rows of L end at byte 2^62
    previous = transcript_cpu.active_path()
    try:
        for path in transcript_cpu.available_paths():
            transcript_cpu.select_path(path)
            if path == transcript_cpu.GENERIC:
                seeded = True  # every tile shape
            else:
                from kernels import transcript_vnni

                seeded = transcript_vnni.permutable(16, 64, 128, 16)
            for ti in (last - 2, last - 1, last + 5):
                expected = _strips_transcript(a, cols, ti, 0, 64)
                T = transcript_cpu.noisy_tile_transcript_seeded(a, cols, SEED_A, SEED_B, ti, 0, 64)
                assert (T is None) == (not seeded or ti >= last - 1), (path, ti)
                if T is not None:
                    assert np.array_equal(T, expected), (path, ti)
                got = tile_transcript(a, cols, ti, 0, SEED_A, SEED_B)
                assert np.array_equal(got, expected), (path, ti)
    finally:
        transcript_cpu.select_path(previous)


def test_verifier_reads_rows_at_any_alignment():
    """Proof rows arrive as bytes at any address: the one-call verifier reads them as
    32-bit words, and must give the same transcript from a misaligned buffer or a view."""
    a, b = _operands("random", 16, 256, 16)
    cols = np.ascontiguousarray(b.T)
    buf = bytearray(1) + a.tobytes() + cols.tobytes()
    rows = np.frombuffer(buf, np.int8, count=a.size, offset=1).reshape(a.shape)
    moved = np.frombuffer(buf, np.int8, count=cols.size, offset=1 + a.size).reshape(cols.shape)
    assert rows.ctypes.data % 4 and moved.ctypes.data % 4
    expected = tile_transcript(a, cols, 1, 2, SEED_A, SEED_B)
    assert np.array_equal(tile_transcript(rows, moved, 1, 2, SEED_A, SEED_B), expected)
    assert np.array_equal(tile_transcript(a, b.T, 1, 2, SEED_A, SEED_B), expected)  # strided


@pytest.mark.parametrize(
    ("w", "k", "r"), [(16, 256, 64), (8, 256, 64), (16, 96, 8), (24, 128, 4), (32, 128, 4)]
)
@pytest.mark.parametrize("value", [-65, 64, -128, 127])
def test_verifier_names_an_operand_outside_int7(w, k, r, value):
    """Whether the verifier reads a tile's rows in 16×16 blocks (16 rows, 16 | k/4), by
    byte permutes or lane by lane, one entry outside [-64, 63] anywhere is named, never
    hashed."""
    params = MiningParams(r=r, w=w)
    a, b = _operands("random", 16, k, w)
    cols = np.ascontiguousarray(b.T)
    rng = np.random.default_rng(value + 1000 * w + k)
    previous = transcript_cpu.active_path()
    try:
        for path in transcript_cpu.available_paths():  # the portable one-call verifier too
            transcript_cpu.select_path(path)
            for rows, bad_cols, name in (
                (a.copy(), cols, "A rows"),
                (a, cols.copy(), "B columns"),
            ):
                target = rows if name == "A rows" else bad_cols
                i, j = rng.integers(target.shape[0]), rng.integers(k)
                target[i, j] = value
                with pytest.raises(ValueError, match=f"{name} has values in .*int7"):
                    tile_transcript(rows, bad_cols, 0, 0, SEED_A, SEED_B, params)
                for one_call in _one_calls(w, k, r):  # each one the target can run refuses it
                    assert not one_call(
                        rows, bad_cols, *_streams(0, 0, w, k, r), r, np.zeros(16, np.uint32)
                    )
                seeds = np.frombuffer(SEED_A + SEED_B, dtype=np.uint32)
                T = np.zeros(16, np.uint32)
                assert not transcript_cpu.noisy_tile_transcript_generic(
                    rows, bad_cols, seeds, 0, 0, r, T
                )
                assert not T.any()  # untouched
                target[i, j] = 63 if value > 0 else -64  # the range's own ends pass
                tile_transcript(rows, bad_cols, 0, 0, SEED_A, SEED_B, params)
    finally:
        transcript_cpu.select_path(previous)


def test_tampered_row_or_wrong_tile_index_fails_verification():
    a, b = _operands("random", 32, 256, 32)
    res = mining_attempt(a, b, SEED_A, SEED_B, 1, ticket_key=KEY)
    ticket = res.ticket(1, 0)
    rows, cols = a[16:32].copy(), np.ascontiguousarray(b[:, 0:16].T)
    target = ticket // (16 * 16 * 256) + 1  # exactly hard enough for tile (1, 0) to win
    assert verify_tile_ticket(rows, cols, 1, 0, SEED_A, SEED_B, target, ticket_key=KEY) == ticket
    rows[3, 100] = rows[3, 100] + 1 if rows[3, 100] < 63 else rows[3, 100] - 1
    assert not np.array_equal(
        tile_transcript(rows, cols, 1, 0, SEED_A, SEED_B), res.transcripts[1, 0]
    )
    assert verify_tile_ticket(rows, cols, 1, 0, SEED_A, SEED_B, 1, ticket_key=KEY) is None
    assert not np.array_equal(
        tile_transcript(a[16:32], cols, 0, 0, SEED_A, SEED_B), res.transcripts[1, 0]
    )


@pytest.mark.parametrize(
    ("a", "b", "params", "message"),
    [
        (np.zeros((16, 64), np.int16), np.zeros((64, 16), np.int8), MiningParams(), "dtype int8"),
        (np.zeros((16, 64), np.int8), np.zeros((32, 16), np.int8), MiningParams(), "inner dim"),
        (np.full((16, 64), 64, np.int8), np.zeros((64, 16), np.int8), MiningParams(), "int7"),
        (np.zeros((16, 64), np.int8), np.full((64, 16), -65, np.int8), MiningParams(), "int7"),
        (np.zeros((16, 96), np.int8), np.zeros((96, 16), np.int8), MiningParams(), "multiple of"),
        (np.zeros((16, 64), np.int8), np.zeros((64, 16), np.int8), MiningParams(r=48), "power"),
        (np.zeros((24, 64), np.int8), np.zeros((64, 16), np.int8), MiningParams(), "tile height"),
        (np.zeros((16, 64), np.int8), np.zeros((64, 20), np.int8), MiningParams(), "tile width"),
        (np.zeros(64, np.int8), np.zeros((64, 16), np.int8), MiningParams(), "2-D"),
        (
            np.zeros((16, 65600), np.int8),
            np.zeros((65600, 16), np.int8),
            MiningParams(r=64),
            "maximum inner",
        ),
    ],
)
def test_bad_input_raises_a_named_error(a, b, params, message):
    with pytest.raises(ValueError, match=message):
        mining_attempt(a, b, SEED_A, SEED_B, 1, params, ticket_key=KEY)


@pytest.mark.parametrize("bad", [64, 127, -65, -128])
@pytest.mark.parametrize("where", ["A", "B"])
def test_a_large_operand_with_one_entry_outside_int7_is_named(where: str, bad: int) -> None:
    """Operands of 2^18 entries and more are range-checked in one parallel pass: a single
    entry out of range, in the last row, is still found and named with its value."""
    a = np.full((512, 512), 63, np.int8)
    b = np.full((512, 512), -64, np.int8)
    (a if where == "A" else b)[511, 509] = bad
    rest = 63 if where == "A" else -64
    lo, hi = min(bad, rest), max(bad, rest)
    with pytest.raises(ValueError, match=rf"^{where} has values in \[{lo}, {hi}\]"):
        mining_attempt(a, b, SEED_A, SEED_B, 1, ticket_key=KEY)


@pytest.mark.parametrize(("m", "k", "n", "r"), [(48, 256, 32, 64), (32, 72, 16, 4)])
@pytest.mark.parametrize("value", [64, 127, -65, -128])
@pytest.mark.parametrize("given_bt", [False, True])
def test_every_path_names_an_operand_outside_int7_before_any_strip(
    m, k, n, r, value, given_bt
) -> None:
    """Whichever path runs the attempt (the VNNI path checks the range as it packs A and B:
    16 quads at a time, and quad by quad past them when 16 ∤ k/4; B from Bᵀ's rows when
    the job's Bᵀ is given and 64 | k), one entry outside [-64, 63] anywhere in A or B is
    named with its range, and no strip is computed: the function a miner runs between
    strips is never called. The range's own ends pass."""
    previous = transcript_cpu.active_path()
    params = MiningParams(r=r)
    # Corners, the middle, and k-offset k − 2: in the last quads, past the last 16.
    spots = {
        "A": [(0, 0), (m - 1, k - 1), (m // 2, k - 2), (m - 1, 5)],
        "B": [(0, 0), (k - 1, n - 1), (k - 2, n // 2), (5, n - 1)],
    }
    calls: list[str] = []
    try:
        for path in transcript_cpu.available_paths():
            transcript_cpu.select_path(path)
            for where, (i, j) in [(w, s) for w in ("A", "B") for s in spots[w]]:
                a, b = _operands("random", m, k, n)
                x = a if where == "A" else b
                x[i, j] = 0
                lo, hi = min(value, int(x.min())), max(value, int(x.max()))
                x[i, j] = value
                bt = np.ascontiguousarray(b.T) if given_bt else None
                with pytest.raises(ValueError, match=rf"^{where} has values in \[{lo}, {hi}\]"):
                    mining_attempt(
                        a, b, SEED_A, SEED_B, 1, params, ticket_key=KEY,
                        between_strips=functools.partial(calls.append, path), bt=bt,
                    )  # fmt: skip
                assert calls == [], path
                x[i, j] = 63 if value > 0 else -64
                bt = np.ascontiguousarray(b.T) if given_bt else None
                res = mining_attempt(
                    a, b, SEED_A, SEED_B, 1, params, ticket_key=KEY,
                    between_strips=functools.partial(calls.append, path), bt=bt,
                )  # fmt: skip
                assert np.array_equal(res.c, a.astype(np.int64) @ b.astype(np.int64)), path
                assert calls, path  # the same call, valid, does run by strips
                calls.clear()
    finally:
        transcript_cpu.select_path(previous)


def test_bad_seed_and_backend_are_named():
    a, b = _operands("random", 16, 64, 16)
    with pytest.raises(ValueError, match="seed_a must be 32 bytes"):
        mining_attempt(a, b, b"x", SEED_B, 1, ticket_key=KEY)
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("tpu")


WARM_UP_PROBE = """
from kernels import blake3_lanes, recover, transcript_cpu
from kernels.attempt import warm_up

warm_up()
loaded = {
    "leaf hashing": blake3_lanes.prefixed_row_hashes,
    "recovery": recover._subtract_paired_into,
    "recovery factors": recover._paired_factors,
    "recovery columns": recover._column_sums,
    "recovery rows": recover._noisy_row_sums,
}
if transcript_cpu.active_path() != transcript_cpu.GENERIC:
    from kernels import transcript_vnni
    loaded["one-call verifier"] = (
        transcript_vnni.noisy_tile_transcript_seeded  # byte permutes, streams in the call
        if transcript_vnni.VBMI
        else transcript_vnni.noisy_tile_transcript
    )
else:  # the portable one, streams in the call
    loaded["one-call verifier"] = transcript_cpu.noisy_tile_transcript_generic
missing = sorted(name for name, f in loaded.items() if not f.signatures)
# A header's check then calls them as consensus.pow.verify_pow does, on read-only views of
# the proof's bytes: that must find the versions loaded, or it compiles on the event loop.
from consensus.params import DEVNET
from consensus.pow import _operand_block, mining_params
from kernels.attempt import tile_transcript
from kernels.tickets import ticket_of

before = {name: len(f.signatures) for name, f in loaded.items()}
params = DEVNET
k = params.null_job_shape[1]
a_rows = _operand_block(bytes(params.tile_h * k), params.tile_h, k, "rows of A")
b_cols = _operand_block(bytes(params.tile_w * k), params.tile_w, k, "columns of B")
t = tile_transcript(a_rows, b_cols, 1, 2, bytes(32), bytes(32), mining_params(params))
ticket_of(t, bytes(32), 1, 2)
grown = sorted(name for name, f in loaded.items() if len(f.signatures) != before[name])
print(missing, grown)
"""


def test_warm_up_loads_what_a_node_runs_first():
    """A node's warm-up thread loads (or, on a fresh install, compiles) the kernels of its
    first header, its first result root and its miner's first posted job, so none of
    them is compiled on the event loop or in the middle of a block interval."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", WARM_UP_PROBE], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[] []", run.stdout
