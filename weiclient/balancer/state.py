"""Per-endpoint load state: the one mutable part of the balancer.

A membership update rebuilds the immutable candidate vector but carries each
surviving endpoint's :class:`EndpointState` across, keyed by
``(instance id, endpoint)``: in-flight counts, latency and outlier history
describe the *process* behind an address, not the snapshot it came in.

Load is counted twice: in calls (``in_flight``: what Prequal's
requests-in-flight, the bounded-load hash and the stats mean) and in rows
(``in_flight_rows``: the cost, since a 2,000-candidate call is not a 20-row
call). The balancer adds and removes both together, with the row count each
call started with.

Concurrency: the balancer mutates these fields under its lock (``on_start``,
``on_finish``, ``update``); picks read them without the lock. A racing read
sees a value at most one event old (an in-flight count off by one, the
previous latency), which changes one comparison in one pick: a balancing
decision is a heuristic over data that is stale by a network round-trip
anyway. Fields are plain floats and ints, so a torn read cannot happen in
CPython (or under free-threading: each attribute is one object reference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["EndpointKey", "EndpointState", "LoadTotals", "ServerLoad", "coerce_load"]

EndpointKey = tuple[str, str]
"""``(instance_id, "host:port")``: an instance re-registered at a new address is a new endpoint."""

NEVER = -math.inf


def _number(value: object) -> float:
    """A report figure as a float; anything non-numeric, non-finite or negative is 0 (unknown)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return max(0.0, float(value))


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerLoad:
    """The server's in-band load report; 0 means the server did not say (or said nonsense).

    ORCA's own fields, under their names: ``application_utilization`` (the
    busy fraction of the model's batch threads over the server's window),
    ``cpu_utilization``, ``rps_fractional`` (calls completed per second) and
    ``eps`` (errors per second). From ``named_metrics`` (see :mod:`protocol.wire`):
    ``in_flight`` (server-wide calls in progress), ``queue_depth`` (rows
    waiting in batch queues), ``batch_fill``, ``ewma_latency_s``,
    ``rows_per_s`` (rows completed per second), ``capacity_rows_per_s`` (rows
    per busy second x batch threads) and ``queue_delay_s``.
    """

    in_flight: float = 0.0
    queue_depth: float = 0.0
    ewma_latency_s: float = 0.0
    batch_fill: float = 0.0
    rows_per_s: float = 0.0
    capacity_rows_per_s: float = 0.0
    queue_delay_s: float = 0.0
    application_utilization: float = 0.0
    cpu_utilization: float = 0.0
    rps_fractional: float = 0.0
    eps: float = 0.0

    @classmethod
    def from_named_metrics(cls, metrics: Mapping[str, object], **orca: float) -> ServerLoad:
        """From ORCA ``named_metrics`` as :mod:`protocol.wire` documents them, plus ORCA's own fields."""
        def get(name: str) -> float:
            return _number(metrics.get(name, 0.0))

        return cls(in_flight=get("in_flight"), queue_depth=get("queue_depth"),
                   ewma_latency_s=get("ewma_latency_ms") / 1000.0, batch_fill=get("batch_fill"),
                   rows_per_s=get("rows_per_s"), capacity_rows_per_s=get("capacity_rows_per_s"),
                   queue_delay_s=get("queue_delay_ms") / 1000.0,
                   **{k: _number(v) for k, v in orca.items()})


_ORCA_FIELDS = ("application_utilization", "cpu_utilization", "rps_fractional", "eps")


def coerce_load(report: object) -> ServerLoad | None:
    """A :class:`ServerLoad` from itself, an ORCA ``LoadReport`` or a metrics mapping.

    Duck-typed on ``named_metrics`` (and, when present, ``application_utilization``,
    ``cpu_utilization``, ``rps_fractional``, ``eps``) so the balancer never
    imports the wire codec. Garbage *values* never raise: they read as 0.
    """
    if report is None or isinstance(report, ServerLoad):
        return report
    if isinstance(report, Mapping):
        return ServerLoad.from_named_metrics(report)
    metrics = getattr(report, "named_metrics", None)
    if metrics is None and not any(hasattr(report, name) for name in _ORCA_FIELDS):
        raise TypeError(f"load_report: expected a ServerLoad, an ORCA LoadReport or a mapping, "
                        f"got {type(report).__name__}")
    return ServerLoad.from_named_metrics(metrics if isinstance(metrics, Mapping) else {},
                                         **{name: getattr(report, name, 0.0) for name in _ORCA_FIELDS})


class EndpointState:
    """Load and health of one endpoint, shared by every candidate vector that holds it."""

    __slots__ = ("key", "in_flight", "in_flight_rows", "latency_s", "latency_at", "report", "report_at",
                 "orca_weight", "orca_since", "orca_at", "failures", "ejected_until", "times_ejected",
                 "refused_until", "returned_at", "ramp_start", "registration_ms", "ring_points")

    def __init__(self, key: EndpointKey, *, ramp_start: float | None, registration_ms: int = 0) -> None:
        self.key = key
        self.in_flight = 0            # calls (attempts) outstanding from this client
        self.in_flight_rows = 0.0     # their cost: rows; 0 whenever in_flight is 0
        self.latency_s = 0.0          # peak EWMA; 0.0 until the first sample
        self.latency_at = NEVER
        self.report: ServerLoad | None = None
        self.report_at = NEVER
        self.orca_weight = 0.0        # orca_wrr (gRFC A58): the last weight computed from a report
        self.orca_since = NEVER       # start of the current run of weight-bearing reports
        self.orca_at = NEVER          # the last weight-bearing report
        self.failures = 0             # consecutive
        self.ejected_until = NEVER
        self.times_ejected = 0
        self.refused_until = NEVER    # refused a call for overload: avoided until then (see Balancer.pick)
        self.returned_at = NEVER
        self.ramp_start = ramp_start  # None: not in slow start
        self.registration_ms = registration_ms
        self.ring_points: tuple[int, tuple[int, ...]] | None = None  # (count, hashes), a cache

    def is_ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def is_refusing(self, now: float) -> bool:
        return now < self.refused_until

    def observe_latency(self, now: float, rtt: float, decay_s: float) -> None:
        """Peak EWMA (Finagle's ``PeakEwma``): jump up to a slower sample at once, decay down.

        The decay weight depends on the time since the previous sample, not on
        the sample count, so ``decay_s`` is a time constant whatever the rate.
        """
        if rtt >= self.latency_s:  # >=: a steady latency stays exactly itself (idle ties stay ties)
            self.latency_s = rtt
        else:
            w = math.exp(-max(0.0, now - self.latency_at) / decay_s)
            self.latency_s = self.latency_s * w + rtt * (1.0 - w)
        self.latency_at = now

    def __repr__(self) -> str:
        return (f"EndpointState({self.key[0]}@{self.key[1]}, in_flight={self.in_flight} "
                f"({self.in_flight_rows:g} rows), "
                f"latency={self.latency_s * 1000:.1f}ms, failures={self.failures}, "
                f"times_ejected={self.times_ejected})")


class LoadTotals:
    """Client-wide counters: calls in flight (the bounded-load hash, stats) and their rows."""

    __slots__ = ("in_flight", "in_flight_rows")

    def __init__(self) -> None:
        self.in_flight = 0
        self.in_flight_rows = 0.0
