"""The load metric: what one pick costs on an endpoint (peak EWMA x pending work / capacity).

::

    cost = (pending / weight + unit) x latency
    pending = client in-flight + server queue depth (in requests, fresh reports only)
    unit    = 1 / mean effective weight of the candidates

With ``count_rows`` the same formula is written in rows, the cost of the
work rather than the number of calls (``pending`` = client in-flight rows +
server queued rows, and the ``unit`` term is this call's rows)::

    cost = ((in-flight rows + queued rows) / weight + rows x unit) x latency

This is the issue's ``(in-flight + queue + 1) x latency / weight`` with the
``+ 1`` counted in units of the *average* endpoint rather than of each
endpoint's own weight. Candidates are already sampled in proportion to
weight; dividing the ``+ 1`` by the endpoint's own weight too would count the
weight twice and send every idle comparison to the heavier pod, so an idle
cluster would not be split by weight. With this form an idle cluster of equal
latencies ties everywhere and the weighted sample decides; under load the
``pending / weight`` term compares load per unit of capacity, and the
``unit`` term keeps latency in the comparison when both are idle.

Latency is the peak EWMA kept by :class:`~.state.EndpointState`; an endpoint
with no sample yet borrows the server's reported latency, and with neither it
costs 0 while idle (so a new endpoint is probed at once, slow start bounding
how often) and ``penalty_s`` once something is outstanding (Finagle's rule:
do not pile onto an endpoint that has never answered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import _check
from .state import EndpointState, ServerLoad

__all__ = ["PeakEwma"]


@dataclass(frozen=True, kw_only=True)
class PeakEwma:
    """Knobs of the load metric.

    ``decay_s`` (2 s): the time constant with which a latency peak is
    forgotten, both as samples arrive and while none does (the estimate
    decays on read, as Finagle's ``PeakEwma.get`` does, so an endpoint that
    lost every comparison becomes cheap again and is probed: no starvation).
    Finagle uses 10 s; our pods also report queue depth with every response,
    the faster load signal, so latency only needs to catch persistently slow
    pods, and a single GC pause on a busy host should not cost a pod its
    traffic for tens of seconds (with two endpoints, 10 s starved one for ~8 s
    after one 8 ms spike in our tests).
    ``report_ttl_s`` (2 s): a server's queue depth older than this is ignored;
    reports arrive with every response, so only an endpoint we stopped
    talking to has an old one, and its old queue has long drained.
    ``queue_rows_per_request`` (1000): servers report queued *rows*; a ranking
    call carries 1,000-2,000 items, so 1,000 rows count as one pending request.
    ``penalty_s`` (1 s): latency assumed for an endpoint that has requests
    outstanding but has never answered.
    ``count_rows`` (false): count pending work in rows (the client's in-flight
    rows and the server's queued rows, this call's rows for the ``+ 1``)
    rather than in calls, so that a small call is not queued behind a
    2,000-row one on a pod that holds fewer calls. Off by default so that
    ``weighted_p2c`` behaves as it did until a benchmark decides; the
    ``p2c_jsed`` and ``least_outstanding`` policies always count rows.
    """

    decay_s: float = 2.0
    report_ttl_s: float = 2.0
    queue_rows_per_request: float = 1000.0
    penalty_s: float = 1.0
    count_rows: bool = False

    def __post_init__(self) -> None:
        _check.number("load.decay_s", self.decay_s, low=0.0, low_open=True)
        _check.number("load.report_ttl_s", self.report_ttl_s, low=0.0)
        _check.number("load.queue_rows_per_request", self.queue_rows_per_request, low=0.0, low_open=True)
        _check.number("load.penalty_s", self.penalty_s, low=0.0, low_open=True)
        _check.flag("load.count_rows", self.count_rows)

    def fresh(self, st: EndpointState, now: float) -> ServerLoad | None:
        """The endpoint's load report if it is at most ``report_ttl_s`` old."""
        rep = st.report
        return rep if rep is not None and now - st.report_at <= self.report_ttl_s else None

    def queued_rows(self, st: EndpointState, now: float) -> float:
        """Rows waiting in the server's batch queues, from a fresh report (0 without one)."""
        rep = self.fresh(st, now)
        return rep.queue_depth if rep is not None else 0.0

    def pending(self, st: EndpointState, now: float) -> float:
        """Work ahead of ours: our own in-flight plus the server's fresh queue (requests, or rows)."""
        if self.count_rows:
            return st.in_flight_rows + self.queued_rows(st, now)
        return st.in_flight + self.queued_rows(st, now) / self.queue_rows_per_request

    def latency(self, st: EndpointState, now: float | None = None) -> float:
        """The estimate, decayed by the time since its last sample when ``now`` is given."""
        if st.latency_s > 0.0:
            if now is None or now <= st.latency_at:
                return st.latency_s
            return st.latency_s * math.exp(-(now - st.latency_at) / self.decay_s)
        rep = st.report
        return rep.ewma_latency_s if rep is not None else 0.0

    def cost(self, st: EndpointState, weight: float, unit: float, now: float, rows: float = 1.0) -> float:
        """The cost of one more call of ``rows`` rows (``rows`` counts only with ``count_rows``)."""
        pending = self.pending(st, now)
        latency = self.latency(st, now)
        if latency == 0.0:
            if pending == 0.0:
                return 0.0
            latency = self.penalty_s
        if self.count_rows:
            unit *= rows
        return (pending / weight + unit) * latency
