"""Per-endpoint load state: the one mutable part of the balancer.

A membership update rebuilds the immutable candidate vector but carries each
surviving endpoint's :class:`EndpointState` across, keyed by
``(instance id, endpoint)``: in-flight counts, latency and outlier history
describe the *process* behind an address, not the snapshot it came in.

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


def _metric(metrics: Mapping[str, float], name: str) -> float:
    value = metrics.get(name, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return max(0.0, float(value))


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerLoad:
    """The server's in-band load report: its own in-flight count, rows queued, latency EWMA."""

    in_flight: float = 0.0
    queue_depth: float = 0.0
    ewma_latency_s: float = 0.0  # 0: the server did not say

    @classmethod
    def from_named_metrics(cls, metrics: Mapping[str, float]) -> ServerLoad:
        """From ORCA ``named_metrics`` as :mod:`protocol.wire` documents them."""
        return cls(in_flight=_metric(metrics, "in_flight"),
                   queue_depth=_metric(metrics, "queue_depth"),
                   ewma_latency_s=_metric(metrics, "ewma_latency_ms") / 1000.0)


def coerce_load(report: object) -> ServerLoad | None:
    """A :class:`ServerLoad` from itself, an ORCA ``LoadReport`` or a metrics mapping.

    Duck-typed on ``named_metrics`` so the balancer never imports the wire codec.
    """
    if report is None or isinstance(report, ServerLoad):
        return report
    metrics = getattr(report, "named_metrics", report)
    if isinstance(metrics, Mapping):
        return ServerLoad.from_named_metrics(metrics)
    raise TypeError(f"load_report: expected a ServerLoad, an ORCA LoadReport or a mapping, "
                    f"got {type(report).__name__}")


class EndpointState:
    """Load and health of one endpoint, shared by every candidate vector that holds it."""

    __slots__ = ("key", "in_flight", "latency_s", "latency_at", "report", "report_at",
                 "failures", "ejected_until", "times_ejected", "returned_at",
                 "ramp_start", "registration_ms", "ring_points")

    def __init__(self, key: EndpointKey, *, ramp_start: float | None, registration_ms: int = 0) -> None:
        self.key = key
        self.in_flight = 0
        self.latency_s = 0.0          # peak EWMA; 0.0 until the first sample
        self.latency_at = NEVER
        self.report: ServerLoad | None = None
        self.report_at = NEVER
        self.failures = 0             # consecutive
        self.ejected_until = NEVER
        self.times_ejected = 0
        self.returned_at = NEVER
        self.ramp_start = ramp_start  # None: not in slow start
        self.registration_ms = registration_ms
        self.ring_points: tuple[int, tuple[int, ...]] | None = None  # (count, hashes), a cache

    def is_ejected(self, now: float) -> bool:
        return now < self.ejected_until

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
        return (f"EndpointState({self.key[0]}@{self.key[1]}, in_flight={self.in_flight}, "
                f"latency={self.latency_s * 1000:.1f}ms, failures={self.failures}, "
                f"times_ejected={self.times_ejected})")


class LoadTotals:
    """Client-wide counters (the total in-flight, for the bounded-load hash)."""

    __slots__ = ("in_flight",)

    def __init__(self) -> None:
        self.in_flight = 0
