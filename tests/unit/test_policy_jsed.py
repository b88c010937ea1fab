"""p2c_jsed: power of two choices on expected delay, (rows ahead + rows) / capacity (fake clock, fixed seeds)."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import pytest
from test_policy_sim import CAPACITY, SWAPPED, Fleet, assert_shares, full_queue, rec, steady, swap_speeds

from registry.membership import snapshot_from_records
from weiclient.balancer import Balancer, JsedConfig, ServerLoad, build_policy
from weiclient.balancer.delay import ExpectedDelay
from weiclient.errors import InvalidBalancerConfig

# scenario, published weights, knobs -> where the rows go (shares within 0.05) and the mean latency bound
CASES = [
    ("weights right", (1.0, 2.0, 4.0), {}),
    ("weights flat: reported capacity corrects them", (1.0, 1.0, 1.0), {}),
    ("three choices", (1.0, 2.0, 4.0), {"choices": 3}),
]


@pytest.mark.parametrize(("scenario", "weights", "knobs"), CASES, ids=[c[0] for c in CASES])
def test_rows_go_in_proportion_to_capacity_and_follow_a_change_of_speed(scenario, weights, knobs):
    fleet = steady("p2c_jsed", weights=weights, knobs=knobs)
    assert_shares(fleet.shares(), CAPACITY, 0.05)
    assert statistics.mean(fleet.latencies) < 0.3
    swap_speeds(fleet)
    assert_shares(fleet.shares(), SWAPPED, 0.05)
    assert statistics.mean(fleet.latencies) < 0.3


def test_drawing_by_published_weight_cannot_follow_a_swap_of_speeds():
    """Why ``sample_by_capacity`` is on: two draws by 1:2:4 put p0 in at most ~39 % of the pairs."""
    fleet = swap_speeds(steady("p2c_jsed", knobs={"sample_by_capacity": False}))
    assert fleet.shares()["p0"] < 0.42
    assert statistics.mean(fleet.latencies) > 1.0  # p2, now the slowest, overflows


def test_an_endpoint_whose_queue_is_full_is_avoided():
    assert full_queue("p2c_jsed")["p2"] == 0.0


def test_without_reported_capacity_the_weights_are_the_capacities():
    fleet = Fleet("p2c_jsed", (700.0, 1400.0, 2800.0), weights=(1.0, 2.0, 4.0), report_capacity=False)
    fleet.run(40.0, 0.9, (10, 50, 100))
    table = fleet.balancer._table("ctr", None, (), 40.0)[1]
    selector = fleet.balancer.selector
    assert isinstance(selector, ExpectedDelay)
    assert selector.capacities(table, 40.0).weights == (1.0, 2.0, 4.0)


def test_an_unknown_capacity_is_the_weight_scaled_to_the_known_ones():
    b = Balancer(build_policy("p2c_jsed"), rng=random.Random(1))
    b.update(snapshot_from_records("ctr", [rec(0, 1.0, measured=True), rec(1, 2.0, measured=True),
                                           rec(2, 4.0, measured=True)], version=1), now=0.0)
    p0, p1, p2 = b.candidates.endpoints
    b.on_finish(p0, 1.0, 0.01, True, ServerLoad(capacity_rows_per_s=1000.0))
    b.on_finish(p1, 1.0, 0.01, True, ServerLoad(capacity_rows_per_s=1000.0))  # slower than its weight says
    table = b._table("ctr", None, (), 1.0)[1]
    caps = b.selector.capacities(table, 1.0)
    assert caps.weights == pytest.approx((1000.0, 1000.0, 4.0 * 2000.0 / 3.0))
    assert b.selector.capacities(table, 1.5) is caps  # recomputed once a second, not per pick
    # a capacity older than capacity_ttl_s is forgotten: back to the published weights
    assert b.selector.capacities(table, 70.0).weights == (1.0, 2.0, 4.0)


@pytest.mark.parametrize(("knobs", "expected"), [
    ({}, (1000.0, 1000.0, 0.1 * 2000.0 / 2.0)),  # its weight, scaled as the measured ones are
    ({"measure_static_pods": True}, (1000.0, 1000.0, 1000.0)),
])
def test_a_static_weight_is_not_overruled_by_its_servers_report_unless_asked(knobs, expected):
    """A canary held at 0.1 by hand stays small; its report says only what it could do."""
    b = Balancer(build_policy("p2c_jsed", knobs), rng=random.Random(1))
    b.update(snapshot_from_records("ctr", [rec(0, 1.0, measured=True), rec(1, 1.0, measured=True),
                                           rec(2, 0.1)], version=1), now=0.0)
    for ep in b.candidates.endpoints:
        b.on_finish(ep, 1.0, 0.01, True, ServerLoad(capacity_rows_per_s=1000.0))
    caps = b.selector.capacities(b._table("ctr", None, (), 1.0)[1], 1.0)
    assert caps.weights == pytest.approx(expected)


def test_the_delay_counts_own_rows_fresh_queued_rows_and_this_calls_rows():
    b = Balancer(build_policy("p2c_jsed"), rng=random.Random(1))
    b.update(snapshot_from_records("ctr", [rec(0), rec(1)], version=1), now=0.0)
    a, c = b.candidates.endpoints
    b.on_finish(a, 1.0, 0.01, True, ServerLoad(queue_depth=900.0, capacity_rows_per_s=1000.0))
    b.on_finish(c, 1.0, 0.01, True, ServerLoad(capacity_rows_per_s=1000.0))
    b.on_start(c, 1.0, cost=500)
    sel = b.selector
    assert sel.delay(a, 1000.0, 1.0, 100) == pytest.approx(1.0)   # (0 + 900 + 100) / 1000
    assert sel.delay(c, 1000.0, 1.0, 100) == pytest.approx(0.6)   # (500 + 0 + 100) / 1000
    assert Counter(b.pick("ctr", now=1.0, cost=100).instance_id for _ in range(200)) == {"p1": 200}
    assert sel.delay(a, 1000.0, 5.0, 100) == pytest.approx(0.1)   # the queue's report went stale
    assert Counter(b.pick("ctr", now=5.0, cost=100).instance_id for _ in range(200)) == {"p0": 200}


def test_idle_calls_go_to_the_shortest_delay_and_exclusions_are_honoured():
    b = Balancer(build_policy("p2c_jsed"), rng=random.Random(1))
    b.update(snapshot_from_records("ctr", [rec(0, 1.0), rec(1, 1.0), rec(2, 1.0)], version=1), now=0.0)
    counts = Counter(b.pick("ctr", now=1.0).instance_id for _ in range(3000))
    assert all(900 < n < 1100 for n in counts.values())  # equal and idle: the first draw decides
    first = b.candidates.endpoints[0]
    assert first not in {b.pick("ctr", exclude={first}, now=1.0) for _ in range(100)}


def test_knobs_are_validated():
    assert build_policy("p2c_jsed").selector == JsedConfig()
    with pytest.raises(InvalidBalancerConfig, match="choices"):
        build_policy("p2c_jsed", {"choices": 1})
    with pytest.raises(InvalidBalancerConfig, match="true or false"):
        build_policy("p2c_jsed", {"sample_by_capacity": 1})
    with pytest.raises(InvalidBalancerConfig, match="capacity_ttl_s"):
        JsedConfig(capacity_ttl_s=float("nan"))


def test_the_agents_slow_start_and_health_scale_a_reported_capacity():
    """A WARMING pod published at 5 % of its measured capacity is not taken at its full capacity."""
    from registry.records import Capacity, InstanceRecord, State

    def pod(i: int, weight: float, measured: float | None, state: State = State.SERVING) -> InstanceRecord:
        return InstanceRecord(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=weight,
                              state=state, models={"ctr": [1]}, capacity=Capacity(samples_per_s=measured))

    b = Balancer(build_policy("p2c_jsed"), rng=random.Random(1))
    b.update(snapshot_from_records("ctr", [pod(0, 2000.0, 2000.0), pod(1, 100.0, 2000.0, State.WARMING),
                                           pod(2, 2000.0, None)], version=1), now=0.0)
    for ep in b.candidates.endpoints:
        b.on_finish(ep, 1.0, 0.01, True, ServerLoad(capacity_rows_per_s=2000.0))
    caps = b.selector.capacities(b._table("ctr", None, (), 1.0)[1], 1.0)
    assert caps.weights == pytest.approx((2000.0, 100.0, 2000.0))  # 2,000 x 100 / 2,000; no record figure: 1


@pytest.mark.parametrize(("weights", "knobs", "share_low"), [
    ((1.0, 0.98), {}, 0.35),                        # near-equal: a tie, split about evenly
    ((1.0, 0.98), {"tie_tolerance": 0.0}, None),    # no tolerance: the 2 % slower pod never wins
    ((1.0, 0.25), {}, None),                        # really slower (4x): it loses when idle
])
def test_an_idle_fleet_splits_near_ties_by_capacity_and_sends_to_the_clearly_faster(weights, knobs, share_low):
    b = Balancer(build_policy("p2c_jsed", knobs), rng=random.Random(3))
    b.update(snapshot_from_records("ctr", [rec(0, weights[0], measured=True), rec(1, weights[1], measured=True)],
                                   version=1), now=0.0)
    counts = Counter(b.pick("ctr", now=1.0, cost=100).instance_id for _ in range(2000))
    if share_low is None:
        assert counts["p1"] == 0
    else:
        assert counts["p1"] / 2000 > share_low
