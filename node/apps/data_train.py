"""Train on a dataset read from the chain, locally, and publish the model's provenance.

One code path for `pouw train --dataset DATASET_ID` and the healthcare demo:
fetch (the read logged on chain by an access_log first), train the reference
integer MLP with every product computed on this machine (private data is never
posted as market jobs), then publish weights hash + dataset + the read's request
nonce in a model_publish transaction.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernels.training import EpochStats
from node.client.datashare import DataClient

MAX_CLASSES = 256
"""Labels are class indices 0..255: the label column sizes the output layer."""


@dataclass(frozen=True)
class LocalTraining:
    """What local training on a table produced."""

    weights_hash: bytes
    test_accuracy: float
    rows: int
    steps: int
    preset: str


def parse_csv(data: bytes) -> tuple[list[list[float]], list[int]]:
    """(features, labels) of a CSV with a header row, numeric features and an integer
    class label (0..MAX_CLASSES-1) last; ValueError naming the first bad cell."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ValueError("the dataset is not UTF-8 text, so not a CSV") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError("the CSV needs a header row and at least one data row")
    width = len(lines[0].split(","))
    if width < 2:
        raise ValueError("the CSV needs at least one feature column and a label column")
    features: list[list[float]] = []
    labels: list[int] = []
    for n, line in enumerate(lines[1:], 2):
        cells = line.split(",")
        if len(cells) != width:
            raise ValueError(f"CSV line {n} has {len(cells)} columns, the header {width}")
        row = []
        for col, cell in enumerate(cells[:-1], 1):
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise ValueError(f"CSV line {n}, column {col}: {cell!r} is not a finite number")
            row.append(value)
        label = cells[-1].strip()
        if not label.isdigit() or int(label) >= MAX_CLASSES:
            raise ValueError(
                f"CSV line {n}: the label (last column) {label!r} is not a class number "
                f"0..{MAX_CLASSES - 1}"
            )
        features.append(row)
        labels.append(int(label))
    return features, labels


def train_on_csv(
    data: bytes,
    quick: bool = True,
    max_steps: int | None = None,
    seed: int = 0,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> LocalTraining:
    """Train the reference int MLP locally on a CSV (see :func:`parse_csv`).

    kernels.training's quick or full preset with every product local:
    deterministic, so anyone holding the same bytes reproduces the weights hash.
    """
    import numpy as np

    from kernels.training import TrainConfig, local_matmul, split_and_quantize, train, weights_hash

    features, labels = parse_csv(data)
    x = np.array(features, dtype=np.float64)
    y = np.array(labels, dtype=np.int64)
    counts = np.bincount(y)
    if np.count_nonzero(counts) < 2 or counts[counts > 0].min() < 2:
        raise ValueError("training needs at least two classes with at least two rows each")
    config = TrainConfig.quick(seed=seed) if quick else TrainConfig.full(seed=seed)
    result = train(
        config,
        local_matmul,
        on_epoch=on_epoch,
        max_steps=max_steps,
        data=split_and_quantize(x, y, seed),
    )
    return LocalTraining(
        weights_hash(result.weights),
        result.epochs[-1].test_accuracy,
        len(labels),
        result.steps,
        "quick" if quick else "full",
    )


def fetch_train_publish(
    client: DataClient,
    dataset_id: bytes,
    host: str | None,
    fetch_timeout: float,
    *,
    quick: bool,
    max_steps: int | None = None,
    publish: bool = True,
    wait_s: float = 120.0,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> tuple[dict[str, Any], bytes]:
    """Read ``dataset_id`` (logged on chain), train on it locally and, if ``publish``,
    publish the model with the read as its provenance, waiting up to ``wait_s`` s for
    it to be mined (0: do not wait). Returns (summary, the plaintext read)."""
    data, read = client.fetch(dataset_id, host, fetch_timeout)
    trained = train_on_csv(data, quick, max_steps, on_epoch=on_epoch)
    summary: dict[str, Any] = {
        "dataset_id": dataset_id.hex(),
        "request_nonce": read["request_nonce"],
        "access_log_txid": read["access_log_txid"],
        "access_log_height": read["height"],
        "bytes": len(data),
        "rows": trained.rows,
        "preset": trained.preset,
        "steps": trained.steps,
        "weights_hash": trained.weights_hash.hex(),
        "test_accuracy": trained.test_accuracy,
        "model_id": None,
        "publish_txid": None,
        "publish_height": None,
    }
    if publish:
        meta = {
            "arch": f"int-mlp {trained.preset}",
            "steps": trained.steps,
            "test_accuracy": round(trained.test_accuracy, 4),
        }
        model = client.publish_model(
            dataset_id,
            trained.weights_hash,
            bytes.fromhex(read["request_nonce"]),
            None,
            json.dumps(meta),
        )
        summary["model_id"] = model["model_id"]
        summary["publish_txid"] = model["txid"]
        if wait_s > 0:
            summary["publish_height"] = client.wait_confirmed(model["txid"], wait_s)
    return summary, data
