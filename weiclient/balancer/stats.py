"""What a balancer shows of itself: per-endpoint load and weights, membership, the subset and zone plan."""

from __future__ import annotations

from dataclasses import dataclass

from .candidates import Candidates
from .policies import Policy
from .state import LoadTotals
from .weights import Weigher

__all__ = ["BalancerStats", "EndpointStats", "balancer_stats"]


@dataclass(frozen=True, kw_only=True)
class EndpointStats:
    instance_id: str
    address: str
    published_weight: float
    effective_weight: float   # 0 while ejected
    ramp: float               # slow-start factor
    health: float
    in_flight: int
    in_flight_rows: float
    latency_ms: float         # peak EWMA; 0 before the first sample
    queue_depth: float        # from the last load report
    consecutive_failures: int
    ejected_for_s: float      # 0 when not ejected
    times_ejected: int
    refused_for_s: float = 0.0  # avoided for this long after an overload refusal


@dataclass(frozen=True, kw_only=True)
class BalancerStats:
    service: str
    membership_version: int
    policy: str
    members: int
    routable: int
    ejected: int
    in_flight: int
    in_flight_rows: float
    endpoints: tuple[EndpointStats, ...]
    subset_size: int | None = None  # per zone with zone affinity; None: subsetting off
    zone_plan: str = ""             # why calls go where they go; "" with zones ignored



def balancer_stats(cands: Candidates, policy: Policy, weigher: Weigher, totals: LoadTotals, subset_size: int | None,
               now: float) -> BalancerStats:
    """What :meth:`Balancer.stats <.balancer.Balancer.stats>` returns."""
    load = policy.load
    rows = []
    for ep in cands.endpoints:
        st = ep.state
        ejected = st.is_ejected(now)
        rep = st.report
        rows.append(EndpointStats(
            instance_id=ep.instance_id, address=ep.address, published_weight=ep.weight,
            effective_weight=0.0 if ejected else weigher.effective(ep.weight, st, now),
            ramp=weigher.ramp(st, now), health=policy.outlier.health(st, now),
            in_flight=st.in_flight, in_flight_rows=st.in_flight_rows, latency_ms=load.latency(st, now) * 1000.0,
            queue_depth=rep.queue_depth if rep is not None else 0.0,
            consecutive_failures=policy.outlier.failures(st, now),
            ejected_for_s=max(0.0, st.ejected_until - now) if ejected else 0.0,
            times_ejected=st.times_ejected, refused_for_s=max(0.0, st.refused_until - now)))
    return BalancerStats(
        service=cands.service, membership_version=cands.version, policy=policy.name,
        members=len(cands.records), routable=len(cands.endpoints),
        ejected=sum(1 for r in rows if r.ejected_for_s > 0), in_flight=totals.in_flight,
        in_flight_rows=totals.in_flight_rows, endpoints=tuple(rows), subset_size=subset_size,
        zone_plan=cands.zones.reason if cands.zones is not None else "")
