"""Prometheus metrics of the SDK (process-wide, labelled by service).

    weiclient_requests_total{service,model,outcome}
    weiclient_request_seconds{service,model}            histogram, whole calls
    weiclient_attempts_total{service,endpoint,code}     every try, per endpoint
    weiclient_retries_total{service,code}
    weiclient_hedges_total{service,outcome}
    weiclient_endpoint_in_flight / _in_flight_rows / _effective_weight / _ejected {service,endpoint}
                                                        at scrape time

The per-endpoint gauges are read from the balancer when Prometheus scrapes
(a custom collector), so the request path only bumps counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ClientMetrics", "NullMetrics"]

_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
REQUESTS = Counter("weiclient_requests", "WeiClient calls by outcome", ["service", "model", "outcome"])
REQUEST_SECONDS = Histogram("weiclient_request_seconds", "WeiClient call latency, retries included",
                            ["service", "model"], buckets=_BUCKETS)
ATTEMPTS = Counter("weiclient_attempts", "Attempts per endpoint by gRPC code", ["service", "endpoint", "code"])
RETRIES = Counter("weiclient_retries", "Retries by the code that caused them", ["service", "code"])
HEDGES = Counter("weiclient_hedges", "Hedged calls by outcome", ["service", "outcome"])


class ClientMetrics:
    """Labelled children are cached: ``labels()`` costs a lock and a tuple per call."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._requests: dict[tuple[str, str], Any] = {}
        self._seconds: dict[str, Any] = {}
        self._attempts: dict[tuple[str, str], Any] = {}

    def request(self, model: str, outcome: str, seconds: float) -> None:
        counter = self._requests.get((model, outcome))
        if counter is None:
            counter = self._requests[(model, outcome)] = REQUESTS.labels(self.service, model, outcome)
        hist = self._seconds.get(model)
        if hist is None:
            hist = self._seconds[model] = REQUEST_SECONDS.labels(self.service, model)
        counter.inc()
        hist.observe(seconds)

    def attempt(self, endpoint: str, code: str, seconds: float) -> None:
        counter = self._attempts.get((endpoint, code))
        if counter is None:
            counter = self._attempts[(endpoint, code)] = ATTEMPTS.labels(self.service, endpoint, code)
        counter.inc()

    def retry(self, code: str) -> None:
        RETRIES.labels(self.service, code).inc()

    def hedge(self, outcome: str) -> None:
        HEDGES.labels(self.service, outcome).inc()


class NullMetrics(ClientMetrics):
    def request(self, model: str, outcome: str, seconds: float) -> None: ...
    def attempt(self, endpoint: str, code: str, seconds: float) -> None: ...
    def retry(self, code: str) -> None: ...
    def hedge(self, outcome: str) -> None: ...


class EndpointCollector(Collector):
    """Per-endpoint gauges from ``stats()`` at scrape time; register/unregister with the client."""

    def __init__(self, service: str, stats: Callable[[float], Any]) -> None:
        self._service = service
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._stats(time.monotonic())
        families = {
            "in_flight": GaugeMetricFamily("weiclient_endpoint_in_flight", "Calls in flight",
                                           labels=["service", "endpoint"]),
            "in_flight_rows": GaugeMetricFamily("weiclient_endpoint_in_flight_rows", "Rows of the calls in flight",
                                                labels=["service", "endpoint"]),
            "effective_weight": GaugeMetricFamily("weiclient_endpoint_effective_weight",
                                                  "Weight after slow start, health and ejection",
                                                  labels=["service", "endpoint"]),
            "ejected": GaugeMetricFamily("weiclient_endpoint_ejected", "1 while ejected",
                                         labels=["service", "endpoint"]),
        }
        for ep in stats.endpoints:
            labels = [self._service, ep.address]
            families["in_flight"].add_metric(labels, ep.in_flight)
            families["in_flight_rows"].add_metric(labels, ep.in_flight_rows)
            families["effective_weight"].add_metric(labels, ep.effective_weight)
            families["ejected"].add_metric(labels, 1.0 if ep.ejected_for_s > 0 else 0.0)
        yield from families.values()

    def register(self) -> None:
        REGISTRY.register(self)

    def unregister(self) -> None:
        try:
            REGISTRY.unregister(self)
        except KeyError:
            pass
