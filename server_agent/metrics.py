"""The agent's Prometheus metrics, one table: what ``/metrics`` serves and what ``describe()`` names.

Every family is read from the agent's immutable :class:`~server_agent.view.AgentView`
at scrape time. Names follow Prometheus' conventions: base units
(``_seconds``), ratios in 0..1 (``_ratio``), counters end in ``_total``.

Two gauges carry the pod's own measure of load, for a HorizontalPodAutoscaler
on a Pods metric (``examples/k8s/hpa.yaml``):

- ``wei_agent_server_busy_ratio``: the busiest model's batch-thread busy
  fraction over the server's window (0..1): how much of the pod's measured
  capacity is in use;
- ``wei_agent_server_queue_delay_seconds``: the worst model's queue delay
  (EWMA of the oldest request's wait per batch); 0 while the window saw no
  request, since an idle server's last EWMA would otherwise hold for ever.

Both have no sample while the server's status is unknown: an autoscaler must
see a missing metric, not a made-up 0. ``wei_agent_info`` (always 1) names the
service, instance id, advertised endpoint and zone, to join on ``instance``
or ``pod`` in PromQL (``* on (pod) group_left (service) wei_agent_info``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from registry.session import RegistryState

from .lifecycle import Phase
from .probes import ProbeState

if TYPE_CHECKING:
    from .view import AgentView

__all__ = ["FAMILIES", "AgentCollector", "Family", "busy_ratio", "queue_delay_seconds"]

Samples = Iterable[tuple[tuple[str, ...], float]]
Info = tuple[str, str, str, str]  # service, instance_id, endpoint, zone


@dataclass(frozen=True, slots=True)
class Family:
    """One metric: its exposed ``name`` (a counter's ends in ``_total``), and its samples from a view."""

    name: str
    kind: str  # "gauge" | "counter"
    help: str
    samples: Callable[[AgentView, Info], Samples]
    labels: tuple[str, ...] = ()

    def empty(self) -> GaugeMetricFamily | CounterMetricFamily:
        cls = GaugeMetricFamily if self.kind == "gauge" else CounterMetricFamily
        return cls(self.name, self.help, labels=list(self.labels))


def busy_ratio(view: AgentView) -> float | None:
    """The busiest model's busy fraction over the server's window; None when unknown."""
    return view.server.busy_fraction() if view.server is not None else None


def queue_delay_seconds(view: AgentView) -> float | None:
    """The worst model's queue delay (0 for a model whose window saw no request); None when unknown."""
    return view.server.queue_delay_s() if view.server is not None else None


def _one(read: Callable[[AgentView], float | None]) -> Callable[[AgentView, Info], Samples]:
    def samples(view: AgentView, info: Info) -> Samples:
        value = read(view)
        return [] if value is None else [((), float(value))]
    return samples


def _in_flight(view: AgentView) -> float:
    n = view.server.in_flight if view.server is not None else None
    return -1.0 if n is None else float(n)


def _probes(read: Callable[..., float]) -> Callable[[AgentView, Info], Samples]:
    return lambda view, info: [((str(p.kind),), read(p)) for p in view.engine.probes]


FAMILIES: tuple[Family, ...] = (
    Family("wei_agent_info", "gauge", "1, labelled with the agent's service, instance id, endpoint and zone",
           lambda v, info: [(info, 1.0)], ("service", "instance_id", "endpoint", "zone")),
    Family("wei_agent_weight", "gauge", "Weight the controller holds now", _one(lambda v: v.weight)),
    Family("wei_agent_published_weight", "gauge", "Weight in ZooKeeper (0 while unregistered or drained)",
           _one(lambda v: v.published_weight or 0.0)),
    Family("wei_agent_capacity_score", "gauge", "Declared or calibrated capacity (the estimate's prior basis)",
           _one(lambda v: v.capacity.score)),
    Family("wei_agent_capacity_samples_per_second", "gauge", "Measured capacity the weight scales",
           _one(lambda v: v.estimator.value)),
    Family("wei_agent_capacity_confidence", "gauge", "Evidence / (evidence + prior weight), 0..1",
           _one(lambda v: v.estimator.confidence)),
    Family("wei_agent_capacity_cpu_cores", "gauge", "CPU cores detected",
           _one(lambda v: v.capacity.capacity.cpu_cores)),
    Family("wei_agent_capacity_gpus", "gauge", "GPUs detected", _one(lambda v: v.capacity.capacity.gpu_count)),
    Family("wei_agent_health", "gauge", "Health factor in [0, 1] the weight is computed with",
           _one(lambda v: v.health_factor)),
    Family("wei_agent_slow_start_ramp", "gauge", "Slow-start ramp factor", _one(lambda v: v.ramp)),
    Family("wei_agent_server_busy_ratio", "gauge", "The busiest model's batch-thread busy fraction over the "
           "server's window, 0..1 (no sample while unknown)", _one(busy_ratio)),
    Family("wei_agent_server_queue_delay_seconds", "gauge", "The worst model's queue delay, 0 while idle "
           "(no sample while unknown)", _one(queue_delay_seconds)),
    Family("wei_agent_server_in_flight", "gauge", "Requests in flight on the model server (-1 unknown)",
           _one(_in_flight)),
    Family("wei_agent_probe_success", "gauge", "1 success, 0 failure, -1 unknown",
           _probes(lambda p: {ProbeState.SUCCESS: 1, ProbeState.FAILURE: 0}.get(p.state, -1)), ("probe",)),
    Family("wei_agent_probe_consecutive_failures", "gauge", "Consecutive failures",
           _probes(lambda p: p.consecutive_failures), ("probe",)),
    Family("wei_agent_probe_results_total", "counter", "Probe results",
           lambda v, info: [((kind, "success" if passed else "failure"), n)
                            for (kind, passed), n in sorted(v.probe_results.items())], ("probe", "result")),
    Family("wei_agent_registration_phase", "gauge", "1 for the current phase",
           lambda v, info: [((str(p),), 1.0 if p is v.phase else 0.0) for p in Phase], ("phase",)),
    Family("wei_agent_weight_publishes_total", "counter", "Weights the controller decided to publish",
           _one(lambda v: v.weight_publishes)),
    Family("wei_agent_zk_writes_total", "counter", "ZooKeeper writes (create, set, delete)",
           _one(lambda v: v.zk_writes)),
    Family("wei_agent_zk_connected", "gauge", "1 while the ZooKeeper session is connected",
           _one(lambda v: float(v.zk_connected))),
    Family("wei_agent_registry_state", "gauge", "1 for the registry connection's state now",
           lambda v, info: [((str(rs),), 1.0 if v.registry is not None and v.registry.state is rs else 0.0)
                            for rs in RegistryState], ("state",)),
    Family("wei_agent_registry_fresh_restarts_total", "counter", "ZooKeeper client restarts with a fresh "
           "session because ZooKeeper refused ours (it lost its data)",
           _one(lambda v: v.registry.fresh_restarts if v.registry is not None else 0)),
    Family("wei_agent_registration_problem", "gauge", "1 while registered but the node cannot be written "
           "(instance id used twice, failing writes)", _one(lambda v: float(v.registration_problem is not None))),
)


class AgentCollector(Collector):
    """Reads ``view()`` at each scrape; ``describe()`` names every family without reading it."""

    def __init__(self, view: Callable[[], AgentView], *, service: str = "", instance_id: str = "",
                 endpoint: str = "", zone: str = "") -> None:
        self._view = view
        self._info: Info = (service, instance_id, endpoint, zone)

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for f in FAMILIES:
            yield f.empty()

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        view = self._view()
        service, instance_id, endpoint, zone = self._info
        info = (service, instance_id, endpoint, zone or view.capacity.pod.zone)  # as the record's zone
        for f in FAMILIES:
            family = f.empty()
            for labels, value in f.samples(view, info):
                family.add_metric(list(labels), value)
            yield family
