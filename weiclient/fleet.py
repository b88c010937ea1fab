"""What a WeiClient does at fleet scale: its subset rule, its zone, the load its subset is sized by.

The rules are pure (:mod:`weiclient.balancer.subset`, :mod:`weiclient.balancer.zones`);
this is the shell the client holds: it resolves the zone (``ClientConfig.zone``,
else ``WEI_ZONE``), gives the client a random identity for its subset hash
unless configured, counts the rows the client sends (:meth:`Fleet.record`,
on every call) and, from its housekeeping thread, resizes the balancer's
subset when the client's peak load asks for another size
(:meth:`Fleet.resize`). :meth:`Fleet.watch_filter` is what the membership
watcher calls to learn which members need data watches.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Callable, Collection, Iterable, Mapping

from registry.records import InstanceRecord
from registry.watcher import MembershipWatcher

from .balancer import Balancer, Locality, Policy, RateMeter, Subsetter
from .balancer.subset import next_size, pod_capacity, subset_size
from .config import ClientConfig

__all__ = ["ZONE_ENV", "Fleet"]

ZONE_ENV = "WEI_ZONE"
_WATCHER_TAKES_FILTER = "watch_filter" in inspect.signature(MembershipWatcher).parameters


class Fleet:
    """Subsetting and zone affinity for one client; see the module docstring."""

    def __init__(self, config: ClientConfig, rng: random.Random, *,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.config = config
        zone = config.zone or environ.get(ZONE_ENV, "").strip() or None
        self.zone = zone
        self.locality = Locality(zone=zone, config=config.zones) if zone and config.zones.enabled else None
        sc = config.subset
        client_id = sc.client_id or f"client-{rng.getrandbits(64):016x}"
        self.subsetter = (Subsetter(config=sc, client_id=client_id,
                                    zone=zone if self.locality is not None else None) if sc.enabled else None)
        self.meter = RateMeter(sc.peak_window_s)
        self._filter: Callable[[Mapping[str, InstanceRecord]], Collection[str]] | None = None
        self._capacity: tuple[object, float | None] = (None, None)  # (the records it was read from, it)

    def balancer(self, policy: Policy | None, *, rng: random.Random, service: str) -> Balancer:
        return Balancer(policy, rng=rng, service=service, subset=self.subsetter, locality=self.locality)

    def record(self, rows: int, now: float) -> None:
        """A call of ``rows`` rows is being sent (its attempts count once)."""
        self.meter.add(rows, now)

    def wanted(self, records: Iterable[InstanceRecord], now: float) -> int:
        """The subset size this client's peak load asks for now. Asked every second: the pods'
        mean capacity is read again only when ``records`` is another object (a new snapshot)."""
        seen, capacity = self._capacity
        if seen is not records:
            capacity = pod_capacity(r for r in records if r.routable)
            self._capacity = (records, capacity)
        return subset_size(self.config.subset, self.meter.peak(now), capacity)

    def resize(self, balancer: Balancer, records: Iterable[InstanceRecord], now: float) -> bool:
        """Resize ``balancer``'s subset if the load moved enough (see :func:`next_size`)."""
        current = balancer.subset_size
        if current is None:
            return False
        return balancer.resize(next_size(current, self.wanted(records, now)), now)

    def watch_filter(self, balancer: Callable[[], Balancer]
                     ) -> Callable[[Mapping[str, InstanceRecord]], Collection[str]] | None:
        """For ``MembershipWatcher(watch_filter=...)``: the current balancer's subset of the
        records it is given; None with subsetting off (watch every member)."""
        if self.subsetter is None:
            return None

        def ids(records: Mapping[str, InstanceRecord]) -> Collection[str]:
            chosen = balancer().watched(records)
            return records.keys() if chosen is None else chosen

        self._filter = ids
        return ids

    def watcher_options(self, balancer: Callable[[], Balancer]) -> dict[str, object]:
        """Keyword arguments for ``MembershipWatcher``: the filter, when subsetting is on and the
        watcher takes one (``registry.watcher``, issue 11 part 2)."""
        f = self.watch_filter(balancer)
        return {"watch_filter": f} if f is not None and _WATCHER_TAKES_FILTER else {}

    def refilter(self, watcher: object) -> None:
        """The subset changed without a membership event (a resize): ask the watcher to apply the
        filter again, so the new members get data watches now rather than at the next event."""
        again = getattr(watcher, "set_watch_filter", None)
        if self._filter is not None and again is not None and _WATCHER_TAKES_FILTER:
            again(self._filter)

    def __repr__(self) -> str:
        return f"<Fleet zone={self.zone} subset={'on' if self.subsetter else 'off'}>"
