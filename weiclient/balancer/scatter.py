"""Scatter-gather planning: split N items across endpoints in proportion to weight.

A ranking call carries 1,000-2,000 candidate items; splitting it across
several pods cuts its latency to that of the slowest shard. Shard sizes are
the quotas ``N x w_i / sum(w)`` rounded by the largest remainder method
(Hamilton's), so they sum to exactly N and each is within one item of its
quota. Shards are contiguous ranges in endpoint order, so outputs
concatenated in shard order line up with the inputs (:func:`gather`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from .candidates import Endpoint

__all__ = ["Shard", "gather", "plan_shards", "split_sizes"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Shard:
    endpoint: Endpoint
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def slice(self) -> slice:
        return slice(self.start, self.stop)


def split_sizes(n: int, weights: Sequence[float]) -> list[int]:
    """``n`` items into ``len(weights)`` parts by the largest remainder method.

    Ties in the remainder go to the earlier part, so the result is deterministic.
    """
    if n < 0:
        raise ValueError(f"n: expected >= 0 items, got {n}")
    if not weights or any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights: expected finite non-negative numbers with a positive sum, got {weights!r}")
    total = math.fsum(weights)
    quotas = [n * w / total for w in weights]
    sizes = [math.floor(q) for q in quotas]
    left = n - sum(sizes)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - sizes[i]), i))
    for i in by_remainder[:left]:
        sizes[i] += 1
    return sizes


def plan_shards(n: int, endpoints: Sequence[Endpoint], weights: Sequence[float]) -> tuple[Shard, ...]:
    """Contiguous shards covering ``range(n)`` in order; endpoints given no item are left out."""
    if len(endpoints) != len(weights):
        raise ValueError(f"{len(endpoints)} endpoints but {len(weights)} weights")
    shards = []
    start = 0
    for ep, size in zip(endpoints, split_sizes(n, weights), strict=True):
        if size:
            shards.append(Shard(ep, start, start + size))
            start += size
    return tuple(shards)


def gather(shards: Sequence[Shard], results: Sequence[Sequence[T]]) -> list[T]:
    """Concatenate per-shard results back into input order, checking each length."""
    if len(shards) != len(results):
        raise ValueError(f"{len(shards)} shards but {len(results)} results")
    out: list[T] = []
    for shard, part in zip(shards, results, strict=True):
        if len(part) != shard.size:
            raise ValueError(f"shard [{shard.start}:{shard.stop}] on {shard.endpoint.address} "
                             f"returned {len(part)} results, expected {shard.size}")
        out.extend(part)
    return out
