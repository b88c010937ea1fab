"""Prequal (Wydrowski et al., "Load is not what you should balance: Introducing Prequal", NSDI'24).

Prequal balances *requests in flight* (RIF) and *latency* rather than CPU
load, with the hot-cold lexicographic (HCL) rule: a replica is **hot** when
its RIF exceeds the ``q_rif`` quantile of the RIF distribution across
replicas; the pick is the **cold** replica with the lowest latency, or, when
every candidate is hot, the one with the lowest RIF. Cold replicas compete on
latency (which sees a slow or overloaded machine, whatever its weight); RIF
keeps any replica from being piled onto because it answered fast once.

What differs from the paper: Prequal sends asynchronous probes and picks
from a pool of their answers. This balancer does no I/O, so the "probe" of
an endpoint is what the client already knows of it, as of ``now``:

* RIF = the larger of the client's own calls in flight there and the
  server-wide ``in_flight`` of its last load report when fresh
  (``load.report_ttl_s``): every response carries a report, so the busiest
  endpoints are also the ones with the freshest figures;
* latency = the load metric's peak EWMA of this client's calls (the server's
  reported EWMA before the first one), decayed while no sample comes, so a
  replica that lost every comparison is tried again (see :mod:`.metric`);
  an endpoint that has never answered costs 0 while idle (probe it) and
  ``load.penalty_s`` once something is outstanding;
* the pool = ``pool`` endpoints drawn afresh for each pick in proportion to
  effective weight (the paper's pool is a cache of up to 16 probes refreshed
  at about three per query; ours costs nothing to refresh, so it can be
  small). With more endpoints than ``pool``, how often a pod is drawn caps
  its share: published weights far from the pods' speeds cap the pods
  faster than their weights say (with 2 of 3 drawn by 1:2:4 weights, the
  pod of weight 1 is in at most 39 % of the pools);
* the RIF distribution = the RIFs of every endpoint of the view, its
  ``q_rif`` quantile recomputed at most every 50 ms (an O(n log n) pass;
  reports arrive at most that often per endpoint).

RIF counts calls, as the paper's does, not rows: with calls of very
different sizes its latency term, not its RIF, sees the big ones.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

from . import _check
from .candidates import Endpoint, View, WeightTable
from .metric import PeakEwma
from .sampling import sample_distinct
from .state import EndpointState

__all__ = ["Prequal", "PrequalConfig", "quantile"]

_THRESHOLD_REFRESH_S = 0.05


@dataclass(frozen=True, kw_only=True)
class PrequalConfig:
    """``q_rif`` (0.84): the paper's operating point; about one replica in six
    counts as hot, which excludes the overloaded ones while leaving most of
    the pool to compete on latency. Lower moves Prequal towards balancing RIF
    (join the shortest queue), 1.0 makes it pick on latency alone.
    ``pool`` (4): candidates per pick; with a sixth of the fleet hot, all four
    are hot in fewer than one pick in a thousand (0.16^4), and each adds a
    latency read to the pick (16, the paper's pool, would cost 25 us)."""

    q_rif: float = 0.84
    pool: int = 4

    def __post_init__(self) -> None:
        _check.number("q_rif", self.q_rif, low=0.0, high=1.0)
        _check.integer("pool", self.pool, low=2, high=32)


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile by linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    if lo + 1 >= len(ordered):
        return ordered[-1]
    return ordered[lo] + (ordered[lo + 1] - ordered[lo]) * (pos - lo)


class Prequal:
    def __init__(self, config: PrequalConfig, metric: PeakEwma) -> None:
        self.config = config
        self.metric = metric

    def rif(self, st: EndpointState, now: float) -> float:
        rep = self.metric.fresh(st, now)
        return max(float(st.in_flight), rep.in_flight) if rep is not None else float(st.in_flight)

    def latency(self, st: EndpointState, rif: float, now: float) -> float:
        latency = self.metric.latency(st, now)
        if latency == 0.0 and rif > 0.0:
            return self.metric.penalty_s
        return latency

    def threshold(self, view: View, table: WeightTable, now: float) -> float:
        """The ``q_rif`` quantile of the RIFs across the view's available endpoints."""
        memo: tuple[float, WeightTable, float] | None = view.cache.get(self)
        if memo is not None and memo[1] is table and now < memo[0]:
            return memo[2]
        value = quantile([self.rif(ep.state, now) for ep in table.endpoints], self.config.q_rif)
        view.cache[self] = (now + _THRESHOLD_REFRESH_S, table, value)
        return value

    def select(self, view: View, table: WeightTable, *, key: object, exclude: Collection[Endpoint],
               now: float, rng: random.Random, cost: float = 1.0) -> Endpoint | None:
        drawn = sample_distinct(table, rng, self.config.pool, exclude)
        if len(drawn) <= 1:
            return table.endpoints[drawn[0]] if drawn else None
        eps = table.endpoints
        hot = self.threshold(view, table, now)
        best_cold: int | None = None
        best_latency = 0.0
        coolest = drawn[0]
        coolest_rif = -1.0
        for i in drawn:  # in draw order: equal figures go to the first draw (an idle fleet splits by weight)
            st = eps[i].state
            rif = self.rif(st, now)
            if rif <= hot:
                latency = self.latency(st, rif, now)
                if best_cold is None or latency < best_latency:
                    best_cold, best_latency = i, latency
            elif best_cold is None and (coolest_rif < 0.0 or rif < coolest_rif):
                coolest, coolest_rif = i, rif
        return eps[best_cold if best_cold is not None else coolest]

    def __repr__(self) -> str:
        return f"Prequal({self.config!r})"
