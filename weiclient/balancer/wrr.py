"""nginx's smooth weighted round robin, one cycle precomputed.

nginx (``ngx_http_upstream_get_peer``): every pick adds each peer's weight to
its ``current``, takes the peer with the largest ``current`` (the first on a
tie) and subtracts the total from it. With integer weights the sequence
repeats every ``sum(weights)`` picks, each peer appearing exactly its weight
times per cycle and spread out (weights 5, 1, 1 give a a b a c a a).

Run per pick that loop is O(n) (100 us at 1,000 endpoints in CPython). The
cycle depends only on the weights, so it is computed once per weight table
and a pick is an index into it. Float weights are first rounded to integers
in ``resolution`` steps of the smallest (every share within 1 %; weights
with at most two decimals stay exact), reduced by their gcd, and coarsened
until the cycle fits ``max_cycle`` (every endpoint keeps at least one slot).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

import numpy as np

__all__ = ["WrrCycle", "integer_weights", "nginx_cycle"]

_PURE_PYTHON_WORK = 50_000  # n x cycle below which the plain loop beats numpy's per-call overhead


@dataclass(frozen=True, slots=True)
class WrrCycle:
    weights: tuple[int, ...]  # the integer weights the cycle realises
    order: tuple[int, ...]    # endpoint indices, one cycle


def _reduced(ints: list[int]) -> list[int]:
    g = reduce(math.gcd, ints)
    return [i // g for i in ints]


def integer_weights(weights: Sequence[float], resolution: int, max_cycle: int) -> list[int]:
    n = len(weights)
    limit = max(max_cycle, n)
    for decimal in (1, 10, 100):  # published weights are usually decimals: keep them exact if they fit
        scaled = [w * decimal for w in weights]
        if all(abs(x - round(x)) < 1e-9 and x >= 0.5 for x in scaled):
            ints = _reduced([round(x) for x in scaled])
            if sum(ints) <= limit:
                return ints
            break
    scale = resolution / min(weights)
    for _ in range(16):
        raw = [max(1, round(w * scale)) for w in weights]
        ints = _reduced(raw)
        if sum(ints) <= limit:
            return ints
        scale *= (limit - n / 2) / sum(raw)  # the floors of 1 and rounding add n/2 at most
    return [1] * n


def _cycle_python(ints: list[int]) -> list[int]:
    total = sum(ints)
    current = [0] * len(ints)
    order = []
    for _ in range(total):
        best = -1
        best_value = 0
        for i, w in enumerate(ints):
            c = current[i] + w
            current[i] = c
            if best < 0 or c > best_value:
                best, best_value = i, c
        current[best] -= total
        order.append(best)
    return order


def _cycle_numpy(ints: list[int]) -> list[int]:
    w = np.asarray(ints, dtype=np.int64)
    total = int(w.sum())
    current = np.zeros_like(w)
    order = np.empty(total, dtype=np.int64)
    for step in range(total):
        current += w
        best = int(current.argmax())  # first maximum, as nginx
        current[best] -= total
        order[step] = best
    return order.tolist()


def nginx_cycle(weights: Sequence[float], resolution: int = 100, max_cycle: int = 8192) -> WrrCycle:
    ints = integer_weights(weights, resolution, max_cycle)
    work = len(ints) * sum(ints)
    order = _cycle_python(ints) if work <= _PURE_PYTHON_WORK else _cycle_numpy(ints)
    return WrrCycle(weights=tuple(ints), order=tuple(order))
