"""Train the logistic-regression baseline in numpy and export it for the Python backend."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from examples.ctr_widedeep.widedeep import N_DENSE, N_SPARSE, synthetic_data


def train_lr(*, vocab: int = 1000, steps: int = 300, batch: int = 256, seed: int = 1,
             lr: float = 0.1) -> dict[str, np.ndarray]:
    """Plain minibatch SGD on the logistic loss over hashed one-hot ids."""
    dense, sparse, labels = synthetic_data(steps * batch, seed, vocab)
    w_dense = np.zeros(N_DENSE)
    w_sparse = np.zeros((N_SPARSE, vocab))
    bias = 0.0
    fields = np.arange(N_SPARSE)
    for i in range(steps):
        sl = slice(i * batch, (i + 1) * batch)
        x, ids, y = np.log1p(dense[sl]), sparse[sl] % vocab, labels[sl]
        p = 1 / (1 + np.exp(-(x @ w_dense + w_sparse[fields, ids].sum(axis=1) + bias)))
        g = (p - y) / batch
        w_dense -= lr * (x.T @ g)
        np.add.at(w_sparse, (np.broadcast_to(fields, ids.shape), ids), -lr * 10 * g[:, None])
        bias -= lr * g.sum()
    return {"w_dense": w_dense, "w_sparse": w_sparse, "bias": np.array(bias)}


def export_lr(base_dir: str | Path, version: int, **train_kw: object) -> Path:
    path = Path(base_dir) / str(version)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "weights.npz", **train_lr(**train_kw))  # type: ignore[arg-type]
    shutil.copy(Path(__file__).with_name("lr_model.py"), path / "model.py")
    return path
