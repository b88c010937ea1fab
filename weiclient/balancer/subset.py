"""Subsetting: each client routes over a few pods of a large fleet, not over all of them.

At 1,000 pods x 10,000 clients a client that may pick any pod ends up with a
channel to every pod it ever picked (a pod holds 10,000 connections) and a
ZooKeeper data watch on every member (10 million watches, and every weight
write wakes 10,000 clients). A subset bounds both by ``k``, the subset size.

**The choice: rendezvous (HRW) hashing, unweighted, top k** (gRPC A68's
random subsetting). Each member gets the score ``mix64(h(client) ^ h(id))``
and a client keeps the ``k`` best. Measured against Finagle's aperture (a
ring of equal slots in hash order, each client a window of ``k`` slots from
its offset, edge pods weighted by the part of them it covers) in
``bench/fleet_sim.py``: 1,000 pods x 10,000 clients with lognormal loads,
capacities 1:2:4:8, three zones, the default sizes (README, "Operating at
fleet scale"):

==========================  ==================  ==================  ==================
                            connections/pod     load / capacity     clients moved when
                            max / mean          max / mean          one pod leaves
==========================  ==================  ==================  ==================
rendezvous                  1.30                1.113               8.8 % (one pod each)
aperture, random offsets    1.27                1.172               39 %
aperture, evenly spread     1.24                1.190               39 %
==========================  ==================  ==================  ==================

Evenness is much the same (a client has no coordinate among 10,000 others
of many ranking services, so offsets are random; and even Finagle's evenly
spread offsets, which need one, do not help when callers' loads and subset
sizes differ). Churn decides: rendezvous changes only the subsets that
ranked the pod (``k / n`` of the clients, one pod each), while the ring
shifts every window after the pod by a slot and changes four times as many
clients' edge pods, each a new connection and a new data watch.

**Weights act inside the subset, not on membership.** A pod of weight ``w``
is in as many subsets as any other and takes a share ``w / W(subset)`` of
each client's load, so across all subsets it carries load in proportion to
``w`` (a 4x pod 4x the load: the sim's load / capacity per capacity class is
1.00, 1.00, 1.00, 1.01 of the mean, with the correction of :func:`_self_share`)
while its connections stay near the mean. The
alternative, membership in proportion to weight (weighted HRW), must then
route *uniformly* inside the subset to avoid counting the weight twice (load
grows as ``w^2`` otherwise), and gives a 8x pod 8x the connections: with
GPU pods among CPU pods a pod would hold many times the mean, against the
3x goal. And every policy here reads true weights (capacities, delays).

**Zones.** With zone affinity on (:mod:`.zones`) the subset is chosen per
zone: the best ``k`` of each zone, so a client has ``k`` local pods to route
over normally and ``k`` in each other zone for spill-over. A single top-k
over the fleet would leave about ``k / 3`` local pods: three times fewer
clients per pod in steady state, hence a less even load.

Only routable members (enabled, not draining, weight > 0) are eligible, so
a subset always has ``k`` live pods: a draining pod is replaced by the next
in rank while it drains (``k / n`` of the clients each move one pod). A
fleet of at most ``k`` eligible members per group is routed over whole:
subsetting changes nothing for a small fleet.

**Size** (:func:`subset_size`): ``max(min_size, ceil(peak / (pod_share x
pod_capacity)))``, ``peak`` being this client's highest rows/s over the last
``peak_window_s`` and ``pod_capacity`` the mean ``capacity.samples_per_s``
the pods' agents measured (no load term when none did: hand-set weights are
not rows/s). It grows at once and shrinks only below half (:func:`next_size`):
a subset that changes with every traffic wobble would churn connections.

Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from hashlib import blake2b
from heapq import nlargest
from typing import Any

from registry.records import InstanceRecord

from ..errors import InvalidBalancerConfig
from . import _check

__all__ = ["METHODS", "RateMeter", "SubsetConfig", "Subsetter", "aperture", "id_hash", "next_size",
           "pod_capacity", "rendezvous", "subset_size"]

METHODS = ("rendezvous", "aperture")
_MASK = (1 << 64) - 1


@dataclass(frozen=True, kw_only=True)
class SubsetConfig:
    """How a client chooses the pods it routes over (see the module docstring).

    ``enabled`` (true): a fleet of at most ``min_size`` pods (per zone, with
    zone affinity) is routed over whole, so this is a no-op for small fleets.
    ``min_size`` (32): what a typical client routes over. A pod's load is a
    sum over the clients whose subsets hold it, so its spread shrinks as
    ``1 / sqrt(clients per pod)`` = ``1 / sqrt(clients x k / pods)``: at 10
    clients per pod, 32 gives each pod ~320 clients. ``pod_share`` (0.002):
    the load term, the headroom: at its peak a client sends each pod of its
    subset at most this share of a mean pod's capacity, so ``k >= peak /
    (pod_share x capacity)``. Callers' loads are skewed (a few ranking
    services send most rows), and one big caller on 32 pods would make those
    pods hot: in ``bench/fleet_sim.py`` (lognormal loads, 1,000 pods x 10,000
    clients) load / capacity max/mean is 1.23 with 1 % and 1.12 with 0.2 %,
    while the median client keeps 32 pods. ``size``: a fixed size instead
    (None: from the load, never below ``min_size``). ``peak_window_s`` (60 s):
    the peak is the busiest second of the last minute: long enough to hold
    the subset through a dip, short enough to follow a daily ramp.
    ``method``: ``rendezvous`` or ``aperture`` (random offsets, or the
    coordinate given to :class:`Subsetter`; kept for the sim's comparison).
    ``client_id``: the client's identity for the hash (None: a random one per
    client; set it to keep one subset across restarts).
    """

    enabled: bool = True
    min_size: int = 32
    size: int | None = None
    pod_share: float = 0.002
    peak_window_s: float = 60.0
    method: str = "rendezvous"
    client_id: str | None = None

    def __post_init__(self) -> None:
        _check.flag("subset.enabled", self.enabled)
        _check.integer("subset.min_size", self.min_size, low=1, high=100_000)
        if self.size is not None:
            _check.integer("subset.size", self.size, low=1, high=100_000)
        _check.number("subset.pod_share", self.pod_share, low=0.0, high=1.0, low_open=True)
        _check.number("subset.peak_window_s", self.peak_window_s, low=1.0, high=86_400.0)
        if self.method not in METHODS:
            raise InvalidBalancerConfig("subset.method", "one of " + ", ".join(METHODS), self.method)
        if self.client_id is not None and (not isinstance(self.client_id, str) or not self.client_id):
            raise InvalidBalancerConfig("subset.client_id", "a non-empty string or None", self.client_id)


# -- hashing ---------------------------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def id_hash(name: str) -> int:
    """A stable 64-bit hash of an id (an instance's or a client's); cached: ids recur on every update."""
    return int.from_bytes(blake2b(name.encode(), digest_size=8).digest(), "little")


def _mix(x: int) -> int:
    """splitmix64's finalizer: a bijection on 64 bits, so distinct inputs never tie."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def rendezvous(client: int, ids: Iterable[str], k: int) -> list[str]:
    """The ``k`` ids of highest score for ``client`` (a 64-bit hash), best first (a
    :class:`Subsetter` keeps its scores; this is the same ranking, computed afresh)."""
    return nlargest(k, ids, key=lambda i: _mix(client ^ id_hash(i)))


def aperture(offset: float, ids: Sequence[str], k: int) -> dict[str, float]:
    """Finagle's aperture on a ring of ``ids`` in hash order, one slot each: the window
    ``[offset, offset + k/n)`` (mod 1), as ``{id: part of its slot covered}`` (edge slots partly)."""
    n = len(ids)
    ring = sorted(ids, key=id_hash)
    if k >= n:
        return dict.fromkeys(ring, 1.0)
    start = (offset % 1.0) * n  # in slots
    end = start + k
    out: dict[str, float] = {}
    j = math.floor(start)
    while j < end:
        cover = min(j + 1.0, end) - max(float(j), start)
        if cover > 1e-12:
            rid = ring[j % n]
            out[rid] = min(1.0, out.get(rid, 0.0) + cover)
        j += 1
    return out


# -- size ------------------------------------------------------------------------------------


def pod_capacity(records: Iterable[InstanceRecord]) -> float | None:
    """Mean rows/s the agents measured (``capacity.samples_per_s``), or None when none did."""
    caps = [r.capacity.samples_per_s for r in records if r.capacity.samples_per_s]
    return math.fsum(caps) / len(caps) if caps else None


def subset_size(config: SubsetConfig, peak_rows_per_s: float, capacity: float | None) -> int:
    """The size wanted now: ``config.size``, else the load term, never below ``min_size``."""
    if config.size is not None:
        return config.size
    if not capacity or not peak_rows_per_s > 0.0 or not math.isfinite(peak_rows_per_s):
        return config.min_size
    return max(config.min_size, min(100_000, math.ceil(peak_rows_per_s / (config.pod_share * capacity))))


def next_size(current: int, wanted: int) -> int:
    """Hysteresis: grow at once, shrink only when ``wanted`` is under half of ``current``."""
    if wanted > current or 2 * wanted < current:
        return wanted
    return current


class RateMeter:
    """Rows per second in one-second buckets; :meth:`peak` is the busiest second in the window.

    ``add`` runs on every call without a lock: two racing adds may lose one
    call's rows, which a subset size (sized with headroom) does not feel.
    """

    __slots__ = ("_counts", "_seconds")

    def __init__(self, window_s: float) -> None:
        n = max(1, math.ceil(window_s))
        self._counts = [0.0] * n
        self._seconds = [-1] * n

    def add(self, rows: float, now: float) -> None:
        s = int(now)
        i = s % len(self._counts)
        if self._seconds[i] != s:
            self._seconds[i] = s
            self._counts[i] = 0.0
        self._counts[i] += rows

    def peak(self, now: float) -> float:
        s, n = int(now), len(self._counts)
        return max((c for c, t in zip(self._counts, self._seconds, strict=True) if s - n < t <= s), default=0.0)


def _self_share(weight: float, total: float) -> float:
    """Undo a subset's bias against its big members: a pod of weight ``w`` shares each subset
    it is in with ``k - 1`` others, so that subset weighs ``w + (k-1) mean`` and the pod's share
    ``w / (w + (k-1) mean)`` is less than in proportion to ``w`` (8 % less for an 8x pod among
    1-2-4-8 pods at k = 32; 10 % for a 4x pod at k = 16). Weighing it ``T / (T - w)`` more, ``T``
    the subset's expected total ``k x mean``, restores the proportion to first order (capped at
    2x for a pod as large as a subset)."""
    return total / max(total - weight, total / 2.0) if total > 0.0 else 1.0


# -- choosing --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Subsetter:
    """One client's subset rule: ``config``, the client's identity, and its zone (None: zones
    ignored, one top-k over the fleet; a zone: the top k of every zone, see the module docstring).
    ``offset``: the aperture's start in [0, 1) when the client knows its coordinate among all
    clients (``index / count``: Finagle's deterministic aperture); None: from the identity's hash."""

    config: SubsetConfig
    client_id: str
    zone: str | None = None
    offset: float | None = None
    # Every membership change asks twice (the watcher's filter, then the balancer's update) over
    # the same record objects: the last answer is kept, with the records (so that their ids,
    # its key, cannot be reused by other objects), and so are this client's rendezvous scores.
    _memo: list[Any] = field(default_factory=lambda: [None], init=False, compare=False, repr=False)
    _scores: dict[str, int] = field(default_factory=dict, init=False, compare=False, repr=False)

    def choose(self, records: Iterable[InstanceRecord], size: int) -> dict[str, float]:
        """``{instance id: weight factor}`` of the members to route over. Only routable members
        are eligible; a group of at most ``size`` eligible members is kept whole (factors 1).
        The factor is the part of its slot an aperture covers, times :func:`_self_share`."""
        kept = list(records)
        key = (size, frozenset(map(id, kept)))
        memo = self._memo[0]
        if memo is not None and memo[0] == key:
            return dict(memo[2])
        chosen = self._choose(kept, size)
        self._memo[0] = (key, kept, chosen)
        return dict(chosen)

    def _top(self, weights: Mapping[str, float], size: int) -> list[str]:
        """Rendezvous: the ``size`` ids of highest score for this client (scores kept per id;
        forgotten when most of them belong to members gone)."""
        scores = self._scores
        if len(scores) > 2 * len(weights) + 1024:
            scores.clear()
        client = id_hash(self.client_id)
        for i in weights:
            if i not in scores:
                scores[i] = _mix(client ^ id_hash(i))
        return nlargest(size, weights, key=scores.__getitem__)

    def _choose(self, records: list[InstanceRecord], size: int) -> dict[str, float]:
        groups: dict[str, dict[str, float]] = {}
        for r in records:
            if r.routable:
                groups.setdefault(r.zone if self.zone is not None else "", {})[r.id] = r.weight
        chosen: dict[str, float] = {}
        for weights in groups.values():
            if len(weights) <= size:
                chosen.update(dict.fromkeys(weights, 1.0))
                continue
            if self.config.method == "aperture":
                offset = self.offset if self.offset is not None else id_hash(self.client_id) / 2.0**64
                part = aperture(offset, list(weights), size)
            else:
                part = dict.fromkeys(self._top(weights, size), 1.0)
            total = size * math.fsum(weights.values()) / len(weights)
            chosen.update({i: f * _self_share(weights[i], total) for i, f in part.items()})
        return chosen

    def watched(self, records: Mapping[str, InstanceRecord], size: int) -> frozenset[str]:
        """The ids a membership watcher keeps data watches on: the subset of ``records``."""
        return frozenset(self.choose(records.values(), size))
