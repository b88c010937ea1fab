"""What a runner measures: the work it did (counters) and how it went lately (a time window).

Counters only grow, so a reader that polls them (the agent, every few
seconds) gets exact figures for its own interval by difference, whatever
happened in between: ``busy_s`` (time inside the model, summed over the
batch threads), ``rows``, ``requests``, ``batches``. What capacity is made
of follows: over an interval, ``rows / busy_s`` is the rows one thread does
per second of model time at the batch sizes actually run, and times the
number of batch threads, the rows per second the runner can do.

The window holds the last ``window_s`` seconds in ``slots`` time slices:
request latencies (their percentiles), rows, requests, busy time, batches
and queue delay. A slice older than the window is dropped as the clock
moves, so an idle runner's old p99 ages out: with no request in the window
the percentiles are None (unknown), never a stale figure read as fresh.

Capacity is read over less than the whole window: over the newest slices
that hold ``capacity_evidence_s`` seconds of model time per batch thread
(all of the window when they hold less). A busy pod's capacity is thus its
last second or two, and follows a change of speed (a noisy neighbour, a
throttled GPU) within about that, while a lightly loaded pod, whose rare
batches say less, is read over up to the whole window. On a 1:2:4 fleet
whose fastest and slowest pods swap speeds at 80 % load, the 10 s window
kept clients sending to the pod that had become slow for about 4 s
(``bench/hetero.py --swap``).

Errors (``record_error``: calls that failed or were refused) are counted in
the same slices: ``errors_per_s`` is ORCA's ``eps``.

EWMAs (latency, batch fill, queue delay) remain for the in-band load report,
which wants one cheap number per response.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["RollingStats", "Window"]

SAMPLES_PER_SLOT = 2048  # latencies kept per slice: bounds memory at any request rate
MIN_BUSY_S = 0.05        # less model time than this in a window says nothing about capacity
CAPACITY_EVIDENCE_S = 0.5  # model time per batch thread that capacity is read over, newest first


@dataclass(frozen=True, kw_only=True, slots=True)
class Window:
    """The last ``span_s`` seconds (at most ``window_s``; less while the runner is younger)."""

    span_s: float
    requests: int
    rows: int
    batches: int
    busy_s: float
    threads: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    capacity_rows_per_s: float | None = None   # rows/s at full use over the newest evidence (see module doc)
    errors: int = 0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.span_s if self.span_s > 0 else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.span_s if self.span_s > 0 else 0.0

    @property
    def busy_fraction(self) -> float:
        """Share of the batch threads' time spent inside the model (0..1)."""
        return min(1.0, self.busy_s / (self.span_s * self.threads)) if self.span_s > 0 else 0.0

    @property
    def errors_per_s(self) -> float:
        return self.errors / self.span_s if self.span_s > 0 else 0.0

    @property
    def mean_batch_rows(self) -> float | None:
        return self.rows / self.batches if self.batches else None


class _Slot:
    __slots__ = ("epoch", "latencies", "requests", "rows", "batches", "busy_s", "errors")

    def __init__(self) -> None:
        self.epoch = -1
        self.latencies: deque[float] = deque(maxlen=SAMPLES_PER_SLOT)
        self.requests = self.rows = self.batches = self.errors = 0
        self.busy_s = 0.0


class RollingStats:
    """Thread-safe. ``threads``: batch threads working in parallel (1 for an unbatched runner,
    whose calls run on gRPC's threads: its capacity is then one call at a time's, a floor).
    ``alpha`` weighs the newest sample of each EWMA (0.1 ~ the last 10-20).
    ``capacity_evidence_s``: see the module doc; slices of half a second let it
    read a busy pod over about one second."""

    def __init__(self, *, threads: int = 1, window_s: float = 10.0, slots: int = 20, alpha: float = 0.1,
                 capacity_evidence_s: float = CAPACITY_EVIDENCE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if threads < 1 or window_s <= 0 or slots < 1 or capacity_evidence_s < 0:
            raise ValueError(f"RollingStats: threads >= 1, window_s > 0, slots >= 1, capacity_evidence_s >= 0; "
                             f"got {threads}, {window_s}, {slots}, {capacity_evidence_s}")
        self.threads = threads
        self._evidence_s = capacity_evidence_s * threads
        self.window_s = window_s
        self._slot_s = window_s / slots
        self._clock = clock
        self._alpha = alpha
        self._lock = threading.Lock()
        self._slots = [_Slot() for _ in range(slots)]
        self.reset()

    def reset(self) -> None:
        """Forget everything (warm-up calls are not traffic)."""
        with self._lock:
            self._born = self._clock()
            for s in self._slots:
                s.epoch = -1
            self.ewma_latency_s = 0.0
            self.batch_fill = 0.0
            self.queue_delay_s = 0.0
            self.batches = 0
            self.rows = 0
            self.requests = 0
            self.busy_s = 0.0
            self._recent: tuple[float, Window] | None = None

    def _slot(self, now: float) -> _Slot:
        epoch = math.floor(now / self._slot_s)
        s = self._slots[epoch % len(self._slots)]
        if s.epoch != epoch:
            s.epoch = epoch
            s.latencies.clear()
            s.requests = s.rows = s.batches = s.errors = 0
            s.busy_s = 0.0
        return s

    def record_error(self) -> None:
        """A call failed or was refused (any cause): counted for ``errors_per_s``."""
        with self._lock:
            self._slot(self._clock()).errors += 1

    def record_request(self, latency_s: float) -> None:
        with self._lock:
            self.requests += 1
            s = self._slot(self._clock())
            s.requests += 1
            s.latencies.append(latency_s)
            a = self._alpha if self.requests > 1 else 1.0
            self.ewma_latency_s += a * (latency_s - self.ewma_latency_s)

    def record_batch(self, rows: int, fill: float, queue_delay_s: float, busy_s: float) -> None:
        """One batch ran: ``rows`` real rows (padding excluded) in ``busy_s`` seconds of model time."""
        with self._lock:
            self.batches += 1
            self.rows += rows
            self.busy_s += busy_s
            s = self._slot(self._clock())
            s.batches += 1
            s.rows += rows
            s.busy_s += busy_s
            a = self._alpha if self.batches > 1 else 1.0
            self.batch_fill += a * (fill - self.batch_fill)
            self.queue_delay_s += a * (queue_delay_s - self.queue_delay_s)

    def recent(self, max_age_s: float = 0.05) -> Window:
        """The window without percentiles, recomputed at most every ``max_age_s``: what the
        per-response load report reads (cheap enough for every response)."""
        cached = self._recent
        now = self._clock()
        if cached is not None and now - cached[0] < max_age_s:
            return cached[1]
        w = self.window(percentiles=False)
        self._recent = (now, w)
        return w

    def window(self, *, percentiles: bool = True) -> Window:
        now = self._clock()
        with self._lock:
            current = math.floor(now / self._slot_s)
            live = sorted((s for s in self._slots if current - len(self._slots) < s.epoch <= current),
                          key=lambda s: -s.epoch)
            data = np.fromiter((x for s in live for x in s.latencies) if percentiles else (), dtype=np.float64)
            totals = (sum(s.requests for s in live), sum(s.rows for s in live), sum(s.batches for s in live),
                      sum(s.busy_s for s in live))
            errors = sum(s.errors for s in live)
            capacity = self._capacity(live)
            # the live slices cover from the start of the oldest possible one until now
            span = min(now - self._born, now - (current - len(self._slots) + 1) * self._slot_s)
        pct: tuple[float | None, ...] = (None, None, None)
        if data.size:
            pct = tuple(float(v) for v in np.percentile(data, [50, 90, 99]) * 1000)
        requests, rows, batches, busy = totals
        return Window(span_s=max(span, 0.0), requests=requests, rows=rows, batches=batches, busy_s=busy,
                      threads=self.threads, p50_ms=pct[0], p90_ms=pct[1], p99_ms=pct[2],
                      capacity_rows_per_s=capacity, errors=errors)

    def _capacity(self, newest_first: list[_Slot]) -> float | None:
        """Rows per busy second x threads over the newest slices holding enough model time."""
        rows, busy = 0, 0.0
        for s in newest_first:
            rows += s.rows
            busy += s.busy_s
            if busy >= self._evidence_s:
                break
        return rows / busy * self.threads if busy >= MIN_BUSY_S else None
