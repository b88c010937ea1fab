"""The immutable candidate vector, its per-model views and their weight tables.

``Candidates`` is built once per membership snapshot and never changes; the
balancer swaps one reference to it. For each ``(model, version)`` asked for
(or each tuple of such pairs, for a call that needs several models on one
instance) it memoizes a :class:`View`: the routable endpoints hosting all of
them, or why there are none. A view memoizes a :class:`WeightTable`: effective weights and their
prefix sums over the endpoints not ejected, from which a pick samples in
O(log n) with :func:`bisect.bisect_right`.

A table is valid for one *epoch* (bumped by the balancer on a membership
change or an ejection) and until ``valid_until`` (the next slow-start step
or the end of the earliest ejection). Health changes (a failure, the success
after one) bump a *soft epoch*, which rebuilds a table at most once per
``refresh_s``: under a steady error rate every failure would otherwise cost
an O(n) rebuild, and health is a gradual hint while ejection is immediate.
A pick checks all three in O(1), so the O(n) work happens on events, not
per request. Two threads may rebuild at once; both results are correct and
the last one written stays.

Weights are clamped on the way in (:func:`clamp_weight`) to
``[MIN_WEIGHT, MAX_WEIGHT]``: a record is validated as a finite number > 0,
but two records at 1e308 overflowed the table's sum (``math.fsum`` raised
OverflowError on every pick) and one at 1e-320 made ``1 / weight`` infinite
in the load metrics. A weight is samples per second the pod can take now;
the largest pods serve around 1e6 (a GPU scoring a ranking model), so
``MAX_WEIGHT`` = 1e9 leaves three orders of magnitude of headroom while a
million endpoints at the maximum sum to 1e15, within the 2**53 where float
sums are still exact to the unit. ``MIN_WEIGHT`` = 1e-3 (one sample every
17 minutes) is as good as zero for routing, and keeps the ratio of any two
weights within 1e12, so a weighted round robin's cycle and a hash ring's
point counts stay finite integers.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

from registry.records import InstanceRecord, Protocol

from ..errors import Unavailable
from .state import EndpointKey, EndpointState
from .weights import Weigher

__all__ = ["MAX_WEIGHT", "MIN_WEIGHT", "Candidates", "Endpoint", "ModelVersion", "View", "WeightTable",
           "clamp_weight"]

ModelVersion = tuple[str, int | None]  # a model and a version (None: any version)

MAX_VIEWS = 4096  # memo cap per vector: keeps a caller cycling through bogus versions from growing it
MAX_WEIGHT = 1e9   # samples/s; see the module docstring
MIN_WEIGHT = 1e-3


def clamp_weight(weight: float) -> float:
    """A published weight as the balancer uses it: within ``[MIN_WEIGHT, MAX_WEIGHT]``, 0 (and
    anything not a positive number) as 0, NaN as 0."""
    if not weight > 0.0:  # 0, negatives, NaN
        return 0.0
    return min(max(weight, MIN_WEIGHT), MAX_WEIGHT)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One routable instance as of one snapshot. Equal (and hashed) by ``(instance_id, address)``,
    so an endpoint from an older vector still matches in ``exclude``."""

    instance_id: str
    address: str
    weight: float = field(compare=False)
    record: InstanceRecord = field(compare=False, repr=False)
    state: EndpointState = field(compare=False, repr=False)

    @property
    def key(self) -> EndpointKey:
        return (self.instance_id, self.address)


@dataclass(frozen=True, slots=True, eq=False)
class WeightTable:
    """Effective weights of a view's available endpoints at one moment."""

    endpoints: tuple[Endpoint, ...]   # not ejected, in view order
    weights: tuple[float, ...]        # effective, aligned with endpoints
    prefix: tuple[float, ...]         # running sums of weights
    view_weights: tuple[float, ...]   # aligned with the view's endpoints; 0 where ejected
    total: float
    unit: float                       # 1 / mean effective weight
    ejected: int
    epoch: int
    soft_epoch: int
    built_at: float
    valid_until: float
    cache: dict[Any, Any] = field(default_factory=dict)  # per-selector memo (e.g. a WRR cycle)

    def index_at(self, u: float) -> int:
        """The endpoint whose weight segment holds ``u * total`` (``u`` in [0, 1))."""
        i = bisect_right(self.prefix, u * self.total)
        return i if i < len(self.prefix) else len(self.prefix) - 1

    def reweighted(self, weights: Sequence[float], now: float, valid_until: float) -> WeightTable:
        """The same endpoints under other positive weights (a selector's own sampling table)."""
        total = math.fsum(weights)
        return WeightTable(
            endpoints=self.endpoints, weights=tuple(weights), prefix=tuple(accumulate(weights)),
            view_weights=(), total=total, unit=len(weights) / total if total > 0 else 1.0, ejected=self.ejected,
            epoch=self.epoch, soft_epoch=self.soft_epoch, built_at=now, valid_until=valid_until)


def build_table(endpoints: tuple[Endpoint, ...], now: float, weigher: Weigher,
                epoch: int = 0, soft_epoch: int = 0) -> WeightTable:
    avail: list[Endpoint] = []
    weights: list[float] = []
    view_weights: list[float] = []
    ejected = 0
    valid_until = math.inf
    refresh = weigher.slow_start.refresh_s
    for ep in endpoints:
        st = ep.state
        if st.is_ejected(now):
            ejected += 1
            view_weights.append(0.0)
            valid_until = min(valid_until, st.ejected_until)
            continue
        if weigher.ramping(st, now):
            valid_until = min(valid_until, now + refresh)
        w = weigher.effective(ep.weight, st, now)
        avail.append(ep)
        weights.append(w)
        view_weights.append(w)
    total = math.fsum(weights)
    return WeightTable(
        endpoints=tuple(avail), weights=tuple(weights), prefix=tuple(accumulate(weights)),
        view_weights=tuple(view_weights), total=total,
        unit=len(weights) / total if total > 0 else 1.0,
        ejected=ejected, epoch=epoch, soft_epoch=soft_epoch, built_at=now, valid_until=valid_until,
    )


class View:
    """The routable endpoints hosting one model (and version), or why there are none.

    ``also``: further (model, version) pairs every endpoint of the view hosts
    too (a ``predict_many`` call runs them all on one instance, in one
    ``weiserving.v1`` request: such a view leaves out pods whose record says
    ``oip``, see :mod:`weiclient.oip`).
    """

    __slots__ = ("model", "version", "also", "endpoints", "why", "detail", "table", "cache")

    def __init__(self, model: str, version: int | None, endpoints: tuple[Endpoint, ...],
                 why: Unavailable | None, detail: str, also: tuple[ModelVersion, ...] = ()) -> None:
        self.model = model
        self.version = version
        self.also = also
        self.endpoints = endpoints
        self.why = why
        self.detail = detail
        self.table: WeightTable | None = None
        self.cache: dict[Any, Any] = {}  # per-selector memo that depends on membership only (a ring)

    def current(self, now: float, weigher: Weigher, epoch: int, soft_epoch: int) -> WeightTable:
        t = self.table
        if (t is None or t.epoch != epoch or now >= t.valid_until
                or (t.soft_epoch != soft_epoch and now >= t.built_at + weigher.slow_start.refresh_s)):
            t = build_table(self.endpoints, now, weigher, epoch, soft_epoch)
            self.table = t
        return t

    def __repr__(self) -> str:
        names = _names(((self.model, self.version), *self.also))
        return f"<View {names}: {len(self.endpoints)} endpoint(s)>"


class Candidates:
    """All members of one snapshot: routable endpoints, records, and the carried states.

    With subsetting (:mod:`.subset`) ``endpoints`` are the routable members of
    the client's subset and ``outside`` the routable records beyond it: a
    (model, version) that no subset endpoint hosts is routed over every
    routable member hosting it instead (a canary on two pods of a thousand),
    their states made on first use and carried from then on. ``zones`` is the
    client's zone plan (:mod:`.zones`), None when zones are ignored.
    """

    __slots__ = ("service", "version", "endpoints", "records", "states", "outside", "zones", "_views")

    def __init__(self, service: str, version: int, endpoints: tuple[Endpoint, ...],
                 records: tuple[InstanceRecord, ...], states: Mapping[EndpointKey, EndpointState],
                 outside: tuple[InstanceRecord, ...] = (), zones: Any = None) -> None:
        self.service = service
        self.version = version
        self.endpoints = endpoints  # routable, in snapshot (id) order
        self.records = records      # every member, routable or not (for diagnostics)
        self.states = states        # every member's state met so far, carried into the next vector
        self.outside = outside      # routable members outside the subset (fallback)
        self.zones = zones          # a ZonePlan or None
        # keyed by (model, version), or by ((model, version), *also) when more are needed
        self._views: dict[tuple[Any, ...], View] = {}

    @classmethod
    def empty(cls, service: str = "") -> Candidates:
        return cls(service, -1, (), (), {})

    def view(self, model: str, version: int | None = None, also: Sequence[ModelVersion] = ()) -> View:
        """The endpoints hosting ``model``/``version`` and every (model, version) in ``also``."""
        if also:
            also = tuple(also)
            key: tuple[Any, ...] = ((model, version), *also)
        else:
            key = (model, version)
        v = self._views.get(key)
        if v is None:
            v = self._make_view(model, version, also)
            if len(self._views) < MAX_VIEWS:
                v = self._views.setdefault(key, v)
        return v

    def _make_view(self, model: str, version: int | None, also: tuple[ModelVersion, ...]) -> View:
        wanted = ((model, version), *also)

        def hosts_all(r: InstanceRecord) -> bool:
            return all(r.hosts_model(m, v) for m, v in wanted)

        def takes(r: InstanceRecord) -> bool:  # several models in one request: weiserving.v1 only
            return hosts_all(r) and (not also or r.protocol is Protocol.WEISERVING)

        eps = tuple(ep for ep in self.endpoints if takes(ep.record))
        if not eps and self.outside:
            eps = tuple(self._endpoint(r) for r in self.outside if takes(r))
        if eps:
            return View(model, version, eps, None, "", also)
        if not self.records:
            return View(model, version, (), Unavailable.NO_INSTANCES, f"membership version {self.version}", also)
        hosting = [r for r in self.records if hosts_all(r)]
        if not hosting:
            summary = _hosted_summary(self.records)
            if also:
                summary = f"no instance hosts all of {_names(wanted)}; {summary}"
            return View(model, version, (), Unavailable.NOT_HOSTED, summary, also)
        if also and not any(r.protocol is Protocol.WEISERVING for r in hosting):
            oip = ", ".join(r.id for r in hosting[:5]) + (f" (+{len(hosting) - 5})" if len(hosting) > 5 else "")
            return View(model, version, (), Unavailable.NO_MULTI_MODEL, f"{_names(wanted)} on {oip}", also)
        hosting = [r for r in hosting if takes(r)]
        states = ", ".join(f"{r.id} {_not_routable_why(r)}" for r in hosting[:5])
        more = f" (+{len(hosting) - 5})" if len(hosting) > 5 else ""
        return View(model, version, (), Unavailable.ALL_DRAINING, states + more, also)

    def _endpoint(self, r: InstanceRecord) -> Endpoint:
        """A member outside the subset as an endpoint; its state is made once (``setdefault`` is
        atomic, so two racing picks share one) and carried like any other."""
        key = (r.id, r.endpoint)
        st = self.states.get(key)
        if st is None and isinstance(self.states, dict):
            st = self.states.setdefault(key, EndpointState(key, ramp_start=None,
                                                           registration_ms=r.registration_time_ms))
        if st is None:
            st = EndpointState(key, ramp_start=None, registration_ms=r.registration_time_ms)
        return Endpoint(r.id, r.endpoint, clamp_weight(r.weight), r, st)

    def __len__(self) -> int:
        return len(self.endpoints)

    def __repr__(self) -> str:
        return (f"<Candidates {self.service} v{self.version}: {len(self.endpoints)} routable "
                f"of {len(self.records)}, {len(self._views)} view(s)>")


def _not_routable_why(r: InstanceRecord) -> str:
    if not r.enabled:
        return "disabled"
    if r.weight <= 0:
        return "weight 0"
    return r.state.value.lower()


def _hosted_summary(records: Iterable[InstanceRecord]) -> str:
    hosted: dict[str, set[int]] = {}
    for r in records:
        for name, versions in r.models.items():
            hosted.setdefault(name, set()).update(versions)
    if not hosted:
        return "the instances host no models"
    shown = ", ".join(f"{m} {sorted(vs)}" for m, vs in sorted(hosted.items())[:8])
    return f"hosted: {shown}"


def _names(wanted: Iterable[ModelVersion]) -> str:
    return ", ".join(m if v is None else f"{m} v{v}" for m, v in wanted)
