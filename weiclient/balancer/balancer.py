"""The balancer: a membership feed, an availability filter, a load metric and a selector.

::

    update(snapshot, now)   membership -> a new immutable Candidates vector (states carried)
    pick(model, version, key=, exclude=, also=, now=, cost=)
        Candidates.view(model, version, also)
                                          filter: hosts them all, enabled, not draining, weight > 0
        View.current(now, epoch)          filter: not ejected; effective weights, prefix sums
        selector.select(...)              P2C / WRR / random / bounded-load hash / JSED /
                                          least outstanding / Prequal / ORCA WRR
    on_start(endpoint, now, cost=) / on_finish(endpoint, now, latency_s, ok, load_report, cost=,
                                               refused_for_s=)
                                          load metric, outlier events, overload refusals

``cost`` is the call's size in rows (at least 1): load is counted in calls
and in rows (see :mod:`.state`), and a pick may weigh this call's own rows.

Fleet scale: with a :class:`~.subset.Subsetter` the vector holds the
client's subset only (plus a fallback for versions no subset member hosts,
see :class:`~.candidates.Candidates`); :meth:`Balancer.resize` changes its
size. With a :class:`~.zones.Locality` each pick first draws a zone from the
plan made at ``update`` and lets the policy pick within that zone's part of
the view, falling back to the whole view when that part has nothing left
to offer (all ejected or excluded): one step before every policy's own.

An overload refusal is a load signal, not a failure: ``on_finish(...,
ok=None, refused_for_s=t)`` leaves the outlier record alone and marks the
endpoint refusing for ``t``. Until then every pick, whatever the policy,
treats it as excluded while another endpoint is available, and falls back
to the policy's own choice over all of them when none is (the pod decides,
a refusal is cheap). One place for every selector: the pick passes the
refusing endpoints in ``exclude``, which every selector already honours.

Nothing here reads a clock, sleeps, or does I/O: the transport passes ``now``
(``time.monotonic()``) and the outcome of each call. Randomness comes from
the injected :class:`random.Random`.

Threads: ``pick`` takes no lock; it reads one reference to the current
vector and per-endpoint counters (see :mod:`.state` for why racy reads are
acceptable). ``update``, ``on_start`` and ``on_finish`` mutate under one
lock, held for a few attribute updates.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence

from registry.membership import MembershipSnapshot
from registry.records import InstanceRecord, State

from ..errors import NoEndpointAvailable, Unavailable
from .candidates import Candidates, Endpoint, ModelVersion, View, WeightTable, clamp_weight
from .policies import Policy
from .sampling import sample_distinct
from .scatter import Shard, plan_shards
from .selectors import Selector
from .state import NEVER, EndpointKey, EndpointState, LoadTotals, coerce_load
from .stats import BalancerStats, EndpointStats, balancer_stats
from .subset import Subsetter
from .weights import Weigher
from .zones import Locality, narrow, split

__all__ = ["Balancer", "BalancerStats", "EndpointStats"]


class Balancer:
    """Client-side balancing over one service's membership; see the module docstring."""

    def __init__(self, policy: Policy | None = None, *, rng: random.Random | None = None,
                 service: str = "", subset: Subsetter | None = None, locality: Locality | None = None) -> None:
        self.policy = policy or Policy()
        self.subset = subset
        self.locality = locality
        self._size = (subset.config.size or subset.config.min_size) if subset is not None else 0
        self._snapshot: MembershipSnapshot | None = None
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._totals = LoadTotals()
        self._selector = self.policy.make_selector(self._totals)
        # A selector that keeps per-endpoint figures from load reports (orca_wrr) is told of each one.
        self._observe = getattr(self._selector, "observe", None)
        self._weigher = Weigher(slow_start=self.policy.slow_start, outlier=self.policy.outlier)
        self._candidates = Candidates.empty(service)
        self._epoch = 0           # membership or ejection changed: tables are out of date
        self._soft_epoch = 0      # a health factor changed: tables refresh within refresh_s
        self._met_members = False  # endpoints of the first membership are not ramped
        self._refusals_until = NEVER  # the last refused_until of any endpoint: till then picks look

    def with_policy(self, policy: Policy) -> Balancer:
        """A balancer with another policy over the same membership and load state.

        A service config may switch policy at run time: each endpoint's
        in-flight count, latency estimate, ejection and ramp carry over.
        """
        nxt = Balancer(policy, rng=self._rng, service=self._candidates.service, subset=self.subset,
                       locality=self.locality)
        with self._lock:
            nxt._candidates = self._candidates
            nxt._size, nxt._snapshot = self._size, self._snapshot
            nxt._met_members = self._met_members
            nxt._refusals_until = self._refusals_until
            nxt._totals.in_flight = self._totals.in_flight
            nxt._totals.in_flight_rows = self._totals.in_flight_rows
        nxt._epoch = self._epoch + 1
        return nxt

    @property
    def candidates(self) -> Candidates:
        """The current immutable vector (one reference, swapped by :meth:`update`)."""
        return self._candidates

    @property
    def selector(self) -> Selector:
        return self._selector

    # -- membership ----------------------------------------------------------------

    def update(self, snapshot: MembershipSnapshot, now: float) -> Candidates:
        """Swap in the vector for ``snapshot``, carrying each surviving endpoint's state.
        Weights are clamped to ``[MIN_WEIGHT, MAX_WEIGHT]`` (see :mod:`.candidates`)."""
        with self._lock:
            prev = self._candidates
            self._snapshot = snapshot
            records = snapshot.instances.values()
            chosen = self.subset.choose(records, self._size) if self.subset else None
            was_routable = {ep.key for ep in prev.endpoints}
            ramp = self._met_members
            states: dict[EndpointKey, EndpointState] = {}
            endpoints: list[Endpoint] = []
            outside: list[InstanceRecord] = []
            members: Iterable[InstanceRecord] = records
            if chosen is not None:  # every client, every change: the loop below runs over the subset only
                members = [r for r in records if r.id in chosen]
                outside = [r for r in records if r.routable and r.id not in chosen]
                for key, st in prev.states.items():  # a fallback endpoint's load survives, so does a former member's
                    r = snapshot.instances.get(key[0])
                    if key[0] not in chosen and r is not None and r.endpoint == key[1]:
                        states[key] = st
            for rec in members:
                key = (rec.id, rec.endpoint)
                st = prev.states.get(key)
                if st is None:
                    st = EndpointState(key, ramp_start=None, registration_ms=rec.registration_time_ms)
                st.registration_ms = rec.registration_time_ms
                if rec.state is State.WARMING:
                    st.ramp_start = None  # its agent ramps the published weight: one ramp, not two (SlowStart)
                elif ramp and rec.routable and key not in was_routable:
                    st.ramp_start = now  # joined at full weight, new to us or back from draining: ramp it here
                states[key] = st
                if rec.routable:
                    cover = chosen[rec.id] if chosen is not None else 1.0  # < 1 only at an aperture's edges
                    endpoints.append(Endpoint(rec.id, rec.endpoint, clamp_weight(rec.weight) * cover, rec, st))
            self._met_members = self._met_members or bool(snapshot.instances)
            plan = self.locality.plan(snapshot.instances.values()) if self.locality is not None else None
            self._candidates = Candidates(snapshot.service, snapshot.version, tuple(endpoints),
                                          tuple(snapshot.instances.values()), states, tuple(outside), plan)
            self._epoch += 1
            return self._candidates

    @property
    def subset_size(self) -> int | None:
        return self._size if self.subset is not None else None

    def resize(self, size: int, now: float) -> bool:
        """Route over ``size`` members (per zone) from now on; True if the vector changed."""
        if self.subset is None or size == self._size:
            return False
        self._size = size
        snap = self._snapshot
        if snap is not None:
            self.update(snap, now)
        return True

    def watched(self, records: Mapping[str, InstanceRecord]) -> Collection[str] | None:
        """The members a watcher keeps data watches on: this client's subset of ``records``
        (None: all of them, subsetting off). Any thread."""
        return None if self.subset is None else self.subset.watched(records, self._size)

    # -- picking -------------------------------------------------------------------

    def _table(self, model: str, version: int | None, also: Sequence[ModelVersion],
               now: float) -> tuple[View, WeightTable]:
        view = self._candidates.view(model, version, also)
        if view.why is not None:
            raise NoEndpointAvailable(model, version, view.why, view.detail)
        table = view.current(now, self._weigher, self._epoch, self._soft_epoch)
        if not table.endpoints:
            back = min(ep.state.ejected_until for ep in view.endpoints) - now
            raise NoEndpointAvailable(model, version, Unavailable.ALL_EJECTED,
                                      f"{table.ejected} ejected; the first returns in {back:.1f}s")
        return view, table

    def pick(self, model: str, version: int | None = None, *, key: object = None,
             exclude: Collection[Endpoint] = frozenset(), also: Sequence[ModelVersion] = (),
             now: float, cost: float = 1.0) -> Endpoint:
        """One endpoint for a request; raises :class:`NoEndpointAvailable` saying why not.

        ``key`` (str, bytes or int) is used by ``consistent_hash``; ``exclude``
        holds endpoints already tried (retries); ``also`` names further
        (model, version) pairs the endpoint must host (``predict_many``);
        ``now`` is monotonic seconds; ``cost`` the call's rows.
        """
        view, table = self._table(model, version, also, now)
        rows = _rows(cost)
        zone = self._zone(view, now)
        if zone is not None:
            ep = self._select(*zone, key, exclude, now, rows)
            if ep is not None:
                return ep
        ep = self._select(view, table, key, exclude, now, rows)
        if ep is None:
            ejected = f", {table.ejected} ejected" if table.ejected else ""
            raise NoEndpointAvailable(model, version, Unavailable.ALL_EXCLUDED,
                                      f"{len(table.endpoints)} available{ejected}")
        return ep

    def shares(self, model: str, version: int | None = None, *, also: Sequence[ModelVersion] = (),
               now: float) -> dict[Endpoint, float]:
        """Each endpoint's share of this client's calls while every endpoint is idle: its weight in
        the table a pick draws from, times its zone's probability in the plan (load-aware policies
        depart from it under load). What ``bench/fleet_sim.py`` sums over 10,000 clients."""
        view, table = self._table(model, version, also, now)
        plan = self._candidates.zones
        parts = [(table, 1.0)]
        if plan is not None:
            zoned = [(sub.current(now, self._weigher, self._epoch, self._soft_epoch), p)
                     for sub, p in split(view, plan)]
            parts = [(t if t.endpoints else table, p) for t, p in zoned] or parts
        out: dict[Endpoint, float] = {}
        for t, p in parts:
            for ep, w in zip(t.endpoints, t.weights, strict=True):
                out[ep] = out.get(ep, 0.0) + p * w / t.total
        return out

    def _zone(self, view: View, now: float) -> tuple[View, WeightTable] | None:
        """The zone's part of ``view`` this call goes to, with its table; None: the whole view."""
        plan = self._candidates.zones
        if plan is None:
            return None
        sub = narrow(view, plan, 0.0 if plan.local_only else self._rng.random())
        if sub is None:
            return None
        table = sub.current(now, self._weigher, self._epoch, self._soft_epoch)
        return (sub, table) if table.endpoints else None

    def _select(self, view: View, table: WeightTable, key: object, exclude: Collection[Endpoint], now: float,
                rows: float) -> Endpoint | None:
        """The policy's pick, avoiding endpoints that refused for overload while another is available."""
        if now < self._refusals_until:  # O(1) otherwise: no endpoint refused lately
            avoid = _refusing(table.endpoints, exclude, now)
            if avoid is not None:
                ep = self._selector.select(view, table, key=key, exclude=avoid, now=now, rng=self._rng, cost=rows)
                if ep is not None:
                    return ep
        return self._selector.select(view, table, key=key, exclude=exclude, now=now, rng=self._rng, cost=rows)

    def scatter(self, model: str, version: int | None, n_items: int, *, max_shards: int | None = None,
                exclude: Collection[Endpoint] = frozenset(), also: Sequence[ModelVersion] = (),
                now: float) -> tuple[Shard, ...]:
        """Split ``n_items`` across available endpoints in proportion to effective weight.

        With ``max_shards``, that many endpoints are drawn in proportion to
        weight first. Shards are contiguous and in order (see :mod:`.scatter`).
        """
        if max_shards is not None and max_shards < 1:
            raise ValueError(f"max_shards: expected >= 1, got {max_shards}")
        view, table = self._table(model, version, also, now)
        zone = self._zone(view, now)
        if zone is not None and len(zone[1].endpoints) >= (max_shards or len(table.endpoints)):
            table = zone[1]  # the local zone alone, when it has room for the shards
        k = len(table.endpoints) if max_shards is None else min(max_shards, len(table.endpoints))
        avoid = _refusing(table.endpoints, exclude, now) if now < self._refusals_until else None
        chosen = sorted(sample_distinct(table, self._rng, k, avoid)) if avoid is not None else []
        if not chosen:
            chosen = sorted(sample_distinct(table, self._rng, k, exclude))
        if not chosen:
            raise NoEndpointAvailable(model, version, Unavailable.ALL_EXCLUDED,
                                      f"{len(table.endpoints)} available")
        return plan_shards(n_items, [table.endpoints[i] for i in chosen], [table.weights[i] for i in chosen])

    # -- load events ---------------------------------------------------------------

    def on_start(self, endpoint: Endpoint, now: float, *, cost: float = 1.0) -> None:
        """A request of ``cost`` rows was sent to ``endpoint`` (call once per attempt)."""
        rows = _rows(cost)
        with self._lock:
            st, totals = endpoint.state, self._totals
            st.in_flight += 1
            st.in_flight_rows += rows
            totals.in_flight += 1
            totals.in_flight_rows += rows

    def on_finish(self, endpoint: Endpoint, now: float, latency_s: float | None, ok: bool | None,
                  load_report: object = None, *, cost: float = 1.0, refused_for_s: float = 0.0) -> None:
        """An attempt on ``endpoint`` ended after ``latency_s``.

        ``ok`` is True for an answer, False when the *endpoint* failed (UNAVAILABLE,
        DEADLINE_EXCEEDED, INTERNAL, a broken connection), None when the outcome
        says nothing of its health: an overload refusal, a caller's own error
        (INVALID_ARGUMENT), a call we cancelled. Only a success's latency may lower
        the estimate. ``refused_for_s`` (> 0 with an overload refusal): avoid the
        endpoint that long (see the module docstring). ``load_report`` is a
        :class:`~.state.ServerLoad`, an ORCA ``LoadReport`` or None. ``cost``: the
        rows the attempt was started with.
        """
        report = coerce_load(load_report)
        rows = _rows(cost)
        with self._lock:
            st, totals = endpoint.state, self._totals
            if st.in_flight > 0:
                st.in_flight -= 1
                totals.in_flight -= 1
                # rows go with their calls: none are left once no call is (no drift from a mismatched cost)
                st.in_flight_rows = max(0.0, st.in_flight_rows - rows) if st.in_flight else 0.0
                totals.in_flight_rows = max(0.0, totals.in_flight_rows - rows) if totals.in_flight else 0.0
            # A failure only raises the estimate: a fast refusal must not make a broken pod look quick.
            if (latency_s is not None and math.isfinite(latency_s) and latency_s >= 0.0
                    and (ok or latency_s > st.latency_s)):
                st.observe_latency(now, latency_s, self.policy.load.decay_s)
            if refused_for_s > 0.0 and math.isfinite(refused_for_s):
                st.refused_until = max(st.refused_until, now + refused_for_s)
                self._refusals_until = max(self._refusals_until, st.refused_until)
            if report is not None:
                st.report = report
                st.report_at = now
                if self._observe is not None:
                    self._observe(st, report, now)
            was_ejected = st.ejected_until
            if self.policy.outlier.record(st, ok, now, lambda: self._may_eject(now)):
                if st.ejected_until != was_ejected:
                    self._epoch += 1
                else:
                    self._soft_epoch += 1

    def _may_eject(self, now: float) -> bool:
        eps = self._candidates.endpoints
        ejected = sum(1 for ep in eps if ep.state.is_ejected(now))
        return ejected + 1 <= self.policy.outlier.max_ejected(len(eps))

    # -- observability -------------------------------------------------------------

    def stats(self, now: float) -> BalancerStats:
        """Membership, effective weights, load and ejection, as of ``now``."""
        return balancer_stats(self._candidates, self.policy, self._weigher, self._totals, self.subset_size, now)

    def __repr__(self) -> str:
        c = self._candidates
        return (f"<Balancer {self.policy.name} {c.service} v{c.version}: {len(c.endpoints)} routable, "
                f"{self._totals.in_flight} in flight ({self._totals.in_flight_rows:g} rows)>")


def _refusing(endpoints: Sequence[Endpoint], exclude: Collection[Endpoint], now: float) -> set[Endpoint] | None:
    """``exclude`` plus the endpoints refusing calls now; None when none is."""
    refusing = [ep for ep in endpoints if ep.state.is_refusing(now)]
    return set(exclude).union(refusing) if refusing else None


def _rows(cost: float) -> float:
    """A call's cost in rows: at least 1 (a call with no rows still takes a slot); NaN or inf is 1."""
    return cost if 1.0 <= cost < math.inf else 1.0
