"""Effective weight: published weight x slow-start ramp x local health.

The published weight is the pod's own estimate of its capacity now, and
while the pod is WARMING its agent ramps it (see :class:`SlowStart` for why
that ramp is the one). The client multiplies in what only it can see: its
requests there fail (health), and, for a pod that joined at full weight with
no agent ramping it, its own slow start.

Effective weights change with time during a ramp; rather than recomputing
them per pick, weight tables are rebuilt every ``refresh_s`` while anything
ramps (see :mod:`.candidates`), so a 30 s ramp moves in 30 steps of ~3 %.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _check
from .outlier import OutlierDetection
from .state import EndpointState

__all__ = ["SlowStart", "Weigher"]


@dataclass(frozen=True, kw_only=True)
class SlowStart:
    """The client's ramp: only for a pod that joins at full weight with nobody ramping it.

    **One slow start, and the agent owns it.** A pod warms up under its
    *total* load, the sum over every client. The agent's ramp (WARMING, from
    ``WeightConfig.floor_fraction`` = 5 % of the weight to 100 % over
    ``ramp_s`` = 60 s, in :mod:`server_agent.weight`) is published in the
    record, so every client, including one that starts mid-ramp, applies the
    same fraction at the same moment and the pod's total load follows it. A
    client's ramp sees only its own traffic: it starts when *this* client
    meets the pod, so across clients it bounds nothing in aggregate, and
    multiplied with the agent's it made a new pod start at 0.5 % (5 % x 10 %)
    of its weight. So a WARMING record gets no client ramp (its factor is 1:
    the first effective weight is the published 5 %), and neither does the
    same pod when it turns SERVING. The client ramps only what no agent
    ramps: a pod that appears, or comes back from draining, already SERVING
    (registered by another tool than ``wei-agent``).

    Knobs: ``window_s`` (30 s): TensorFlow serving pods reach steady latency after
    their first batches have traced and compiled graphs and filled caches,
    which takes seconds to tens of seconds; 30 s (a common Envoy setting)
    covers that without keeping new capacity idle for long during a
    scale-out. ``floor`` (0.1): a new pod gets a tenth of its weight at
    once, enough to warm up on real traffic. ``aggression`` (1.0, linear):
    Envoy's exponent; the factor is ``floor + (1 - floor) x (t / window)^(1 /
    aggression)``, so values above 1 ramp faster early. ``refresh_s`` (1 s):
    how often ramping weights, and weights whose health changed, are
    recomputed (an O(n) table rebuild each).

    Endpoints in a client's first non-empty membership are not ramped: the
    client cannot tell a new pod from one it merely has not met, and ramping
    all of them together would change nothing but the probes.
    """

    window_s: float = 30.0
    floor: float = 0.1
    aggression: float = 1.0
    refresh_s: float = 1.0

    def __post_init__(self) -> None:
        _check.number("slow_start.window_s", self.window_s, low=0.0)
        _check.number("slow_start.floor", self.floor, low=0.0, high=1.0, low_open=True)
        _check.number("slow_start.aggression", self.aggression, low=0.0, high=100.0, low_open=True)
        _check.number("slow_start.refresh_s", self.refresh_s, low=0.0, low_open=True)

    def factor(self, age_s: float) -> float:
        if age_s >= self.window_s:
            return 1.0
        if age_s <= 0.0:
            return self.floor
        ramp: float = (age_s / self.window_s) ** (1.0 / self.aggression)
        return self.floor + (1.0 - self.floor) * ramp


@dataclass(frozen=True, kw_only=True)
class Weigher:
    """Combines the parts of the effective weight; pure over (published weight, state, now)."""

    slow_start: SlowStart
    outlier: OutlierDetection

    def ramp(self, st: EndpointState, now: float) -> float:
        if st.ramp_start is None:
            return 1.0
        return self.slow_start.factor(now - st.ramp_start)

    def ramping(self, st: EndpointState, now: float) -> bool:
        return st.ramp_start is not None and now - st.ramp_start < self.slow_start.window_s

    def effective(self, published: float, st: EndpointState, now: float) -> float:
        return published * self.ramp(st, now) * self.outlier.health(st, now)
