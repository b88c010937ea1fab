"""Model backends: one interface, three implementations.

A backend is what a model version becomes once loaded::

    class Backend(Protocol):
        signature: Signature                      # input/output names, dtypes, shapes
        def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...
        def close(self) -> None: ...

A backend may also say which exceptions of its model are the input's
fault (an out-of-range embedding id, a failed ``tf.debugging.assert_*``)::

        input_errors: tuple[type[BaseException], ...]   # optional; default ()

The server answers those INVALID_ARGUMENT (the caller must not retry nor
blame the pod) and anything else the model raises INTERNAL; a backend may
as well raise :class:`serving.errors.InvalidInput` itself. Either way, in a
batch of several requests the batcher re-runs them apart to find whose
input it was (:mod:`serving.batching.core`).

``predict`` receives a batch (dimension 0 of every input is the batch) and
returns every output with the same dimension 0. It is called by whichever
thread runs the batch (a batch thread, or the gRPC thread of a caller that
runs its own), and by several at once (large requests run beside the
batches in progress; unbatched, every call runs on its own thread); it must
not keep references to its input arrays (they may be read-only views over
request buffers).

Which backend a version directory gets (``platform="auto"``):
``saved_model.pb`` -> TensorFlow, ``model.pt`` -> PyTorch (TorchScript),
``model.py`` -> Python (or PyTorch when the platform says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from serving.backends.signature import Signature, TensorSpec
from serving.errors import ModelLoadError

__all__ = ["Backend", "Signature", "TensorSpec", "detect_platform", "input_errors",
           "load_backend"]


class Backend(Protocol):
    signature: Signature

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def input_errors(backend: Backend) -> tuple[type[BaseException], ...]:
    """The exception types ``backend`` declares to be its input's fault (none by default)."""
    declared = getattr(backend, "input_errors", ())
    return tuple(declared) if isinstance(declared, (tuple, list)) else ()


def detect_platform(path: Path) -> str:
    if (path / "saved_model.pb").is_file():
        return "tensorflow"
    if (path / "model.pt").is_file():
        return "pytorch"
    if (path / "model.py").is_file():
        return "python"
    raise ModelLoadError(f"{path}: no saved_model.pb, model.pt or model.py; cannot tell "
                         f"which backend serves it")


def load_backend(path: Path, platform: str = "auto") -> Backend:
    """Load the model version in ``path``; raises ModelLoadError with the cause."""
    if platform == "auto":
        platform = detect_platform(path)
    try:
        if platform == "tensorflow":
            from serving.backends.tf import TFBackend
            return TFBackend.load(path)
        if platform == "pytorch":
            from serving.backends.torch import TorchBackend
            return TorchBackend.load(path)
        from serving.backends.python import load_python_model
        return load_python_model(path)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{path}: {platform} backend failed to load: "
                             f"{type(exc).__name__}: {exc}") from exc
