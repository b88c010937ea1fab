"""The dynamic batcher's core: no threads, no clock, no I/O.

Events in, decisions out. The shell calls :meth:`BatcherCore.submit` when a
request arrives, :meth:`BatcherCore.poll` when a thread could run a batch
(it answers with the batch to run now, the requests whose deadline passed
while they waited, and when to poll again), and :meth:`BatcherCore.complete`
when a batch finishes. The current time is always an argument, and so is
whether a batch slot is free (the shell runs at most ``num_batch_threads``
batches at once).

Rules (TF Serving's ``BasicBatchScheduler`` semantics, batches closed at
dispatch time):

- A free thread takes a batch when the queued rows fill the batch limit, or
  the oldest queued request has waited ``batch_timeout_micros``.
- Requests are never cut (the default): a batch takes whole requests in
  arrival order while they fit the limit; one that does not fit starts the
  next batch, and one larger than the limit runs alone, whole. Cutting a
  request makes it slower: its parts run one after another, each paying the
  model's fixed cost per call (ctr, one 2,000-row call alone: whole 1.9 ms,
  two halves on two threads at once 2.4 ms, eight 256-row parts in turn
  5.2 ms), and a call cut to fill a batch waits for two batches and is
  copied back together. A batch larger than the limit carries no evidence
  for the SLO controller.
- A request larger than ``max_batch_size`` is a batch by itself (solo):
  it is formed at the next poll, ahead of smaller requests queued before it,
  and needs no free slot. No company can join it, so waiting for a slot
  would only make it slower than it is unbatched: with the default limit a
  ranking call of more than 1,000 candidates runs at once, beside the
  batches in progress.
- With ``split_requests`` (implied by ``allowed_batch_sizes``, which admit
  only those sizes) requests are cut as TF Serving's large-batch splitting
  does: to fill the room left in a batch, and into limit-sized parts; the
  parts are reassembled (:meth:`complete` reports a request only when all its
  rows are done).
- The queue holds at most ``max_enqueued_batches * max_batch_size`` rows; a
  request that does not fit is refused at once (:class:`Overloaded`).
- A request whose deadline has passed is removed before it is batched and
  reported as expired; its rows never reach the model. If part of it already
  ran, the rest is dropped and the request is reported expired.
- With ``allowed_batch_sizes`` a batch is padded up to the next allowed size.
- In SLO mode the batch limit comes from an AIMD controller fed by each
  completed batch.
- A failed batch of several requests is cut in two and each half re-run
  (:meth:`BatcherCore.isolate`), until every failure is a batch of one
  request's rows: only that request fails, with its own error, and the
  others get their results. Bisecting finds one culprit among n requests in
  about 2 log2(n) extra runs of ever smaller batches (re-running each
  request alone costs n runs, each paying the model's fixed cost per call);
  when every request fails it costs 2n - 1 runs, under twice the cost of
  running them unbatched. A request whose deadline passed is not re-run, and
  a request split over batches fails as a whole.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from serving.batching.slo import AimdController
from serving.config import BatchingConfig
from serving.errors import Overloaded


@dataclass(eq=False, kw_only=True)
class Ticket:
    """One request in the batcher; ``payload`` belongs to the shell."""

    id: int
    rows: int
    arrival: float
    deadline: float | None
    payload: Any = None
    taken: int = 0          # rows already placed into batches
    done: int = 0           # rows whose batch completed
    expired: bool = False

    def __repr__(self) -> str:
        return (f"Ticket(id={self.id}, rows={self.rows}, taken={self.taken}, done={self.done}, "
                f"expired={self.expired})")


@dataclass(frozen=True, kw_only=True)
class Slice:
    ticket: Ticket
    start: int
    stop: int
    offset: int              # where these rows sit inside the batch

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, kw_only=True)
class Batch:
    id: int
    slices: tuple[Slice, ...]
    rows: int
    padded_rows: int
    limit: int               # the batch size limit in force when it was formed
    formed_at: float
    queue_delay: float       # how long its oldest request waited
    solo: bool = False       # one request larger than max_batch_size: takes no slot
    retry: bool = False      # part of a failed batch, re-run to find the culprit

    @property
    def fill(self) -> float:
        return min(1.0, self.rows / self.limit)

    @property
    def oversized(self) -> bool:
        """One request larger than the limit, run whole."""
        return self.rows > self.limit


@dataclass(frozen=True, kw_only=True)
class Poll:
    batch: Batch | None = None
    expired: tuple[Ticket, ...] = ()
    wake_at: float | None = None    # None: nothing to wait for until the next submit


@dataclass(frozen=True, kw_only=True)
class Isolation:
    """What to do with a failed batch (see :meth:`BatcherCore.isolate`)."""

    retry: tuple[Batch, ...] = ()         # run these; a failing one goes to isolate again
    culprit: Ticket | None = None         # fails with the error of the batch it filled alone
    expired: tuple[Ticket, ...] = ()      # deadline passed: fail as expired, do not re-run


@dataclass(kw_only=True)
class BatcherCore:
    config: BatchingConfig
    _queue: deque[Ticket] = field(default_factory=deque)
    _queued_rows: int = 0
    _ids: Any = field(default_factory=itertools.count)
    _batch_ids: Any = field(default_factory=itertools.count)
    slo: AimdController | None = None

    def __post_init__(self) -> None:
        c = self.config
        if c.slo_p99_ms is not None and self.slo is None:
            self.slo = AimdController(target_s=c.slo_p99_ms / 1000, max_size=c.max_batch_size,
                                      step=c.slo_additive_step, factor=c.slo_decrease_factor)

    def __repr__(self) -> str:
        return (f"BatcherCore(queued_requests={len(self._queue)}, queued_rows="
                f"{self._queued_rows}, limit={self.batch_limit})")

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    @property
    def batch_limit(self) -> int:
        return self.slo.size if self.slo is not None else self.config.max_batch_size

    def submit(self, rows: int, now: float, deadline: float | None = None,
               payload: Any = None) -> Ticket:
        """Queue a request of ``rows`` rows, or raise Overloaded if it does not fit."""
        if rows <= 0:
            raise ValueError("a request needs at least one row")
        cap = self.config.max_queued_rows
        if self._queued_rows + rows > cap:
            raise Overloaded(
                f"batch queue full: {self._queued_rows} rows queued + {rows} requested > "
                f"{cap} (max_enqueued_batches x max_batch_size); retry on another endpoint")
        ticket = Ticket(id=next(self._ids), rows=rows, arrival=now, deadline=deadline,
                        payload=payload)
        self._queue.append(ticket)
        self._queued_rows += rows
        return ticket

    def _drop_expired(self, now: float) -> tuple[Ticket, ...]:
        expired = [t for t in self._queue if t.deadline is not None and t.deadline <= now]
        if not expired:
            return ()
        for t in expired:
            t.expired = True
            self._queued_rows -= t.rows - t.taken
        self._queue = deque(t for t in self._queue if not t.expired)
        return tuple(expired)

    def _wake_at(self) -> float | None:
        if not self._queue:
            return None
        times = [self._queue[0].arrival + self.config.batch_timeout_s]
        times += [t.deadline for t in self._queue if t.deadline is not None]
        return min(times)

    def poll(self, now: float, *, slot_free: bool = True) -> Poll:
        """What to run now, what expired, when to look again. Without a free slot only a
        solo batch is formed."""
        expired = self._drop_expired(now)
        solo = self._solo()
        if solo is not None:
            return Poll(batch=self._alone(solo, now), expired=expired, wake_at=self._wake_at())
        if not slot_free:
            return Poll(expired=expired, wake_at=self._wake_at())
        limit = self.batch_limit
        ready = self._queue and (self._queued_rows >= limit or
                                 now - self._queue[0].arrival >= self.config.batch_timeout_s)
        if not ready:
            return Poll(expired=expired, wake_at=self._wake_at())
        return Poll(batch=self._form(now, limit), expired=expired, wake_at=self._wake_at())

    def _form(self, now: float, limit: int) -> Batch:
        slices: list[Slice] = []
        rows = 0
        oldest = self._queue[0].arrival
        split = self.config.splits_requests
        while self._queue and rows < limit:
            t = self._queue[0]
            n = t.rows - t.taken
            if split:
                n = min(n, limit - rows)
            elif rows and rows + n > limit:
                break                         # whole, in the next batch
            slices.append(Slice(ticket=t, start=t.taken, stop=t.taken + n, offset=rows))
            t.taken += n
            rows += n
            if t.taken == t.rows:
                self._queue.popleft()
        self._queued_rows -= rows
        return Batch(id=next(self._batch_ids), slices=tuple(slices), rows=rows,
                     padded_rows=self._padded(rows), limit=limit, formed_at=now,
                     queue_delay=now - oldest)

    def _solo(self) -> Ticket | None:
        if self.config.splits_requests or self._queued_rows <= self.config.max_batch_size:
            return None
        return next((t for t in self._queue if t.rows > self.config.max_batch_size), None)

    def _alone(self, t: Ticket, now: float) -> Batch:
        self._queue.remove(t)
        self._queued_rows -= t.rows
        t.taken = t.rows
        return Batch(id=next(self._batch_ids), slices=(Slice(ticket=t, start=0, stop=t.rows, offset=0),),
                     rows=t.rows, padded_rows=t.rows, limit=self.batch_limit, formed_at=now,
                     queue_delay=now - t.arrival, solo=True)

    def _padded(self, rows: int) -> int:
        for size in self.config.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def complete(self, batch: Batch, now: float) -> tuple[Ticket, ...]:
        """A batch finished: the requests now fully answered (expired ones excluded)."""
        finished = []
        for s in batch.slices:
            s.ticket.done += s.rows
            if s.ticket.done == s.ticket.rows and not s.ticket.expired:
                finished.append(s.ticket)
        # a retry is cut by a failure, not by load: no evidence of how large batches may grow
        if self.slo is not None and not batch.oversized and not batch.retry:
            self.slo.observe(rows=batch.rows, latency_s=now - batch.formed_at)
        return tuple(finished)

    def fail(self, batch: Batch) -> tuple[Ticket, ...]:
        """A batch failed: its requests (not yet expired) fail; their queued rows are dropped."""
        return self._remove(s.ticket for s in batch.slices)

    def isolate(self, batch: Batch, now: float) -> Isolation:
        """A batch failed: who fails, and what to re-run to find out.

        A batch holding one request's rows alone convicts it (a request split
        over batches fails as a whole: its queued rows are dropped). Any other
        batch convicts nobody, since its error may come from any of its rows:
        the requests still waiting (not expired, deadline not passed) are cut
        in two halves, in arrival order, to re-run; one left alone is re-run
        alone.
        """
        if len(batch.slices) == 1:
            culprit = self._remove(s.ticket for s in batch.slices)
            return Isolation(culprit=culprit[0] if culprit else None)
        late = self._remove(s.ticket for s in batch.slices
                            if s.ticket.deadline is not None and s.ticket.deadline <= now)
        live = [s for s in batch.slices if not s.ticket.expired]
        mid = (len(live) + 1) // 2
        halves = tuple(self._reform(part, batch, now) for part in (live[:mid], live[mid:])
                       if part)
        return Isolation(retry=halves, expired=late)

    def _reform(self, slices: list[Slice], failed: Batch, now: float) -> Batch:
        out, rows = [], 0
        for s in slices:
            out.append(replace(s, offset=rows))
            rows += s.rows
        return Batch(id=next(self._batch_ids), slices=tuple(out), rows=rows,
                     padded_rows=self._padded(rows), limit=failed.limit, formed_at=now,
                     queue_delay=failed.queue_delay, solo=failed.solo, retry=True)

    def _remove(self, tickets: Iterable[Ticket]) -> tuple[Ticket, ...]:
        """Fail these requests (the expired ones excepted): drop their queued rows."""
        gone = {t for t in tickets if not t.expired}
        for t in gone:
            t.expired = True
            self._queued_rows -= t.rows - t.taken
        if gone:
            self._queue = deque(t for t in self._queue if t not in gone)
        return tuple(sorted(gone, key=lambda t: t.id))

    def drain_all(self) -> tuple[Ticket, ...]:
        """Remove every queued request (shutdown); the caller fails them."""
        out = tuple(self._queue)
        for t in out:
            t.expired = True
        self._queue.clear()
        self._queued_rows = 0
        return out
