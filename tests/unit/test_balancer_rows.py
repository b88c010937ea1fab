"""Load counted in rows (cost), not calls; the server's load report as the client reads it."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from types import SimpleNamespace

import pytest
from test_policy_sim import Fleet

from protocol.orca import LoadReport
from registry.membership import snapshot_from_records
from registry.records import InstanceRecord, State
from weiclient.balancer import Balancer, ServerLoad, build_policy
from weiclient.balancer.state import coerce_load


def rec(i: int, weight: float = 1.0) -> InstanceRecord:
    return InstanceRecord(service="ctr", id=f"p{i}", address="10.0.0.1", port=9000 + i, weight=weight,
                          state=State.SERVING, models={"ctr": [1]})


def balancer(policy: str, knobs: dict | None = None, n: int = 2) -> Balancer:
    b = Balancer(build_policy(policy, knobs), rng=random.Random(1))
    b.update(snapshot_from_records("ctr", [rec(i) for i in range(n)], version=1), now=0.0)
    return b


# policy, knobs, counts -> the share of 20-row calls sent away from the endpoint holding a 2,000-row call
SMALL_CALLS_AWAY_FROM_A_BIG_ONE = [
    ("weighted_p2c", {}, "calls", 0.0),   # 1 call there against 3 here: the big one looks lighter
    ("weighted_p2c", {"load.count_rows": True}, "rows", 1.0),
    ("least_outstanding", {}, "rows", 1.0),
    ("p2c_jsed", {}, "rows", 1.0),
    ("prequal", {}, "calls", 0.0),        # RIF counts calls, as the paper's
    ("round_robin", {}, "nothing", 0.5),
]


@pytest.mark.parametrize(("policy", "knobs", "counts", "away"), SMALL_CALLS_AWAY_FROM_A_BIG_ONE,
                         ids=[f"{p}{'+rows' if k else ''}" for p, k, _, _ in SMALL_CALLS_AWAY_FROM_A_BIG_ONE])
def test_where_small_calls_go_while_one_endpoint_holds_a_2000_row_call(policy, knobs, counts, away):
    b = balancer(policy, knobs)
    big, small = b.candidates.endpoints
    for ep in (big, small):
        b.on_start(ep, 0.5, cost=20)
        b.on_finish(ep, 0.5, 0.010, True, cost=20)
    b.on_start(big, 1.0, cost=2000)
    for _ in range(3):
        b.on_start(small, 1.0, cost=20)
    assert (big.state.in_flight, big.state.in_flight_rows, small.state.in_flight_rows) == (1, 2000.0, 60.0)
    sent: Counter[str] = Counter()
    for i in range(1000):
        now = 1.0 + i * 0.0001
        ep = b.pick("ctr", now=now, cost=20)
        b.on_start(ep, now, cost=20)
        b.on_finish(ep, now, 0.010, True, cost=20)
        sent[ep.instance_id] += 1
    assert sent[small.instance_id] / 1000 == pytest.approx(away, abs=0.02)


@pytest.mark.parametrize(("policy", "knobs"), [("weighted_p2c", {"load.count_rows": True}),
                                               ("least_outstanding", {}), ("p2c_jsed", {})])
def test_counting_rows_cuts_the_wait_of_small_calls_in_a_mix(policy, knobs):
    """Two equal FIFO pods, one call in twenty of 2,000 rows, the rest of 20, half load."""
    def small_call_latency(policy: str, knobs: dict) -> float:
        fleet = Fleet(policy, [5000.0, 5000.0], weights=[1.0, 1.0], knobs=knobs, seed=1)
        fleet.run(10.0, 0.5, [20] * 19 + [2000])
        fleet.reset()
        fleet.run(60.0, 0.5, [20] * 19 + [2000])
        return statistics.mean(fleet.by_size[20])

    assert small_call_latency(policy, knobs) < 0.85 * small_call_latency("weighted_p2c", {})


def test_rows_are_counted_with_calls_and_released_with_them():
    b = balancer("weighted_p2c")
    a, c = b.candidates.endpoints
    b.on_start(a, 1.0, cost=2000)
    b.on_start(a, 1.0, cost=20)
    b.on_start(c, 1.0)  # no cost given: one row
    stats = b.stats(1.0)
    assert (stats.in_flight, stats.in_flight_rows) == (3, 2021.0)
    assert [(e.in_flight, e.in_flight_rows) for e in stats.endpoints] == [(2, 2020.0), (1, 1.0)]
    assert "2021 rows" in repr(b)
    b.on_finish(a, 1.1, 0.1, True, cost=2000)
    assert (a.state.in_flight, a.state.in_flight_rows) == (1, 20.0)
    b.on_finish(a, 1.2, 0.1, True, cost=7)       # a mismatched cost: rows never drift below zero,
    b.on_finish(c, 1.2, 0.1, False, cost=5000)   # and none are left once no call is
    b.on_finish(c, 1.3, 0.1, True, cost=5000)    # a finish with nothing in flight changes nothing
    assert (b.stats(2.0).in_flight, b.stats(2.0).in_flight_rows) == (0, 0.0)
    assert a.state.in_flight_rows == c.state.in_flight_rows == 0.0


@pytest.mark.parametrize("cost", [0, -5, 0.5, math.nan, math.inf])
def test_a_call_costs_at_least_one_row(cost):
    b = balancer("least_outstanding")
    ep = b.pick("ctr", now=1.0, cost=cost)
    b.on_start(ep, 1.0, cost=cost)
    assert ep.state.in_flight_rows == 1.0
    b.on_finish(ep, 1.0, 0.01, True, cost=cost)
    assert ep.state.in_flight_rows == 0.0


def test_a_policy_switch_carries_rows_in_flight():
    b = balancer("weighted_p2c")
    ep = b.candidates.endpoints[0]
    b.on_start(ep, 1.0, cost=300)
    nxt = b.with_policy(build_policy("least_outstanding"))
    assert (nxt.stats(1.0).in_flight, nxt.stats(1.0).in_flight_rows) == (1, 300.0)
    nxt.on_finish(ep, 2.0, 0.1, True, cost=300)
    assert nxt.stats(2.0).in_flight_rows == 0.0


def test_the_load_metric_counts_rows_when_asked():
    calls, rows = build_policy("weighted_p2c").load, build_policy("weighted_p2c", {"load.count_rows": True}).load
    b = balancer("weighted_p2c")
    ep = b.candidates.endpoints[0]
    b.on_start(ep, 1.0, cost=500)
    b.on_finish(ep, 1.0, 0.010, True, ServerLoad(queue_depth=1500.0), cost=500)
    b.on_start(ep, 1.0, cost=500)
    assert calls.pending(ep.state, 1.0) == 1 + 1.5           # calls + queued rows / 1,000
    assert rows.pending(ep.state, 1.0) == 500 + 1500          # rows
    assert calls.cost(ep.state, 2.0, 0.5, 1.0, 40) == pytest.approx((2.5 / 2 + 0.5) * 0.010)
    assert rows.cost(ep.state, 2.0, 0.5, 1.0, 40) == pytest.approx((2000 / 2 + 40 * 0.5) * 0.010)
    assert rows.pending(ep.state, 5.0) == 500                 # the queue's report went stale


# -- the load report --------------------------------------------------------------------------

def test_every_reported_figure_is_read():
    report = LoadReport(application_utilization=0.75, cpu_utilization=0.5, rps_fractional=120.0, eps=3.0,
                        named_metrics={"in_flight": 4.0, "queue_depth": 900.0, "batch_fill": 0.6,
                                       "ewma_latency_ms": 12.0, "rows_per_s": 9000.0,
                                       "capacity_rows_per_s": 12000.0, "queue_delay_ms": 30.0})
    assert coerce_load(report) == ServerLoad(
        in_flight=4.0, queue_depth=900.0, batch_fill=0.6, ewma_latency_s=0.012, rows_per_s=9000.0,
        capacity_rows_per_s=12000.0, queue_delay_s=0.030, application_utilization=0.75, cpu_utilization=0.5,
        rps_fractional=120.0, eps=3.0)


@pytest.mark.parametrize("garbage", [math.nan, math.inf, -math.inf, -3.0, "12", None, True, [1.0]])
def test_garbage_values_read_as_unknown(garbage):
    report = SimpleNamespace(application_utilization=garbage, rps_fractional=garbage,
                             named_metrics={"queue_depth": garbage, "capacity_rows_per_s": garbage,
                                            "in_flight": 2.0})
    assert coerce_load(report) == ServerLoad(in_flight=2.0)
    assert coerce_load({"queue_delay_ms": garbage, "rows_per_s": 5}) == ServerLoad(rows_per_s=5.0)
    assert coerce_load(SimpleNamespace(named_metrics=garbage, rps_fractional=7.0)) == ServerLoad(rps_fractional=7.0)


def test_what_is_not_a_report_is_refused():
    assert coerce_load(None) is None
    loaded = ServerLoad(queue_depth=1.0)
    assert coerce_load(loaded) is loaded
    with pytest.raises(TypeError, match="expected a ServerLoad"):
        coerce_load(42)
