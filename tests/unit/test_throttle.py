"""Adaptive client-side throttling as tables on a fake clock (the SRE book's accepts/requests ratio)."""

from __future__ import annotations

import random

import pytest

from protocol import wire
from weiclient.config import ClientConfig
from weiclient.errors import InvalidBalancerConfig
from weiclient.throttle import Throttle, ThrottleConfig, counts_as


class Fixed(random.Random):
    """A random source whose every draw is ``u``."""

    def __init__(self, u: float) -> None:
        super().__init__(0)
        self.u = u
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.u


def fed(requests_not_accepted: int, accepts: int, *, now: float = 0.0, u: float = 0.0, **cfg) -> Throttle:
    t = Throttle(ThrottleConfig(**cfg), Fixed(u))
    for _ in range(accepts):
        t.record("OK", now)
    for _ in range(requests_not_accepted):
        t.record("RESOURCE_EXHAUSTED", now)
    return t


@pytest.mark.parametrize("code, counted", [
    ("OK", True), ("RESOURCE_EXHAUSTED", False), ("DEADLINE_EXCEEDED", False),
    ("INVALID_ARGUMENT", None), ("NOT_FOUND", None), ("MESSAGE_TOO_LARGE", None), ("CANCELLED", None),
    ("UNAVAILABLE", None), ("INTERNAL", None), ("MALFORMED_RESPONSE", None),
])
def test_what_an_attempt_counts_as(code, counted):
    assert counts_as(code) is counted


@pytest.mark.parametrize("refused, accepts, priority, p", [
    (0, 100, "default", 0.0),                        # all accepted
    (100, 100, "default", 0.0),                      # 200 requests <= 2 x 100 accepts
    (140, 60, "default", (200 - 120) / 201),         # past K = 2: shed the excess
    (300, 0, "default", 300 / 301),                  # nothing accepted: almost everything shed
    (40, 100, "default", 0.0),                       # 140 % load: default is not throttled yet...
    (40, 100, "sheddable", (140 - 110) / 141),       # ...sheddable is (K = 1.1)
    (300, 0, "critical", 0.0),                       # critical: never here
])
def test_rejection_probability_is_requests_minus_k_accepts_over_requests_plus_one(refused, accepts, priority, p):
    t = fed(refused, accepts)
    assert t.probability(priority, 0.0) == pytest.approx(p)


def test_a_call_is_rejected_when_the_draw_falls_under_p_and_counts_as_a_request_not_accepted():
    t = fed(140, 60, u=0.39)  # p = 80 / 201 = 0.398
    rejection = t.check("default", 1.0)
    assert rejection is not None
    assert (rejection.priority, rejection.requests, rejection.accepts, rejection.k) == ("default", 200, 60, 2.0)
    assert rejection.probability == pytest.approx(80 / 201)
    assert t.counts(1.0) == (201, 60)
    t._rng.u = 0.41  # over the (new) p: sent, and not counted until its outcome is recorded
    assert t.check("default", 1.0) is None
    assert t.counts(1.0) == (201, 60)


def test_no_draw_is_made_while_the_servers_accept_enough():
    t = fed(10, 100)
    assert t.check("default", 0.0) is None and t.check("sheddable", 0.0) is None
    assert t._rng.draws == 0


@pytest.mark.parametrize("priority, rejected", [("sheddable", True), ("default", False), ("critical", False)])
def test_low_priority_is_shed_first(priority, rejected):
    t = fed(40, 100, u=0.0)  # 140 requests, 100 accepts: the 140 % of the issue
    assert (t.check(priority, 0.0) is not None) is rejected


def test_callers_mistakes_and_pod_failures_do_not_count():
    t = fed(0, 0)
    for code in ("INVALID_ARGUMENT", "NOT_FOUND", "MESSAGE_TOO_LARGE", "CANCELLED", "UNAVAILABLE", "INTERNAL"):
        t.record(code, 0.0)
    assert t.counts(0.0) == (0, 0)


def test_the_window_forgets_a_bucket_at_a_time():
    """120 s in 120 buckets of 1 s: refusals at t=0 are forgotten once t passes 120 s."""
    t = fed(300, 0, now=0.0, u=0.0)
    for _ in range(10):
        t.record("OK", 60.0)
    assert t.counts(119.9) == (310, 10)
    assert t.counts(120.0) == (10, 10)       # the bucket of t=0 left the window
    assert t.check("default", 120.0) is None
    assert t.counts(180.0) == (0, 0)
    assert t.counts(10_000.0) == (0, 0)      # a long gap empties every bucket once


def test_accepts_after_overload_lower_p_at_once():
    t = fed(140, 60, recent_s=0)  # the book's rule alone
    before = t.probability("default", 1.0)
    for _ in range(40):
        t.record("OK", 2.0)
    assert t.probability("default", 2.0) < before
    assert t.probability("default", 2.0) == pytest.approx(max(0.0, (240 - 2 * 100) / 241))


def test_throttling_stops_within_the_recent_window_once_servers_accept_again():
    """The window still remembers a minute of overload; the last 2 s of attempts do not."""
    t = Throttle(ThrottleConfig(), Fixed(0.0))
    for second in range(60):                  # a minute at 140 %: 7 of 10 sheddable attempts accepted
        for _ in range(7):
            t.record("OK", float(second))
        for _ in range(3):
            t.record("RESOURCE_EXHAUSTED", float(second))
    assert t.probability("sheddable", 59.5) == pytest.approx((20 - 1.1 * 14) / 21)  # min(window, last 2 s)
    assert t.check("sheddable", 59.5) is not None       # rejected while the overload is current
    for _ in range(10):                                 # the servers have room again
        t.record("OK", 60.5)
    assert t.probability("sheddable", 60.9) > 0.0       # the last 2 s still hold a second of overload ...
    assert t.probability("sheddable", 61.9) == 0.0      # ... then only accepts: none rejected
    assert Throttle(ThrottleConfig(recent_s=0), Fixed(0.0)).probability("sheddable", 0.0) == 0.0
    book = fed(180, 420, now=59.0, recent_s=0)
    for _ in range(20):
        book.record("OK", 61.5)
    assert book.probability("sheddable", 61.9) > 0.1    # the book's rule alone still rejects


def test_a_clock_that_steps_back_counts_into_the_current_bucket():
    t = fed(0, 1, now=10.0)
    t.record("OK", 5.0)
    assert t.counts(10.0) == (2, 2)


def test_disabled_sends_everything_and_counts_nothing():
    t = fed(300, 0, u=0.0, enabled=False)
    assert t.check("sheddable", 0.0) is None
    assert t.counts(0.0) == (0, 0)
    assert t.probability("sheddable", 0.0) == 0.0


def test_critical_can_be_throttled_with_a_larger_k():
    t = fed(300, 100, u=0.0, critical_k=3.0)
    assert t.probability("critical", 0.0) == pytest.approx(100 / 401)
    assert t.check("critical", 0.0) is not None


def test_an_unknown_priority_names_the_valid_ones():
    with pytest.raises(ValueError, match="sheddable, default, critical"):
        Throttle().check("urgent", 0.0)


@pytest.mark.parametrize("kwargs, field", [
    (dict(k=0.5), "throttle.k"),
    (dict(sheddable_k=3.0), "throttle.sheddable_k"),   # over k: sheddable would be shed last
    (dict(critical_k=1.5), "throttle.critical_k"),     # under k: critical would be shed first
    (dict(window_s=0), "throttle.window_s"),
    (dict(buckets=0), "throttle.buckets"),
    (dict(enabled="yes"), "throttle.enabled"),
])
def test_config_is_checked(kwargs, field):
    with pytest.raises(InvalidBalancerConfig) as e:
        ThrottleConfig(**kwargs)
    assert e.value.field == field


def test_the_client_config_carries_it_on_by_default():
    assert ClientConfig().throttle == ThrottleConfig()
    assert ClientConfig().throttle.enabled
    assert set(ThrottleConfig().multipliers()) == set(wire.PRIORITIES)
