"""The threaded shell around :class:`BatcherCore`, and the unbatched runner.

A :class:`Runner` takes one request (a dict of arrays with a common
dimension 0) and returns a ``concurrent.futures.Future`` of its outputs.
:class:`Batcher` runs ``num_batch_threads`` threads; each, when free, asks the
core for a batch under one lock, then assembles, runs and scatters it
outside the lock. :class:`DirectRunner` runs each request on the caller's
thread (batching disabled), which is the baseline the benchmark compares to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from serving.backends import Backend
from serving.batching.core import Batch, BatcherCore
from serving.batching.stats import RollingStats
from serving.config import BatchingConfig
from serving.errors import BackendError, DeadlineExpired, Draining, ServingError

Arrays = dict[str, np.ndarray]
BatchHook = Callable[[Batch], None]


class Runner(Protocol):
    stats: RollingStats

    def submit(self, inputs: Arrays, rows: int, deadline: float | None = None
               ) -> Future[Arrays]: ...

    def queue_depth(self) -> int: ...

    def batch_limit(self) -> int: ...

    def close(self, timeout: float | None = None) -> None: ...


def _run_backend(backend: Backend, inputs: Arrays, rows: int) -> Arrays:
    try:
        outputs = backend.predict(inputs)
    except ServingError:
        raise
    except Exception as exc:
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

    def submit(self, inputs: Arrays, rows: int, deadline: float | None = None
               ) -> Future[Arrays]:
        fut: Future[Arrays] = Future()
        start = self._clock()
        if deadline is not None and start >= deadline:
            fut.set_exception(DeadlineExpired("deadline passed before the model ran"))
            return fut
        try:
            fut.set_result(_run_backend(self._backend, inputs, rows))
        except ServingError as exc:
            fut.set_exception(exc)
        took = self._clock() - start
        self.stats.record_batch(rows, 1.0, 0.0, took)
        self.stats.record_request(took)
        return fut

    def queue_depth(self) -> int:
        return 0

    def batch_limit(self) -> int:
        return 0

    def close(self, timeout: float | None = None) -> None:
        pass


@dataclass(eq=False, kw_only=True)
class _Pending:
    inputs: Arrays
    future: Future[Arrays] = field(default_factory=Future)
    outputs: Arrays | None = None      # reassembly buffers for requests split over batches
    lock: threading.Lock = field(default_factory=threading.Lock)


class Batcher:
    """Dynamic batching for one model version; see :mod:`serving.batching.core`."""

    def __init__(self, backend: Backend, config: BatchingConfig, *, name: str = "model",
                 clock: Callable[[], float] = time.monotonic,
                 on_batch: BatchHook | None = None) -> None:
        self._backend = backend
        self._clock = clock
        self._on_batch = on_batch
        self._core = BatcherCore(config=config)
        self._cond = threading.Condition()
        self._closed = False
        self.stats = RollingStats(threads=config.num_batch_threads, clock=clock)
        self._threads = [threading.Thread(target=self._loop, name=f"batch-{name}-{i}",
                                          daemon=True)
                         for i in range(config.num_batch_threads)]
        for t in self._threads:
            t.start()

    def __repr__(self) -> str:
        return f"Batcher({self._core!r}, closed={self._closed})"

    def queue_depth(self) -> int:
        return self._core.queued_rows

    def batch_limit(self) -> int:
        return self._core.batch_limit

    def submit(self, inputs: Arrays, rows: int, deadline: float | None = None
               ) -> Future[Arrays]:
        pending = _Pending(inputs=inputs)
        with self._cond:
            if self._closed:
                raise Draining("model version is unloading; retry")
            self._core.submit(rows, self._clock(), deadline, payload=pending)
            # wake one thread per batch this request can fill (a large request is split)
            self._cond.notify(-(-rows // self._core.batch_limit))
        return pending.future

    def close(self, timeout: float | None = None) -> None:
        """Stop the threads after the batches in progress; queued requests fail.

        ``timeout`` bounds the wait for a batch stuck in the model (the threads
        are daemons, so a stuck one cannot keep the process alive).
        """
        with self._cond:
            self._closed = True
            dropped = self._core.drain_all()
            self._cond.notify_all()
        for t in dropped:
            t.payload.future.set_exception(Draining("model version unloaded; retry"))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)

    def _next(self) -> Batch | None:
        """Block until there is a batch to run (None once closed); fail expired requests."""
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return None
                    now = self._clock()
                    poll = self._core.poll(now)
                    if poll.batch is not None or poll.expired:
                        break
                    self._cond.wait(None if poll.wake_at is None
                                    else max(0.0, poll.wake_at - now))
            for t in poll.expired:
                t.payload.future.set_exception(DeadlineExpired(
                    f"deadline passed after {now - t.arrival:.3f}s in the batch queue; "
                    f"the request never reached the model"))
            if poll.batch is not None:
                return poll.batch

    def _loop(self) -> None:
        while (batch := self._next()) is not None:
            if self._on_batch is not None:
                self._on_batch(batch)
            started = self._clock()
            try:
                outputs = _run_backend(self._backend, self._assemble(batch), batch.padded_rows)
            except ServingError as exc:
                with self._cond:
                    failed = self._core.fail(batch)
                for t in failed:
                    t.payload.future.set_exception(exc)
                continue
            self._scatter(batch, outputs)
            now = self._clock()
            with self._cond:
                done = self._core.complete(batch, now)
            self.stats.record_batch(batch.rows, batch.fill, batch.queue_delay, now - started)
            for t in done:
                self.stats.record_request(now - t.arrival)
                p = t.payload
                p.future.set_result(p.outputs)

    @staticmethod
    def _assemble(batch: Batch) -> Arrays:
        slices = batch.slices
        pad = batch.padded_rows - batch.rows
        first = slices[0].ticket.payload.inputs
        out: Arrays = {}
        for name in first:
            parts = [s.ticket.payload.inputs[name][s.start:s.stop] for s in slices]
            if pad:
                parts.append(np.repeat(parts[0][:1], pad, axis=0))
            out[name] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return out

    @staticmethod
    def _scatter(batch: Batch, outputs: Arrays) -> None:
        for s in batch.slices:
            p = s.ticket.payload
            if s.rows == s.ticket.rows:      # whole request in one batch: views, no copy
                p.outputs = {k: v[s.offset:s.offset + s.rows] for k, v in outputs.items()}
                continue
            with p.lock:   # two batch threads may carry slices of one request
                if p.outputs is None:
                    p.outputs = {k: np.empty((s.ticket.rows, *v.shape[1:]), v.dtype)
                                 for k, v in outputs.items()}
            for k, v in outputs.items():
                p.outputs[k][s.start:s.stop] = v[s.offset:s.offset + s.rows]


def make_runner(backend: Backend, config: BatchingConfig, *, name: str = "model",
                on_batch: BatchHook | None = None) -> Runner:
    if not config.enabled:
        return DirectRunner(backend)
    return Batcher(backend, config, name=name, on_batch=on_batch)
