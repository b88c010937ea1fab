"""Policies by name with knobs, the retry budget, scatter-gather planning."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.membership import snapshot_from_records
from registry.records import InstanceRecord, State
from registry.service_config import BalancerSpec
from weiclient.balancer import (
    POLICIES,
    Balancer,
    HashConfig,
    OutlierDetection,
    P2CConfig,
    Policy,
    RetryBudget,
    RetryBudgetConfig,
    SlowStart,
    build_policy,
    gather,
    plan_shards,
    policy_from_spec,
    split_sizes,
    valid_knobs,
)
from weiclient.balancer.candidates import build_table
from weiclient.balancer.hashing import BoundedLoadHash
from weiclient.balancer.sampling import sample_pair
from weiclient.balancer.weights import Weigher
from weiclient.balancer.wrr import nginx_cycle
from weiclient.errors import InvalidBalancerConfig, WeiClientError


def rec(i: int, weight: float = 1.0) -> InstanceRecord:
    return InstanceRecord(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=weight,
                          state=State.SERVING, models={"ctr": [1]})


# -- policies --------------------------------------------------------------------------

def test_every_named_policy_builds_and_picks():
    assert set(POLICIES) == {"weighted_p2c", "round_robin", "random", "consistent_hash",
                             "p2c_jsed", "prequal", "least_outstanding", "orca_wrr"}
    for name in POLICIES:
        b = Balancer(build_policy(name), rng=random.Random(1))
        b.update(snapshot_from_records("ctr", [rec(0), rec(1)], version=1), now=0.0)
        assert b.pick("ctr", key="k", now=1.0).instance_id in {"p0", "p1"}
    assert Policy() == build_policy() and Policy().name == "p2c_jsed"


def test_knobs_reach_the_selector_and_the_shared_parts():
    p = build_policy("consistent_hash", {"load_factor": 1.5, "vnodes": 40, "slow_start.window_s": 10,
                                         "outlier.consecutive_failures": 3, "load.decay_s": 2})
    assert p.selector == HashConfig(load_factor=1.5, vnodes=40)
    assert (p.slow_start.window_s, p.outlier.consecutive_failures, p.load.decay_s) == (10.0, 3, 2)
    assert isinstance(Balancer(p).selector, BoundedLoadHash)
    spec = BalancerSpec(policy="weighted_p2c", knobs={"choices": 2})  # the registry's documented example
    assert policy_from_spec(spec).selector == P2CConfig(choices=2)
    assert "choices=2" in repr(policy_from_spec(spec))


def test_unknown_policy_names_the_valid_ones():
    with pytest.raises(InvalidBalancerConfig) as e:
        build_policy("least_conn")
    msg = str(e.value)
    assert isinstance(e.value, WeiClientError) and isinstance(e.value, ValueError)
    assert "least_conn" in msg and all(name in msg for name in POLICIES)


def test_unknown_or_bad_knobs_name_the_valid_ones():
    with pytest.raises(InvalidBalancerConfig) as e:
        build_policy("weighted_p2c", {"load_factor": 1.5})
    assert "choices" in str(e.value) and "slow_start.window_s" in str(e.value)
    assert "load_factor" not in valid_knobs("weighted_p2c")
    with pytest.raises(InvalidBalancerConfig, match="an integer"):
        build_policy("weighted_p2c", {"choices": 2.5})
    with pytest.raises(InvalidBalancerConfig, match=r"choices: expected an integer in \[2, 8\]"):
        build_policy("weighted_p2c", {"choices": 1})
    with pytest.raises(InvalidBalancerConfig, match="true or false"):
        build_policy("random", {"outlier.enabled": 1})
    with pytest.raises(InvalidBalancerConfig, match=r"slow_start\.floor"):
        build_policy("random", {"slow_start.floor": 0})
    with pytest.raises(InvalidBalancerConfig, match=r"nope\.x"):
        build_policy("random", {"nope.x": 1})
    with pytest.raises(InvalidBalancerConfig, match="P2CConfig"):
        Policy(name="random", selector=P2CConfig())


# -- retry budget ----------------------------------------------------------------------

def test_retry_budget_allows_ratio_of_requests_plus_the_floor():
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_retries_per_s=1.0, window_s=10.0))
    for _ in range(100):
        budget.deposit(0.5)
    assert budget.available(0.5) == pytest.approx(30.0)
    allowed = sum(budget.try_withdraw(0.5) for _ in range(50))
    assert allowed == 30 and not budget.try_withdraw(0.6)
    assert budget.try_withdraw(10.5)  # the window moved past the old retries (and deposits)
    assert budget.available(10.5) == pytest.approx(9.0)


def test_retry_budget_without_a_floor_is_the_ratio():
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, min_retries_per_s=0.0))
    for i in range(10):
        budget.deposit(i * 0.1)
    assert [budget.try_withdraw(1.0) for _ in range(3)] == [True, True, False]


@settings(max_examples=60, deadline=None)
@given(events=st.lists(st.tuples(st.floats(0, 0.5), st.booleans()), max_size=300))
def test_retries_in_any_window_stay_within_budget(events):
    cfg = RetryBudgetConfig(ratio=0.2, min_retries_per_s=2.0, window_s=4.0, buckets=4)
    budget = RetryBudget(cfg)
    now, log = 0.0, []
    for dt, is_retry in events:
        now += dt
        if is_retry:
            if budget.try_withdraw(now):
                log.append((now, "r"))
        else:
            budget.deposit(now)
            log.append((now, "d"))
    # at every retry, the retries of its window (the 4 one-second slots up to now) fit the budget
    for t, kind in log:
        if kind != "r":
            continue
        lo = int(t) - 3
        d = sum(1 for u, k in log if k == "d" and lo <= u <= t)
        r = sum(1 for u, k in log if k == "r" and lo <= u <= t)
        assert r <= cfg.min_retries_per_s * cfg.window_s + cfg.ratio * d


# -- scatter-gather --------------------------------------------------------------------

def test_split_sizes_is_the_largest_remainder_method():
    assert split_sizes(10, [1, 1, 1]) == [4, 3, 3]
    assert split_sizes(1000, [1, 2, 5]) == [125, 250, 625]
    assert split_sizes(7, [0.5, 0.25, 0.25]) == [3, 2, 2]  # remainders .5 < .75
    assert split_sizes(0, [1, 2]) == [0, 0]
    with pytest.raises(ValueError):
        split_sizes(3, [0, 0])


@given(n=st.integers(0, 5000), weights=st.lists(st.floats(0.01, 100), min_size=1, max_size=40))
def test_split_sizes_sum_exactly_and_each_is_within_one_of_its_quota(n, weights):
    sizes = split_sizes(n, weights)
    assert sum(sizes) == n
    total = sum(weights)
    assert all(abs(s - n * w / total) < 1.0 + 1e-9 for s, w in zip(sizes, weights, strict=True))


def test_scatter_shards_follow_weight_and_reassemble_in_order():
    b = Balancer(build_policy("weighted_p2c"), rng=random.Random(2))
    b.update(snapshot_from_records("ctr", [rec(0, 1.0), rec(1, 2.0), rec(2, 5.0)], version=1), now=0.0)
    shards = b.scatter("ctr", None, 1600, now=1.0)
    assert [(s.endpoint.instance_id, s.size) for s in shards] == [("p0", 200), ("p1", 400), ("p2", 1000)]
    items = list(range(1600))
    outputs = [[x * 10 for x in items[s.slice]] for s in shards]
    assert gather(shards, outputs) == [x * 10 for x in items]
    with pytest.raises(ValueError, match="returned 1 results, expected 200"):
        gather(shards, [[1], *outputs[1:]])
    two = b.scatter("ctr", None, 10, max_shards=2, exclude={shards[2].endpoint}, now=1.0)
    assert [s.endpoint.instance_id for s in two] == ["p0", "p1"] and two[-1].stop == 10
    assert len(plan_shards(2, [s.endpoint for s in shards], [1, 1, 1])) == 2  # zero-size shards dropped


# -- sampling and the WRR cycle --------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(weights=st.lists(st.floats(0.01, 50), min_size=1, max_size=30), seed=st.integers(0, 1000))
def test_sample_pair_is_two_distinct_valid_indices(weights, seed):
    b = Balancer(build_policy("random"))
    b.update(snapshot_from_records("ctr", [rec(i, w) for i, w in enumerate(weights)], version=1), 0.0)
    table = build_table(b.candidates.endpoints, 1.0, Weigher(slow_start=SlowStart(), outlier=OutlierDetection()))
    rng = random.Random(seed)
    for _ in range(20):
        i, j = sample_pair(table, rng)
        assert 0 <= i < len(weights) and 0 <= j < len(weights)
        assert (i != j) or len(weights) == 1


@given(weights=st.lists(st.integers(1, 20), min_size=1, max_size=12))
def test_the_wrr_cycle_gives_each_endpoint_exactly_its_weight(weights):
    cycle = nginx_cycle([float(w) for w in weights])
    assert [cycle.order.count(i) for i in range(len(weights))] == list(cycle.weights)
    scale = weights[0] / cycle.weights[0]
    assert [w * scale for w in cycle.weights] == pytest.approx(weights)
