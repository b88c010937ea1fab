"""An OIP server's Prometheus metrics, read into one :class:`Scrape` of per-model figures.

Pure: exposition text goes in (:func:`parse_scrape`), a :class:`Scrape` comes
out (:class:`server_agent.oip_tracker.MetricsTracker` turns scrapes into what
the weight controller and the estimator take). No clock is read here and
nothing raises on bad input: a line that does not parse is skipped, an
exposition with no metric we know is None, and a metric that is missing
leaves its figure unknown (None), never 0.

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
                                                                          ``grpc_server_handling_seconds_count``
                                                                          (ModelInfer; see below)
=====================  ================================================  ==========================================

**MLServer's counters**, as MLServer 1.7 keeps them (measured on a real pod; each gRPC ModelInfer call):

==========================================  =======  =======  ===========  =================  =================
gRPC ModelInfer call                        started  handled  handling_s   success / failure  the caller sees
                                                     (OK)     ``_count``
==========================================  =======  =======  ===========  =================  =================
served                                      +1       +1       +1           success +1         OK
wrong dtype or input (the model refuses)    +1       --       +1           failure +1         INVALID_ARGUMENT
unknown model                               +1       --       +1           failure +1         NOT_FOUND
cancelled by the caller's deadline          +1       --       +1           --                 DEADLINE_EXCEEDED
bytes that are no ModelInferRequest         --       --       --           --                 UNKNOWN
==========================================  =======  =======  ===========  =================  =================

Over REST, ``rest_server_requests_in_progress`` (a gauge) holds the calls running; a served call adds
to success, one the model refuses (400) to failure, a body that does not validate (422) to neither.

``grpc_server_handled_total`` counts only OK calls (a refusal leaves through ``context.abort``, which
its interceptor does not see as an error), so started minus handled never comes back to 0 after one
refused call. The ``grpc_server_handling_seconds`` histogram is observed for every call that ended,
however it ended, so started minus its ``_count`` is exact; only where it is missing is the count
read as started minus handled, and marked an estimate (:attr:`Scrape.in_flight_estimate`: an upper
bound, see :mod:`server_agent.drain`). Streaming ModelStreamInfer calls are in neither counter.

MLServer's ``model_infer_request_failure_total`` counts the callers' mistakes (a wrong dtype, an
unknown model, over gRPC and REST alike) as failures, so the agent's error rate for MLServer includes
them: nothing in the exposition tells them apart on gRPC, where ``handled`` has no refused call and
the histogram no code. (REST's ``rest_server_requests_total`` has the status code, but a correction
for REST alone would make the figure mean one thing per transport; clients use gRPC.)

wei-serve's own ``/metrics`` (``weiserving_*``, on its status port) is a third
dialect: requests and errors by status code, queue rows, in-flight and the
latency EWMA; it reports no model time there (its ``/status`` does).

What the figures become over time -- work totals, busy fraction, latency, queue
rows -- is :mod:`server_agent.oip_tracker`'s arithmetic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["DIALECTS", "ModelCounters", "Sample", "Scrape", "parse_exposition", "parse_scrape"]

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
    """One scrape read through a dialect: per-model figures and the server's own in-flight count.

    ``in_flight_estimate``: the count is an upper bound that may never return to 0 (MLServer without
    its handling histogram). ``progress``: the request counters, sorted by name, which move whenever a
    call starts or ends (a drain tells a stuck estimate from work by them)."""

    dialect: str
    models: Mapping[str, ModelCounters] = field(default_factory=dict)
    in_flight: float | None = None
    in_flight_estimate: bool = False
    progress: tuple[tuple[str, float], ...] = ()

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
        server = self.server
        in_flight, estimate = server.get("in_flight"), False
        if "grpc_started" in server:
            ended = server.get("grpc_ended")  # every call that ended, however: exact
            if ended is None and "grpc_handled" in server:
                ended, estimate = server["grpc_handled"], True  # OK calls only: refused ones never leave
            if ended is not None:
                in_flight = _add(in_flight, max(0.0, server["grpc_started"] - ended))
        counted = [m.requests for m in models.values() if m.requests is not None]
        progress = tuple(sorted({**server, **({"requests": sum(counted)} if counted else {})}.items()))
        return Scrape(dialect, MappingProxyType(models), None if in_flight is None else max(0.0, in_flight),
                      estimate, progress)


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
            b.add_server("grpc_handled", s.value)  # OK calls only: see the module docstring
        elif s.name == "grpc_server_handling_seconds_count" and s.labels.get("grpc_method") == "ModelInfer":
            b.add_server("grpc_ended", s.value)


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
