"""The threaded shell around :class:`BatcherCore`: a :class:`~serving.batching.runner.Runner`.

:class:`Batcher` runs at most ``num_batch_threads`` batches at once (the
slots), plus solo batches (a request larger than ``max_batch_size``), which
need no slot. The core forms each batch under one lock; it is assembled, run
and scattered outside it. Who runs a batch:

- ``run``, on the caller's thread, whenever the core forms one for it: its
  own solo request at once, or a batch of its own request and those queued
  before it when a slot is free. A call that finds the model idle, and any
  large call, costs no thread hand-off: it runs as it would unbatched;
- otherwise one of ``num_batch_threads`` batch threads, woken when queued
  work may be ready and no thread watches it (see :meth:`Batcher._kick`).

A caller whose request another thread runs waits on a lock of its own, which
the batch's runner releases: one wake-up per request, none for the callers
that ran their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from serving.backends import Backend
from serving.batching.admission import Admission, AdmissionConfig
from serving.batching.core import Batch, BatcherCore, Ticket
from serving.batching.runner import Arrays, DirectRunner, Runner, run_backend
from serving.batching.stats import RollingStats
from serving.config import BatchingConfig
from serving.errors import BackendError, DeadlineExpired, Draining, Overloaded, ServingError

BatchHook = Callable[[Batch], None]


class _Pending:
    """One request's inputs and answer; ``future`` for :meth:`Batcher.submit`, else a lock."""

    __slots__ = ("inputs", "outputs", "error", "future", "_answered")

    def __init__(self, inputs: Arrays, future: Future[Arrays] | None = None) -> None:
        self.inputs = inputs
        self.outputs: Arrays | None = None    # reassembly buffers for requests split over batches
        self.error: ServingError | None = None
        self.future = future
        self._answered = threading.Lock()
        self._answered.acquire()              # released once outputs or error are set

    def resolve(self) -> None:
        if self.future is not None:
            self.future.set_result(self.outputs)  # type: ignore[arg-type]
        else:
            self._answered.release()

    def reject(self, error: ServingError) -> None:
        self.error = error
        if self.future is not None:
            self.future.set_exception(error)
        else:
            self._answered.release()

    def wait(self, timeout: float | None) -> bool:
        return self._answered.acquire(timeout=-1 if timeout is None else max(0.0, timeout))


class Batcher:
    """Dynamic batching for one model version; see :mod:`serving.batching.core`."""

    def __init__(self, backend: Backend, config: BatchingConfig, *, name: str = "model",
                 clock: Callable[[], float] = time.monotonic,
                 on_batch: BatchHook | None = None) -> None:
        self._backend = backend
        self._clock = clock
        self._on_batch = on_batch
        self._name = name
        self._core = BatcherCore(config=config)
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._slots = config.num_batch_threads
        self._running = 0                     # batches holding a slot, on any thread
        self._running_rows = 0                # rows of every batch in progress
        self._admission = Admission(AdmissionConfig(enabled=config.admission,
                                                    max_queue_delay_ms=config.max_queue_delay_ms))
        self._active = 0                      # every batch in progress, solo ones too
        self._timer_at: float | None = None   # when a sleeping batch thread looks at the queue
        self.stats = RollingStats(threads=config.num_batch_threads, clock=clock)
        self._threads = [threading.Thread(target=self._loop, name=f"batch-{name}-{i}",
                                          daemon=True)
                         for i in range(config.num_batch_threads)]
        for t in self._threads:
            t.start()

    def __repr__(self) -> str:
        return (f"Batcher({self._core!r}, running={self._running}, active={self._active}, "
                f"closed={self._closed})")

    def queue_depth(self) -> int:
        return self._core.queued_rows

    def batch_limit(self) -> int:
        return self._core.batch_limit

    def submit(self, inputs: Arrays, rows: int, deadline: float | None = None, priority: str = "default"
               ) -> Future[Arrays]:
        """Queue the request for the batch threads; its future resolves when it is answered."""
        pending = _Pending(inputs, Future())
        with self._cond:
            self._enqueue(pending, rows, deadline, priority)
            self._kick(deadline, solo=rows > self._core.config.max_batch_size)
        return pending.future  # type: ignore[return-value]

    def run(self, inputs: Arrays, rows: int, deadline: float | None = None, priority: str = "default"
            ) -> Arrays:
        """Answer the request, running batches on this thread while it can.

        The caller runs the batch that holds its request (or a batch ahead of
        it) whenever the core forms one for it now: a solo request always, a
        smaller one when a slot is free. Otherwise it leaves the queue to the
        batch threads and waits.
        """
        pending = _Pending(inputs)
        with self._cond:
            ticket = self._enqueue(pending, rows, deadline, priority)
        while True:
            with self._cond:
                if ticket.taken == ticket.rows or ticket.expired:
                    break                     # all of it is running or done, or it expired
                now = self._clock()
                poll = self._core.poll(now, slot_free=self._running < self._slots)
                if poll.batch is not None:
                    self._take(poll.batch)
                else:
                    self._kick(deadline)      # not ready yet, or no slot: leave it queued
            self._expire(poll.expired, now)
            if poll.batch is None:
                break
            self._execute(poll.batch, caller=True)
        if not pending.wait(None if deadline is None else deadline - self._clock()):
            raise DeadlineExpired(f"deadline exceeded waiting for model {self._name}")
        if pending.error is not None:
            raise pending.error
        return pending.outputs  # type: ignore[return-value]

    def _enqueue(self, pending: _Pending, rows: int, deadline: float | None, priority: str) -> Ticket:
        """Under the lock: admit (see :mod:`serving.batching.admission`) and queue, or raise Overloaded."""
        if self._closed:
            raise Draining("model version is unloading; retry")
        now = self._clock()
        w = self.stats.recent()
        capacity = w.capacity_rows_per_s
        refusal = self._admission.check(
            rows=rows, now=now, deadline=deadline, priority=priority, queued_rows=self._core.queued_rows,
            running_rows=self._running_rows, capacity_rows_per_s=capacity,
            batch_s=w.busy_s / w.batches if w.batches else None)
        if refusal is not None:
            raise Overloaded(f"model {self._name}: {refusal.reason}", refusal.retry_after_s)
        try:
            return self._core.submit(rows, now, deadline, payload=pending)
        except Overloaded as exc:             # the length bound: room comes as the queue drains
            exc.retry_after_s = self._core.queued_rows / capacity if capacity else 0.05
            raise

    def _take(self, batch: Batch) -> None:
        """Under the lock: this thread runs ``batch``."""
        self._active += 1
        self._running_rows += batch.rows
        if not batch.solo:
            self._running += 1

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
            t.payload.reject(Draining("model version unloaded; retry"))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout)
        with self._cond:                      # batches that callers are running
            self._cond.wait_for(lambda: self._active == 0, timeout)

    def _kick(self, deadline: float | None = None, *, solo: bool = False) -> None:
        """Under the lock: wake a batch thread for queued work unless one already watches it.

        A thread sleeping until ``_timer_at`` (the batch timeout of the oldest
        request, or a deadline) needs waking only if the queue is now full or a
        new deadline comes sooner; waking it for every arrival would cost a
        context switch per request and change nothing. A solo request needs
        no slot, so it wakes a thread even when every slot is busy.
        """
        if solo:
            self._cond.notify()
            return
        if not self._core.queued_requests or self._running >= self._slots:
            return    # nothing queued, or every slot busy: a finishing batch looks again
        timer = self._timer_at
        if timer is None or self._core.queued_rows >= self._core.batch_limit or \
                (deadline is not None and deadline < timer):
            self._cond.notify()

    def _next(self) -> Batch | None:
        """Block until there is a batch to run (None once closed); fail expired requests."""
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return None
                    now = self._clock()
                    free = self._running < self._slots
                    poll = self._core.poll(now, slot_free=free)
                    if poll.batch is not None or poll.expired:
                        break
                    if free:
                        self._sleep(poll.wake_at, now)
                    else:
                        self._cond.wait()     # a caller finishing its batch notifies
                if poll.batch is not None:
                    self._take(poll.batch)
                    self._kick()              # more than this batch may be ready
            self._expire(poll.expired, now)
            if poll.batch is not None:
                return poll.batch

    def _sleep(self, wake_at: float | None, now: float) -> None:
        """Under the lock: wait for work; one thread at a time holds the timer for the queue."""
        if wake_at is None or (self._timer_at is not None and self._timer_at <= wake_at):
            self._cond.wait()
            return
        self._timer_at = wake_at
        self._cond.wait(max(0.0, wake_at - now))
        if self._timer_at == wake_at:
            self._timer_at = None

    @staticmethod
    def _expire(expired: tuple[Ticket, ...], now: float) -> None:
        for t in expired:
            t.payload.reject(DeadlineExpired(
                f"deadline passed after {now - t.arrival:.3f}s in the batch queue; "
                f"the request never reached the model"))

    def _loop(self) -> None:
        while (batch := self._next()) is not None:
            self._execute(batch, caller=False)

    def _execute(self, batch: Batch, *, caller: bool) -> None:
        """Run one batch and answer its requests; frees what :meth:`_take` held."""
        if self._on_batch is not None:
            self._on_batch(batch)
        started = self._clock()
        error = self._attempt(batch)
        if error is not None:
            try:
                self._isolate(batch, error)
            finally:
                with self._cond:
                    self._release(batch, caller)
            return
        now = self._clock()
        with self._cond:
            done = self._core.complete(batch, now)
            self._release(batch, caller)
        self._answer(batch, done, started, now)

    def _attempt(self, batch: Batch) -> ServingError | None:
        """Run the model on ``batch`` and place its outputs; what went wrong, if anything."""
        try:
            outputs = run_backend(self._backend, self._assemble(batch), batch.padded_rows)
            self._scatter(batch, outputs)
        except ServingError as exc:
            return exc
        except Exception as exc:          # e.g. inner dims that do not concatenate
            error = BackendError(f"batch failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return error
        return None

    def _isolate(self, batch: Batch, error: ServingError) -> None:
        """A batch failed: re-run its parts on this thread until only the culprits fail.

        A request is only ever failed with the error of a batch that held its
        rows alone, so no caller sees an error raised on another's data.
        """
        failures = [(batch, error)]
        while failures:
            failed, error = failures.pop()
            with self._cond:
                verdict = self._core.isolate(failed, self._clock())
            if verdict.culprit is not None:
                verdict.culprit.payload.reject(error)
            for t in verdict.expired:
                t.payload.reject(DeadlineExpired(
                    "deadline passed while its batch, which another request made fail, "
                    "was re-run"))
            for part in verdict.retry:
                started = self._clock()
                part_error = self._attempt(part)
                if part_error is not None:
                    failures.append((part, part_error))
                    continue
                now = self._clock()
                with self._cond:
                    done = self._core.complete(part, now)
                self._answer(part, done, started, now)

    def _answer(self, batch: Batch, done: tuple[Ticket, ...], started: float,
                now: float) -> None:
        self.stats.record_batch(batch.rows, batch.fill, batch.queue_delay, now - started)
        for t in done:
            self.stats.record_request(now - t.arrival)
            t.payload.resolve()

    def _release(self, batch: Batch, caller: bool) -> None:
        """Under the lock. A batch thread polls again itself; a caller hands queued work on."""
        self._active -= 1
        self._running_rows -= batch.rows
        if not batch.solo:
            self._running -= 1
        if self._closed:
            self._cond.notify_all()
        elif caller:
            self._kick()

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

    def _scatter(self, batch: Batch, outputs: Arrays) -> None:
        for s in batch.slices:
            p = s.ticket.payload
            if s.rows == s.ticket.rows:      # whole request in one batch: views, no copy
                p.outputs = {k: v[s.offset:s.offset + s.rows] for k, v in outputs.items()}
                continue
            if p.outputs is None:
                with self._cond:             # two threads may carry slices of one request
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
