"""Retry budget: retries at most ``ratio`` of requests plus a small floor (Finagle's ``RetryBudget``).

Every request deposits; every retry withdraws. Over the last ``window_s``
seconds a retry is allowed while::

    retries < min_retries_per_s x window_s + ratio x requests

so when a backend fails outright the extra load from retries is at most
``ratio`` (20 %) and cannot snowball, while a client sending little traffic
still gets its ``min_retries_per_s`` floor. Same purpose as gRPC's retry
throttling (a token bucket fed by successes); this form needs no outcome
reports and reads as a rate. Counts are kept in ``buckets`` slots of the
window, so expiry is exact to one slot and costs O(1); ``now`` comes from the
caller, nothing here reads a clock or sleeps.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from . import _check

__all__ = ["RetryBudget", "RetryBudgetConfig"]


@dataclass(frozen=True, kw_only=True)
class RetryBudgetConfig:
    """``ratio`` (0.2): Finagle's default; a retried request costs the
    cluster at most 20 % more. ``min_retries_per_s`` (10): lets a quiet
    client retry its rare failures. ``window_s`` (10 s): long enough to
    smooth bursts, short enough that a past burst does not finance a storm.
    ``buckets`` (10): one-second resolution."""

    ratio: float = 0.2
    min_retries_per_s: float = 10.0
    window_s: float = 10.0
    buckets: int = 10

    def __post_init__(self) -> None:
        _check.number("retry_budget.ratio", self.ratio, low=0.0, high=1000.0)
        _check.number("retry_budget.min_retries_per_s", self.min_retries_per_s, low=0.0)
        _check.number("retry_budget.window_s", self.window_s, low=0.0, low_open=True)
        _check.integer("retry_budget.buckets", self.buckets, low=1, high=10_000)


class RetryBudget:
    """Thread-safe (one lock around a few integer updates)."""

    def __init__(self, config: RetryBudgetConfig | None = None) -> None:
        self.config = config or RetryBudgetConfig()
        n = self.config.buckets
        self._slot_s = self.config.window_s / n
        self._epochs = [-1] * n      # which slot-epoch each bucket holds
        self._deposits = [0] * n
        self._withdrawals = [0] * n
        self._lock = threading.Lock()

    def _bucket(self, now: float) -> int:
        epoch = math.floor(now / self._slot_s)
        i = epoch % len(self._epochs)
        if self._epochs[i] != epoch:
            self._epochs[i] = epoch
            self._deposits[i] = 0
            self._withdrawals[i] = 0
        return i

    def _sums(self, now: float) -> tuple[int, int]:
        current = math.floor(now / self._slot_s)
        low = current - len(self._epochs) + 1
        d = w = 0
        for i, epoch in enumerate(self._epochs):
            if low <= epoch <= current:
                d += self._deposits[i]
                w += self._withdrawals[i]
        return d, w

    def _balance(self, now: float) -> float:
        d, w = self._sums(now)
        c = self.config
        return c.min_retries_per_s * c.window_s + c.ratio * d - w

    def deposit(self, now: float) -> None:
        """Record one request (first attempts only)."""
        with self._lock:
            self._deposits[self._bucket(now)] += 1

    def try_withdraw(self, now: float) -> bool:
        """Spend one retry if the budget allows; False means: do not retry."""
        with self._lock:
            if self._balance(now) < 1.0:
                return False
            self._withdrawals[self._bucket(now)] += 1
            return True

    def available(self, now: float) -> float:
        """Retries that may still be made now (fractional)."""
        with self._lock:
            return max(0.0, self._balance(now))

    def __repr__(self) -> str:
        return f"RetryBudget({self.config!r})"
