"""TensorFlow SavedModel backend, driven by the ``serving_default`` signature.

TensorFlow is imported here only, so a server hosting Python or PyTorch
models starts without it. TensorFlow places ops on a GPU when it sees one;
on this CPU-only machine it runs on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.signature import Signature, TensorSpec
from serving.errors import ModelLoadError

SIGNATURE_KEY = "serving_default"


def _spec(tf_spec: Any) -> TensorSpec:
    dtype = np.dtype("S") if tf_spec.dtype.name == "string" else \
        np.dtype(tf_spec.dtype.as_numpy_dtype)
    dims = tf_spec.shape.as_list()
    if dims is None or not dims:
        raise ModelLoadError(f"tensor {tf_spec.name!r} has no batch dimension: {tf_spec.shape}")
    return TensorSpec(dtype=dtype, shape=(None, *dims[1:]))


class TFBackend:
    def __init__(self, loaded: Any, fn: Any, signature: Signature) -> None:
        self._loaded = loaded  # keeps the variables alive for as long as fn is used
        self._fn = fn
        self.signature = signature

    @classmethod
    def load(cls, path: Path) -> TFBackend:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        if SIGNATURE_KEY not in loaded.signatures:
            raise ModelLoadError(f"{path}: no {SIGNATURE_KEY!r} signature; it has "
                                 f"{sorted(loaded.signatures.keys())}")
        fn = loaded.signatures[SIGNATURE_KEY]
        _, kwargs = fn.structured_input_signature
        outputs = fn.structured_outputs
        signature = Signature(inputs={n: _spec(s) for n, s in kwargs.items()},
                              outputs={n: _spec(s) for n, s in outputs.items()})
        return cls(loaded, fn, signature)

    @property
    def input_errors(self) -> tuple[type[BaseException], ...]:
        """The input's fault: an op refusing its values (an embedding id out of range, a
        ``tf.debugging.assert_*``), which TF raises as InvalidArgumentError on CPU. (On a GPU
        ``tf.gather`` returns zeros for an id out of range instead of raising.)"""
        import tensorflow as tf

        return (tf.errors.InvalidArgumentError,)

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        result = self._fn(**{k: tf.convert_to_tensor(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in result.items()}

    def close(self) -> None:
        self._fn = None
        self._loaded = None
