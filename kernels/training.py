"""An MLP trained with integer arithmetic only, one job per matmul (PROTOCOL §1, §8).

Every matrix product of a training step goes through a caller-supplied
``matmul(a, b)`` that returns the exact int32 product of two int8 operands.
Locally that is :func:`local_matmul`; on the network each call is a posted job,
so the step is only as trustworthy as the products, which the chain makes
checkable (Freivalds, fraud proofs). Because the step itself is integer-only
and deterministic, any exact matmul yields bit-identical weights, and the
weights hash after each step names the model's state in its lineage.

Numbers. A tensor is an integer array ``x`` with an exponent ``e``: its real
value is ``x · 2^e``. Master weights are int32 with ``WEIGHT_FRAC_BITS``
fractional bits (e = -WEIGHT_FRAC_BITS). Before a product each operand is
quantized to int7 with a per-tensor power-of-two scale chosen from its integer
max-abs (:func:`quantize_int7`): an arithmetic shift with round-half-away-from-
zero, then a clip to [-64, 63]. Products come back as int32 with exponent
``e_a + e_b``; nothing ever leaves the integers after :func:`load_dataset`.

One step on a minibatch X (B×F, plus a constant bias input) — five jobs:

1. ``P = X·W1``                   (B×F)·(F×H)
2. ``Z = relu(P)·W2``             (B×H)·(H×C)   — logits
3. ``gW2 = relu(P)ᵀ·δ2``          (H×B)·(B×C)
4. ``D = δ2·W2ᵀ``                 (B×C)·(C×H)
5. ``gW1 = Xᵀ·(D ⊙ [P > 0])``     (F×B)·(B×H)

They form four dependency rounds, {1}, {2}, {3, 4}, {5} (:data:`STEP_ROUNDS`):
3 and 4 both need only δ2 and W2. A ``matmul`` with a ``many(pairs)`` method
(:class:`BatchMatmul`) is handed each round's products at once, so on the
network they are posted together and mined side by side.

δ2 is the cross-entropy gradient of a base-2 softmax, computed in integers:
the logits are taken in log2 units with ``LOGIT_FRAC_BITS`` fractional bits,
``2^-d`` comes from a 16-entry table and a shift, and the probabilities are an
integer division in Q``PROB_BITS``. The update is ``W -= round(g · 2^s)`` with
the shift ``s`` folding in the gradient's exponent, the learning rate
``2^-lr_shift`` and the 1/B of the batch mean.

Tiling. Job shapes must have m and n multiples of 16 and k a multiple of 64
(the noise rank). Operands are zero-padded (:func:`pad_to`): zero rows of A
and zero columns of B only add zero rows and columns to C, which are cropped,
and zero columns of A meeting zero rows of B add 0 to every sum, so padding
never changes a result (the tests train with other tile sizes and get the same
weights).

Tampering. With the presets the update shift is a left shift (the gradient
products are finer than the weights' 2^-24 after the learning rate), so every
unit of error in jobs 3 and 5 reaches the master weights and the weights hash.
Errors in jobs 1, 2 and 4 pass through an int7 requantization and can vanish
below its rounding step; catching those is the job checks' work (Freivalds,
fraud proofs), not the hash's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import blake3
import numpy as np

from kernels.params import MAX_K, OPERAND_MAX, OPERAND_MIN
from kernels.validate import check_int8_matrix, check_operand

MatmulFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``matmul(a, b)``: exact A·B of int8 operands (m×k, k×n) as an int32 m×n array."""
MatmulCall = tuple[np.ndarray, np.ndarray, np.ndarray]
"""One job as sent and answered: (A, B, C), padded to the tiling."""
STEP_ROUNDS = (1, 1, 2, 1)
"""How many of a step's five products each dependency round holds, in order."""


class BatchMatmul(Protocol):
    """A matmul that can also compute several independent products at once."""

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...

    def many(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """A·B for every (A, B), in order; none of them depends on another."""
        ...


DATASETS = ("breast_cancer", "digits")
INPUT_FRAC_BITS = 4
"""Inputs are standardized features times 16, so int7 covers ±4 standard deviations."""
WEIGHT_FRAC_BITS = 24
"""Fractional bits of the int32 master weights (range ±128)."""
LOGIT_FRAC_BITS = 4
"""Logits enter the softmax in log2 units with this many fractional bits."""
PROB_BITS = 15
"""Softmax probabilities are integers in Q15."""
EXP2_NEG_FRAC_Q16 = np.array(
    [65536, 62757, 60097, 57549, 55109, 52773, 50535, 48393,
     46341, 44376, 42495, 40693, 38968, 37316, 35734, 34219],
    dtype=np.int64,
)  # fmt: skip
"""round(2^16 · 2^(-f/16)) for f = 0..15: the fractional part of 2^-d."""
_MAX_EXP2_SHIFT = 40  # 2^16 >> 40 is already 0; keeps numpy shifts well defined
_SHUFFLE_TAG = b"pouwnet/training/shuffle/v1"
_INIT_TAG = b"pouwnet/training/init/v1"
_WEIGHTS_TAG = b"pouwnet/training/mlp-weights/v1"


@dataclass(frozen=True)
class Tiles:
    """Job shape granularity: m % m_mult, n % n_mult and k % k_mult must be 0."""

    m_mult: int = 16
    n_mult: int = 16
    k_mult: int = 64

    def __post_init__(self) -> None:
        for name in ("m_mult", "n_mult", "k_mult"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"tile {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how. ``lr_shift``: the step size is 2^-lr_shift on the batch mean."""

    dataset: str
    hidden: int = 32
    epochs: int = 10
    batch: int = 64
    lr_shift: int = 3
    seed: int = 0
    tiles: Tiles = field(default_factory=Tiles)

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {DATASETS}")
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f"hidden must be a positive integer, got {self.hidden!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch, int) or self.batch < 1 or self.batch & (self.batch - 1):
            raise ValueError(f"batch must be a power of two, got {self.batch!r}")
        if not isinstance(self.lr_shift, int) or not 0 <= self.lr_shift <= 30:
            raise ValueError(f"lr_shift must be an integer in [0, 30], got {self.lr_shift!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")

    @classmethod
    def quick(cls, dataset: str = "breast_cancer", seed: int = 0) -> TrainConfig:
        """A few epochs and a small hidden layer: seconds on a laptop."""
        return cls(dataset=dataset, hidden=32, epochs=5, batch=64, lr_shift=2, seed=seed)

    @classmethod
    def full(cls, dataset: str = "breast_cancer", seed: int = 0) -> TrainConfig:
        """The reference run: a wider hidden layer and more epochs."""
        return cls(dataset=dataset, hidden=64, epochs=30, batch=64, lr_shift=3, seed=seed)


@dataclass(frozen=True, eq=False)
class MLPWeights:
    """int32 master weights with ``frac_bits`` fractional bits; W1's last row is the bias."""

    w1: np.ndarray  # (features + 1) × hidden
    w2: np.ndarray  # hidden × classes
    frac_bits: int = WEIGHT_FRAC_BITS


@dataclass(frozen=True)
class EpochStats:
    """Reporting only, computed in floats after the epoch's integer steps."""

    epoch: int
    loss: float  # mean cross-entropy (nats) of the training batches, from integer probabilities
    train_accuracy: float
    test_accuracy: float


@dataclass(frozen=True, eq=False)
class TrainResult:
    weights: MLPWeights
    epochs: list[EpochStats]
    steps: int
    matmul_calls: int
    step_hashes: list[bytes]  # weights_hash after each step, for the lineage record


# --- integer primitives -------------------------------------------------------


def local_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact A·B in int64, wrapped to int32 as the protocol's accumulator does."""
    check_int8_matrix("a", a)
    check_int8_matrix("b", b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"inner dimensions differ: {a.shape} · {b.shape}")
    return (a.astype(np.int64) @ b.astype(np.int64)).astype(np.int32)


def round_shift(x: np.ndarray, s: int) -> np.ndarray:
    """x · 2^-s in int64, rounding halves away from zero; s < 0 shifts left (exact)."""
    x = x.astype(np.int64)
    if s <= 0:
        return x << np.int64(-s)
    half = np.int64(1) << np.int64(s - 1)
    shift = np.int64(s)
    return np.where(x >= 0, (x + half) >> shift, -((half - x) >> shift))


def quantize_int7(x: np.ndarray, exp: int) -> tuple[np.ndarray, int]:
    """Requantize (x, exp) to int7 with the largest magnitude landing in [32, 63].

    The shift comes from the integer max-abs alone, so it is the same on every
    machine; a value that rounds up to 64 is clipped to 63.
    """
    x = x.astype(np.int64)
    max_abs = int(np.abs(x).max()) if x.size else 0
    if max_abs == 0:
        return np.zeros(x.shape, dtype=np.int8), exp
    s = max_abs.bit_length() - 6
    q = np.clip(round_shift(x, s), OPERAND_MIN, OPERAND_MAX).astype(np.int8)
    return q, exp + s


def pad_to(x: np.ndarray, row_mult: int, col_mult: int) -> np.ndarray:
    """Zero-pad a 2-D array so its rows and columns are multiples of the given sizes."""
    if x.ndim != 2:
        raise ValueError(f"pad_to needs a 2-D array, got shape {x.shape}")
    if row_mult < 1 or col_mult < 1:
        raise ValueError(f"multiples must be positive, got {row_mult}, {col_mult}")
    rows, cols = x.shape
    pr, pc = -rows % row_mult, -cols % col_mult
    if pr == 0 and pc == 0:
        return np.ascontiguousarray(x)
    out = np.zeros((rows + pr, cols + pc), dtype=x.dtype)
    out[:rows, :cols] = x
    return out


def tiled_matmul(
    matmul: MatmulFn, a: np.ndarray, b: np.ndarray, tiles: Tiles, calls: list[MatmulCall]
) -> np.ndarray:
    """A·B as one tile-aligned job; returns the cropped product in int64 and logs the call."""
    (c,) = tiled_round(matmul, [(a, b)], tiles, calls)
    return c


def tiled_round(
    matmul: MatmulFn | BatchMatmul,
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    tiles: Tiles,
    calls: list[MatmulCall],
) -> list[np.ndarray]:
    """Independent products as tile-aligned jobs, handed over together when ``matmul``
    has ``many``; returns the cropped products in int64 and logs the calls in order."""
    padded = []
    for a, b in pairs:
        a_p = pad_to(a, tiles.m_mult, tiles.k_mult)
        b_p = pad_to(b, tiles.k_mult, tiles.n_mult)
        if a_p.shape[1] > MAX_K:
            raise ValueError(f"k={a_p.shape[1]} exceeds the maximum inner dimension {MAX_K}")
        check_operand("a", a_p)
        check_operand("b", b_p)
        padded.append((a_p, b_p))
    many = getattr(matmul, "many", None)
    results = many(padded) if many is not None else [matmul(a_p, b_p) for a_p, b_p in padded]
    if len(results) != len(padded):
        raise ValueError(f"matmul returned {len(results)} products for {len(padded)}")
    out = []
    for (a, b), (a_p, b_p), result in zip(pairs, padded, results, strict=True):
        c = np.asarray(result)
        expected = (a_p.shape[0], b_p.shape[1])
        if c.shape != expected or c.dtype != np.int32:
            raise ValueError(f"matmul returned {c.dtype} {c.shape}, expected int32 {expected}")
        calls.append((a_p, b_p, c))
        out.append(c[: a.shape[0], : b.shape[1]].astype(np.int64))
    return out


def _blake3_ints(tag: bytes, seed: int, count: int) -> np.ndarray:
    """``count`` uint64 values from BLAKE3's XOF: a PRNG no library upgrade can change."""
    digest = blake3.blake3(tag + seed.to_bytes(8, "little")).digest(length=8 * count)
    return np.frombuffer(digest, dtype="<u8").astype(np.uint64)


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    keys = _blake3_ints(_SHUFFLE_TAG + epoch.to_bytes(8, "little"), seed, n)
    return np.argsort(keys, kind="stable")


def _init_matrix(seed: int, index: int, fan_in: int, fan_out: int) -> np.ndarray:
    """Glorot-uniform in fixed point: limit = sqrt(6 / (fan_in + fan_out)) via isqrt."""
    limit = math.isqrt((6 << (2 * WEIGHT_FRAC_BITS)) // (fan_in + fan_out))
    raw = _blake3_ints(_INIT_TAG + index.to_bytes(1, "little"), seed, fan_in * fan_out)
    # The modulo bias is < 2^-35 for 64-bit draws; determinism is what matters here.
    values = (raw % np.uint64(2 * limit + 1)).astype(np.int64) - limit
    return values.reshape(fan_in, fan_out).astype(np.int32)


# --- data ---------------------------------------------------------------------


def load_dataset(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) of a dataset shipped with scikit-learn."""
    from sklearn.datasets import load_breast_cancer, load_digits

    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    bunch = load_breast_cancer() if name == "breast_cancer" else load_digits()
    return split_and_quantize(
        np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64), seed
    )


def split_and_quantize(
    x: np.ndarray, y: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): int7 features in int8, int64 labels.

    The only floating point of this module, and it happens once, before any
    training: a stratified 80/20 split fixed by ``seed``, standardization with
    the training set's statistics (correctly rounded sums, so every platform
    gets the same numbers), then ``round(z · 16)`` clipped to [-64, 63]. Any
    tabular data (a dataset read from the chain, say) goes through here too.
    """
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    n = x_tr.shape[0]
    mean = np.array([math.fsum(col) / n for col in x_tr.T])
    var = np.array([math.fsum((col - mu) ** 2) / n for col, mu in zip(x_tr.T, mean, strict=True)])
    std = np.sqrt(var)
    std[std == 0] = 1.0  # constant features (blank digit pixels) stay at 0

    def quantize(data: np.ndarray) -> np.ndarray:
        z = (data - mean) / std * float(1 << INPUT_FRAC_BITS)
        return np.clip(np.rint(z), OPERAND_MIN, OPERAND_MAX).astype(np.int8)

    return quantize(x_tr), y_tr, quantize(x_te), y_te


# --- model --------------------------------------------------------------------


@dataclass
class _Forward:
    x_q: np.ndarray  # B × (F+1) int8, exponent -INPUT_FRAC_BITS
    pre1: np.ndarray  # int64, exponent e_pre1
    h_q: np.ndarray
    e_h: int
    w2_q: np.ndarray
    e_w2: int
    logits: np.ndarray  # int64, exponent e_logits
    e_logits: int


def _with_bias(x: np.ndarray) -> np.ndarray:
    """Append the constant input 1.0 (= 2^INPUT_FRAC_BITS) that carries W1's bias row."""
    ones = np.full((x.shape[0], 1), 1 << INPUT_FRAC_BITS, dtype=np.int8)
    return np.concatenate([x, ones], axis=1)


def _forward(
    weights: MLPWeights, x: np.ndarray, matmul: MatmulFn, tiles: Tiles, calls: list[MatmulCall]
) -> _Forward:
    x_q = _with_bias(x)
    w1_q, e_w1 = quantize_int7(weights.w1, -weights.frac_bits)
    pre1 = tiled_matmul(matmul, x_q, w1_q, tiles, calls)
    e_pre1 = -INPUT_FRAC_BITS + e_w1
    h_q, e_h = quantize_int7(np.maximum(pre1, 0), e_pre1)
    w2_q, e_w2 = quantize_int7(weights.w2, -weights.frac_bits)
    logits = tiled_matmul(matmul, h_q, w2_q, tiles, calls)
    return _Forward(x_q, pre1, h_q, e_h, w2_q, e_w2, logits, e_h + e_w2)


def softmax_q15(logits: np.ndarray, exp: int) -> np.ndarray:
    """Row-wise base-2 softmax of (logits, exp) as Q15 integers, by table and shifts.

    2^z / Σ 2^z is a softmax with temperature ln 2, which the learned scale of
    the logits absorbs. With d = max − z in 1/16 units, 2^-d = table[d & 15] >> (d >> 4).
    """
    z = round_shift(logits, -(exp + LOGIT_FRAC_BITS))
    d = z.max(axis=1, keepdims=True) - z
    whole = np.minimum(d >> LOGIT_FRAC_BITS, _MAX_EXP2_SHIFT)
    frac = d & ((1 << LOGIT_FRAC_BITS) - 1)
    e = EXP2_NEG_FRAC_Q16[frac] >> whole  # the row's max contributes 2^16, so sums are > 0
    return (e << PROB_BITS) // e.sum(axis=1, keepdims=True)


def _update(w: np.ndarray, grad: np.ndarray, e_grad: int, frac_bits: int, shift: int) -> None:
    """W -= g · 2^(e_grad + frac_bits − shift), rounded, saturating at int32."""
    step = round_shift(grad, shift - e_grad - frac_bits)
    info = np.iinfo(np.int32)
    w[...] = np.clip(w.astype(np.int64) - step, info.min, info.max).astype(np.int32)


def train_step(
    weights: MLPWeights,
    x: np.ndarray,
    y: np.ndarray,
    matmul: MatmulFn | BatchMatmul,
    lr_shift: int,
    tiles: Tiles = Tiles(),
) -> tuple[list[MatmulCall], np.ndarray]:
    """One SGD step in place on ``weights``; returns the five calls and the Q15 probabilities.

    The products go to ``matmul`` round by round (:data:`STEP_ROUNDS`), each
    round's together through ``matmul.many`` when it has one."""
    calls: list[MatmulCall] = []
    batch = x.shape[0]
    fwd = _forward(weights, x, matmul, tiles, calls)
    probs = softmax_q15(fwd.logits, fwd.e_logits)
    delta2 = probs.copy()
    delta2[np.arange(batch), y] -= 1 << PROB_BITS
    d2_q, e_d2 = quantize_int7(delta2, -PROB_BITS)

    # Jobs 3 and 4 need only δ2 and W2: one round.
    g_w2, back = tiled_round(
        matmul,
        [
            (np.ascontiguousarray(fwd.h_q.T), d2_q),
            (d2_q, np.ascontiguousarray(fwd.w2_q.T)),
        ],
        tiles,
        calls,
    )
    delta1 = np.where(fwd.pre1 > 0, back, 0)
    d1_q, e_d1 = quantize_int7(delta1, e_d2 + fwd.e_w2)
    g_w1 = tiled_matmul(matmul, np.ascontiguousarray(fwd.x_q.T), d1_q, tiles, calls)

    # Mean over the batch (a power of two) and the learning rate are one shift.
    shift = lr_shift + batch.bit_length() - 1
    _update(weights.w2, g_w2, fwd.e_h + e_d2, weights.frac_bits, shift)
    _update(weights.w1, g_w1, -INPUT_FRAC_BITS + e_d1, weights.frac_bits, shift)
    return calls, probs


def init_weights(features: int, hidden: int, classes: int, seed: int) -> MLPWeights:
    """Deterministic Glorot-uniform fixed-point weights (BLAKE3-derived)."""
    return MLPWeights(
        w1=_init_matrix(seed, 1, features + 1, hidden),
        w2=_init_matrix(seed, 2, hidden, classes),
    )


def weights_hash(weights: MLPWeights) -> bytes:
    """BLAKE3 of tag ‖ frac_bits ‖ for each of W1, W2: rows, cols (u32 LE) ‖ int32 LE bytes."""
    h = blake3.blake3(_WEIGHTS_TAG)
    h.update(weights.frac_bits.to_bytes(4, "little"))
    for w in (weights.w1, weights.w2):
        if w.dtype != np.int32 or w.ndim != 2:
            raise ValueError(f"weights must be 2-D int32, got {w.dtype} {w.shape}")
        h.update(w.shape[0].to_bytes(4, "little") + w.shape[1].to_bytes(4, "little"))
        h.update(np.ascontiguousarray(w, dtype="<i4").tobytes())
    return h.digest()


def predict(
    weights: MLPWeights,
    x: np.ndarray,
    matmul: MatmulFn,
    tiles: Tiles = Tiles(),
) -> np.ndarray:
    """Class indices (argmax of the integer logits; ties go to the lower index)."""
    check_operand("x", x)
    return np.argmax(_forward(weights, x, matmul, tiles, []).logits, axis=1)


def evaluate(
    weights: MLPWeights,
    x: np.ndarray,
    y: np.ndarray,
    matmul: MatmulFn,
    tiles: Tiles = Tiles(),
) -> float:
    """Fraction of rows of x whose predicted class is y."""
    return float(np.mean(predict(weights, x, matmul, tiles) == y))


def train(
    config: TrainConfig,
    matmul: MatmulFn | BatchMatmul,
    on_step: Callable[[int, list[MatmulCall], bytes], None] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    eval_matmul: MatmulFn = local_matmul,
    max_steps: int | None = None,
    data: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> TrainResult:
    """Train ``config`` with every training product computed by ``matmul``.

    Each epoch visits the training set in a BLAKE3-derived order in full
    minibatches of ``config.batch`` (the remainder waits for the next epoch's
    order). ``on_step(i, calls, weights_hash)`` gets the step's five (A, B, C)
    jobs and the weights hash after the update (what a network run records on
    chain). ``max_steps`` stops early; a cut epoch is still reported. The
    per-epoch accuracies are reports, not training: they use ``eval_matmul``,
    local by default, so they post no jobs. ``data`` replaces the named
    dataset with prepared arrays (see :func:`split_and_quantize`).
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    x_tr, y_tr, x_te, y_te = data if data is not None else load_dataset(config.dataset, config.seed)
    classes = int(max(y_tr.max(), y_te.max())) + 1
    if x_tr.shape[0] < config.batch:
        raise ValueError(f"batch {config.batch} exceeds the {x_tr.shape[0]} training rows")
    weights = init_weights(x_tr.shape[1], config.hidden, classes, config.seed)
    per_epoch = x_tr.shape[0] // config.batch
    total = config.epochs * per_epoch if max_steps is None else max_steps
    history: list[EpochStats] = []
    hashes: list[bytes] = []
    step = 0
    calls_made = 0
    for epoch in range(config.epochs):
        if step >= total:
            break
        order = _epoch_order(config.seed, epoch, x_tr.shape[0])
        nll: list[float] = []
        for b in range(per_epoch):
            if step >= total:
                break
            rows = order[b * config.batch : (b + 1) * config.batch]
            calls, probs = train_step(
                weights, x_tr[rows], y_tr[rows], matmul, config.lr_shift, config.tiles
            )
            hashes.append(weights_hash(weights))
            calls_made += len(calls)
            if on_step is not None:
                on_step(step, calls, hashes[-1])
            step += 1
            p_true = np.maximum(probs[np.arange(len(rows)), y_tr[rows]], 1)
            nll.extend((PROB_BITS * math.log(2) - np.log(p_true.astype(np.float64))).tolist())
        stats = EpochStats(
            epoch=epoch,
            loss=float(np.mean(nll)),
            train_accuracy=evaluate(weights, x_tr, y_tr, eval_matmul, config.tiles),
            test_accuracy=evaluate(weights, x_te, y_te, eval_matmul, config.tiles),
        )
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    return TrainResult(weights, history, step, calls_made, hashes)
