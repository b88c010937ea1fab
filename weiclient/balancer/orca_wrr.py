"""Weighted round robin on weights the servers report (gRPC's ``weighted_round_robin``, gRFC A58).

Each load report (ORCA, in-band on every response) gives an endpoint the weight::

    weight = rps / (utilization + eps / rps x error_utilization_penalty)

``utilization`` is ``application_utilization`` (our servers: the busy
fraction of the model's batch threads), else ``cpu_utilization``; a report
without both rps and utilization is ignored. ``rps / utilization`` is the
calls an endpoint completes per fully busy second: its capacity, measured
where it runs, whatever its hardware or its neighbours. The error term
makes an endpoint that answers fast with errors (a refusal costs it little
CPU) look as slow as it is useful.

A weight is used only after ``blackout_period_s`` of continuous reports (a
new or restarted pod's first figures come from its warm-up) and until
``weight_expiration_period_s`` after the last one; after an expiry the
blackout applies again. An endpoint without a usable weight gets its
published weight, scaled to the reported ones (``published x sum(reported
weights) / sum(their published weights)``; A58 uses the mean reported
weight, which ignores that pods differ); with no usable weight anywhere the
published weights are used as they are. Every weight is then multiplied by
the client's own ramp and health factor (effective / published weight), so
slow start and failures still act, and ejected endpoints are not in the
table at all.

Picks follow nginx's smooth WRR cycle over those weights (:mod:`.wrr`),
rebuilt at most every ``weight_update_period_s`` (A58's scheduler update);
the position lives on the view as in ``round_robin``.

Reports are turned into weights as they arrive: the balancer calls
:meth:`OrcaWeightedRoundRobin.observe` under its lock, which writes the
endpoint's ``orca_weight``, ``orca_since`` and ``orca_at``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from dataclasses import dataclass

from . import _check
from .candidates import Endpoint, View, WeightTable
from .selectors import next_in_cycle
from .state import NEVER, EndpointState, ServerLoad
from .wrr import WrrCycle, nginx_cycle

__all__ = ["OrcaWeightedRoundRobin", "OrcaWrrConfig"]


@dataclass(frozen=True, kw_only=True)
class OrcaWrrConfig:
    """A58's knobs and defaults: ``blackout_period_s`` (10 s),
    ``weight_expiration_period_s`` (180 s), ``weight_update_period_s`` (1 s,
    at least 0.1 s), ``error_utilization_penalty`` (1.0; 0 turns the error
    term off). Our servers report over a 10 s window, so a weight lags a
    change of speed by up to that window plus one update period; the
    blackout equal to the window means a weight is used only once a whole
    window of the pod's work is behind it.
    ``resolution`` (100) and ``max_cycle`` (1024): as ``round_robin``'s, but a
    shorter cycle: it is rebuilt every update period, so a longer one would
    not be run through before the next, and the rebuild is O(cycle x n)."""

    blackout_period_s: float = 10.0
    weight_expiration_period_s: float = 180.0
    weight_update_period_s: float = 1.0
    error_utilization_penalty: float = 1.0
    resolution: int = 100
    max_cycle: int = 1024

    def __post_init__(self) -> None:
        _check.number("blackout_period_s", self.blackout_period_s, low=0.0)
        _check.number("weight_expiration_period_s", self.weight_expiration_period_s, low=0.0, low_open=True)
        _check.number("weight_update_period_s", self.weight_update_period_s, low=0.1)
        _check.number("error_utilization_penalty", self.error_utilization_penalty, low=0.0)
        _check.integer("resolution", self.resolution, low=1, high=10_000)
        _check.integer("max_cycle", self.max_cycle, low=16, high=1_000_000)


class OrcaWeightedRoundRobin:
    def __init__(self, config: OrcaWrrConfig) -> None:
        self.config = config

    # -- reports in (under the balancer's lock) ----------------------------------------------

    def observe(self, st: EndpointState, report: ServerLoad, now: float) -> None:
        utilization = report.application_utilization or report.cpu_utilization
        rps = report.rps_fractional
        if utilization <= 0.0 or rps <= 0.0:
            return  # A58: an empty report changes nothing
        weight = rps / (utilization + report.eps / rps * self.config.error_utilization_penalty)
        if not math.isfinite(weight) or weight <= 0.0:
            return
        if st.orca_since == NEVER or now - st.orca_at >= self.config.weight_expiration_period_s:
            st.orca_since = now  # a new run of reports: the blackout starts again
        st.orca_weight = weight
        st.orca_at = now

    def weight(self, st: EndpointState, now: float) -> float:
        """The endpoint's usable reported weight; 0 when it has none, it expired or is in blackout."""
        cfg = self.config
        if st.orca_at == NEVER or now - st.orca_at >= cfg.weight_expiration_period_s:
            return 0.0
        if now - st.orca_since < cfg.blackout_period_s:
            return 0.0
        return st.orca_weight

    # -- picks --------------------------------------------------------------------------------

    def weights(self, table: WeightTable, now: float) -> list[float]:
        """Per table endpoint: the reported weight, or the published one scaled to the reported ones."""
        reported = [self.weight(ep.state, now) for ep in table.endpoints]
        known = math.fsum(reported)
        published = math.fsum(ep.weight for ep, w in zip(table.endpoints, reported, strict=True) if w > 0.0)
        scale = known / published if published > 0.0 else 1.0
        return [(w if w > 0.0 else ep.weight * scale) * (eff / ep.weight)
                for ep, eff, w in zip(table.endpoints, table.weights, reported, strict=True)]

    def cycle(self, table: WeightTable, now: float) -> WrrCycle:
        memo: tuple[float, WrrCycle] | None = table.cache.get(self)
        if memo is None or now >= memo[0]:
            cycle = nginx_cycle(self.weights(table, now), self.config.resolution, self.config.max_cycle)
            memo = (now + self.config.weight_update_period_s, cycle)
            table.cache[self] = memo
        return memo[1]

    def select(self, view: View, table: WeightTable, *, key: object, exclude: Collection[Endpoint],
               now: float, rng: random.Random, cost: float = 1.0) -> Endpoint | None:
        return next_in_cycle(self, view, table, self.cycle(table, now).order, exclude)

    def __repr__(self) -> str:
        return f"OrcaWeightedRoundRobin({self.config!r})"
