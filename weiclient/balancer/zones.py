"""Zone affinity: prefer pods in the client's own zone while that zone has the capacity for its share.

Envoy's zone-aware routing, with capacities for host counts. Each zone ``z``
has a *current* capacity ``cur[z]`` (the published weights of its routable
members: measured capacity x health x ramp) and a *demand* share ``d[z]``,
the part of the service's load that comes from clients in ``z``. Then, for
a client in zone ``L``, with ``c[z] = cur[z] / sum(cur)``::

    c[L] >= d[L]   all of its calls stay in L
    c[L] <  d[L]   a fraction c[L] / d[L] stays in L; the rest spills to the
                   zones with spare capacity, in proportion to c[z] - d[z] > 0

so when every client does this each zone's load is in proportion to its
current capacity, and no more crosses zones than must.

The demand share comes from ``ZoneConfig.demand`` when the operator knows
where the callers run; without it, it is each zone's share of the fleet's
*registered* capacity: ``capacity.samples_per_s`` of every member, routable
or not (the weight for a pod whose agent measured none), i.e. callers are
assumed placed like the pods they call. A zone whose pods drain, fail their
health or eject falls below its share and spills; all zones dipping
together (a fleet-wide rolling restart) spill nothing.

Panic (Envoy's healthy panic threshold, 50 %): when the fleet's current
capacity is under ``panic_threshold`` of its registered capacity, zones are
ignored and calls go wherever capacity is. A local zone that is short alone
needs no panic of its own: the spill above already sends it only what it can
take, down to nothing. Zones are ignored too when the client's zone is
unknown (no ``ClientConfig.zone``, no ``WEI_ZONE``) or no member of the fleet
is in it (records without a zone, a client in a zone with no pods).

The plan is computed once per membership update (:func:`zone_plan`), and a
pick draws a zone from it before the policy picks within that zone's
endpoints (:func:`narrow`): every policy keeps its own semantics over true
weights, only over fewer endpoints. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from registry.records import InstanceRecord

from ..errors import InvalidBalancerConfig
from . import _check
from .candidates import View

__all__ = ["Locality", "ZoneConfig", "ZonePlan", "narrow", "split", "zone_plan"]


@dataclass(frozen=True, kw_only=True)
class ZoneConfig:
    """``enabled`` (true): acts only when the client's zone is known and pods carry zones.
    ``panic_threshold`` (0.5, Envoy's default): below this fraction of registered capacity
    fleet-wide, zones are ignored. ``demand``: ``{zone: share of the service's load from
    callers there}`` (normalised; None: like the fleet's registered capacity)."""

    enabled: bool = True
    panic_threshold: float = 0.5
    demand: Mapping[str, float] | None = field(default=None)

    def __post_init__(self) -> None:
        _check.flag("zones.enabled", self.enabled)
        _check.number("zones.panic_threshold", self.panic_threshold, low=0.0, high=1.0)
        if self.demand is not None:
            if not isinstance(self.demand, Mapping) or not self.demand:
                raise InvalidBalancerConfig("zones.demand", "a non-empty {zone: share} mapping or None",
                                            self.demand)
            for zone, share in self.demand.items():
                if not isinstance(zone, str):
                    raise InvalidBalancerConfig("zones.demand", "zone names as strings", zone)
                _check.number(f"zones.demand[{zone!r}]", share, low=0.0)
            if not math.fsum(self.demand.values()) > 0.0:
                raise InvalidBalancerConfig("zones.demand", "shares that sum to more than 0", self.demand)
            object.__setattr__(self, "demand", MappingProxyType(dict(self.demand)))


@dataclass(frozen=True)
class ZonePlan:
    """Where a client in ``local`` sends its calls: ``shares`` (zone, probability), best first."""

    local: str
    shares: tuple[tuple[str, float], ...]
    reason: str

    @property
    def local_only(self) -> bool:
        return len(self.shares) == 1

    def share(self, zone: str) -> float:
        return dict(self.shares).get(zone, 0.0)


def zone_plan(local: str | None, records: Iterable[InstanceRecord], config: ZoneConfig) -> ZonePlan | None:
    """The plan for a client in zone ``local`` over the service's ``records``; None: ignore zones."""
    if not config.enabled or not local:
        return None
    cur: dict[str, float] = {}
    reg: dict[str, float] = {}
    for r in records:  # every client, every membership change: kept lean
        z, w = r.zone, r.weight
        reg[z] = reg.get(z, 0.0) + (r.capacity.samples_per_s or w)
        if r.routable:
            cur[z] = cur.get(z, 0.0) + w
    total_cur, total_reg = math.fsum(cur.values()), math.fsum(reg.values())
    if local not in reg or total_cur <= 0.0:
        return None
    if total_cur < config.panic_threshold * total_reg:
        return None  # panic: too little of the fleet is up to be choosy
    demand = dict(config.demand) if config.demand is not None else reg
    total_d = math.fsum(demand.get(z, 0.0) for z in reg)
    if total_d <= 0.0:
        return None
    c = {z: v / total_cur for z, v in cur.items()}
    d = {z: demand.get(z, 0.0) / total_d for z in reg}
    c_local, d_local = c.get(local, 0.0), d[local]
    if c_local >= d_local:
        return ZonePlan(local, ((local, 1.0),), f"{local}: {c_local:.1%} of capacity for {d_local:.1%} of demand")
    stay = c_local / d_local
    spare = {z: c[z] - d.get(z, 0.0) for z in c if z != local and c[z] > d.get(z, 0.0)}
    total_spare = math.fsum(spare.values())
    shares = [(local, stay)] if stay > 0.0 else []
    shares += sorted(((z, (1.0 - stay) * s / total_spare) for z, s in spare.items()), key=lambda p: -p[1])
    return ZonePlan(local, tuple(shares), f"{local}: {c_local:.1%} of capacity for {d_local:.1%} of demand; "
                                          f"{1.0 - stay:.1%} spills")


@dataclass(frozen=True, kw_only=True)
class Locality:
    """A client's zone and the rule it follows; :meth:`plan` is what the balancer asks on each update."""

    zone: str
    config: ZoneConfig = field(default_factory=ZoneConfig)

    def plan(self, records: Iterable[InstanceRecord]) -> ZonePlan | None:
        return zone_plan(self.zone, records, self.config)


def zone_view(view: View, zone: str) -> View | None:
    """The part of ``view`` in ``zone`` (memoized in the view), None when it has no endpoint there."""
    key = ("zone", zone)
    sub: View | None = view.cache.get(key)
    if sub is None:
        eps = tuple(ep for ep in view.endpoints if ep.record.zone == zone)
        sub = view.cache.setdefault(key, View(view.model, view.version, eps, None, "", view.also))
    return sub if sub.endpoints else None


def split(view: View, plan: ZonePlan) -> list[tuple[View, float]]:
    """The parts of ``view`` per zone of ``plan`` with their probabilities, among the zones where
    the view has endpoints (renormalised); empty: use the whole view."""
    if plan.local_only:
        sub = zone_view(view, plan.local)
        return [(sub, 1.0)] if sub is not None else []
    present = [(sub, p) for z, p in plan.shares if (sub := zone_view(view, z)) is not None]
    total = math.fsum(p for _, p in present)
    return [(sub, p / total) for sub, p in present]


def narrow(view: View, plan: ZonePlan, u: float) -> View | None:
    """The zone's part of ``view`` a call goes to under ``plan``, ``u`` uniform in [0, 1) drawing
    it when the plan spills; None: use the whole view."""
    if plan.local_only:
        return zone_view(view, plan.local)
    parts = split(view, plan)
    for sub, p in parts:
        u -= p
        if u < 0.0:
            return sub
    return parts[-1][0] if parts else None
