"""What the server calls to run a model version: the :class:`Runner` protocol, and the runner
without batching (:class:`DirectRunner`).

A runner takes one request (a dict of arrays with a common dimension 0)
either as :meth:`~Runner.run` (blocking: the outputs, or a
:class:`~serving.errors.ServingError`; what the server's call path uses) or
as :meth:`~Runner.submit` (a ``concurrent.futures.Future`` of the outputs;
for warm-up, tests and the extra models of a multi-model call).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

import numpy as np

from serving.backends import Backend, input_errors
from serving.batching.stats import RollingStats
from serving.errors import BackendError, DeadlineExpired, InvalidInput, ServingError

Arrays = dict[str, np.ndarray]


class Runner(Protocol):
    stats: RollingStats

    def run(self, inputs: Arrays, rows: int, deadline: float | None = None, priority: str = "default"
            ) -> Arrays: ...

    def submit(self, inputs: Arrays, rows: int, deadline: float | None = None, priority: str = "default"
               ) -> Future[Arrays]: ...

    def queue_depth(self) -> int: ...

    def batch_limit(self) -> int: ...

    def close(self, timeout: float | None = None) -> None: ...


def run_backend(backend: Backend, inputs: Arrays, rows: int) -> Arrays:
    """One model call. What the model raises becomes InvalidInput (INVALID_ARGUMENT) when
    the backend calls it the input's fault (:func:`~serving.backends.input_errors`), else
    a BackendError (INTERNAL); so do bad outputs."""
    try:
        outputs = backend.predict(inputs)
    except ServingError:
        raise
    except Exception as exc:
        if isinstance(exc, input_errors(backend)):
            raise InvalidInput(f"the model rejected the input: {type(exc).__name__}: "
                               f"{exc}") from exc
        raise BackendError(f"model raised {type(exc).__name__}: {exc}") from exc
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != rows:
            raise BackendError(f"model returned output {name!r} with shape {list(arr.shape)} "
                               f"for a batch of {rows} rows; dimension 0 must be the batch")
    return outputs


class DirectRunner:
    """No batching: each request runs alone, on the calling thread."""

    def __init__(self, backend: Backend, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._backend = backend
        self._clock = clock
        self.stats = RollingStats(clock=clock)

    def run(self, inputs: Arrays, rows: int, deadline: float | None = None, priority: str = "default"
            ) -> Arrays:
        """Unbatched: no queue, so nothing to admit (gRPC's worker pool bounds what runs)."""
        start = self._clock()
        if deadline is not None and start >= deadline:
            raise DeadlineExpired("deadline passed before the model ran")
        try:
            return run_backend(self._backend, inputs, rows)
        finally:
            took = self._clock() - start
            self.stats.record_batch(rows, 1.0, 0.0, took)
            self.stats.record_request(took)

    def submit(self, inputs: Arrays, rows: int, deadline: float | None = None, priority: str = "default"
               ) -> Future[Arrays]:
        fut: Future[Arrays] = Future()
        try:
            fut.set_result(self.run(inputs, rows, deadline))
        except ServingError as exc:
            fut.set_exception(exc)
        return fut

    def queue_depth(self) -> int:
        return 0

    def batch_limit(self) -> int:
        return 0

    def close(self, timeout: float | None = None) -> None:
        pass
