"""least_outstanding: the lowest (in-flight rows + rows) / weight (fake clock, fixed seeds)."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest
from test_policy_sim import CAPACITY, SWAPPED, assert_shares, full_queue, rec, steady, swap_speeds

from registry.membership import snapshot_from_records
from weiclient.balancer import Balancer, LeastOutstandingConfig, build_policy
from weiclient.errors import InvalidBalancerConfig

# scenario, knobs, tolerance after the swap: the weights stay 1:2:4, so only the client's own
# in-flight rows say that p0 became the fastest (its share rises from 1/7 towards, not to, 4/7)
CASES = [
    ("compares all three", {}, 0.05),
    ("three sampled", {"scan_all": 0, "choices": 3}, 0.05),
]


@pytest.mark.parametrize(("scenario", "knobs", "after"), CASES, ids=[c[0] for c in CASES])
def test_rows_go_in_proportion_to_capacity_and_follow_a_change_of_speed(scenario, knobs, after):
    fleet = steady("least_outstanding", knobs=knobs)
    assert_shares(fleet.shares(), CAPACITY, 0.05)
    assert statistics.mean(fleet.latencies) < 0.3
    swap_speeds(fleet)
    assert_shares(fleet.shares(), SWAPPED, after)
    assert statistics.mean(fleet.latencies) < 0.5


def test_two_sampled_by_stale_weights_cannot_follow_a_swap_of_speeds():
    """Why ``scan_all``: two of three drawn by 1:2:4 put p0 in at most ~39 % of the pairs."""
    fleet = steady("least_outstanding", knobs={"scan_all": 0})
    assert_shares(fleet.shares(), CAPACITY, 0.05)
    swap_speeds(fleet)
    assert fleet.shares()["p0"] < 0.42 and statistics.mean(fleet.latencies) > 1.0


def test_an_endpoint_whose_queue_is_full_is_avoided():
    # only the client's own rows waiting in that queue show it: least_outstanding reads no report
    assert full_queue("least_outstanding")["p2"] == 0.0


def _balancer(*weights: float, **knobs) -> Balancer:
    b = Balancer(build_policy("least_outstanding", knobs), rng=random.Random(2))
    b.update(snapshot_from_records("ctr", [rec(i, w) for i, w in enumerate(weights)], version=1), now=0.0)
    return b


def test_rows_outstanding_per_weight_decide():
    b = _balancer(1.0, 4.0)
    small, big = b.candidates.endpoints
    b.on_start(big, 1.0, cost=300)  # (300 + 100) / 4 = 100 against (0 + 100) / 1 = 100: a tie, split by weight
    counts = Counter(b.pick("ctr", now=1.0, cost=100).instance_id for _ in range(5000))
    assert abs(counts["p1"] / 5000 - 0.8) < 0.03
    b.on_start(big, 1.0, cost=20)
    assert Counter(b.pick("ctr", now=1.0, cost=100).instance_id for _ in range(100)) == {"p0": 100}
    assert Counter(b.pick("ctr", now=1.0, cost=10).instance_id for _ in range(100)) == {"p0": 100}


def test_an_idle_fleet_goes_to_the_biggest_and_equal_pods_are_split_evenly():
    assert {_balancer(1.0, 2.0, 4.0).pick("ctr", now=1.0).instance_id for _ in range(100)} == {"p2"}
    b = _balancer(1.0, 1.0, 1.0, 1.0)
    counts = Counter(b.pick("ctr", now=1.0).instance_id for _ in range(8000))
    assert all(abs(n / 8000 - 0.25) < 0.02 for n in counts.values())


def test_more_endpoints_than_scan_all_are_sampled_and_exclusions_are_honoured():
    b = _balancer(*[1.0] * 12, scan_all=8)
    hot = b.candidates.endpoints[0]
    b.on_start(hot, 1.0, cost=1000)
    counts = Counter(b.pick("ctr", now=1.0, cost=10).instance_id for _ in range(6000))
    assert counts["p0"] == 0 and len(counts) == 11  # p0 loses every pair it is drawn in
    others = set(b.candidates.endpoints[1:])
    assert {b.pick("ctr", exclude=others, now=1.0) for _ in range(20)} == {hot}
    small = _balancer(1.0, 1.0)
    with pytest.raises(Exception, match="excluded|available"):
        small.pick("ctr", exclude=set(small.candidates.endpoints), now=1.0)


def test_knobs_are_validated():
    assert build_policy("least_outstanding").selector == LeastOutstandingConfig(choices=2, scan_all=8)
    with pytest.raises(InvalidBalancerConfig, match="scan_all"):
        build_policy("least_outstanding", {"scan_all": 100})
    with pytest.raises(InvalidBalancerConfig, match="an integer"):
        build_policy("least_outstanding", {"choices": 2.0})
