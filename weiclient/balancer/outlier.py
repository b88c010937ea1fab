"""Outlier ejection and local health, decided from events (no timers).

Every finished request is an event ``(ok, now)``. Consecutive failures lower
an endpoint's *health factor* linearly from 1 towards ``health_floor`` (its
effective weight shrinks before anything is ejected); at
``consecutive_failures`` it is ejected for
``base_ejection_s x 2^(times ejected - 1)``, capped at ``max_ejection_s``,
unless that would put more than ``max_ejection_percent`` of the candidates
out at once. An ejected endpoint returns when ``now`` passes its time: the
weight table notices (its ``valid_until``) and the next event clears the
record and its failure count. ``times_ejected`` is forgotten once an endpoint
has stayed in for ``max_ejection_s`` after returning.

Failures of requests still in flight on an endpoint already ejected do not
count again: they were sent before the ejection and say nothing new.

An outcome is one of three: a success, a failure of the pod, or neutral
(``ok=None``): an overload refusal (a load signal, see
:meth:`~.balancer.Balancer.pick`), a caller's mistake, a call we cancelled.
A neutral outcome neither counts as a failure nor clears a sick pod's run of
consecutive failures: a pod that answers every malformed request at once and
times out every good one is still sick.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import _check
from .state import NEVER, EndpointState

__all__ = ["OutlierDetection"]


@dataclass(frozen=True, kw_only=True)
class OutlierDetection:
    """Knobs of ejection.

    ``consecutive_failures`` (5, Envoy's default): one or two failures are
    noise (a deadline hit by a slow batch); five in a row without a success
    between is a sick pod. ``base_ejection_s`` (30 s, Envoy's): long enough
    for Kubernetes to notice and restart or unready a pod. ``max_ejection_s``
    (300 s): a pod that keeps failing is retried at least every five minutes.
    ``max_ejection_percent`` (50): ejection protects against sick pods, not
    against a sick *dependency* every pod shares; past half the cluster the
    failures are more likely ours (or a shared backend) and ejecting more
    would overload the rest. The count is rounded down (2 candidates: 1 may
    go; 1 candidate: never). ``health_floor`` (0.25): the effective weight
    multiplier just before ejection.
    """

    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejection_percent: float = 50.0
    health_floor: float = 0.25
    enabled: bool = True

    def __post_init__(self) -> None:
        _check.integer("outlier.consecutive_failures", self.consecutive_failures, low=1, high=1000)
        _check.number("outlier.base_ejection_s", self.base_ejection_s, low=0.0, low_open=True)
        _check.number("outlier.max_ejection_s", self.max_ejection_s, low=self.base_ejection_s)
        _check.number("outlier.max_ejection_percent", self.max_ejection_percent, low=0.0, high=100.0)
        _check.number("outlier.health_floor", self.health_floor, low=0.0, high=1.0, low_open=True)

    def ejection_s(self, times_ejected: int) -> float:
        """Length of the ``times_ejected``-th ejection (1-based)."""
        return min(self.max_ejection_s, self.base_ejection_s * 2.0 ** min(times_ejected - 1, 60))

    def max_ejected(self, candidates: int) -> int:
        return int(candidates * self.max_ejection_percent / 100.0 + 1e-9)

    def failures(self, st: EndpointState, now: float) -> int:
        """Consecutive failures that still count (none once an ejection has run out)."""
        if st.ejected_until != NEVER and now >= st.ejected_until:
            return 0
        return st.failures

    def health(self, st: EndpointState, now: float) -> float:
        """Multiplier in ``[health_floor, 1]`` from the consecutive failures still counting."""
        f = self.failures(st, now)
        if f == 0 or not self.enabled:
            return 1.0
        n = self.consecutive_failures
        return 1.0 - (1.0 - self.health_floor) * min(f, n) / n

    def record(self, st: EndpointState, ok: bool | None, now: float, may_eject: Callable[[], bool]) -> bool:
        """Apply one outcome (None: neutral); True when the endpoint's health or availability changed.

        ``may_eject`` is asked only at the threshold (it counts the ejected
        endpoints, O(n)); False keeps the endpoint in, at its floor weight,
        and the next failure asks again.
        """
        changed = False
        if st.ejected_until != NEVER and now >= st.ejected_until:  # its time is over: it returned
            st.returned_at = st.ejected_until
            st.ejected_until = NEVER
            st.failures = 0
            changed = True
        if ok is None:
            return changed
        if ok:
            if st.failures:
                st.failures = 0
                changed = True
            if st.times_ejected and now - st.returned_at >= self.max_ejection_s:
                st.times_ejected = 0
            return changed
        if not self.enabled or st.is_ejected(now):
            return changed
        st.failures += 1
        if st.failures >= self.consecutive_failures and may_eject():
            st.times_ejected += 1
            st.ejected_until = now + self.ejection_s(st.times_ejected)
            return True
        return changed or st.failures <= self.consecutive_failures  # past it the health stays at the floor
