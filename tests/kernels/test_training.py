"""The integer trainer learns, is bit-reproducible over exact matmuls, and posts only valid jobs."""

import math
from dataclasses import replace

import numpy as np
import pytest

from kernels.training import (
    EXP2_NEG_FRAC_Q16,
    PROB_BITS,
    Tiles,
    TrainConfig,
    TrainResult,
    evaluate,
    load_dataset,
    local_matmul,
    pad_to,
    quantize_int7,
    round_shift,
    softmax_q15,
    train,
    weights_hash,
)

CALLS_PER_STEP = 5


def blas_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Another exact matmul: float64 BLAS, exact because every |partial sum| ≤ 2^28 < 2^53."""
    return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64).astype(np.int32)


class CheckingMatmul:
    """Wraps local_matmul and asserts that each call is a job the chain would accept."""

    def __init__(self, tiles: Tiles | None = None) -> None:
        self.tiles = tiles or Tiles()
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        for x in (a, b):
            assert x.dtype == np.int8
            assert x.ndim == 2
            assert int(x.min()) >= -64 and int(x.max()) <= 63
        m, k = a.shape
        assert b.shape[0] == k
        n = b.shape[1]
        assert m % self.tiles.m_mult == 0
        assert n % self.tiles.n_mult == 0
        assert k % self.tiles.k_mult == 0
        assert k <= 65_536
        c = local_matmul(a, b)
        self.calls.append((a, b, c))
        return c


@pytest.fixture(scope="module")
def quick_bc() -> tuple[TrainResult, CheckingMatmul, list]:
    checker = CheckingMatmul()
    steps: list = []
    result = train(
        TrainConfig.quick("breast_cancer"),
        checker,
        on_step=lambda i, calls, _hash: steps.append((i, calls)),
    )
    return result, checker, steps


def test_quick_preset_learns_breast_cancer(quick_bc):
    result, _, _ = quick_bc
    assert result.epochs[-1].test_accuracy >= 0.90
    assert result.epochs[-1].train_accuracy >= 0.90
    assert result.epochs[-1].loss < result.epochs[0].loss


def test_every_product_is_a_valid_job_and_is_reported(quick_bc):
    result, checker, steps = quick_bc
    assert result.matmul_calls == CALLS_PER_STEP * result.steps == len(checker.calls)
    assert [i for i, _ in steps] == list(range(result.steps))
    reported = [call for _, calls in steps for call in calls]
    assert len(reported) == len(checker.calls)
    for (a, b, c), (a2, b2, c2) in zip(reported, checker.calls, strict=True):
        assert a is a2 and b is b2 and c is c2
    assert len(result.step_hashes) == result.steps
    assert result.step_hashes[-1] == weights_hash(result.weights)


def test_training_twice_gives_identical_weights(quick_bc):
    result, _, _ = quick_bc
    again = train(TrainConfig.quick("breast_cancer"), local_matmul)
    assert weights_hash(again.weights) == weights_hash(result.weights)
    assert again.step_hashes == result.step_hashes


def test_any_exact_matmul_gives_identical_weights(quick_bc):
    result, _, _ = quick_bc
    other = train(TrainConfig.quick("breast_cancer"), blas_matmul)
    assert other.step_hashes == result.step_hashes
    assert np.array_equal(other.weights.w1, result.weights.w1)
    assert np.array_equal(other.weights.w2, result.weights.w2)


def test_padding_never_changes_the_weights(quick_bc):
    result, _, _ = quick_bc
    coarse = Tiles(m_mult=32, n_mult=48, k_mult=128)
    checker = CheckingMatmul(coarse)
    config = TrainConfig.quick("breast_cancer")
    other = train(replace(config, tiles=coarse), checker, eval_matmul=checker)
    assert weights_hash(other.weights) == weights_hash(result.weights)


def test_the_five_jobs_have_the_documented_shapes(quick_bc):
    _, _, steps = quick_bc
    shapes = [(a.shape[0], a.shape[1], b.shape[1]) for a, b, _ in steps[0][1]]
    # breast cancer: 30 features + bias → k 64; hidden 32; 2 classes → n 16; batch 64
    assert shapes == [(64, 64, 32), (64, 64, 16), (32, 64, 16), (64, 64, 32), (32, 64, 32)]


@pytest.mark.parametrize("call_in_step", [2, 4])
def test_an_off_by_one_gradient_product_changes_the_weights(quick_bc, call_in_step):
    result, _, _ = quick_bc
    count = 0

    def tampered(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        nonlocal count
        c = local_matmul(a, b)
        if count == 3 * CALLS_PER_STEP + call_in_step:
            c[0, 0] += 1
        count += 1
        return c

    bad = train(TrainConfig.quick("breast_cancer"), tampered)
    assert bad.step_hashes[:3] == result.step_hashes[:3]
    assert bad.step_hashes[3] != result.step_hashes[3]
    assert weights_hash(bad.weights) != weights_hash(result.weights)


@pytest.mark.parametrize("call_in_step", [0, 1, 3])
def test_a_wrong_forward_product_changes_the_weights(quick_bc, call_in_step):
    # Forward products are requantized to int7, so an error below the rounding
    # step can vanish; the chain catches those through Freivalds and fraud
    # proofs on the job itself. An error that matters reaches the weights.
    result, _, _ = quick_bc
    count = 0

    def tampered(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        nonlocal count
        c = local_matmul(a, b)
        if count == call_in_step:
            c[0, 0] += 1 << 20
        count += 1
        return c

    bad = train(TrainConfig.quick("breast_cancer"), tampered)
    assert bad.step_hashes[0] != result.step_hashes[0]


def test_quick_preset_learns_digits():
    result = train(TrainConfig.quick("digits"), blas_matmul)
    assert result.epochs[-1].test_accuracy >= 0.85  # chance is 0.1


def test_evaluate_matches_the_reported_accuracy(quick_bc):
    result, _, _ = quick_bc
    _, _, x_test, y_test = load_dataset("breast_cancer", 0)
    assert evaluate(result.weights, x_test, y_test, blas_matmul) == result.epochs[-1].test_accuracy


def test_dataset_is_int7_and_deterministic():
    x_tr, y_tr, x_te, y_te = load_dataset("digits", seed=3)
    assert x_tr.dtype == np.int8 and x_te.dtype == np.int8
    assert int(x_tr.min()) >= -64 and int(x_tr.max()) <= 63
    assert x_tr.shape[1] == 64 and len(x_tr) + len(x_te) == 1797
    assert set(np.unique(y_tr)) == set(range(10))
    again = load_dataset("digits", seed=3)
    assert all(np.array_equal(p, q) for p, q in zip((x_tr, y_tr, x_te, y_te), again, strict=True))
    assert not np.array_equal(load_dataset("digits", seed=4)[1], y_tr)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"hidden": 0}, "hidden"),
        ({"dataset": "mnist"}, "mnist"),
        ({"batch": 48}, "batch"),
        ({"epochs": 0}, "epochs"),
        ({"lr_shift": -1}, "lr_shift"),
    ],
)
def test_bad_config_is_a_value_error_naming_it(changes, named):
    with pytest.raises(ValueError, match=named):
        TrainConfig(**{"dataset": "breast_cancer", **changes})


def test_unknown_dataset_is_refused_by_the_loader():
    with pytest.raises(ValueError, match="iris"):
        load_dataset("iris", 0)


def test_pad_to_adds_zeros_that_leave_the_product_unchanged():
    rng = np.random.default_rng(5)
    a = rng.integers(-64, 64, (5, 30), dtype=np.int8)
    b = rng.integers(-64, 64, (30, 3), dtype=np.int8)
    a_p, b_p = pad_to(a, 16, 64), pad_to(b, 64, 16)
    assert a_p.shape == (16, 64) and b_p.shape == (64, 16)
    assert not a_p[5:].any() and not a_p[:, 30:].any()
    assert np.array_equal(local_matmul(a_p, b_p)[:5, :3], local_matmul(a, b))
    assert pad_to(a_p, 16, 64).shape == (16, 64)


def test_round_shift_rounds_halves_away_from_zero():
    x = np.array([5, 6, 7, -5, -6, -7, 0])
    assert round_shift(x, 2).tolist() == [1, 2, 2, -1, -2, -2, 0]  # 1.25, 1.5, 1.75
    assert round_shift(x, -3).tolist() == (x * 8).tolist()


def test_quantize_int7_uses_the_range_and_tracks_the_scale():
    x = np.array([[1_000_000, -3], [-999_999, 12345]])
    q, e = quantize_int7(x, -24)
    assert q.dtype == np.int8
    assert 32 <= int(np.abs(q).max()) <= 63
    assert np.allclose(q * 2.0**e, x * 2.0**-24, atol=2.0 ** (e - 1) * 1.0001)
    tiny, e_tiny = quantize_int7(np.array([[3, -1]]), -15)
    assert tiny.tolist() == [[48, -16]] and e_tiny == -19


def test_exp2_table_and_integer_softmax():
    expected = [round(2**16 * 2 ** (-f / 16)) for f in range(16)]
    assert EXP2_NEG_FRAC_Q16.tolist() == expected
    logits = np.array([[0, 16, 32], [100, 100, 100], [5000, -5000, 0]])
    p = softmax_q15(logits, -4)  # logits in 1/16 units: 0, 1, 2 in log2
    one = 1 << PROB_BITS
    assert np.all(np.abs(p.sum(axis=1) - one) <= 3)
    assert math.isclose(p[0, 2] / one, 4 / 7, abs_tol=1e-3)
    assert p[1, 0] == p[1, 1] == p[1, 2]
    assert p[2, 0] == one and p[2, 1] == 0


def test_max_steps_cuts_the_same_run_short():
    config = TrainConfig.quick("breast_cancer")
    full = train(config, local_matmul)
    hashes: list[bytes] = []
    cut = train(config, local_matmul, on_step=lambda i, c, h: hashes.append(h), max_steps=3)
    assert cut.steps == 3 and cut.step_hashes == full.step_hashes[:3] == hashes
    with pytest.raises(ValueError, match="max_steps"):
        train(config, local_matmul, max_steps=0)
