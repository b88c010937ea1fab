"""Load state across membership updates, slow start, outlier ejection (fake clock)."""

from __future__ import annotations

import random
import threading
from collections import Counter

import pytest

from registry.membership import snapshot_from_records
from registry.records import InstanceRecord, State
from weiclient.balancer import Balancer, OutlierDetection, SlowStart, build_policy
from weiclient.errors import NoEndpointAvailable, Unavailable


def rec(i: int, weight: float = 1.0, **kw) -> InstanceRecord:
    base = dict(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=weight,
                state=State.SERVING, models={"ctr": [1]})
    base.update(kw)
    return InstanceRecord(**base)


def make(*recs, policy="random", **knobs) -> Balancer:
    b = Balancer(build_policy(policy, knobs), rng=random.Random(11))
    b.update(snapshot_from_records("ctr", recs, version=1), now=0.0)
    return b


def update(b: Balancer, *recs, now: float, version: int = 2) -> None:
    b.update(snapshot_from_records("ctr", recs, version=version), now=now)


def row(b: Balancer, iid: str, now: float):
    return next(r for r in b.stats(now).endpoints if r.instance_id == iid)


def fail(b: Balancer, ep, now: float, times: int = 1) -> None:
    for _ in range(times):
        b.on_start(ep, now)
        b.on_finish(ep, now, 0.01, False)


# -- load state across updates ---------------------------------------------------------

def test_load_state_survives_membership_updates():
    b = make(rec(0), rec(1), rec(2))
    p0 = b.candidates.endpoints[0]
    b.on_start(p0, 1.0)
    b.on_start(p0, 1.0)
    b.on_finish(p0, 1.0, 0.05, True)
    fail(b, p0, 1.0, 2)
    update(b, rec(0, weight=4.0), rec(1), rec(3), now=2.0)
    new_p0 = b.candidates.endpoints[0]
    assert new_p0 is not p0 and new_p0 == p0 and new_p0.weight == 4.0
    assert new_p0.state is p0.state
    assert (new_p0.state.in_flight, new_p0.state.failures) == (1, 2)
    assert new_p0.state.latency_s == pytest.approx(0.05)
    b.on_finish(p0, 3.0, 0.05, True)  # a request from before the update finishes on the old handle
    assert new_p0.state.in_flight == 0 and new_p0.state.failures == 0
    assert b.stats(3.0).in_flight == 0


def test_a_member_that_left_and_returns_starts_fresh_and_a_new_address_is_a_new_endpoint():
    b = make(rec(0), rec(1))
    p1 = b.candidates.endpoints[1]
    b.on_finish(p1, 1.0, 0.2, True)
    update(b, rec(0), now=2.0)
    update(b, rec(0), rec(1), now=3.0, version=3)
    assert b.candidates.endpoints[1].state is not p1.state
    update(b, rec(0), rec(1, port=9999), now=4.0, version=4)
    assert b.candidates.endpoints[1].state.latency_s == 0.0


def test_concurrent_events_keep_counts_exact():
    b = make(*(rec(i) for i in range(4)), policy="weighted_p2c")

    def worker(seed: int) -> None:
        for i in range(2000):
            ep = b.pick("ctr", now=1.0)
            b.on_start(ep, 1.0)
            b.on_finish(ep, 1.0, 0.001 * (1 + (seed + i) % 5), True)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.stats(1.0).in_flight == 0
    assert all(ep.state.in_flight == 0 for ep in b.candidates.endpoints)


# -- slow start ------------------------------------------------------------------------

def test_slow_start_ramps_a_new_endpoint_linearly_from_the_floor():
    b = make(rec(0), rec(1))
    assert row(b, "p0", 0.0).ramp == 1.0  # the first membership is not ramped
    update(b, rec(0), rec(1), rec(2), now=100.0)
    assert row(b, "p2", 100.0).effective_weight == pytest.approx(0.1)
    assert row(b, "p2", 115.0).effective_weight == pytest.approx(0.55)
    assert row(b, "p2", 130.0).effective_weight == 1.0
    early = Counter(b.pick("ctr", now=100.0).instance_id for _ in range(4200))
    assert abs(early["p2"] / 4200 - 0.1 / 2.1) < 0.02
    mid = Counter(b.pick("ctr", now=115.0).instance_id for _ in range(4200))  # table refreshed
    assert abs(mid["p2"] / 4200 - 0.55 / 2.55) < 0.025
    late = Counter(b.pick("ctr", now=131.0).instance_id for _ in range(6000))
    assert abs(late["p2"] / 6000 - 1 / 3) < 0.025


def test_slow_start_aggression_and_refresh():
    s = SlowStart(window_s=30.0, floor=0.1, aggression=2.0)
    assert s.factor(7.5) == pytest.approx(0.1 + 0.9 * 0.5)  # sqrt(1/4)
    assert s.factor(0.0) == 0.1 and s.factor(31.0) == 1.0
    assert SlowStart(window_s=0.0).factor(0.0) == 1.0


def test_a_re_registration_gets_no_client_ramp_serving_or_warming():
    b = make(rec(0), rec(1, registration_time_ms=1))
    update(b, rec(0), rec(1, registration_time_ms=2), now=50.0)
    assert row(b, "p1", 50.0).ramp == 1.0  # SERVING: a session re-registration, the pod is warm
    update(b, rec(0), rec(1, registration_time_ms=3, state=State.WARMING, weight=0.05), now=60.0, version=3)
    assert row(b, "p1", 60.0).ramp == 1.0  # WARMING: its agent ramps the published weight
    assert row(b, "p1", 60.0).effective_weight == pytest.approx(0.05)


def test_a_warming_pod_is_never_ramped_by_the_client_even_after_it_turns_serving():
    """One slow start: the agent's. Neither the WARMING join nor the promotion starts a client ramp."""
    b = make(rec(0), rec(1))
    update(b, rec(0), rec(1), rec(2, state=State.WARMING, weight=0.05), now=100.0)
    assert row(b, "p2", 100.0).ramp == 1.0 and row(b, "p2", 100.0).effective_weight == pytest.approx(0.05)
    update(b, rec(0), rec(1), rec(2, state=State.SERVING, weight=1.0), now=160.0, version=3)
    assert row(b, "p2", 160.0).ramp == 1.0 and row(b, "p2", 160.0).effective_weight == 1.0
    # a client ramp already running (the pod joined SERVING) stops when its agent starts one
    update(b, rec(0), rec(1), rec(2), rec(3), now=200.0, version=4)
    assert row(b, "p3", 200.0).ramp == pytest.approx(0.1)
    update(b, rec(0), rec(1), rec(2), rec(3, state=State.WARMING, weight=0.05), now=201.0, version=5)
    assert row(b, "p3", 201.0).ramp == 1.0


def test_an_endpoint_back_from_draining_is_ramped():
    b = make(rec(0), rec(1))
    update(b, rec(0), rec(1, state=State.DRAINING), now=10.0)
    update(b, rec(0), rec(1), now=20.0, version=3)
    assert row(b, "p1", 20.0).ramp == pytest.approx(0.1)


# -- outlier ejection ------------------------------------------------------------------

def test_consecutive_failures_lower_health_then_eject_with_doubling_back_off():
    b = make(*(rec(i) for i in range(4)))
    p0 = b.candidates.endpoints[0]
    fail(b, p0, 1.0, 4)
    assert row(b, "p0", 1.0).health == pytest.approx(1 - 0.75 * 4 / 5)
    fail(b, p0, 1.0)
    assert row(b, "p0", 1.0).ejected_for_s == 30.0
    assert "p0" not in {b.pick("ctr", now=2.0).instance_id for _ in range(300)}
    assert "p0" in {b.pick("ctr", now=31.0).instance_id for _ in range(300)}  # back after 30 s
    expected = [60.0, 120.0, 240.0, 300.0, 300.0]
    now = 31.0
    for length in expected:
        fail(b, p0, now, 5)
        assert row(b, "p0", now).ejected_for_s == length
        now += length
    assert row(b, "p0", now).health == 1.0  # returned: the old failures no longer count


def test_a_success_resets_the_count_and_a_quiet_period_resets_the_back_off():
    b = make(*(rec(i) for i in range(4)))
    p0 = b.candidates.endpoints[0]
    fail(b, p0, 1.0, 4)
    b.on_finish(p0, 1.0, 0.01, True)
    fail(b, p0, 1.0, 4)
    assert row(b, "p0", 1.0).ejected_for_s == 0.0
    fail(b, p0, 1.0)
    assert row(b, "p0", 1.0).times_ejected == 1
    b.on_finish(p0, 31.0 + 300.0, 0.01, True)
    assert row(b, "p0", 332.0).times_ejected == 0


def test_failures_of_requests_sent_before_an_ejection_do_not_extend_it():
    b = make(*(rec(i) for i in range(4)))
    p0 = b.candidates.endpoints[0]
    fail(b, p0, 1.0, 5)
    fail(b, p0, 10.0, 3)
    assert row(b, "p0", 10.0).ejected_for_s == 21.0


def test_never_more_than_max_ejection_percent_are_ejected():
    b = make(*(rec(i) for i in range(5)))
    for ep in b.candidates.endpoints:
        fail(b, ep, 1.0, 5)
    stats = b.stats(1.0)
    assert stats.ejected == 2  # floor(5 x 50 %)
    assert all(r.health == pytest.approx(0.25) for r in stats.endpoints if r.ejected_for_s == 0)
    assert len({b.pick("ctr", now=2.0).instance_id for _ in range(300)}) == 3


def test_when_every_endpoint_is_ejected_the_error_says_so():
    b = make(rec(0), rec(1), **{"outlier.max_ejection_percent": 100.0})
    for ep in b.candidates.endpoints:
        fail(b, ep, 1.0, 5)
    with pytest.raises(NoEndpointAvailable) as e:
        b.pick("ctr", now=2.0)
    assert e.value.why is Unavailable.ALL_EJECTED and "returns in 29.0s" in str(e.value)
    assert b.pick("ctr", now=31.0)


def test_a_single_endpoint_is_never_ejected_by_default_and_disabled_detection_ejects_nothing():
    b = make(rec(0))
    fail(b, b.candidates.endpoints[0], 1.0, 50)
    assert b.pick("ctr", now=2.0).instance_id == "p0"
    off = make(rec(0), rec(1), **{"outlier.enabled": False})
    fail(off, off.candidates.endpoints[0], 1.0, 50)
    assert off.stats(1.0).endpoints[0].health == 1.0 and off.stats(1.0).ejected == 0


def test_outlier_config_is_validated():
    assert OutlierDetection().ejection_s(3) == 120.0
    assert OutlierDetection(max_ejection_percent=50).max_ejected(1) == 0
    with pytest.raises(ValueError, match="max_ejection_s"):
        OutlierDetection(base_ejection_s=60, max_ejection_s=30)


def test_health_reaches_the_weights_within_refresh_s_and_ejection_at_once():
    b = make(rec(0), rec(1))
    p0 = b.candidates.endpoints[0]
    b.pick("ctr", now=1.0)  # builds the table
    fail(b, p0, 1.0, 3)  # health 0.55: a soft change
    same = Counter(b.pick("ctr", now=1.5).instance_id for _ in range(4000))
    assert abs(same["p0"] / 4000 - 0.5) < 0.03  # not rebuilt yet (refresh_s = 1 s)
    later = Counter(b.pick("ctr", now=2.0).instance_id for _ in range(4000))
    assert abs(later["p0"] / 4000 - 0.55 / 1.55) < 0.03
    b2 = make(rec(0), rec(1), **{"outlier.consecutive_failures": 1})
    b2.pick("ctr", now=1.0)
    fail(b2, b2.candidates.endpoints[0], 1.0)
    assert {b2.pick("ctr", now=1.0).instance_id for _ in range(200)} == {"p1"}
