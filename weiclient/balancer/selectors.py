"""Selectors: how one endpoint is chosen from a weight table.

Each selector is one small object with one method, ``select``; the balancer
composes it with the availability filter (views and tables) and the load
metric. Selectors hold no per-endpoint state: load lives in
:class:`~.state.EndpointState`, and what depends only on the table (a WRR
cycle) is memoized on the table.

* :class:`PowerOfChoices` (``weighted_p2c``): draw ``choices`` distinct
  endpoints in proportion to effective weight, take the lowest load-metric
  cost (ties go to the first draw, which keeps an idle cluster split by
  weight). O(log n).
* :class:`WeightedRandom` (``random``): one weighted draw. O(log n).
* :class:`SmoothWeightedRoundRobin` (``round_robin``): nginx's smooth WRR,
  its cycle precomputed per table (see :mod:`.wrr`). O(1).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from . import _check
from .candidates import Endpoint, View, WeightTable
from .metric import PeakEwma
from .sampling import sample_distinct, sample_pair
from .wrr import WrrCycle, nginx_cycle

__all__ = ["P2CConfig", "PowerOfChoices", "Selector", "SmoothWeightedRoundRobin", "WeightedRandom", "next_in_cycle",
           "WrrConfig"]


class Selector(Protocol):
    """Chooses one endpoint of a non-empty table; None when every one is excluded.

    ``cost`` is the call's rows (at least 1). A selector that keeps figures
    from load reports may also define ``observe(state, report, now)``: the
    balancer calls it with each report, under its lock (see :mod:`.orca_wrr`).
    """

    def select(self, view: View, table: WeightTable, *, key: object, exclude: Collection[Endpoint],
               now: float, rng: random.Random, cost: float = 1.0) -> Endpoint | None: ...


@dataclass(frozen=True, kw_only=True)
class P2CConfig:
    """``choices`` (2): Mitzenmacher's result: two random choices cut the
    maximum load exponentially against one, and each further choice gains
    little while herding more clients onto the same least-loaded pods."""

    choices: int = 2
    # ``tolerance`` (0.25): another draw replaces the first only when its cost is
    # lower by more than this share. The first draw is proportional to weight;
    # latency noise between equally loaded pods (tens of percent on a busy host)
    # must not override the published weights, while a queue or a slow pod
    # changes the cost by far more than 25 %.
    tolerance: float = 0.25

    def __post_init__(self) -> None:
        _check.integer("choices", self.choices, low=2, high=8)
        _check.number("tolerance", self.tolerance, low=0.0, high=0.9)


class PowerOfChoices:
    def __init__(self, config: P2CConfig, metric: PeakEwma) -> None:
        self.config = config
        self.metric = metric

    def select(self, view: View, table: WeightTable, *, key: object, exclude: Collection[Endpoint],
               now: float, rng: random.Random, cost: float = 1.0) -> Endpoint | None:
        eps = table.endpoints
        if not exclude and self.config.choices == 2:
            i, j = sample_pair(table, rng)
            if i == j:
                return eps[i]
            metric = self.metric.cost
            unit = table.unit
            ci = metric(eps[i].state, table.weights[i], unit, now, cost)
            cj = metric(eps[j].state, table.weights[j], unit, now, cost)
            return eps[j] if cj < ci * (1.0 - self.config.tolerance) else eps[i]
        drawn = sample_distinct(table, rng, self.config.choices, exclude)
        if not drawn:
            return None
        costs = [self.metric.cost(eps[i].state, table.weights[i], table.unit, now, cost) for i in drawn]
        best = min(range(len(drawn)), key=costs.__getitem__)  # min() keeps the first of equal costs
        return eps[drawn[best] if costs[best] < costs[0] * (1.0 - self.config.tolerance) else drawn[0]]

    def __repr__(self) -> str:
        return f"PowerOfChoices(choices={self.config.choices}, metric={self.metric!r})"


class WeightedRandom:
    def select(self, view: View, table: WeightTable, *, key: object, exclude: Collection[Endpoint],
               now: float, rng: random.Random, cost: float = 1.0) -> Endpoint | None:
        if not exclude:
            return table.endpoints[table.index_at(rng.random())]
        drawn = sample_distinct(table, rng, 1, exclude)
        return table.endpoints[drawn[0]] if drawn else None

    def __repr__(self) -> str:
        return "WeightedRandom()"


@dataclass(frozen=True, kw_only=True)
class WrrConfig:
    """``resolution`` (100): weights are rounded to 1 % of the smallest, finer
    than the agent's publishing threshold. ``max_cycle`` (8192): the longest
    cycle kept; past it weights are coarsened (each endpoint keeps at least
    one slot). It bounds memory and the O(cycle) rebuild on a weight change
    (~30 ms at 1,000 endpoints)."""

    resolution: int = 100
    max_cycle: int = 8192

    def __post_init__(self) -> None:
        _check.integer("resolution", self.resolution, low=1, high=10_000)
        _check.integer("max_cycle", self.max_cycle, low=16, high=1_000_000)


class SmoothWeightedRoundRobin:
    """Each view's position advances through its table's nginx cycle.

    The position lives on the view (one per model/version and membership):
    a shared one would let picks for one model skip slots of another's
    cycle. ``next()`` on an :func:`itertools.count` is atomic in CPython, so
    concurrent picks take distinct positions without a lock. A rebuilt table
    (new weights) starts its cycle wherever the position is.
    """

    def __init__(self, config: WrrConfig) -> None:
        self.config = config

    def cycle(self, table: WeightTable) -> WrrCycle:
        cycle: WrrCycle | None = table.cache.get(self)
        if cycle is None:
            cycle = table.cache.setdefault(
                self, nginx_cycle(table.weights, self.config.resolution, self.config.max_cycle))
        return cycle

    def select(self, view: View, table: WeightTable, *, key: object, exclude: Collection[Endpoint],
               now: float, rng: random.Random, cost: float = 1.0) -> Endpoint | None:
        return next_in_cycle(self, view, table, self.cycle(table).order, exclude)

    def __repr__(self) -> str:
        return f"SmoothWeightedRoundRobin({self.config!r})"


def next_in_cycle(owner: object, view: View, table: WeightTable, order: tuple[int, ...],
                  exclude: Collection[Endpoint]) -> Endpoint | None:
    """The next endpoint of a round-robin ``order`` (indices into ``table.endpoints``), skipping
    excluded ones. The position lives in the view's memo under ``owner``, so it survives table
    rebuilds: a table rebuilt with new weights starts its cycle wherever the position is."""
    position: itertools.count[int] | None = view.cache.get(owner)
    if position is None:
        position = view.cache.setdefault(owner, itertools.count())
    pos = next(position) % len(order)
    ep = table.endpoints[order[pos]]
    if not exclude or ep not in exclude:
        return ep
    for i in itertools.chain(order[pos + 1:], order[:pos]):
        if table.endpoints[i] not in exclude:
            return table.endpoints[i]
    return None
