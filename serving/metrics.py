"""Prometheus metrics for one server (its own registry, so tests may run several).

Names follow Prometheus' conventions: base units (``_seconds``), ratios in
0..1 (``_ratio``), counters named with their exposed ``_total``.

Per-request figures are observed on the request path (a counter and a
histogram); everything else is read live from the model manager at scrape
time by :class:`_LiveCollector`, so the request path pays nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.repository import LoadedModels

LATENCY_BUCKETS = (.001, .0025, .005, .01, .02, .04, .08, .16, .32, .64, 1.28, 2.56, 5.12)


class _LiveCollector(Collector):
    def __init__(self, snapshot: Callable[[], LoadedModels], in_flight: Callable[[], int]) -> None:
        self._snapshot = snapshot
        self._in_flight = in_flight

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["model", "version"]
        g = {
            "queue": GaugeMetricFamily("weiserving_queue_rows", "Rows waiting in the batch "
                                       "queue", labels=labels),
            "inflight": GaugeMetricFamily("weiserving_version_in_flight", "Requests in flight "
                                          "on a model version", labels=labels),
            "limit": GaugeMetricFamily("weiserving_batch_size_limit", "Batch size limit in "
                                       "force (moves online in SLO mode)", labels=labels),
            "delay": GaugeMetricFamily("weiserving_queue_delay_seconds", "EWMA of the oldest "
                                       "request's wait per batch", labels=labels),
            "fill": GaugeMetricFamily("weiserving_batch_fill_ratio", "EWMA of batch rows / "
                                      "batch size limit", labels=labels),
            "ewma": GaugeMetricFamily("weiserving_latency_ewma_seconds", "EWMA of request "
                                      "latency inside the runner", labels=labels),
        }
        batches = CounterMetricFamily("weiserving_batches_total", "Batches run", labels=labels)
        for model, versions in self._snapshot().items():
            for v, lv in versions.items():
                lab = [model, str(v)]
                st = lv.runner.stats
                g["queue"].add_metric(lab, lv.runner.queue_depth())
                g["inflight"].add_metric(lab, lv.in_flight)
                g["limit"].add_metric(lab, lv.runner.batch_limit())
                g["delay"].add_metric(lab, st.queue_delay_s)
                g["fill"].add_metric(lab, st.batch_fill)
                g["ewma"].add_metric(lab, st.ewma_latency_s)
                batches.add_metric(lab, st.batches)
        yield from g.values()
        yield batches
        yield GaugeMetricFamily("weiserving_in_flight", "Requests in flight on the server",
                                value=self._in_flight())


class ServerMetrics:
    def __init__(self, snapshot: Callable[[], LoadedModels], in_flight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("weiserving_requests_total", "Predict calls by model and status code "
                                "(model is empty when no loaded model was named)",
                                ["model", "code"], registry=self.registry)
        self.latency = Histogram("weiserving_request_latency_seconds", "Predict latency "
                                 "seen by the server", ["model"], buckets=LATENCY_BUCKETS,
                                 registry=self.registry)
        self.registry.register(_LiveCollector(snapshot, in_flight))
        self._children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    def observe(self, model: str, code: grpc.StatusCode, seconds: float) -> None:
        """One Predict call; the labelled children are looked up once (labels() locks)."""
        pair = self._children.get((model, code))
        if pair is None:
            pair = self._children[model, code] = (self.requests.labels(model, code.name),
                                                  self.latency.labels(model))
        pair[0].inc()
        pair[1].observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
