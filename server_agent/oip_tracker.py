"""An OIP server's scrapes over time (:class:`MetricsTracker`): what the weight controller and the estimator take.

Pure: one :class:`~server_agent.oip_metrics.Scrape` and the time at a time
(:meth:`MetricsTracker.step`); a :class:`MetricsView` comes out. No clock is
read here; which server counter feeds which figure is
:mod:`server_agent.oip_metrics`'s table.

**Capacity** (Triton only): Triton adds a batch's model time to *each*
request in the batch, so over one interval the busy time of the model's
instance is ``model time x batches / requests`` (a batch of 8 requests that
ran 10 ms adds 80 ms to the counter, and 10 ms is what the instance spent).
``rows / busy`` is then the rows per second of full use at the batch sizes
the server ran, which is what :class:`~server_agent.estimator.CapacityEstimator`
expects. The busy time is that of one model instance: a model with an
``instance_group`` count of N is credited with one instance's speed, which
keeps pods with the same model configuration in the right ratio (weights
are relative), not their absolute rows per second. The tracker accumulates
the busy time and rows interval by interval, so the :class:`WorkTotals` it
hands on only grow; an interval in which one of a model's counters went
backwards (a model reload) adds nothing for that model.

**Queue rows**: Triton counts waiting *requests*; each is taken as the
model's mean rows per request over the interval (else since start, else 1).

Where a figure is missing -- MLServer reports no model time, a server
without metrics reports nothing -- it is None: the estimator keeps its prior
(the declared or calibrated capacity, so the published weight is the static
one and the record carries no ``samples_per_s``), and the weight controller
holds the factor that figure drives.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from .estimator import WorkTotals
from .oip_metrics import ModelCounters, Scrape

__all__ = ["MetricsTracker", "MetricsView"]


@dataclass(frozen=True, slots=True)
class MetricsView:
    """What one scrape says after the tracker's arithmetic; None is unknown.

    ``work``: cumulative rows and full-use seconds (None when the server reports
    no model time: capacity unknown). ``requests`` / ``errors``: cumulative,
    the controller diffs them. The rest are this interval's."""

    dialect: str
    work: WorkTotals | None = None
    requests: int | None = None
    errors: int | None = None
    busy_fraction: float | None = None
    mean_latency_ms: float | None = None
    p99_ms: float | None = None
    queue_rows: float | None = None
    pending: int | None = None


def _delta(cur: float | None, prev: float | None) -> float | None:
    return None if cur is None or prev is None or cur < prev else cur - prev


def _sum(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _max(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


@dataclass(frozen=True, slots=True)
class _Interval:
    """One model's part of one interval."""

    rows: float | None = None
    busy_s: float | None = None
    latency_ms: float | None = None
    rows_per_request: float | None = None


def _interval(cur: ModelCounters, prev: ModelCounters | None) -> _Interval:
    if prev is None:
        return _Interval()
    counters = ("requests", "errors", "succeeded", "rows", "batches", "model_s", "latency_s", "latency_n")
    d = {k: _delta(getattr(cur, k), getattr(prev, k)) for k in counters}
    if any(getattr(cur, k) is not None and getattr(prev, k) is not None and d[k] is None for k in counters):
        return _Interval()  # a counter went backwards (a reload): no evidence from this model this time
    busy = None
    if d["model_s"] is not None:
        done, batches = d["succeeded"], d["batches"]
        share = min(1.0, batches / done) if done and batches is not None else 1.0
        busy = d["model_s"] * share
    latency = d["latency_s"] / d["latency_n"] * 1000 if d["latency_s"] is not None and d["latency_n"] else None
    per_request = d["rows"] / d["succeeded"] if d["rows"] is not None and d["succeeded"] else None
    return _Interval(rows=d["rows"] if busy is not None else None, busy_s=busy, latency_ms=latency,
                     rows_per_request=per_request)


def _queue_rows(m: ModelCounters, part: _Interval) -> float | None:
    if m.queue_rows is not None:
        return m.queue_rows
    if m.waiting is None:
        return None
    per_request = part.rows_per_request
    if per_request is None and m.rows is not None and m.succeeded:
        per_request = m.rows / m.succeeded
    return m.waiting * (per_request or 1.0)


@dataclass(frozen=True, slots=True)
class MetricsTracker:
    """The state between scrapes: the last scrape, when it was taken, and the work accumulated so far.

    ``tracker, view = tracker.step(scrape, now)``; a scrape of another dialect
    than the last (a different server behind the URL) starts over."""

    last: Scrape | None = None
    at: float | None = None
    rows: float = 0.0
    busy_s: float = 0.0

    def step(self, scrape: Scrape, now: float) -> tuple[MetricsTracker, MetricsView]:
        prev = self.last if self.last is not None and self.last.dialect == scrape.dialect else None
        dt = now - self.at if prev is not None and self.at is not None else 0.0
        parts = {name: _interval(m, prev.models.get(name) if prev is not None else None)
                 for name, m in scrape.models.items()}
        rows = self.rows + sum(p.rows for p in parts.values() if p.rows is not None)
        busy = self.busy_s + sum(p.busy_s for p in parts.values() if p.busy_s is not None)
        timed = any(m.model_s is not None and m.rows is not None for m in scrape.models.values())
        busiest = _max(p.busy_s for p in parts.values())
        models = scrape.models.values()
        view = MetricsView(
            dialect=scrape.dialect,
            work=WorkTotals(rows=round(rows), busy_s=busy) if timed else None,
            requests=_int(_sum(m.requests for m in models)), errors=_int(_sum(m.errors for m in models)),
            busy_fraction=min(1.0, busiest / dt) if busiest is not None and dt > 0 else None,
            mean_latency_ms=_max([*(p.latency_ms for p in parts.values()),
                                  *(m.ewma_s * 1000 if m.ewma_s is not None else None for m in models)]),
            p99_ms=_max(m.p99_s * 1000 if m.p99_s is not None else None for m in models),
            queue_rows=_sum(_queue_rows(m, parts[name]) for name, m in scrape.models.items()),
            pending=scrape.pending)
        return replace(self, last=scrape, at=now, rows=rows, busy_s=busy), view


def _int(v: float | None) -> int | None:
    return None if v is None else round(v)
