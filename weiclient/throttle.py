"""Adaptive client-side throttling: the Google SRE book's accepts/requests ratio ("Handling Overload").

Over a sliding window each client (one per service) counts ``requests``
(attempts it made, and calls it rejected itself) and ``accepts`` (attempts a
server answered). A new call is rejected here, before anything is encoded or
sent, with probability::

    p = max(0, (requests - K x accepts) / (requests + 1))

While servers accept at least 1/K of the attempts nothing is rejected; past
that the client sheds locally, in microseconds, what the servers would have
refused anyway, and a local rejection counts as a request that was not
accepted, so the rejection rate settles where requests ~ K x accepts and
falls as soon as the servers accept again.

What counts (:func:`counts_as`, one table): an answer is an accept; an
overload refusal (RESOURCE_EXHAUSTED) and a DEADLINE_EXCEEDED are requests
not accepted. DEADLINE_EXCEEDED counts because an old server without
admission control does not refuse, it queues: a deadline that passed is
then the only sign of overload (the failure of issue 10: every call waited
for its deadline), and a call that times out cost the server work it could
not finish. Nothing else counts: a caller's mistake says nothing about
capacity (the brief of part 3), CANCELLED is ours (a hedge's loser), and a
broken pod (UNAVAILABLE, INTERNAL, a reply that does not decode) is outlier
ejection's business, not a shortage of capacity in the fleet.

Current *and* sustained: the probability is the smaller of the window's
and the same formula over the last ``recent_s`` (2 s) of attempts sent
(local rejections left out). The long window alone remembers an overload
for minutes after it ends: its refusals, and the local rejections counted
with them, outweigh the new accepts until they age out, so sheddable calls
kept being rejected here long after the servers had room (14 rejected in
the 2 s after a 140 % phase of ``bench/overload.py``, more for a minute).
The short window alone would swing with every burst. Throttling only while
both say overload keeps the book's stability and stops within a couple of
seconds of the servers accepting again.

Priority (:data:`protocol.wire.PRIORITIES`), per the SRE book's criticality:
the same counts, a different K per priority, so lower priority is shed
first. ``sheddable`` uses ``sheddable_k`` (1.1: rejected as soon as more
than ~9 % of attempts are refused), ``default`` uses ``k`` (2, the book's
value: the servers absorb refusals up to half their traffic, which costs
them little with early, cheap refusals, and a client does not throttle on
a blip), ``critical`` uses ``critical_k`` (None: never throttled here: a
critical call always reaches a server, which knows its own queue and
refuses critical calls last; the local throttle guesses from history, and
a wrong guess on a critical call costs more than one cheap refusal).

Nothing here reads a clock or sleeps: ``now`` comes from the caller, the
random draw from an injected :class:`random.Random`. Counts live in
``buckets`` slots of the window with running totals, so expiry is exact to
one slot and each call costs O(1). Thread-safe (one lock around a few
integer updates).
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from protocol import wire

from .balancer import _check

__all__ = ["ACCEPTED", "NOT_ACCEPTED", "Rejection", "Throttle", "ThrottleConfig", "counts_as"]

ACCEPTED = frozenset({"OK"})
NOT_ACCEPTED = frozenset({"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})


def counts_as(code: str) -> bool | None:
    """An attempt that ended with ``code`` (a gRPC code name, "OK" for an answer): True an accept,
    False a request not accepted, None not counted at all."""
    if code in ACCEPTED:
        return True
    if code in NOT_ACCEPTED:
        return False
    return None


@dataclass(frozen=True, kw_only=True)
class ThrottleConfig:
    """``enabled`` (True): off, every call is sent (a bench's baseline).
    ``k`` (2.0), ``sheddable_k`` (1.1), ``critical_k`` (None: never): the
    multipliers per priority, argued in the module docstring; a K below 1
    would throttle a fleet that accepts everything, so each is at least 1,
    and sheddable is throttled no later than default, critical no earlier.
    ``window_s`` (120 s, the book's): long enough that a burst of refusals
    does not swing the ratio, and the ratio moves as soon as servers accept
    again, since every accept lowers ``p``. ``buckets`` (120): one-second
    slots, so the window forgets in steps of 1 s. ``recent_s`` (2 s): the
    short window that must also show overload (module docstring); 0 turns
    it off (the book's rule alone)."""

    enabled: bool = True
    k: float = 2.0
    sheddable_k: float = 1.1
    critical_k: float | None = None
    window_s: float = 120.0
    buckets: int = 120
    recent_s: float = 2.0

    def __post_init__(self) -> None:
        _check.flag("throttle.enabled", self.enabled)
        _check.number("throttle.k", self.k, low=1.0, high=1000.0)
        _check.number("throttle.sheddable_k", self.sheddable_k, low=1.0, high=self.k)
        if self.critical_k is not None:
            _check.number("throttle.critical_k", self.critical_k, low=self.k, high=1e9)
        _check.number("throttle.window_s", self.window_s, low=0.0, low_open=True)
        _check.integer("throttle.buckets", self.buckets, low=1, high=10_000)
        _check.number("throttle.recent_s", self.recent_s, low=0.0, high=self.window_s)

    def multipliers(self) -> Mapping[str, float | None]:
        """K per priority; None: never throttled."""
        return MappingProxyType({"sheddable": self.sheddable_k, "default": self.k, "critical": self.critical_k})


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a call was rejected locally: the counts it saw, its K and the probability drawn against."""

    priority: str
    probability: float
    requests: int
    accepts: int
    k: float


class Throttle:
    """One client's throttle; see the module docstring."""

    def __init__(self, config: ThrottleConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config or ThrottleConfig()
        self._rng = rng or random.Random()
        self._k = self.config.multipliers()
        n = self.config.buckets
        self._slot_s = self.config.window_s / n
        self._requests_in = [0] * n
        self._accepts_in = [0] * n
        self._sent_in = [0] * n      # attempts a server answered or refused (no local rejections)
        self._recent = math.ceil(self.config.recent_s / self._slot_s) if self.config.recent_s else 0
        self._requests = 0   # running totals over the buckets
        self._accepts = 0
        self._epoch: int | None = None  # the slot the current bucket holds
        self._lock = threading.Lock()

    def _advance(self, now: float) -> int:
        """The current bucket, after emptying those the window left (a clock stepped back keeps the slot)."""
        epoch = math.floor(now / self._slot_s)
        n = len(self._requests_in)
        last = self._epoch
        if last is None:
            self._epoch = epoch
        elif epoch > last:
            for e in range(last + 1, last + 1 + min(epoch - last, n)):
                i = e % n
                self._requests -= self._requests_in[i]
                self._accepts -= self._accepts_in[i]
                self._requests_in[i] = self._accepts_in[i] = self._sent_in[i] = 0
            self._epoch = epoch
        return self._epoch % n  # type: ignore[operator]

    def _multiplier(self, priority: str) -> float | None:
        try:
            return self._k[priority]
        except KeyError:
            raise ValueError(f"priority: expected one of {', '.join(wire.PRIORITIES)}, got {priority!r}") from None

    def check(self, priority: str, now: float) -> Rejection | None:
        """None: send the call. A :class:`Rejection`: do not; it was counted as a request not accepted."""
        k = self._multiplier(priority)
        if not self.config.enabled or k is None:
            return None
        with self._lock:
            i = self._advance(now)
            requests, accepts = self._requests, self._accepts
            if requests <= k * accepts:
                return None  # the common case: no draw
            p = min((requests - k * accepts) / (requests + 1), self._recent_p(i, k))
            if p <= 0.0 or self._rng.random() >= p:
                return None
            self._requests_in[i] += 1
            self._requests += 1
        return Rejection(priority, p, requests, accepts, k)

    def record(self, code: str, now: float) -> None:
        """An attempt ended with ``code`` (see :func:`counts_as`)."""
        accepted = counts_as(code)
        if accepted is None or not self.config.enabled:
            return
        with self._lock:
            i = self._advance(now)
            self._requests_in[i] += 1
            self._requests += 1
            self._sent_in[i] += 1
            if accepted:
                self._accepts_in[i] += 1
                self._accepts += 1

    def _recent_p(self, i: int, k: float) -> float:
        """Under the lock: the formula over the newest ``recent_s`` of attempts sent (1 without it)."""
        if not self._recent:
            return 1.0
        n = len(self._sent_in)
        slots = [(i - j) % n for j in range(min(self._recent, n))]
        sent = sum(self._sent_in[s] for s in slots)
        accepts = sum(self._accepts_in[s] for s in slots)
        return max(0.0, (sent - k * accepts) / (sent + 1))

    def probability(self, priority: str, now: float) -> float:
        """The probability that a call of ``priority`` is rejected now."""
        k = self._multiplier(priority)
        if not self.config.enabled or k is None:
            return 0.0
        with self._lock:
            i = self._advance(now)
            requests, accepts = self._requests, self._accepts
            return max(0.0, min((requests - k * accepts) / (requests + 1), self._recent_p(i, k)))

    def counts(self, now: float) -> tuple[int, int]:
        """(requests, accepts) in the window as of ``now``."""
        with self._lock:
            self._advance(now)
            return self._requests, self._accepts

    def __repr__(self) -> str:
        return f"<Throttle requests={self._requests} accepts={self._accepts} {self.config!r}>"
