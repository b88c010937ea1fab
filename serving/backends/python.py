"""Python backend: a model written as a plain Python module.

A version directory holds ``model.py`` defining::

    def load(path: pathlib.Path) -> model

where ``model`` has a ``signature`` attribute (a
:class:`serving.backends.signature.Signature`) and
``predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` working
on a batch along dimension 0; an optional ``close()`` releases resources,
and an optional ``input_errors`` (a tuple of exception types) names what
the model raises when the input is at fault (answered INVALID_ARGUMENT).
Good for tests and for simple LR/FM models whose weights sit beside
``model.py`` (``load`` receives the version directory to read them).
"""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.signature import Signature
from serving.errors import ModelLoadError

_counter = itertools.count()


class PythonBackend:
    def __init__(self, model: Any, path: Path) -> None:
        if not isinstance(getattr(model, "signature", None), Signature):
            raise ModelLoadError(f"{path}/model.py: load() must return an object whose "
                                 f"'signature' is a serving.backends.signature.Signature")
        if not callable(getattr(model, "predict", None)):
            raise ModelLoadError(f"{path}/model.py: the model has no predict(inputs) method")
        declared = getattr(model, "input_errors", ())
        if not (isinstance(declared, tuple) and
                all(isinstance(t, type) and issubclass(t, BaseException) for t in declared)):
            raise ModelLoadError(f"{path}/model.py: the model's input_errors must be a tuple of "
                                 f"exception types, got {declared!r}")
        self._model = model
        self.signature: Signature = model.signature
        self.input_errors: tuple[type[BaseException], ...] = declared

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self._model.predict(inputs).items()}

    def close(self) -> None:
        close = getattr(self._model, "close", None)
        if callable(close):
            close()


def import_model_module(path: Path) -> Any:
    """Import ``path/model.py`` under a unique name (versions must not share a module)."""
    file = path / "model.py"
    spec = importlib.util.spec_from_file_location(f"_weiserving_model_{next(_counter)}", file)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"{file}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_python_model(path: Path) -> PythonBackend:
    module = import_model_module(path)
    if not callable(getattr(module, "load", None)):
        raise ModelLoadError(f"{path}/model.py must define load(path) -> model")
    return PythonBackend(module.load(path), path)
