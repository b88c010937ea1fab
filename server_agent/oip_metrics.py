"""An OIP server's Prometheus metrics, read into what the weight controller and the estimator take.

Pure: exposition text goes in (:func:`parse_scrape`), then one scrape and the
time at a time (:meth:`MetricsTracker.step`); a :class:`MetricsView` comes
out. No clock is read here and nothing raises on bad input: a line that does
not parse is skipped, an exposition with no metric we know is None, and a
metric that is missing leaves its figure unknown (None), never 0.

The Open Inference Protocol defines no metrics, so each server's own names
are read through a dialect (:data:`DIALECTS`), which maps them onto one
per-model record (:class:`ModelCounters`):

=====================  ================================================  ==========================================
figure                 Triton (``:8002/metrics``)                        MLServer (``:8082/metrics``)
=====================  ================================================  ==========================================
requests, errors       ``nv_inference_request_success`` + ``_failure``    ``model_infer_request_success`` + ``_failure``
rows, batches          ``nv_inference_count``, ``nv_inference_exec_count``  --
model time             ``nv_inference_compute_{input,infer,output}_``     --
                       ``duration_us``
latency (mean)         ``nv_inference_request_duration_us``               ``model_infer_request_duration`` (summary)
latency (p99)          ``nv_inference_request_summary_us`` quantile 0.99  --
                       (with ``--metrics-config summary_latencies=true``)
waiting now            ``nv_inference_pending_request_count``             ``rest_server_requests_in_progress`` (POST) +
                                                                          gRPC ``grpc_server_started_total`` minus
                                                                          ``grpc_server_handled_total`` (ModelInfer)
=====================  ================================================  ==========================================

wei-serve's own ``/metrics`` (``weiserving_*``, on its status port) is a third
dialect: requests and errors by status code, queue rows, in-flight and the
latency EWMA; it reports no model time there (its ``/status`` does).

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

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from .estimator import WorkTotals

__all__ = ["DIALECTS", "MetricsTracker", "MetricsView", "ModelCounters", "Sample", "Scrape", "parse_exposition",
           "parse_scrape"]

SERVER_ERROR_CODES = frozenset({"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                                "DATA_LOSS"})
"""wei-serve's codes counted against the pod (as :mod:`server_agent.server_io` counts them)."""

MAX_TEXT = 4 * 1024 * 1024
MAX_MODELS = 1024
"""A scrape with more models than this is cut there (label values are the server's, not ours)."""

_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def _labels(text: str) -> dict[str, str] | None:
    out, pos = {}, 0
    text = text.strip()
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None:
            return None
        out[m.group(1)] = m.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        pos = m.end()
    return out


def parse_exposition(text: str) -> Iterator[Sample]:
    """Samples of a Prometheus text exposition; comments and lines that do not parse are skipped."""
    for line in text[:MAX_TEXT].splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        labels = _labels(m.group(2) or "")
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        if labels is not None:
            yield Sample(m.group(1), labels, value)


@dataclass(frozen=True, slots=True)
class ModelCounters:
    """One model's figures at one scrape, summed over its versions; None: not reported.

    Counters (only grow): ``requests`` answered, ``errors`` among them that are
    the pod's, ``succeeded``, ``rows`` executed, ``batches`` executed,
    ``model_s`` (model time added per request, see the module docstring),
    ``latency_s`` summed over ``latency_n`` requests. Gauges: ``waiting``
    requests, ``queue_rows``, ``p99_s``, ``ewma_s``."""

    requests: float | None = None
    errors: float | None = None
    succeeded: float | None = None
    rows: float | None = None
    batches: float | None = None
    model_s: float | None = None
    latency_s: float | None = None
    latency_n: float | None = None
    waiting: float | None = None
    queue_rows: float | None = None
    p99_s: float | None = None
    ewma_s: float | None = None


@dataclass(frozen=True, slots=True)
class Scrape:
    """One scrape read through a dialect: per-model figures and the server's own in-flight count."""

    dialect: str
    models: Mapping[str, ModelCounters] = field(default_factory=dict)
    in_flight: float | None = None

    @property
    def pending(self) -> int | None:
        """Requests the server still has (in flight, else waiting over all models); None: unknown."""
        if self.in_flight is not None:
            return max(0, round(self.in_flight))
        waiting = [m.waiting for m in self.models.values() if m.waiting is not None]
        return max(0, round(sum(waiting))) if waiting else None


def _add(a: float | None, b: float) -> float:
    return b if a is None else a + b


class _Builder:
    """Per-model sums of the samples a dialect maps (``add``), frozen into a :class:`Scrape`."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, float]] = {}
        self.server: dict[str, float] = {}

    def add(self, labels: Mapping[str, str], what: str, value: float, *, combine: str = "sum") -> None:
        if not math.isfinite(value) or value < 0:
            return  # a NaN quantile (no request in the window), a negative counter: no figure
        model = labels.get("model", "")
        if not model or (model not in self.models and len(self.models) >= MAX_MODELS):
            return
        figures = self.models.setdefault(model, {})
        old = figures.get(what)
        figures[what] = value if old is None else (max(old, value) if combine == "max" else old + value)

    def add_server(self, what: str, value: float) -> None:
        if math.isfinite(value):
            self.server[what] = self.server.get(what, 0.0) + value

    def build(self, dialect: str) -> Scrape:
        models = {name: ModelCounters(**f) for name, f in self.models.items()}
        in_flight = self.server.get("in_flight")
        if "grpc_started" in self.server and "grpc_handled" in self.server:
            in_flight = _add(in_flight, max(0.0, self.server["grpc_started"] - self.server["grpc_handled"]))
        return Scrape(dialect, MappingProxyType(models), None if in_flight is None else max(0.0, in_flight))


def _base(name: str) -> str:
    """A counter's name without the ``_total`` some exporters append (Triton's have none)."""
    return name[:-6] if name.endswith("_total") else name


TRITON_TIMES = {"nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
                "nv_inference_compute_output_duration_us"}


def _triton(samples: Iterable[Sample], b: _Builder) -> None:
    for s in samples:
        name = _base(s.name)
        if name == "nv_inference_request_success":
            b.add(s.labels, "succeeded", s.value)
            b.add(s.labels, "requests", s.value)
            b.add(s.labels, "latency_n", s.value)
        elif name == "nv_inference_request_failure":  # any reason: Triton does not tell a caller's mistake apart
            b.add(s.labels, "errors", s.value)
            b.add(s.labels, "requests", s.value)
        elif name == "nv_inference_count":
            b.add(s.labels, "rows", s.value)
        elif name == "nv_inference_exec_count":
            b.add(s.labels, "batches", s.value)
        elif name in TRITON_TIMES:
            b.add(s.labels, "model_s", s.value / 1e6)
        elif name == "nv_inference_request_duration_us":
            b.add(s.labels, "latency_s", s.value / 1e6)
        elif name == "nv_inference_pending_request_count":
            b.add(s.labels, "waiting", s.value)
        elif name == "nv_inference_request_summary_us" and _is_p99(s.labels):
            b.add(s.labels, "p99_s", s.value / 1e6, combine="max")


def _is_p99(labels: Mapping[str, str]) -> bool:
    try:
        return abs(float(labels.get("quantile", "")) - 0.99) < 1e-9
    except ValueError:
        return False


def _mlserver(samples: Iterable[Sample], b: _Builder) -> None:
    for s in samples:
        name = _base(s.name)
        if name == "model_infer_request_success":
            b.add(s.labels, "succeeded", s.value)
            b.add(s.labels, "requests", s.value)
        elif name == "model_infer_request_failure":
            b.add(s.labels, "errors", s.value)
            b.add(s.labels, "requests", s.value)
        elif s.name == "model_infer_request_duration_sum":
            b.add(s.labels, "latency_s", s.value)
        elif s.name == "model_infer_request_duration_count":
            b.add(s.labels, "latency_n", s.value)
        elif s.name.endswith("_requests_in_progress") and s.labels.get("method", "POST") == "POST":
            b.add_server("in_flight", s.value)  # REST inference is POST; the prefix is a setting (rest_server)
        elif s.name == "grpc_server_started_total" and s.labels.get("grpc_method") == "ModelInfer":
            b.add_server("grpc_started", s.value)
        elif s.name == "grpc_server_handled_total" and s.labels.get("grpc_method") == "ModelInfer":
            b.add_server("grpc_handled", s.value)


def _weiserving(samples: Iterable[Sample], b: _Builder) -> None:
    for s in samples:
        if s.name == "weiserving_requests_total":
            code = s.labels.get("code", "")
            b.add(s.labels, "requests", s.value)
            b.add(s.labels, "errors", s.value if code in SERVER_ERROR_CODES else 0.0)
            b.add(s.labels, "succeeded", s.value if code == "OK" else 0.0)
        elif s.name == "weiserving_queue_rows":
            b.add(s.labels, "queue_rows", s.value)
        elif s.name == "weiserving_latency_ewma_seconds":
            b.add(s.labels, "ewma_s", s.value, combine="max")
        elif s.name == "weiserving_in_flight":
            b.add_server("in_flight", s.value)


Dialect = Callable[[Iterable[Sample], _Builder], None]
DIALECTS: Mapping[str, tuple[str, Dialect]] = MappingProxyType({
    "triton": ("nv_inference_", _triton),
    "weiserving": ("weiserving_", _weiserving),
    "mlserver": ("model_infer_request_", _mlserver),
})
"""name -> (the prefix that identifies the server's exposition, the reader); tried in this order."""


def parse_scrape(text: str) -> Scrape | None:
    """The exposition read through the first dialect whose metrics it has; None when none matches."""
    try:
        samples = list(parse_exposition(text))
    except Exception:  # noqa: BLE001 -- garbage in: no figures, never a crash
        return None
    for name, (prefix, read) in DIALECTS.items():
        if any(s.name.startswith(prefix) for s in samples):
            b = _Builder()
            read(samples, b)
            return b.build(name)
    return None


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
