"""Selectors that count rows: weighted least outstanding and join-the-shortest-expected-delay.

Both compare the *work* ahead of a call on each endpoint, in rows (see
:mod:`.state`), per unit of capacity, the call's own rows included:

* :class:`LeastOutstanding` (``least_outstanding``)::

      cost = (client in-flight rows + rows) / effective weight

  Only what this client sees: no load report is needed, so it works against
  any server that speaks the protocol. Blind to other clients' load.

* :class:`ExpectedDelay` (``p2c_jsed``): the seconds before the call would
  finish, as far as a queue model tells::

      delay = (client in-flight rows + server queued rows + rows) / capacity

  ``server queued rows`` from a fresh report (``load.report_ttl_s``), so
  other clients' load counts; our own queued rows are counted twice (in
  both terms), which with many clients is a small share of the queue.
  An endpoint without a fresh report (a third-party OIP server sends none,
  see :mod:`weiclient.oip`) has no queue to add, and the delay is at least
  the latency of its recent calls (the peak EWMA, ``load.decay_s``), which
  holds every client's queue: compared on this client's rows alone, a silent
  pod beside reporting ones looked emptier than it was, and at 90 % load
  with 8 to 32 clients took more than its share and doubled the mean latency
  (tests/unit/test_client_oip_balancing.py).
  ``capacity`` (rows/s) is the report's ``capacity_rows_per_s`` when a
  report younger than ``capacity_ttl_s`` has one and an agent measured the
  record's weight (see ``measure_static_pods``), else the effective weight
  scaled to the known capacities (``weight x sum(known capacities) /
  sum(their weights)``), else the effective weight itself. A known capacity
  is multiplied by the client's own ramp and health factor (effective /
  published weight), and by the agent's (published weight / published
  capacity), so slow start and failures still act. Capacities are
  recomputed once a second per weight table (an O(n) pass), not per pick.

Candidates are drawn in proportion to weight (``least_outstanding``: the
effective weight, and with few endpoints it compares them all;
``p2c_jsed``: the capacity above, see :class:`JsedConfig`), and the lowest
cost wins; an equal cost goes to the first draw. Dividing by capacity after
a weighted draw favours large pods twice when all are idle: there the
fastest pod *is* the shortest delay, and under load queues form and shares
approach capacity. A uniform draw would be worse: a pod is in at most
``choices / n`` of the comparisons whatever its capacity, so a few big pods
among many small ones would get less than their share and the small ones
would overflow.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection
from dataclasses import dataclass

from . import _check
from .candidates import Endpoint, View, WeightTable
from .metric import PeakEwma
from .sampling import sample_distinct, sample_pair

__all__ = ["ExpectedDelay", "JsedConfig", "LeastOutstanding", "LeastOutstandingConfig"]

# How often a table's capacities are recomputed (an O(n) pass): they are the servers' 10 s window
# estimates, so reading them a second late costs nothing.
_CAPACITY_REFRESH_S = 1.0


@dataclass(frozen=True, kw_only=True)
class LeastOutstandingConfig:
    """``choices`` (2): as ``weighted_p2c``'s; two draws already avoid the
    worst of a random pick, more herd clients onto the same pods.
    ``scan_all`` (8): with at most this many available endpoints every one is
    compared (about the cost of two weighted draws); a pair drawn from three
    misses the least loaded one a third of the time."""

    choices: int = 2
    scan_all: int = 8

    def __post_init__(self) -> None:
        _check.integer("choices", self.choices, low=2, high=8)
        _check.integer("scan_all", self.scan_all, low=0, high=64)


@dataclass(frozen=True, kw_only=True)
class JsedConfig:
    """``choices`` (2): as ``weighted_p2c``'s. ``capacity_ttl_s`` (60 s): a
    report's capacity is a 10 s window estimate of what the pod can do and
    moves slowly; a minute-old one still says more than the published
    weight, while its queue (``load.report_ttl_s``, 2 s) has long drained.
    ``sample_by_capacity`` (true): draw candidates in proportion to the
    capacity the delay divides by rather than to the published weight (the
    two agree until a report says otherwise). Two draws from weights that
    no longer match the pods cap a pod's share by how often it is drawn: on
    a 1:2:4 fleet whose fastest and slowest pods swapped speeds, the pod now
    fastest is in at most 39 % of the pairs while it should take 57 % of the
    rows, and the slow one's queue grows without bound (seconds of latency
    in tests/unit/test_policy_jsed.py, as with ``weighted_p2c``) until the
    agent's weight catches up. False draws by effective weight.

    ``measure_static_pods`` (false): a record whose weight no agent measured
    (no ``capacity.samples_per_s``: a pod without a sidecar, a weight set by
    hand to keep a canary small) keeps its weight as its capacity, scaled to
    the measured ones; its server's report does not overrule whoever chose
    it. True: every report's capacity counts, whatever the record says
    (a fleet of bare servers whose declared weights are guesses).

    ``tie_tolerance`` (0.1): delays within 10 % of each other are a tie, won
    by the first draw (drawn in proportion to capacity). Without it an idle
    fleet sends every call to the pod with the highest capacity: a pod 2 %
    slower, or one in its slow start, lost every comparison and got no call
    for 30 s at 60 calls/s (``tests/faults``), so it could not show it was
    well. Among pods that really differ (a 1:2:4 fleet) the delays differ by
    far more than 10 % and the faster pod still wins."""

    choices: int = 2
    capacity_ttl_s: float = 60.0
    sample_by_capacity: bool = True
    measure_static_pods: bool = False
    tie_tolerance: float = 0.1

    def __post_init__(self) -> None:
        _check.integer("choices", self.choices, low=2, high=8)
        _check.number("capacity_ttl_s", self.capacity_ttl_s, low=0.0)
        _check.flag("sample_by_capacity", self.sample_by_capacity)
        _check.flag("measure_static_pods", self.measure_static_pods)
        _check.number("tie_tolerance", self.tie_tolerance, low=0.0, high=1.0)


def _drawn(table: WeightTable, rng: random.Random, k: int, exclude: Collection[Endpoint]) -> list[int]:
    if not exclude and k == 2:
        i, j = sample_pair(table, rng)
        return [i] if i == j else [i, j]
    return sample_distinct(table, rng, k, exclude)


class LeastOutstanding:
    def __init__(self, config: LeastOutstandingConfig) -> None:
        self.config = config

    def select(self, view: View, table: WeightTable, *, key: object, exclude: Collection[Endpoint],
               now: float, rng: random.Random, cost: float = 1.0) -> Endpoint | None:
        eps, weights = table.endpoints, table.weights
        if len(eps) > self.config.scan_all:
            drawn = _drawn(table, rng, self.config.choices, exclude)
            if not drawn:
                return None
            return eps[min(drawn, key=lambda i: (eps[i].state.in_flight_rows + cost) / weights[i])]
        best = math.inf
        ties: list[int] = []
        for i, ep in enumerate(eps):
            if exclude and ep in exclude:
                continue
            c = (ep.state.in_flight_rows + cost) / weights[i]
            if c < best:
                best, ties = c, [i]
            elif c == best:
                ties.append(i)
        if len(ties) <= 1:
            return eps[ties[0]] if ties else None
        # equal costs (equal weights, equal load): in proportion to weight, as an idle cluster is split
        return eps[rng.choices(ties, weights=[weights[i] for i in ties])[0]]

    def __repr__(self) -> str:
        return f"LeastOutstanding({self.config!r})"


class ExpectedDelay:
    def __init__(self, config: JsedConfig, metric: PeakEwma) -> None:
        self.config = config
        self.metric = metric

    def capacities(self, table: WeightTable, now: float) -> WeightTable:
        """The table's endpoints weighted by capacity, rebuilt at most every second (an O(n) pass)."""
        memo: WeightTable | None = table.cache.get(self)
        if memo is not None and now < memo.valid_until:
            return memo
        eps = table.endpoints
        known = [self._known(ep, now) for ep in eps]
        reported = math.fsum(known)
        published = math.fsum(ep.weight for ep, k in zip(eps, known, strict=True) if k > 0.0)
        scale = reported / published if published > 0.0 else 1.0
        caps = [(k if k > 0.0 else ep.weight * scale) * (eff / ep.weight)  # the client's ramp and health apply
                for ep, eff, k in zip(eps, table.weights, known, strict=True)]
        memo = table.reweighted(caps, now, now + _CAPACITY_REFRESH_S)
        table.cache[self] = memo
        return memo

    def _known(self, ep: Endpoint, now: float) -> float:
        """The report's capacity, times the agent's own ramp and health when the record says them.

        An agent publishes ``weight = capacity.samples_per_s x health x ramp``: a WARMING pod
        at 5 % of its weight must not take its full capacity's share because its server's
        report says what it could do at full speed."""
        rep = ep.state.report
        if rep is None or now - ep.state.report_at > self.config.capacity_ttl_s:
            return 0.0
        published = ep.record.capacity.samples_per_s
        if not published:  # a static weight: someone chose it, the report does not overrule them
            return rep.capacity_rows_per_s if self.config.measure_static_pods else 0.0
        return rep.capacity_rows_per_s * min(1.0, ep.weight / published)

    def delay(self, ep: Endpoint, capacity: float, now: float, rows: float) -> float:
        st = ep.state
        rep = st.report
        if rep is not None and now - st.report_at <= self.metric.report_ttl_s:
            return (st.in_flight_rows + rep.queue_depth + rows) / capacity
        # No queue known: what its calls took lately (peak EWMA, decayed) bounds the delay from below.
        return max((st.in_flight_rows + rows) / capacity, self.metric.latency(st, now))

    def select(self, view: View, table: WeightTable, *, key: object, exclude: Collection[Endpoint],
               now: float, rng: random.Random, cost: float = 1.0) -> Endpoint | None:
        caps = self.capacities(table, now)
        drawn = _drawn(caps if self.config.sample_by_capacity else table, rng, self.config.choices, exclude)
        if len(drawn) <= 1:
            return table.endpoints[drawn[0]] if drawn else None
        eps, weights = table.endpoints, caps.weights
        delays = [self.delay(eps[i], weights[i], now, cost) for i in drawn]
        best = min(delays)
        if delays[0] <= best * (1.0 + self.config.tie_tolerance):
            return eps[drawn[0]]  # a tie: the first draw, drawn in proportion to capacity
        return eps[drawn[delays.index(best)]]

    def __repr__(self) -> str:
        return f"ExpectedDelay({self.config!r})"
