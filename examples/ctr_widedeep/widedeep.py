"""A small Wide&Deep CTR model on synthetic Criteo-like data, exported as SavedModels.

Criteo rows have 13 integer-valued dense features and 26 categorical ones.
Here the categorical values are int64 ids, hashed into ``vocab`` buckets per
field inside the model (``floormod``), so any id is valid input. The serving
signature (``serving_default``)::

    inputs:  dense  float32 [batch, 13]     sparse int64 [batch, 26]
    outputs: ctr    float32 [batch]         logit  float32 [batch]

Written against plain ``tf.Module`` and ``tf.Variable`` (no Keras), so it
exports the same way on every TensorFlow 2 release.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import tensorflow as tf

from protocol.wire import pack_tensor

N_DENSE, N_SPARSE = 13, 26
WARMUP_FILE = "assets.extra/warmup.msgpack"


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Model size: the default is the small CTR model, ``HEAVY`` the benchmark's heavier one."""

    vocab: int = 1000
    emb_dim: int = 8
    hidden: tuple[int, ...] = (64, 32)


HEAVY = ModelSpec(vocab=5000, emb_dim=32, hidden=(1024, 1024, 512))


def synthetic_data(n: int, seed: int, vocab: int = 1000) -> tuple[np.ndarray, ...]:
    """Criteo-like rows with labels from a hidden logistic ground truth (~25% positives)."""
    rng = np.random.default_rng(seed)
    dense = rng.lognormal(1.0, 1.2, size=(n, N_DENSE)).astype(np.float32)
    sparse = rng.zipf(1.3, size=(n, N_SPARSE)).astype(np.int64) % (vocab * 10)
    truth = np.random.default_rng(12345)
    w_dense = truth.normal(0, 0.4, N_DENSE)
    id_effect = truth.normal(0, 1.0, (N_SPARSE, vocab))
    logit = np.log1p(dense) @ w_dense - 1.5
    logit += id_effect[np.arange(N_SPARSE), sparse % vocab][:, :4].sum(axis=1)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return dense, sparse, labels


class WideDeep(tf.Module):
    def __init__(self, spec: ModelSpec, seed: int) -> None:
        super().__init__()
        g = tf.random.Generator.from_seed(seed)
        rows = N_SPARSE * spec.vocab
        self.vocab = spec.vocab
        self.offsets = tf.constant(np.arange(N_SPARSE, dtype=np.int64) * spec.vocab)
        self.wide_emb = tf.Variable(tf.zeros([rows, 1]))
        self.wide_dense = tf.Variable(tf.zeros([N_DENSE, 1]))
        self.deep_emb = tf.Variable(g.normal([rows, spec.emb_dim], stddev=0.05))
        self.layers = []
        width = N_SPARSE * spec.emb_dim + N_DENSE
        for out in (*spec.hidden, 1):
            w = tf.Variable(g.normal([width, out], stddev=(2.0 / width) ** 0.5))
            self.layers.append((w, tf.Variable(tf.zeros([out]))))
            width = out

    def logits(self, dense: tf.Tensor, sparse: tf.Tensor) -> tf.Tensor:
        ids = tf.math.floormod(sparse, self.vocab) + self.offsets
        x = tf.math.log1p(tf.maximum(dense, 0.0))
        wide = tf.reduce_sum(tf.gather(self.wide_emb, ids), axis=[1, 2]) + \
            tf.squeeze(x @ self.wide_dense, 1)
        emb = tf.gather(self.deep_emb, ids)
        h = tf.concat([tf.reshape(emb, [-1, emb.shape[1] * emb.shape[2]]), x], axis=1)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = tf.nn.relu(h)
        return wide + tf.squeeze(h, 1)

    @tf.function(input_signature=[tf.TensorSpec([None, N_DENSE], tf.float32, name="dense"),
                                  tf.TensorSpec([None, N_SPARSE], tf.int64, name="sparse")])
    def serve(self, dense: tf.Tensor, sparse: tf.Tensor) -> dict[str, tf.Tensor]:
        logit = self.logits(dense, sparse)
        return {"ctr": tf.sigmoid(logit), "logit": logit}


def train(spec: ModelSpec, *, seed: int, steps: int, batch: int = 256) -> WideDeep:
    """Adagrad on synthetic data; a few hundred steps take seconds on one core."""
    model = WideDeep(spec, seed)
    dense, sparse, labels = synthetic_data(steps * batch, seed, spec.vocab)
    accum = [tf.Variable(tf.fill(v.shape, 0.1)) for v in model.trainable_variables]

    @tf.function
    def step(d: tf.Tensor, s: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
                labels=y, logits=model.logits(d, s)))
        grads = tape.gradient(loss, model.trainable_variables)
        for v, a, g in zip(model.trainable_variables, accum, grads, strict=True):
            g = tf.convert_to_tensor(g)
            a.assign_add(g * g)
            v.assign_sub(0.05 * g / tf.sqrt(a))
        return loss

    for i in range(steps):
        sl = slice(i * batch, (i + 1) * batch)
        step(dense[sl], sparse[sl], labels[sl])
    return model


def export(base_dir: str | Path, version: int, *, spec: ModelSpec = ModelSpec(),
           seed: int | None = None, steps: int = 200, warmup_rows: int = 8) -> Path:
    """Train and write ``base_dir/{version}/`` (SavedModel + stored warm-up requests)."""
    model = train(spec, seed=version if seed is None else seed, steps=steps)
    path = Path(base_dir) / str(version)
    tf.saved_model.save(model, str(path), signatures={"serving_default": model.serve})
    dense, sparse, _ = synthetic_data(warmup_rows, seed=999, vocab=spec.vocab)
    requests = [{"inputs": {"dense": pack_tensor(dense[:n]), "sparse": pack_tensor(sparse[:n])}}
                for n in (1, warmup_rows)]
    (path / WARMUP_FILE).parent.mkdir(parents=True, exist_ok=True)
    (path / WARMUP_FILE).write_bytes(msgpack.packb(requests, use_bin_type=True))
    return path
