"""prequal: the hot-cold rule on requests in flight and latency, from in-band figures (fake clock, fixed seeds)."""

from __future__ import annotations

import random
import statistics
from collections import Counter

import numpy as np
import pytest
from test_policy_sim import CAPACITY, SWAPPED, assert_shares, full_queue, rec, steady, swap_speeds

from registry.membership import snapshot_from_records
from weiclient.balancer import Balancer, PrequalConfig, ServerLoad, build_policy
from weiclient.balancer.prequal import quantile
from weiclient.errors import InvalidBalancerConfig

CASES = [
    ("weights right", (1.0, 2.0, 4.0), {}),
    ("weights flat: latency and RIF correct them", (1.0, 1.0, 1.0), {}),
    ("another seed", (1.0, 2.0, 4.0), {}),
    ("q_rif 0.5", (1.0, 2.0, 4.0), {"q_rif": 0.5}),
]


@pytest.mark.parametrize(("scenario", "weights", "knobs"), CASES, ids=[c[0] for c in CASES])
def test_rows_go_in_proportion_to_capacity_and_follow_a_change_of_speed(scenario, weights, knobs):
    fleet = steady("prequal", weights=weights, knobs=knobs, seed=7 if scenario == "another seed" else 1)
    assert_shares(fleet.shares(), CAPACITY, 0.05)
    assert statistics.mean(fleet.latencies) < 0.3
    swap_speeds(fleet)
    assert_shares(fleet.shares(), SWAPPED, 0.05)
    assert statistics.mean(fleet.latencies) < 0.3


def test_an_endpoint_whose_queue_is_full_is_avoided():
    assert full_queue("prequal")["p2"] == 0.0  # 200 in flight: hot, and a colder one is always drawn


def _fleet(n: int = 6, **knobs) -> Balancer:
    b = Balancer(build_policy("prequal", knobs), rng=random.Random(3))
    b.update(snapshot_from_records("ctr", [rec(i) for i in range(n)], version=1), now=0.0)
    return b


def test_among_cold_endpoints_the_lowest_latency_wins_not_the_lowest_rif():
    b = _fleet(3, pool=3)
    p0, p1, p2 = b.candidates.endpoints
    for ep, latency in ((p0, 0.050), (p1, 0.010), (p2, 0.020)):
        b.on_finish(ep, 1.0, latency, True)
    b.on_start(p1, 1.0)  # p1: RIF 1, the others 0; the 0.84 quantile of (0, 0, 1) is 0.68: p1 is hot
    assert Counter(b.pick("ctr", now=1.0).instance_id for _ in range(100)) == {"p2": 100}
    b2 = _fleet(3, pool=3, q_rif=1.0)  # nothing is hot: latency alone
    for ep, latency in zip(b2.candidates.endpoints, (0.050, 0.010, 0.020), strict=True):
        b2.on_finish(ep, 1.0, latency, True)
    b2.on_start(b2.candidates.endpoints[1], 1.0)
    assert Counter(b2.pick("ctr", now=1.0).instance_id for _ in range(100)) == {"p1": 100}


def test_the_server_reported_in_flight_counts_while_fresh():
    b = _fleet(3, pool=3)
    p0, p1, p2 = b.candidates.endpoints
    b.on_finish(p0, 1.0, 0.010, True, ServerLoad(in_flight=40))  # busy with other clients' calls
    b.on_finish(p1, 1.0, 0.020, True, ServerLoad(in_flight=1))
    b.on_finish(p2, 1.0, 0.030, True, ServerLoad(in_flight=1))
    assert b.selector.rif(p0.state, 1.5) == 40.0
    assert Counter(b.pick("ctr", now=1.5).instance_id for _ in range(100)) == {"p1": 100}
    assert b.selector.rif(p0.state, 5.0) == 0.0  # stale: only the client's own count
    assert Counter(b.pick("ctr", now=5.0).instance_id for _ in range(100)) == {"p0": 100}


def test_when_every_candidate_is_hot_the_lowest_rif_wins():
    b = _fleet(3, pool=3)
    p0, p1, p2 = b.candidates.endpoints
    for ep in (p0, p1, p2):
        b.on_finish(ep, 1.0, 0.010, True)
    b.on_start(p2, 1.0)
    view, table = b._table("ctr", None, (), 1.0)
    assert b.selector.threshold(view, table, 1.0) == pytest.approx(0.68)  # the 0.84 quantile of (0, 0, 1)
    for ep, n in ((p0, 3), (p1, 2), (p2, 4)):  # within the 50 ms the threshold is kept: all above it
        for _ in range(n):
            b.on_start(ep, 1.0)
    assert Counter(b.pick("ctr", now=1.01).instance_id for _ in range(50)) == {"p1": 50}


def test_an_endpoint_that_never_answered_is_probed_when_idle_and_penalised_when_not():
    b = _fleet(2, pool=2)
    seen, new = b.candidates.endpoints
    b.on_finish(seen, 1.0, 0.010, True)
    assert Counter(b.pick("ctr", now=1.0).instance_id for _ in range(50)) == {new.instance_id: 50}
    b.on_start(new, 1.0)
    b.on_start(seen, 1.0)  # equal RIFs: neither is hot once the threshold is recomputed (after 50 ms),
    # and the endpoint that never answered costs load.penalty_s
    assert Counter(b.pick("ctr", now=1.1).instance_id for _ in range(50)) == {seen.instance_id: 50}


def test_an_idle_fleet_is_split_by_weight():
    b = Balancer(build_policy("prequal"), rng=random.Random(1))
    b.update(snapshot_from_records("ctr", [rec(0, 1.0), rec(1, 3.0)], version=1), now=0.0)
    for ep in b.candidates.endpoints:
        b.on_finish(ep, 0.5, 0.010, True)
    counts = Counter(b.pick("ctr", now=1.0).instance_id for _ in range(8000))
    assert abs(counts["p1"] / 8000 - 0.75) < 0.02
    first = b.candidates.endpoints[0]
    assert {b.pick("ctr", exclude={first}, now=1.0) for _ in range(50)} == {b.candidates.endpoints[1]}


@pytest.mark.parametrize("values", [[3.0], [0.0, 1.0], [5.0, 1.0, 9.0, 2.0], list(map(float, range(17)))])
@pytest.mark.parametrize("q", [0.0, 0.5, 0.84, 1.0])
def test_quantile_interpolates_as_numpy_does(values, q):
    assert quantile(values, q) == pytest.approx(float(np.quantile(values, q)))


def test_knobs_are_validated():
    assert build_policy("prequal").selector == PrequalConfig(q_rif=0.84, pool=4)
    with pytest.raises(InvalidBalancerConfig, match="q_rif"):
        build_policy("prequal", {"q_rif": 1.5})
    with pytest.raises(InvalidBalancerConfig, match="pool"):
        build_policy("prequal", {"pool": 1})
