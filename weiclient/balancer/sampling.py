"""Weighted sampling over a :class:`~.candidates.WeightTable`, O(log n) per draw.

The prefix sums are built once per table; a draw is one ``random()`` and one
``bisect``. Two *distinct* endpoints are drawn exactly in proportion to
weight (the second from the remaining weight, by skipping the first one's
segment), without rejection. With exclusions (retries) draws are rejected a
few times, then the remaining endpoints are listed in O(n): a retry is rare
and already costs a network round-trip.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Collection

from .candidates import Endpoint, WeightTable

__all__ = ["sample_distinct", "sample_pair"]

_REJECTION_TRIES = 8


def sample_pair(table: WeightTable, rng: random.Random) -> tuple[int, int]:
    """Two distinct indices drawn in proportion to weight without replacement (``(i, i)`` if n == 1)."""
    prefix = table.prefix
    n = len(prefix)
    total = table.total
    i = bisect_right(prefix, rng.random() * total)
    if i >= n:
        i = n - 1
    if n == 1:
        return i, i
    wa = table.weights[i]
    start = prefix[i] - wa
    x = rng.random() * (total - wa)
    if x >= start:
        x += wa  # skip the first draw's segment: the second comes from the rest
    j = bisect_right(prefix, x)
    if j >= n:
        j = n - 1
    if j == i:  # only on a rounding edge of the segment
        j = i + 1 if i + 1 < n else i - 1
    return i, j


def sample_distinct(table: WeightTable, rng: random.Random, k: int,
                    exclude: Collection[Endpoint] = ()) -> list[int]:
    """Up to ``k`` distinct indices not in ``exclude``, drawn in proportion to weight."""
    eps = table.endpoints
    n = len(eps)
    if n == 0:
        return []
    picked: list[int] = []
    if n > k:
        for _ in range(_REJECTION_TRIES + 2 * k):
            i = table.index_at(rng.random())
            if i in picked or (exclude and eps[i] in exclude):
                continue
            picked.append(i)
            if len(picked) == k:
                return picked
    # few endpoints or many excluded: draw from the explicit remainder
    rest = [i for i in range(n) if i not in picked and not (exclude and eps[i] in exclude)]
    while rest and len(picked) < k:
        weights = [table.weights[i] for i in rest]
        (i,) = rng.choices(rest, weights=weights)
        picked.append(i)
        rest.remove(i)
    return picked
