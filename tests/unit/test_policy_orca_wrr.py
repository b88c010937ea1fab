"""orca_wrr: smooth WRR on weights from ORCA reports, gRFC A58's rules (fake clock, fixed seeds)."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest
from test_policy_sim import CAPACITY, SWAPPED, assert_shares, full_queue, rec, steady, swap_speeds

from protocol.orca import LoadReport
from registry.membership import snapshot_from_records
from weiclient.balancer import Balancer, OrcaWrrConfig, ServerLoad, build_policy
from weiclient.errors import InvalidBalancerConfig

# scenario, published weights, knobs, bound on the mean latency while steady (None: not bounded:
# with flat weights p0 is overloaded until the blackout ends and its queue drains for long after)
CASES = [
    ("weights right", (1.0, 2.0, 4.0), {}, 0.3),
    ("weights flat: reports correct them", (1.0, 1.0, 1.0), {}, None),
    ("no blackout, no error penalty", (1.0, 1.0, 1.0), {"blackout_period_s": 0, "error_utilization_penalty": 0}, 0.3),
]


@pytest.mark.parametrize(("scenario", "weights", "knobs", "latency"), CASES, ids=[c[0] for c in CASES])
def test_calls_go_in_proportion_to_capacity_and_follow_a_change_of_speed(scenario, weights, knobs, latency):
    fleet = steady("orca_wrr", weights=weights, knobs=knobs)
    assert_shares(fleet.shares(), CAPACITY, 0.05)
    if latency is not None:
        assert statistics.mean(fleet.latencies) < latency
    # A weight follows a change within the server's 10 s window, but the queue the slowed pod built
    # meanwhile drains only at its spare capacity (A58 reads no queue): latency stays high for a while.
    swap_speeds(fleet)
    assert_shares(fleet.shares(), SWAPPED, 0.05)


def test_an_endpoint_whose_queue_is_full_is_avoided_through_the_error_penalty():
    # 56 served per second at full utilization and 1,120 refused: weight 56 / (1 + 20) = 2.7 against 14 and 28
    assert full_queue("orca_wrr")["p2"] < 0.07
    assert full_queue("orca_wrr", knobs={"error_utilization_penalty": 0})["p2"] > 0.5  # A58 reads no queue


def _balancer(*weights: float, **knobs) -> Balancer:
    b = Balancer(build_policy("orca_wrr", knobs), rng=random.Random(1))
    b.update(snapshot_from_records("ctr", [rec(i, w) for i, w in enumerate(weights)], version=1), now=0.0)
    return b


def _report(b: Balancer, i: int, now: float, **load: float) -> None:
    ep = b.candidates.endpoints[i]
    b.on_start(ep, now)
    b.on_finish(ep, now, 0.01, True, ServerLoad(**load))


def test_the_weight_is_rps_over_utilization_with_the_error_penalty():
    b = _balancer(1.0)
    st = b.candidates.endpoints[0].state
    _report(b, 0, 1.0, rps_fractional=100.0, application_utilization=0.5)
    assert st.orca_weight == 200.0
    _report(b, 0, 2.0, rps_fractional=100.0, application_utilization=0.5, eps=50.0)
    assert st.orca_weight == pytest.approx(100.0 / (0.5 + 0.5))
    _report(b, 0, 3.0, rps_fractional=100.0, cpu_utilization=0.25)  # no application utilization: CPU's
    assert st.orca_weight == 400.0
    _report(b, 0, 4.0, rps_fractional=0.0, application_utilization=0.5)          # empty: ignored
    _report(b, 0, 5.0, rps_fractional=100.0)
    assert (st.orca_weight, st.orca_at, st.orca_since) == (400.0, 3.0, 1.0)
    orca = LoadReport(application_utilization=0.5, rps_fractional=10.0, eps=float("nan"))  # garbage eps reads 0
    b.on_finish(b.candidates.endpoints[0], 6.0, 0.01, True, orca)
    assert st.orca_weight == 20.0


def test_blackout_and_expiration():
    b = _balancer(1.0, 1.0, **{"blackout_period_s": 10, "weight_expiration_period_s": 60})
    sel, st = b.selector, b.candidates.endpoints[0].state
    _report(b, 0, 1.0, rps_fractional=30.0, application_utilization=0.1)
    assert sel.weight(st, 10.9) == 0.0 and sel.weight(st, 11.0) == 300.0  # a whole blackout of reports first
    assert sel.weight(st, 60.9) == 300.0 and sel.weight(st, 61.0) == 0.0  # expired 60 s after the last one
    _report(b, 0, 100.0, rps_fractional=30.0, application_utilization=0.1)
    assert sel.weight(st, 105.0) == 0.0 and sel.weight(st, 110.0) == 300.0  # after an expiry: blackout again
    _report(b, 0, 150.0, rps_fractional=30.0, application_utilization=0.2)  # within the expiration: the run goes on
    assert sel.weight(st, 150.0) == 150.0


def test_endpoints_without_a_usable_weight_get_their_published_weight_scaled():
    b = _balancer(1.0, 2.0, 4.0, blackout_period_s=0)
    table = b._table("ctr", None, (), 1.0)[1]
    assert b.selector.weights(table, 1.0) == [1.0, 2.0, 4.0]  # nothing reported: as published
    _report(b, 0, 1.0, rps_fractional=50.0, application_utilization=0.5)   # p0 does 100 per busy second,
    _report(b, 1, 1.0, rps_fractional=100.0, application_utilization=1.0)  # p1 as much, published at twice p0
    assert b.selector.weights(table, 1.0) == pytest.approx([100.0, 100.0, 4.0 * 200.0 / 3.0])


def test_picks_follow_the_smooth_cycle_over_reported_weights_rebuilt_each_update_period():
    b = _balancer(1.0, 1.0, 1.0, blackout_period_s=0)
    for i, rps in enumerate((10.0, 20.0, 50.0)):
        _report(b, i, 1.0, rps_fractional=rps, application_utilization=1.0)
    seq = [b.pick("ctr", now=1.0).instance_id for _ in range(8 * 40)]
    assert Counter(seq) == {"p0": 40, "p1": 80, "p2": 200}
    _report(b, 0, 1.5, rps_fractional=80.0, application_utilization=1.0)  # p0 now as fast as the other two together
    assert Counter(b.pick("ctr", now=1.5).instance_id for _ in range(80)) == {"p0": 10, "p1": 20, "p2": 50}
    assert Counter(b.pick("ctr", now=2.0).instance_id for _ in range(150)) == {"p0": 80, "p1": 20, "p2": 50}


def test_failures_and_exclusions_still_act():
    b = _balancer(1.0, 1.0, blackout_period_s=0)
    _report(b, 0, 1.0, rps_fractional=10.0, application_utilization=1.0)
    _report(b, 1, 1.0, rps_fractional=10.0, application_utilization=1.0)
    p0 = b.candidates.endpoints[0]
    for _ in range(5):
        b.on_start(p0, 2.0)
        b.on_finish(p0, 2.0, 0.01, False)  # five in a row: ejected
    assert {b.pick("ctr", now=3.5).instance_id for _ in range(20)} == {"p1"}
    b2 = _balancer(1.0, 3.0)
    assert {b2.pick("ctr", exclude={b2.candidates.endpoints[1]}, now=1.0).instance_id for _ in range(8)} == {"p0"}


def test_knobs_are_validated():
    assert build_policy("orca_wrr").selector == OrcaWrrConfig(
        blackout_period_s=10.0, weight_expiration_period_s=180.0, weight_update_period_s=1.0,
        error_utilization_penalty=1.0)
    with pytest.raises(InvalidBalancerConfig, match="weight_update_period_s"):
        build_policy("orca_wrr", {"weight_update_period_s": 0.01})
    with pytest.raises(InvalidBalancerConfig, match="weight_expiration_period_s"):
        build_policy("orca_wrr", {"weight_expiration_period_s": 0})
