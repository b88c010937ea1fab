"""Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam;
Google's and Vimeo's deployments), for cache affinity on a request key.

A key goes to its successor on a hash ring unless that endpoint's in-flight
load would exceed ``load_factor`` (``c``) times its fair share; then it walks
on to the next endpoint that has room. With ``c > 1`` some endpoint always
has room, no endpoint ever exceeds ``ceil(c x average)``, and a key only
leaves its home while the home is hot.

Why a ring with virtual nodes rather than rendezvous (HRW) hashing: HRW needs
no virtual nodes and weights exactly, but scores every endpoint on every
pick, O(n): ~300 us at 1,000 endpoints in CPython, fifteen times the budget.
The ring is one ``bisect`` over a sorted tuple, O(log(n x vnodes)), built
once per membership view. Its cost is memory (``vnodes`` points per
endpoint) and weighting by point count, which is as exact as the count.

Stability: an endpoint's points are the first ``count`` of its own
infinite, reproducible sequence ``hash(id, address, i)``, so a weight change
adds or removes only the tail points and moves only their keys. ``count`` is
``vnodes x weight / unit`` where ``unit`` is the mean published weight
rounded to a power of two, so removing a member (which moves the mean a
little) changes no other member's count. Points use published weights:
slow start and health change effective weights often and would churn the
ring; they act through the load bound instead (a ramping endpoint has a
small share, hence a small bound). Ejected and excluded endpoints are
walked past.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Collection
from dataclasses import dataclass
from hashlib import blake2b

from . import _check
from .candidates import Endpoint, View, WeightTable
from .sampling import sample_distinct
from .state import EndpointState, LoadTotals

__all__ = ["BoundedLoadHash", "HashConfig", "Ring", "build_ring", "key_hash"]


@dataclass(frozen=True, kw_only=True)
class HashConfig:
    """``load_factor`` (1.25, the paper's and Vimeo's choice): ``c = 1 + e``
    trades balance against affinity; at 1.25 an endpoint carries at most 25 %
    over its share and about 10 % of keys leave their home at full load.
    ``vnodes`` (100): points per endpoint of average weight; key shares then
    deviate ~10 % (1/sqrt(100)) before the bound evens them, at 100,000
    points (800 KB) for 1,000 endpoints."""

    load_factor: float = 1.25
    vnodes: int = 100

    def __post_init__(self) -> None:
        _check.number("load_factor", self.load_factor, low=1.0, high=100.0, low_open=True)
        _check.integer("vnodes", self.vnodes, low=1, high=10_000)


def key_hash(key: object) -> int:
    """A 64-bit hash, stable across processes and runs (unlike ``hash()``)."""
    if isinstance(key, str):
        data = key.encode()
    elif isinstance(key, bytes | bytearray | memoryview):
        data = bytes(key)
    elif isinstance(key, int) and not isinstance(key, bool):
        data = str(key).encode()
    else:
        raise TypeError(f"key: expected str, bytes or int, got {type(key).__name__}")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def _points(st: EndpointState, count: int) -> tuple[int, ...]:
    cached = st.ring_points
    if cached is not None and cached[0] >= count:
        return cached[1][:count]
    seed = f"{st.key[0]}|{st.key[1]}#".encode()
    pts = tuple(int.from_bytes(blake2b(seed + str(i).encode(), digest_size=8).digest(), "big")
                for i in range(count))
    st.ring_points = (count, pts)
    return pts


@dataclass(frozen=True, slots=True)
class Ring:
    points: tuple[int, ...]  # sorted hashes
    owners: tuple[int, ...]  # index into the view's endpoints, aligned with points


def build_ring(endpoints: tuple[Endpoint, ...], vnodes: int) -> Ring:
    mean = sum(ep.weight for ep in endpoints) / len(endpoints)
    unit = 2.0 ** round(math.log2(mean))
    pairs: list[tuple[int, int]] = []
    for vi, ep in enumerate(endpoints):
        count = max(1, round(vnodes * ep.weight / unit))
        pairs.extend((h, vi) for h in _points(ep.state, count))
    pairs.sort()
    return Ring(points=tuple(p for p, _ in pairs), owners=tuple(o for _, o in pairs))


class BoundedLoadHash:
    """Selector: ring successor of ``key`` with room under the load bound.

    A pick without a key has no affinity to keep and is a weighted random draw.
    The average load is the client's total in-flight over the view's
    effective weight: with endpoints hosting different models the total
    counts the others' requests too, which loosens the bound, never tightens it.
    """

    def __init__(self, config: HashConfig, totals: LoadTotals) -> None:
        self.config = config
        self.totals = totals

    def ring(self, view: View) -> Ring:
        ring: Ring | None = view.cache.get(self)
        if ring is None:
            ring = view.cache.setdefault(self, build_ring(view.endpoints, self.config.vnodes))
        return ring

    def select(self, view: View, table: WeightTable, *, key: object, exclude: Collection[Endpoint],
               now: float, rng: random.Random, cost: float = 1.0) -> Endpoint | None:
        if key is None:
            return _weighted(table, exclude, rng)
        ring = self.ring(view)
        points, owners = ring.points, ring.owners
        n = len(points)
        start = bisect_right(points, key_hash(key))
        share = self.config.load_factor * (self.totals.in_flight + 1) / table.total
        weights = table.view_weights
        eps = view.endpoints
        fallback = None
        for step in range(n):
            vi = owners[(start + step) % n]
            w = weights[vi]
            if w == 0.0:
                continue  # ejected
            ep = eps[vi]
            if exclude and ep in exclude:
                continue
            if ep.state.in_flight + 1 <= math.ceil(share * w):
                return ep
            if fallback is None:
                fallback = ep
        return fallback  # only reachable when exclusions left no endpoint with room

    def __repr__(self) -> str:
        return f"BoundedLoadHash({self.config!r})"


def _weighted(table: WeightTable, exclude: Collection[Endpoint], rng: random.Random) -> Endpoint | None:
    drawn = sample_distinct(table, rng, 1, exclude)
    return table.endpoints[drawn[0]] if drawn else None
