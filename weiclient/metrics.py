"""Prometheus metrics of the SDK: process-wide collectors, one ``client`` label value per client.

    weiclient_requests_total{service,client,model,outcome}
    weiclient_request_seconds{service,client,model}              histogram, whole calls
    weiclient_attempts_total{service,client,endpoint,code}       every try, per endpoint
    weiclient_retries_total{service,client,code}
    weiclient_hedges_total{service,client,outcome}
    weiclient_throttled_total{service,client,priority}           calls rejected here (adaptive throttling)
    weiclient_overload_refusals_total{service,client,endpoint}   attempts a pod refused for overload
    weiclient_endpoint_in_flight / _in_flight_rows / _effective_weight / _ejected {service,client,endpoint}
                                                                 at scrape time
    weiclient_membership_staleness_seconds{service,client}       how long the membership has been possibly
                                                                 out of date (ZooKeeper unreachable; 0 while live)

Names follow Prometheus' conventions: base units (``_seconds``), counters
named with their exposed ``_total``.

Every collector is created once, when this module is imported, in the
process's default registry, and all clients share them: a ranking service
that calls ``ctr`` and ``cvr`` holds two clients in one process, and each
registering collectors of its own under the same names was
``DuplicateTimeseries`` for the second. Each client claims a ``client``
label value (:class:`ClientMetrics`): the service's name for the first live
client of that service, ``ctr#2``, ``ctr#3`` for more at the same time; a
closed client's value is free for the next one. So series stay as few as the
clients alive at once, and a process that replaces its client keeps its
series (a counter that restarts is what ``rate()`` expects anyway).

Why not a ``CollectorRegistry`` per client: the default registry is what
``prometheus_client.start_http_server`` and every framework integration
expose; a private one would be invisible unless each application wired it up.

The per-endpoint gauges are read from each live client's balancer when
Prometheus scrapes (one custom collector for all), so the request path only
bumps counters.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["ClientMetrics", "NullMetrics", "live_clients"]

log = logging.getLogger(__name__)
_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_LABELS = ["service", "client"]
REQUESTS = Counter("weiclient_requests_total", "WeiClient calls by outcome", [*_LABELS, "model", "outcome"])
REQUEST_SECONDS = Histogram("weiclient_request_seconds", "WeiClient call latency, retries included",
                            [*_LABELS, "model"], buckets=_BUCKETS)
ATTEMPTS = Counter("weiclient_attempts_total", "Attempts per endpoint by gRPC code", [*_LABELS, "endpoint", "code"])
RETRIES = Counter("weiclient_retries_total", "Retries by the code that caused them", [*_LABELS, "code"])
HEDGES = Counter("weiclient_hedges_total", "Hedged calls by outcome", [*_LABELS, "outcome"])
THROTTLED = Counter("weiclient_throttled_total", "Calls rejected by adaptive client-side throttling, before sending",
                    [*_LABELS, "priority"])
REFUSALS = Counter("weiclient_overload_refusals_total", "Attempts a pod refused for overload (RESOURCE_EXHAUSTED)",
                   [*_LABELS, "endpoint"])

Stats = Callable[[float], Any]  # now -> BalancerStats


class _EndpointGauges(Collector):
    """Per-endpoint gauges of every live client, from its balancer's ``stats()`` at scrape time, and
    each client's membership staleness."""

    _FAMILIES = (
        ("in_flight", "weiclient_endpoint_in_flight", "Calls in flight"),
        ("in_flight_rows", "weiclient_endpoint_in_flight_rows", "Rows of the calls in flight"),
        ("effective_weight", "weiclient_endpoint_effective_weight", "Weight after slow start, health and ejection"),
        ("ejected", "weiclient_endpoint_ejected", "1 while ejected"),
    )
    STALENESS = "weiclient_membership_staleness_seconds"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[tuple[str, str], Stats] = {}  # (service, client) -> stats
        self._staleness: dict[tuple[str, str], Callable[[], float]] = {}

    def add(self, service: str, client: str, stats: Stats, staleness: Callable[[], float] | None = None) -> None:
        with self._lock:
            self._sources[(service, client)] = stats
            if staleness is not None:
                self._staleness[(service, client)] = staleness

    def remove(self, service: str, client: str) -> None:
        with self._lock:
            self._sources.pop((service, client), None)
            self._staleness.pop((service, client), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {key: GaugeMetricFamily(name, doc, labels=[*_LABELS, "endpoint"])
                    for key, name, doc in self._FAMILIES}
        stale = GaugeMetricFamily(self.STALENESS, "Seconds the membership has been possibly out of date "
                                  "(ZooKeeper unreachable; 0 while live)", labels=_LABELS)
        with self._lock:
            sources = list(self._sources.items())
            staleness = list(self._staleness.items())
        now = time.monotonic()
        for (service, client), stats in sources:
            try:
                endpoints = stats(now).endpoints
            except Exception:  # one client's failure must not empty every client's scrape
                log.exception("metrics: reading the balancer of client %s failed", client)
                continue
            for ep in endpoints:
                labels = [service, client, ep.address]
                families["in_flight"].add_metric(labels, ep.in_flight)
                families["in_flight_rows"].add_metric(labels, ep.in_flight_rows)
                families["effective_weight"].add_metric(labels, ep.effective_weight)
                families["ejected"].add_metric(labels, 1.0 if ep.ejected_for_s > 0 else 0.0)
        for (service, client), read in staleness:
            try:
                stale.add_metric([service, client], read())
            except Exception:
                log.exception("metrics: reading the membership staleness of client %s failed", client)
        yield from families.values()
        yield stale


ENDPOINTS = _EndpointGauges()
REGISTRY.register(ENDPOINTS)
_claimed: set[str] = set()
_claim_lock = threading.Lock()


def live_clients() -> frozenset[str]:
    """The ``client`` label values claimed now (clients with metrics, not closed)."""
    with _claim_lock:
        return frozenset(_claimed)


def _claim(service: str) -> str:
    with _claim_lock:
        name, n = service, 1
        while name in _claimed:
            n += 1
            name = f"{service}#{n}"
        _claimed.add(name)
        return name


class ClientMetrics:
    """One client's view of the shared collectors: claims its ``client`` label value until :meth:`close`.

    Labelled children are cached: ``labels()`` costs a lock and a tuple per call.
    """

    def __init__(self, service: str) -> None:
        self.service = service
        self.name = _claim(service)
        self._closed = False
        self._requests: dict[tuple[str, str], Any] = {}
        self._seconds: dict[str, Any] = {}
        self._attempts: dict[tuple[str, str], Any] = {}

    def request(self, model: str, outcome: str, seconds: float) -> None:
        counter = self._requests.get((model, outcome))
        if counter is None:
            counter = self._requests[(model, outcome)] = REQUESTS.labels(self.service, self.name, model, outcome)
        hist = self._seconds.get(model)
        if hist is None:
            hist = self._seconds[model] = REQUEST_SECONDS.labels(self.service, self.name, model)
        counter.inc()
        hist.observe(seconds)

    def attempt(self, endpoint: str, code: str, seconds: float) -> None:
        counter = self._attempts.get((endpoint, code))
        if counter is None:
            counter = self._attempts[(endpoint, code)] = ATTEMPTS.labels(self.service, self.name, endpoint, code)
        counter.inc()

    def retry(self, code: str) -> None:
        RETRIES.labels(self.service, self.name, code).inc()

    def hedge(self, outcome: str) -> None:
        HEDGES.labels(self.service, self.name, outcome).inc()

    def throttled(self, priority: str) -> None:
        THROTTLED.labels(self.service, self.name, priority).inc()

    def refused(self, endpoint: str) -> None:
        REFUSALS.labels(self.service, self.name, endpoint).inc()

    def watch(self, stats: Stats, staleness: Callable[[], float] | None = None) -> None:
        """Export per-endpoint gauges from ``stats(now)``, and ``staleness()`` (seconds), until :meth:`close`."""
        if not self._closed:
            ENDPOINTS.add(self.service, self.name, stats, staleness)

    def close(self) -> None:
        """Stop the gauges and free the label value (idempotent). Counters keep their values."""
        if self._closed:
            return
        self._closed = True
        ENDPOINTS.remove(self.service, self.name)
        with _claim_lock:
            _claimed.discard(self.name)

    def __repr__(self) -> str:
        return f"<ClientMetrics service={self.service} client={self.name}{' closed' if self._closed else ''}>"


class NullMetrics(ClientMetrics):
    """``metrics=False``: claims nothing, records nothing."""

    def __init__(self, service: str) -> None:  # no super().__init__: no label value is claimed
        self.service = service
        self.name = service
        self._closed = True

    def request(self, model: str, outcome: str, seconds: float) -> None: ...
    def attempt(self, endpoint: str, code: str, seconds: float) -> None: ...
    def retry(self, code: str) -> None: ...
    def hedge(self, outcome: str) -> None: ...
    def throttled(self, priority: str) -> None: ...
    def refused(self, endpoint: str) -> None: ...
    def watch(self, stats: Stats, staleness: Callable[[], float] | None = None) -> None: ...
    def close(self) -> None: ...
